"""Pipeline configuration: cross-reference checks and the names derived from config values.

The JSON schema (workflow/schemas/config.schema.yaml) checks keys and types; this module checks what a
schema cannot (an experiment naming a feature setting that does not exist, a raw folder that is not
there), resolves every extractor setting through ercpipe.features.settings (the schema takes any object
there, so the keys are written once) and derives file names. It imports nothing heavy: the Snakefile
calls it at parse time, also in every cluster job.
"""
from __future__ import annotations

import copy
import difflib
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Collection

from ercpipe import clip_setting, search
from ercpipe.errors import ErcpipeError
from ercpipe.features.settings import (EXTRACTOR_SETTINGS, PACKAGED_MINILM, SettingError, is_imported_setting,
                                       text_model_dir, text_model_problems, text_settings)
from ercpipe.labels import CLASSES_BY_FORMAT, MODALITIES, canonical_emotion, official_class_list, vega_label_order
from ercpipe.mining_setting import mining_settings

SYNTHETIC_ROOT = Path("raw/synthetic")
# Datasets imported from the community feature pickles (ercpipe.features.pickles): no raw folder, no
# extraction; the import rule writes the manifest and one feature file per imported setting.
PICKLE_FORMATS: tuple[str, ...] = ("vega_pickle", "sdt_pickle")
PICKLE_ONLY_KEYS: tuple[str, ...] = ("path", "allow_pickle", "labels", "valid_split")
RAW_ONLY_KEYS: tuple[str, ...] = ("root", "synthetic", "manifest", "split_file", "relabel", "sides", "probe_media",
                                  "face_selection", "modalities")


def is_pickle_dataset(cfg: dict) -> bool:
    return cfg.get("format") in PICKLE_FORMATS


def export_name_dir(config: dict, name: str) -> str:
    """results/{dataset}/export/{name}: where the export `name` writes features.pkl (and 35_anchor.pt)."""
    return f"results/{export_source(config, name)['dataset']}/export/{name}"


def export_source(config: dict, name: str) -> dict:
    """{dataset, features, anchors} of an `exports:` entry (from its experiment, or given directly)."""
    entry = config["exports"][name]
    if entry.get("experiment"):
        exp = config["experiments"][entry["experiment"]]
        return {"dataset": exp["dataset"], "features": dict(exp["features"]),
                "anchors": entry.get("anchors", exp.get("anchors"))}
    return {"dataset": entry["dataset"], "features": dict(entry["features"]), "anchors": entry.get("anchors")}


class ConfigError(ErcpipeError, ValueError):
    """The configuration is inconsistent; the message names the key and what to change."""


def validate_schema(config: dict, schema_path: str | Path) -> None:
    """Check config against the JSON schema; the error lists every problem as a dotted key path."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        hint = ""
        if err.validator == "type" and err.validator_value == "boolean" and isinstance(err.instance, str) \
                and err.instance.lower() in ("true", "false", "yes", "no"):
            value = "true" if err.instance.lower() in ("true", "yes") else "false"
            # `--config` takes top-level keys only and reads the values inside a {...} as text: a nested key is
            # set in a copy of the YAML file.
            hint = (f" (on the command line Snakemake reads only True and False as booleans: --config {where}="
                    f"{value.capitalize()})" if "." not in where else
                    f" (write {value} without quotes; a nested key cannot be set with --config, which reads the "
                    "values inside {...} as text: set it in a copy of the config file)")
        message = err.message
        if err.validator in ("oneOf", "anyOf") and err.context:
            # "... is not valid under any of the given schemas" names no key: say what the closest form (an
            # alternative of the value's own kind, with the fewest errors) lacks or has too many of.
            forms: dict = {}
            for sub in err.context:
                forms.setdefault(sub.schema_path[0], []).append(sub)
            closest = min(forms.values(), key=lambda errors: (
                any(e.validator in ("type", "enum", "const") and not e.path for e in errors), len(errors)))
            message += f" (closest form: {'; '.join(e.message for e in closest)})"
        problems.append(f"  {where}: {message}{hint}")
    if problems:
        raise ConfigError("config does not match workflow/schemas/config.schema.yaml:\n" + "\n".join(problems))


def yaml_syntax_problem(path) -> str | None:
    """Why a YAML config file cannot be read, with its line and column, or None when it parses. Snakemake's
    own message for such a file ("Config file is not valid JSON or YAML") names neither the file nor the line;
    the Snakefile calls this before it reads config.yaml, `ercpipe check-config` for any file."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return f"{path}: not UTF-8 text (byte {err.start}): save it as UTF-8"
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        if mark is None:
            return f"{path}: {str(err).splitlines()[0]}"
        problem = getattr(err, "problem", None) or "not valid YAML"
        if context is not None and getattr(err, "context", None) and context.line != mark.line:
            problem += f" ({err.context} on line {context.line + 1})"  # e.g. where an unclosed quote opened
        if "'\\t'" in problem:
            problem += "; YAML indents with spaces only: replace the tab"
        elif "expected <block end>" in problem or "mapping values are not allowed" in problem:
            problem += "; check this line's indentation against the lines above it (keys of one block line up)"
        return f"{path}, line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return None


def check_config_files(paths) -> None:
    """A key written twice in one mapping of a YAML config file (a copied experiment block): YAML keeps the
    last without a word, so the first is lost. ConfigError naming the file and both lines. Files that do
    not parse are left to Snakemake, which has read them before this runs."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(f"{path}, line {line}: key {key!r} is written twice in the same block (first on "
                                  f"line {lines[key]}); YAML keeps only the last one: remove or rename one")
            lines[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    for path in paths:
        try:
            yaml.load(Path(path).read_text(), Loader=StrictLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            pass


SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def check_config_file(path) -> list[str]:
    """What can be checked of one config file on its own: YAML syntax (file, line, column), keys written twice,
    the JSON schema (every bad key as a dotted path), names that become folders, each experiment's preset and
    keys, each dataset's and anchor set's keys. ConfigError at the first kind of problem found. Returns the
    required keys the file lacks, which another --configfile merged with it may give (Snakemake merges several).
    Paths and the rest need the project folder: `snakemake -n --configfile FILE`."""
    import yaml

    problem = yaml_syntax_problem(path)
    if problem:
        raise ConfigError(problem)
    check_config_files([path])
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: holds {type(config).__name__}, not a mapping of keys (datasets:, experiments: ...)")
    from ercpipe.train.presets import resolve_experiment  # here: presets imports this module; light, no torch

    missing: list[str] = []
    try:
        validate_schema(config, SCHEMA_PATH)
        check_names(config)
        check_datasets_and_anchor_sets(config, missing)  # another --configfile merged with it may give them
        experiments = [(f"experiments.{name}", experiment)
                       for name, experiment in (config.get("experiments") or {}).items()]
        experiments += [(f"selections.{name}.search.experiment", selection["search"]["experiment"])
                        for name, selection in (config.get("selections") or {}).items()
                        if isinstance(selection, dict) and isinstance(selection.get("search"), dict)
                        and isinstance(selection["search"].get("experiment"), dict)]
        for where, experiment in experiments:
            try:
                resolve_experiment(experiment)
            except ValueError as err:
                raise ConfigError(f"{where}: {err}") from None
        check_extractor_settings(config)
        # The experiments and text settings a search makes, checked as snakemake -n checks them, where the
        # searched datasets' classes need no file (a feature pickle without labels: or classes: needs its file).
        datasets = config.get("datasets") or {}
        searched = [s["search"].get("dataset") for s in (config.get("selections") or {}).values()
                    if isinstance(s, dict) and isinstance(s.get("search"), dict)]
        if searched and not missing and all(name not in datasets or not is_pickle_dataset(datasets[name])
                            or datasets[name].get("labels") or datasets[name].get("classes") for name in searched):
            expand_searches(copy.deepcopy(config), Path(path).parent, schema_path=SCHEMA_PATH)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return missing


# Datasets, experiments, selections, anchor sets, exports and feature settings name folders and files.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_names(config: dict) -> None:
    """Every name that becomes part of a path: letters, digits, '_', '-', '.', not starting with '.'
    (no '/', no spaces, no '..'), so it can neither leave its folder nor fail to match a rule."""
    sections = [(key, config.get(key) or {}) for key in ("datasets", "experiments", "selections", "anchors",
                                                          "exports")]
    sections += [(f"features.{m}", settings or {}) for m, settings in (config.get("features") or {}).items()]
    for where, entries in sections:
        for name in entries:
            if not isinstance(name, str):  # YAML reads 2024, 1.0, yes, null as a number, a bool, None
                raise ConfigError(f"{where}.{name}: YAML reads this name as {type(name).__name__} {name!r}, not as "
                                  f"text; quote it (\"{name}\":) or start it with a letter")
            if not NAME_PATTERN.fullmatch(str(name)):
                fixed = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "name"
                raise ConfigError(f"{where}.{name}: this name becomes part of file paths; use letters, digits, '_', "
                                  f"'-' and '.' only, not starting with '.' (e.g. {fixed})")
            taken = RESERVED_NAMES.get(where, {}).get(name)
            if taken:
                raise ConfigError(f"{where}.{name}: the name is taken by {taken}; rename it")


# Names whose folder would be a file or folder the workflow writes itself (results/<dataset>/coverage.tsv,
# results/benchmarks/): Snakemake stopped on a ChildIOException that named no config key.
_RESULTS_OF_A_DATASET = {"export": "results/<dataset>/export/ (exports:)",
                         "coverage.tsv": "results/<dataset>/coverage.tsv",
                         "coverage.html": "results/<dataset>/coverage.html"}
RESERVED_NAMES: dict[str, dict[str, str]] = {
    "datasets": {name: f"results/{name}" for name in ("benchmarks", "benchmarks.tsv", "benchmarks.html")},
    "experiments": _RESULTS_OF_A_DATASET, "selections": _RESULTS_OF_A_DATASET}


def normalize_modalities(config: dict) -> None:
    """Each dataset's `modalities` in the one order of ercpipe.labels.MODALITIES: the list is a set (the
    schema forbids repeats), so its written order must not change a rule's params and re-run the dataset."""
    for ds in (config.get("datasets") or {}).values():
        if isinstance(ds.get("modalities"), list):
            ds["modalities"] = [m for m in MODALITIES if m in ds["modalities"]]


def reader_config(name: str, cfg: dict, without: Collection[str] = ()) -> dict:
    """A dataset's settings as its reader takes them: root resolved, pipeline-only keys dropped, and the keys
    `without` (a job's params hold only what its output depends on: a shard's manifest job is given
    ercpipe.datasets.NOT_SHARD_KEYS, the join FACE_KEYS, so changing them re-runs neither)."""
    from ercpipe.datasets.build import READER_CANONICAL, READER_DEFAULTS

    drop = {"shards", "synthetic"} | set(without)
    # Defaults filled in, so that writing one out (probe_media: true on MELD, every modality, IEMOCAP's six classes)
    # re-runs nothing.
    full = {**READER_DEFAULTS.get(cfg.get("format"), {}), **cfg}
    full = READER_CANONICAL.get(cfg.get("format"), dict)(full)
    if "face_selection" in full and full["face_selection"] == face_selection(
            {k: v for k, v in cfg.items() if k != "face_selection"}):
        del full["face_selection"]  # the format's own default written out
    full["modalities"] = [m for m in MODALITIES if m in (cfg.get("modalities") or MODALITIES)]
    out = {k: v for k, v in full.items() if k not in drop}
    root = dataset_root(name, cfg)
    if root is not None:
        out["root"] = str(one_spelling(root))
    return out


def one_spelling(path: str | os.PathLike) -> Path:
    """A path the config names, spelled one way: normalized, and an absolute path inside the working directory as
    the relative one. The params and manifests hold such paths (a root's media paths, a pickle input), so
    root: /abs/project/raw/x, ./raw/x and raw/x must give the same rows and jobs (and re-run nothing). The working
    directory may be spelled through a link too (`$PWD` on a cluster whose /home links to /gpfs/home: the system
    gives the link's target as the working directory): a leading part of the path that is the working directory
    counts as it."""
    path = Path(os.path.normpath(path))
    if not path.is_absolute():
        return path
    cwd = Path.cwd()
    if path.is_relative_to(cwd):
        return path.relative_to(cwd)
    for parent in path.parents:
        try:
            if os.path.samefile(parent, cwd):
                return path.relative_to(parent)
        except OSError:  # not there (a root that does not exist yet is reported elsewhere)
            continue
    return path


def dataset_root(name: str, cfg: dict) -> Path | None:
    """Raw folder of a dataset: raw/synthetic/{name} for generated corpora, else the configured root.

    None for a csv dataset without `root`: its reader then reads relative media paths from the
    manifest's folder (ercpipe.datasets.csv_manifest), so it has no raw folder of its own.
    """
    if cfg.get("synthetic"):
        return SYNTHETIC_ROOT / name
    if cfg.get("root") is None and (cfg.get("format") == "csv" or is_pickle_dataset(cfg)):
        return None
    return Path(cfg["root"])


def dataset_classes(cfg: dict, workdir: Path = Path(".")) -> list[str]:
    """Class names in label-id order. A pickle dataset: `classes`, else those of `labels`, else of the labels
    the pickle's layout and speakers tell (read once while the DAG is built; check() has checked it)."""
    if cfg["format"] == "csv" or (cfg.get("classes") and (is_pickle_dataset(cfg) or cfg["format"] == "iemocap")):
        return list(cfg["classes"])
    if is_pickle_dataset(cfg):
        if cfg.get("labels"):
            return list(CLASSES_BY_FORMAT[cfg["labels"]])
        from ercpipe.features.pickles import inspect_dataset

        return list(inspect_dataset("", cfg, workdir)["classes"])
    return list(CLASSES_BY_FORMAT[cfg["format"]])


def expand_searches(config: dict, workdir: Path = Path("."), schema_path: str | Path | None = None) -> None:
    """Turn every selection's `search:` block into text settings, experiments and candidates (ercpipe.search),
    before check(): the experiments a search makes are then checked like written ones. With `schema_path`, the
    experiments it made are validated against the schema too, a problem named by the search key the user wrote
    (Snakemake's own validation would print the schema and the generated name)."""
    datasets = config.get("datasets", {})
    try:
        generated_from = search.expand_searches(config, lambda name: dataset_classes(datasets[name], workdir))
    except search.SearchError as err:
        raise ConfigError(str(err)) from None
    # A generated text setting is checked now, so that a problem names the search key the user wrote
    # (selections.S.search.text.pooling), not the generated name the user never wrote.
    for name, origin in generated_from.items():
        setting = (config.get("features", {}).get("text") or {}).get(name)
        if setting is None:
            continue
        try:
            check_extractor_settings({"features": {"text": {name: setting}}})
        except ConfigError as err:
            raise ConfigError(_search_key(str(err), f"features.text.{name}", origin)) from None
        folder = _local_text_model(setting.get("model"), workdir)
        for problem in _text_model_problems(f"features.text.{name}", setting, folder) if folder else []:
            raise ConfigError(_search_key(problem, f"features.text.{name}", origin))  # once, not per candidate
    if schema_path is not None and any(sel.get("search") for sel in (config.get("selections") or {}).values()):
        try:
            validate_schema(config, schema_path)
        except ConfigError as err:
            head, _, problems = str(err).partition("\n")
            # One line per problem, not one per candidate the search made.
            lines = dict.fromkeys(re.sub(r" \(in [^ ]+, one of the experiments this search makes\)$",
                                         " (in every experiment this search makes)",
                                         _searched_experiment_key(line.strip(), config))
                                  for line in problems.splitlines())
            raise ConfigError("\n".join([head] + [f"  {line}" for line in lines])) from None


def _search_key(message: str, generated: str, origin: dict) -> str:
    """`message` about features.text.<generated>[.key...] rewritten to the search key it came from."""
    rest = message[len(generated):] if message.startswith(generated) else ""
    path, sep, text = rest.partition(": ")
    keys = path.lstrip(".").split(".") if path.startswith(".") else []
    if keys[:1] == ["context"] and len(keys) > 1 and keys[1] in origin["context_keys"]:
        return f"{origin['context']}.{'.'.join(keys[1:])}: {text}"
    if keys:
        return f"{origin['text']}.{'.'.join(keys)}: {text}"
    return f"{origin['text']}{rest}" if rest else message


def face_selection(cfg: dict) -> dict:
    """How the visual extractor picks the speaker's face in this dataset's video."""
    if "face_selection" in cfg:
        return dict(cfg["face_selection"])
    if cfg["format"] == "iemocap":
        return {"mode": "side", "sides": dict(cfg.get("sides", {"F": "left", "M": "right"}))}
    return {"mode": "largest_central"}


# The anchor file's name, anchors/{set}/{clip_name}.h5 (common.smk): the one name ercpipe.anchors records too.
clip_name = clip_setting.clip_name


def check_drawable_anchors(config: dict, drawable) -> None:
    """ConfigError if a `synthetic:` anchor set must cover a class that has no drawn face.

    `drawable`: the canonical emotions ercpipe.synthetic.faces can draw (passed in, so this module stays
    free of OpenCV). The message names the three ways to give such a class its anchor images.
    """
    for name, an in config.get("anchors", {}).items():
        if not an.get("synthetic"):
            continue
        missing = [c for c in anchor_classes(config, name) if c not in drawable]
        if missing:
            raise ConfigError(
                f"anchors.{name}.synthetic: no drawn face exists for class(es) {missing}; drawn faces exist for "
                f"{sorted(drawable)}. Give this anchor set its images instead: {anchor_choices()}")


def anchor_choices(mine: bool = True) -> str:
    """The kinds of anchor set a user can give, for messages that ask for one."""
    kinds = ["images: a folder with one sub-folder of face images per class (folder names may be any spelling "
             "ercpipe.labels knows, e.g. joy / happy / hap; other names must equal the class)"]
    if mine:
        kinds.append("mine: {dataset: <a dataset with video>, visual: <visual setting>} to take faces from its "
                     "training split")
    kinds.append("official: a 35_anchor.pt (the released file holds IEMOCAP's and MELD's classes only; "
                 "`ercpipe export-anchors` writes one for other classes from an encoded set)")
    return ", ".join(kinds[:-1]) + f" or {kinds[-1]} (docs/anchors.md)"


def _check_one_anchor_per_class(where: str, name: str, dataset: dict, workdir: Path) -> None:
    """Anchor sets hold one image folder per emotion and match a dataset's classes to them through
    canonical_emotion: two classes spelling one emotion ('joy' and 'happy') would get the same anchors, and the
    VEGA branch could not tell them apart."""
    by_emotion: dict[str, list[str]] = {}
    for label in dataset_classes(dataset, workdir):
        by_emotion.setdefault(canonical_emotion(label), []).append(label)
    shared = {emotion: labels for emotion, labels in by_emotion.items() if len(labels) > 1}
    if shared:
        pairs = "; ".join(f"{' and '.join(map(repr, labels))} are both {emotion!r}" for emotion, labels in shared.items())
        merge = f"datasets.{name}.relabel" if dataset.get("format") == "iemocap" else "the labels of your data"
        raise ConfigError(f"{where}: dataset {name}'s classes would share anchors ({pairs}, as ercpipe.labels reads "
                          "emotion names), so the VEGA branch could not tell them apart; merge those classes "
                          f"({merge}), or train SDT without anchors")


def _check_mined_from_own_dataset(where: str, set_name: str, anchor_set: dict, dataset: str) -> None:
    """Mined anchors are faces of one dataset's training split: on another dataset (another split of the same
    recordings, e.g. a leave-one-session-out fold) they can be its test utterances' faces, filed under their
    test labels."""
    mined_from = (anchor_set.get("mine") or {}).get("dataset")
    if mined_from is not None and mined_from != dataset:
        raise ConfigError(f"{where}: anchor set {set_name} is mined from dataset {mined_from}'s training faces, and "
                          f"this trains on {dataset}: where the two share recordings, the anchors can hold {dataset}'s "
                          f"test faces under their labels. Mine a set from {dataset} (anchors.<name>.mine.dataset: "
                          f"{dataset}), or give an images: folder")


def anchor_classes(config: dict, set_name: str) -> list[str]:
    """Canonical class names an anchor set must cover: every class of every dataset that uses it (experiments,
    exports, mining); an official: set's file holds them in this order (its `classes`, else its dataset's)."""
    names: list[str] = list(config["anchors"][set_name].get("classes") or [])
    # The datasets of the experiments using it, in name order: the same config in another key order, or with
    # another experiment on a dataset already there, gives the same list (it is the set's params: a new order
    # re-encoded the set and re-trained every experiment using it, for the same anchors).
    for dataset in sorted({exp["dataset"] for exp in config.get("experiments", {}).values()
                           if exp.get("anchors") == set_name}):
        for label in dataset_classes(config["datasets"][dataset]):
            if canonical_emotion(label) not in names:
                names.append(canonical_emotion(label))
    for export in sorted(config.get("exports", {})):
        source = export_source(config, export)
        if source["anchors"] == set_name:  # a row for every label id of the exported pickle
            for label in vega_label_order(dataset_classes(config["datasets"][source["dataset"]])):
                if canonical_emotion(label) not in names:
                    names.append(canonical_emotion(label))
    mine = config["anchors"][set_name].get("mine")
    if mine:
        for label in dataset_classes(config["datasets"][mine["dataset"]]):
            if canonical_emotion(label) not in names:
                names.append(canonical_emotion(label))
    return [canonical_emotion(n) for n in names]


# --------------------------------------------------------------------------------------------------
# Paths the config names: checked at parse time, so a wrong path stops `snakemake` (also -n) before any job.

# A Hugging Face hub id: `name` or `org/name`, each part letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_EXPLICIT_PATH_PREFIXES = ("/", "./", "../", "~")


def text_model_is_path(model: str) -> bool:
    """True when a text setting's `model` can only be a local directory, so the config check requires it.

    "packaged:..." names a packaged model. A value that starts with "/", "./", "../" or "~", or holds a
    backslash, is a path. Otherwise a value shaped like a hub id (`roberta-large`, `org/name`) is taken
    as a hub id and not checked here (it may be a local folder of that name, which transformers prefers;
    the extraction job says whether it is in the Hugging Face cache), and anything else (`a/b/c`, a
    trailing '/', spaces) is a path.
    """
    if model.startswith("packaged:"):
        return False
    if model.startswith(_EXPLICIT_PATH_PREFIXES) or "\\" in model:
        return True
    return not _HUB_ID.match(model)


def clip_pretrained_is_path(pretrained: str | None) -> bool:
    """True when a CLIP `pretrained` names a checkpoint file rather than an open_clip tag (as ercpipe.anchors.clip)."""
    if not pretrained:
        return False
    return ("/" in pretrained or "\\" in pretrained or pretrained.startswith("~")
            or pretrained.lower().endswith(clip_setting.CHECKPOINT_SUFFIXES))


def _path_problem(where: str, value: str, kind: str, workdir: Path, fix: str) -> str | None:
    """None if `value` (relative to workdir) is an existing `kind` ("file" | "folder"), else the message line."""
    path = Path(value)
    resolved = path if path.is_absolute() else workdir / path
    if resolved.is_dir() if kind == "folder" else resolved.is_file():
        return None
    if value.startswith("~"):
        return (f"{where}: {value} starts with '~', which is not expanded to your home folder; "
                f"write the full path ({fix})")
    if resolved.exists():
        found = "folder" if resolved.is_dir() else "file"
        return f"{where}: {value} is a {found}, not a {kind}; {fix}"
    relative = "" if path.is_absolute() else f" (relative paths start from the working directory {workdir})"
    link = next((p for p in (resolved, *resolved.parents) if p.is_symlink() and not p.exists()), None)
    if link is not None:  # storage that is not mounted now (a cluster's scratch or a lab share): the link is fine
        return (f"{where}: {value} does not exist: {link} is a link to {os.readlink(link)}, which does not exist "
                "(storage not mounted?). Mount it again, or fix the link; every snakemake command with this config "
                "stops here, so run --unlock with a config that does not declare it (e.g. --configfile config.yaml)")
    for form in ("NFC", "NFD"):
        # A folder copied from macOS spells "ü" as "u" + a combining mark (NFD): it prints as the name typed.
        other = Path(unicodedata.normalize(form, str(resolved)))
        if other != resolved and (other.is_dir() if kind == "folder" else other.is_file()):
            return (f"{where}: {kind} {value} does not exist as typed, but one whose name looks the same does: "
                    f"{ascii(str(other))}, its accented letters encoded as {form} (macOS writes names decomposed, "
                    f"NFD); rename it (`mv`), or paste its name from `ls` into the config")
    return f"{where}: {kind} {value} does not exist{relative}; {fix}"


def _text_model_problems(where: str, settings: dict, folder: Path) -> list[str]:
    """A local text model's depth and input length against its setting's last_layers and max_length, read from
    its config.json and tokenizer_config.json (the extraction job checked them only after the manifest and the
    other extractors had run, once per shard)."""
    try:
        resolved = text_settings(settings)
        model_config = json.loads((folder / "config.json").read_text())
    except (ErcpipeError, ValueError, TypeError, OSError):  # the settings' own check names a bad value
        return []
    try:
        tokenizer_max = json.loads((folder / "tokenizer_config.json").read_text()).get("model_max_length")
    except (ValueError, AttributeError, OSError):
        tokenizer_max = None
    if not isinstance(model_config, dict):
        return []
    return [f"{where}.{key}: {problem}" for key, problem in text_model_problems(resolved, model_config, tokenizer_max)]


def _sentence_transformers_module(folder: Path) -> str:
    """The sub-folder holding the transformer of a sentence-transformers folder (modules.json's Transformer entry,
    e.g. 0_Transformer), or ""."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (ValueError, OSError):
        return ""
    return next((str(m.get("path")) for m in modules if isinstance(m, dict) and m.get("path")
                 and str(m.get("type", "")).endswith("Transformer") and (folder / m["path"] / "config.json").is_file()),
                "") if isinstance(modules, list) else ""


def _local_text_model(model, workdir: Path) -> Path | None:
    """The folder of a text model on this machine (a saved model's path, or the packaged MiniLM), or None for a
    hub name or a path that holds no saved model (path_problems names that)."""
    if model == PACKAGED_MINILM:
        return text_model_dir(PACKAGED_MINILM)
    if isinstance(model, str) and text_model_is_path(model):
        folder = Path(model) if Path(model).is_absolute() else workdir / model
        return folder if (folder / "config.json").is_file() else None
    return None


def path_problems(config: dict, workdir: Path = Path(".")) -> list[str]:
    """One line per file or folder the config names that is not there: dotted key, path, fix.

    Checked: datasets.*.root (not for synthetic: true), .manifest (csv), .split_file, .path (vega_pickle,
    sdt_pickle); features.text.*.model when it is a path (text_model_is_path); features.visual.*.weights
    unless null or "random"; anchors.*.images, anchors.*.official; anchors.*.clip.pretrained when it is a
    checkpoint path. Every setting is checked,
    also one no experiment uses. Relative paths start from `workdir` (Snakemake's working directory).
    """
    problems: list[str | None] = []
    for name, ds in config.get("datasets", {}).items():
        where, fmt = f"datasets.{name}", ds.get("format")
        if is_pickle_dataset(ds):
            if ds.get("path") is not None:
                problems.append(_path_problem(f"{where}.path", ds["path"], "file", workdir,
                                              f"point it at the {fmt} file (docs/features-text.md, 'Pickle "
                                              "datasets in the pipeline')"))
        elif ds.get("synthetic"):
            pass  # its root is an output of the synthetic_corpus rule
        elif fmt == "csv" and ds.get("root") is not None:
            problems.append(_path_problem(
                f"{where}.root", ds["root"], "folder", workdir,
                "point it at the folder the manifest's relative media paths start from, or leave root out "
                "(they then start from the manifest's folder; docs/manifest.md)"))
        elif fmt != "csv" and ds.get("root") is not None:
            problems.append(_path_problem(
                f"{where}.root", ds["root"], "folder", workdir,
                f"point it at the raw {str(fmt).upper()} release folder (README, 'Your data'; docs/manifest.md)"))
        if fmt == "csv" and ds.get("manifest") is not None:
            problems.append(_path_problem(f"{where}.manifest", ds["manifest"], "file", workdir,
                                          "point it at your manifest CSV (format: docs/manifest.md)"))
        if ds.get("split_file") is not None:
            problems.append(_path_problem(
                f"{where}.split_file", ds["split_file"], "file", workdir,
                "point it at a JSON file with train, valid and test dialogue lists, or leave it out for the "
                "standard split"))
    features = config.get("features", {})
    for name, settings in features.get("text", {}).items():
        model = settings.get("model")
        if isinstance(model, str) and text_model_is_path(model):
            where = f"features.text.{name}.model"
            fix = ("point it at a local model directory (saved with save_pretrained, holding config.json), "
                   "or give a Hugging Face name such as roberta-large or org/name (docs/features-text.md)")
            problem = _path_problem(where, model, "folder", workdir, fix)
            if problem is None and _local_text_model(model, workdir) is None:
                inner = _sentence_transformers_module(Path(workdir) / model)
                problem = (f"{where}: folder {model} holds no config.json, so it is not a saved model; " + (
                    f"it is a sentence-transformers folder whose transformer is in {inner}/: give "
                    f"{model.rstrip('/')}/{inner} (with normalize: true if its modules.json lists a Normalize step)"
                    if inner else fix))
            problems.append(problem)
        folder = _local_text_model(model, workdir)
        if folder is not None:  # a hub name's limits are checked by the extraction job, which loads it
            problems += _text_model_problems(f"features.text.{name}", settings, folder)
    for name, settings in features.get("visual", {}).items():
        weights = settings.get("weights")
        if isinstance(weights, str) and weights != "random":
            backbone = settings.get("backbone", "the backbone")
            problems.append(_path_problem(
                f"features.visual.{name}.weights", weights, "file", workdir,
                f"set it to a {backbone} checkpoint file, \"random\" (random init: demo and tests only) or null "
                "(densenet121: the ImageNet weights in the torch hub cache; docs/features.md)"))
    for name, an in config.get("anchors", {}).items():
        if an.get("official") and own_export(config, an["official"], "35_anchor.pt") is None:  # else made here
            problems.append(_path_problem(f"anchors.{name}.official", an["official"], "file", workdir,
                                          "point it at the official 35_anchor.pt (docs/anchors.md)"))
        if an.get("images"):
            problems.append(_path_problem(
                f"anchors.{name}.images", an["images"], "folder", workdir,
                "point it at a folder with one sub-folder of images per class (docs/anchors.md), or use "
                "synthetic: or mine: instead"))
        pretrained = (an.get("clip") or {}).get("pretrained")
        if isinstance(pretrained, str) and clip_pretrained_is_path(pretrained):
            problems.append(_path_problem(
                f"anchors.{name}.clip.pretrained", pretrained, "file", workdir,
                "set it to a local open_clip checkpoint file, an open_clip tag such as openai, or null "
                "(random init; docs/anchors.md)"))
    return [p for p in problems if p]


def _check_face_selection(where: str, ds: dict) -> None:
    """The visual extractor's face rule, checked now rather than inside the visual job after the manifest ran."""
    from ercpipe.features.settings import face_selection_settings

    if "face_selection" in ds and "sides" in ds:
        raise ConfigError(f"{where}.sides: face_selection is given too, and it decides alone (sides would be ignored); "
                          f"write the sides inside it: face_selection: {{mode: side, sides: {ds['sides']}}}")
    try:
        rule = face_selection_settings(face_selection(ds))
    except ValueError as err:
        raise ConfigError(f"{where}.face_selection: {err}") from None
    key = f"{where}.face_selection" if "face_selection" in ds else f"{where}.sides"
    if rule["mode"] != "side":
        return
    if ds.get("format") == "meld":
        raise ConfigError(f"{key}: MELD's speakers are characters' names, not a side of the frame; use "
                          "{mode: largest_central} (the default)")
    if "marked_actor" in rule and ds.get("format") != "iemocap":
        raise ConfigError(f"{key}.marked_actor: reads the actor with markers from IEMOCAP's dialogue ids; for "
                          f"format {ds.get('format')} give sides: {{speaker letter: left|right}}")
    sides = rule.get("sides") or {}
    if ds.get("format") == "iemocap" and sides and set(sides) != {"F", "M"}:
        raise ConfigError(f"{key}: IEMOCAP's speakers end in F or M; give a side for both (e.g. {{F: left, M: "
                          f"right}}), got {sides}")
    if len(sides) == 2 and len(set(sides.values())) == 1:
        raise ConfigError(f"{key}: both speakers sit on the {next(iter(sides.values()))} half, so both would get "
                          f"the same face; give them different sides, got {sides}")


def _check_reader_keys(where: str, ds: dict) -> None:
    """A key of another format's reader (`classes` on MELD, `probe_media` on IEMOCAP), or a value the reader cannot
    use (an IEMOCAP `relabel` target that is not a class), named before any job: the reader refuses them too, but
    only once it runs."""
    from ercpipe.datasets import PIPELINE_KEYS
    from ercpipe.datasets.build import READER_DEFAULTS, READER_SETTINGS_CHECKS

    known = set(READER_DEFAULTS.get(ds["format"], {})) | PIPELINE_KEYS
    unknown = sorted(set(ds) - known)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a setting of format {ds['format']} (its settings: "
                          f"{', '.join(sorted(known))})")
    check = READER_SETTINGS_CHECKS.get(ds["format"])
    if check is not None:
        try:  # paths are path_problems' (relative to the working directory, every missing one at once)
            check({k: v for k, v in ds.items() if k not in ("root", "split_file", "manifest")})
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None


def check(config: dict, workdir: Path = Path(".")) -> None:
    """Raise ConfigError for every reference that points nowhere (after schema validation).

    Every missing path is reported at once (path_problems); the other checks stop at the first problem.
    A feature pickle dataset (vega_pickle, sdt_pickle) must say allow_pickle: true before its file is
    opened; then the file is unpickled and checked as the import rule will (ercpipe.features.pickles.
    inspect_dataset), so a file of the wrong shape stops the run before any job, named with its key.
    A problem of an experiment that a selection's search made is named by the search key it came from.
    """
    try:
        _check(config, workdir)
    except ConfigError as err:
        raise ConfigError(_searched_experiment_key(str(err), config)) from None


def _searched_experiment_key(message: str, config: dict) -> str:
    """`message` about experiments.<a generated candidate>[...] rewritten to the search that made it."""
    for name, selection in config.get("selections", {}).items():
        if not selection.get("search"):
            continue
        for candidate in selection.get("candidates", []):
            match = re.match(rf"experiments\.{re.escape(candidate)}(?=[.: ])", message)
            if match:
                return (f"selections.{name}.search.experiment{message[match.end():]} (in {candidate}, one of the "
                        "experiments this search makes)")
    return message


def check_datasets_and_anchor_sets(config: dict, missing: list[str] | None = None) -> None:
    """The datasets' and anchor sets' keys, checked without opening a file (so `ercpipe check-config` runs them
    too): another format's keys, a missing root, manifest or classes, the synthetic corpus's settings, an anchor
    set's source and CLIP setting. With a `missing` list (one file of several that Snakemake may merge), a required
    key that is not there is added to it rather than refused: another file may give it."""

    def required(problem: str) -> None:
        if missing is None:
            raise ConfigError(problem)
        missing.append(problem)

    datasets = config.get("datasets", {})
    for name, ds in datasets.items():
        where = f"datasets.{name}"
        if is_pickle_dataset(ds):
            _check_pickle_keys(name, ds, missing)
            _check_not_an_own_export(config, name, ds)
            continue
        wrong = [k for k in PICKLE_ONLY_KEYS if k in ds and not (k == "valid_split" and ds["format"] == "csv")]
        if wrong == ["valid_split"]:
            raise ConfigError(f"{where}.valid_split: format {ds['format']} has its own validation split; valid_split "
                              f"is for datasets that may lack one ({', '.join(PICKLE_FORMATS)}, csv)")
        if wrong:
            raise ConfigError(f"{where}.{wrong[0]}: only for format {' or '.join(PICKLE_FORMATS)} (an imported "
                              f"feature pickle); format {ds['format']} reads a raw dataset")
        _check_face_selection(where, ds)
        _check_reader_keys(where, ds)
        if ds.get("synthetic"):
            if ds["format"] not in ("iemocap", "meld"):
                raise ConfigError(f"{where}.synthetic: only iemocap and meld corpora can be generated")
            if "root" in ds:  # a copy of the demo's config given a real root trained on the generated corpus
                raise ConfigError(f"{where}: synthetic: true generates a corpus under raw/synthetic/, so root "
                                  f"{ds['root']!r} is not read; remove synthetic: true to use the raw data there")
            from ercpipe.synthetic.settings import resolve_settings

            try:  # what the synthetic_corpus job will do with them, now rather than when it runs
                resolve_settings(ds["format"], (config.get("synthetic") or {}).get(ds["format"]))
            except ValueError as err:
                raise ConfigError(str(err)) from None
        elif "root" not in ds and ds["format"] != "csv":
            required(f"{where}.root: give the raw dataset folder (or set synthetic: true)")
        if ds["format"] == "csv":
            for key in ("manifest", "classes"):
                if key not in ds:
                    required(f"{where}.{key}: required for format csv (see docs/manifest.md)")
            if isinstance(ds.get("valid_split"), dict) and "standard" in ds["valid_split"]:
                raise ConfigError(f"{where}.valid_split.standard: only an IEMOCAP feature pickle has standard "
                                  "validation dialogues; a CSV holds out {fraction: 0.1, seed: 0} or {dialogues: [ids]}")
    anchors = config.get("anchors", {})
    for name, an in anchors.items():
        where = f"anchors.{name}"
        sources = [k for k in ("images", "synthetic", "mine", "official") if an.get(k)]
        if len(sources) > 1:
            raise ConfigError(f"{where}: give exactly one of images (a folder), synthetic, mine, official (a "
                              f"35_anchor.pt file); got {sources}")
        if not sources:
            required(f"{where}: give exactly one of images (a folder), synthetic, mine, official (a 35_anchor.pt "
                     "file); got none")
        if "allow_pickle" in an and not an.get("official"):
            raise ConfigError(f"{where}.allow_pickle: only for official: anchor files")
        try:  # as the anchor job reads it (a "null" in quotes, an empty model name)
            clip_setting.clip_settings({k: v for k, v in (an.get("clip") or {}).items()
                                        if k not in clip_setting.ENCODING_KEYS})
        except ValueError as err:
            raise ConfigError(f"{where}.clip: {err}") from None


def own_export(config: dict, path: str, file_name: str) -> str | None:
    """The `exports:` entry of this config that writes `path` (its features.pkl or 35_anchor.pt), or None."""
    for export in config.get("exports") or {}:
        try:
            if one_spelling(path) == one_spelling(Path(export_name_dir(config, export)) / file_name):
                return export
        except KeyError:  # an export naming an unknown experiment: _check_exports says so
            continue
    return None


def _check_not_an_own_export(config: dict, name: str, ds: dict) -> None:
    """A pickle dataset reading what an `exports:` entry of the same config writes: its import ran on the file as it
    was before the run (its content is the import's params, taken when the jobs are planned), so after a changed
    setting it lagged one run behind, and a project without the file could not start at all. (An official: anchor
    set may read the export's 35_anchor.pt: its import is an ordinary input, made after the export.)"""
    export = own_export(config, ds["path"], "features.pkl") if ds.get("path") else None
    if export is not None:
        raise ConfigError(f"datasets.{name}.path: {ds['path']} is written by exports.{export} of this same "
                          "config, and a dataset cannot import its own run's export (it would lag one run "
                          "behind it); import it with a config of its own, or from a copy of the file")


def _check(config: dict, workdir: Path) -> None:
    check_names(config)
    check_extractor_settings(config)
    check_datasets_and_anchor_sets(config)
    datasets = config.get("datasets", {})
    anchors = config.get("anchors", {})
    problems = path_problems(config, workdir)
    if problems:
        raise ConfigError("\n".join(problems))
    inspected = {name: _inspect_pickle(name, ds, workdir) for name, ds in datasets.items() if is_pickle_dataset(ds)}
    for name, an in anchors.items():
        where = f"anchors.{name}"
        mine = an.get("mine")
        if mine:
            if mine["dataset"] not in datasets:
                raise ConfigError(f"{where}.mine.dataset: unknown dataset {mine['dataset']!r}")
            if "visual" not in datasets[mine["dataset"]].get("modalities", ["visual"]):
                raise ConfigError(f"{where}.mine.dataset: {mine['dataset']} declares no visual modality "
                                  f"(datasets.{mine['dataset']}.modalities), so it has no faces to mine; give the "
                                  f"anchor set {anchor_choices(mine=False)} instead")
            if is_pickle_dataset(datasets[mine["dataset"]]):
                raise ConfigError(f"{where}.mine.dataset: {mine['dataset']} is a feature pickle, which has no video "
                                  f"to take face images from; mine from a raw dataset, or give the anchor set "
                                  f"{anchor_choices(mine=False)}")
            if mine["visual"] not in config.get("features", {}).get("visual", {}):
                raise ConfigError(f"{where}.mine.visual: unknown visual feature setting {mine['visual']!r}")
            try:
                mining_settings({k: v for k, v in mine.items() if k not in ("dataset", "visual")})
            except ValueError as err:
                raise ConfigError(f"{where}.mine: {err}") from None
    from ercpipe.train.presets import resolve_experiment  # here: presets imports this module; light, no torch

    for name, exp in config.get("experiments", {}).items():
        where = f"experiments.{name}"
        if exp["dataset"] not in datasets:
            raise ConfigError(f"{where}.dataset: unknown dataset {exp['dataset']!r}; known: {sorted(datasets)}")
        if not exp["features"]:
            raise ConfigError(f"{where}.features: choose at least one modality")
        _check_feature_settings(config, where, exp["dataset"], exp["features"], inspected)
        if exp.get("anchors") is not None and exp["anchors"] not in anchors:
            raise ConfigError(f"{where}.anchors: unknown anchor set {exp['anchors']!r}; known: {sorted(anchors)}")
        if len(set(exp["seeds"])) != len(exp["seeds"]):
            raise ConfigError(f"{where}.seeds: seeds must be distinct")
        fractional = [s for s in exp["seeds"] if not isinstance(s, int)]  # JSON Schema's integer takes 1.0
        if fractional:
            raise ConfigError(f"{where}.seeds: {fractional[0]!r} is not a whole number; write seeds as 0, 1, ... "
                              "(not 1.0): each names a run's folder, seed{n}")
        try:
            resolved = resolve_experiment(exp)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        _check_class_weights(where, resolved["loss"]["class_weights"], datasets[exp["dataset"]], workdir)
        info = inspected.get(exp["dataset"])
        if info is not None and not info["dialogues"]["valid"] and not resolved["train"]["paper_compat"]:
            raise ConfigError(f"{where}: dataset {exp['dataset']} has no validation dialogues (datasets."
                              f"{exp['dataset']}.valid_split: none), so no epoch can be selected; give it a "
                              "valid_split ({fraction: 0.1, seed: 0}) or set train.paper_compat: true to select on "
                              "test as the official code does")
        vega = resolved["loss"]["clip_loss"]
        if vega and exp.get("anchors") is None:
            raise ConfigError(f"{where}.anchors: null, but preset {resolved['preset']!r} trains the VEGA branch "
                              "(loss.clip_loss: true), which needs anchors: name an anchor set (anchors: {<name>: "
                              f"...}} with {anchor_choices()}), or train SDT with loss: {{clip_loss: false}} or a "
                              "preset without VEGA (sdt, sdt-vega-backbone)")
        if not vega and exp.get("anchors") is not None:
            raise ConfigError(f"{where}.anchors: {exp['anchors']!r} is never used because loss.clip_loss is false; "
                              "set anchors: null, or turn the VEGA branch on")
        if exp.get("anchors") is not None:
            _check_one_anchor_per_class(f"{where}.anchors", exp["dataset"], datasets[exp["dataset"]], workdir)
            _check_mined_from_own_dataset(f"{where}.anchors", exp["anchors"], anchors[exp["anchors"]], exp["dataset"])
    experiments = config.get("experiments", {})
    for name, sel in config.get("selections", {}).items():
        where = f"selections.{name}"
        if name in experiments:
            raise ConfigError(f"{where}: an experiment has the same name; both would write results/<dataset>/{name}/, "
                              "so rename one")
        unknown = [c for c in sel["candidates"] if c not in experiments]
        nested = [c for c in unknown if c in config.get("selections", {})]
        if nested:
            raise ConfigError(f"{where}.candidates: {nested} name selections; a selection's candidates are "
                              "experiments (list the experiments those selections choose among)")
        if unknown:
            raise ConfigError(f"{where}.candidates: unknown experiment(s) {unknown}; known: {sorted(experiments)}")
        if len(set(sel["candidates"])) != len(sel["candidates"]):
            raise ConfigError(f"{where}.candidates: candidates must be distinct")
        on = {experiments[c]["dataset"] for c in sel["candidates"]}
        if len(on) != 1:
            raise ConfigError(f"{where}.candidates: the candidates train on different datasets {sorted(on)}; "
                              "a dev score only compares models on the same dev split")
        compat = [c for c in sel["candidates"] if resolve_experiment(experiments[c])["train"]["paper_compat"]]
        if compat and sel.get("search"):
            raise ConfigError(f"{where}.search.experiment.train.paper_compat: true makes every candidate choose its "
                              "epochs on the test split; a selection on dev among them would still report a "
                              "test-tuned number: set it to false")
        if compat:  # the selection job refuses them too, but only after they have trained
            raise ConfigError(f"{where}.candidates: {compat} set train.paper_compat: true, so they choose their "
                              "epochs on the test split; a selection on dev among them would still report a "
                              "test-tuned number: leave them out, or set paper_compat: false")
        if sel.get("ensemble") is not None:
            if sel["ensemble"] != "all" and sel["ensemble"] > len(sel["candidates"]):
                raise ConfigError(f"{where}.ensemble: {sel['ensemble']} members, but there are only "
                                  f"{len(sel['candidates'])} candidates")
            seeds = {json.dumps(sorted(experiments[c]["seeds"])) for c in sel["candidates"]}
            if len(seeds) != 1:
                raise ConfigError(f"{where}.ensemble: the candidates train different seeds {sorted(seeds)}; an "
                                  "ensemble averages its members seed by seed, so give them the same seeds")


    _check_exports(config, inspected, workdir)


def _check_class_weights(where: str, choice, dataset: dict, workdir: Path) -> None:
    """loss.class_weights the dataset's classes can take: 'paper' only for IEMOCAP's and MELD's class lists (in
    their label order), a list with one weight per class; checked here, before the features are made."""
    if choice != "paper" and not isinstance(choice, list):
        return
    classes = dataset_classes(dataset, workdir)
    if isinstance(choice, list) and len(choice) != len(classes):
        raise ConfigError(f"{where}.loss.class_weights: {len(choice)} weights for the dataset's {len(classes)} classes "
                          f"{classes}; give one per class, in this order")
    if choice == "paper" and official_class_list(classes) is None:
        raise ConfigError(f"{where}.loss.class_weights: 'paper' (the official code's hard-coded weights) exists only "
                          f"for IEMOCAP's and MELD's classes in their label order, not {classes}; use 'train' "
                          "(inverse frequency over the train split), 'none' or a list")


def _unknown_key(where: str, setting: dict, known: dict) -> None:
    unknown = sorted(set(setting) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; {hint}")


def check_extractor_settings(config: dict) -> None:
    """Resolve every extractor setting of features.{text,audio,visual} as its extractor will
    (ercpipe.features.settings.EXTRACTOR_SETTINGS): a ConfigError names the dotted key of an unknown key (with
    the closest known one), a missing required key, or a wrong value (with the settings module's message).
    Imported settings ({source: pickle}) are checked by the schema."""
    for modality, settings in config.get("features", {}).items():
        spec = EXTRACTOR_SETTINGS[modality]
        for name, setting in settings.items():
            where = f"features.{modality}.{name}"
            if is_imported_setting(setting):
                continue
            _unknown_key(where, setting, spec.defaults)
            for key, known in spec.nested.items():
                if isinstance(setting.get(key), dict):
                    _unknown_key(f"{where}.{key}", setting[key], known)
            missing = [key for key in spec.required if key not in setting]
            if missing:
                raise ConfigError(f"{where}.{missing[0]}: required (the {modality} extractor's settings: "
                                  "ercpipe.features.settings)")
            try:
                spec.resolve(setting)
            except SettingError as err:
                raise ConfigError(f"{where}.{err.key}: {err}") from None
            except ValueError as err:
                raise ConfigError(f"{where}: {err}") from None


def _check_pickle_keys(name: str, ds: dict, missing: list[str] | None = None) -> None:
    """As check_datasets_and_anchor_sets: with a `missing` list, a required key not there is added to it."""
    where = f"datasets.{name}"
    wrong = [k for k in RAW_ONLY_KEYS if k in ds]
    if wrong:
        raise ConfigError(f"{where}.{wrong[0]}: not a key of format {ds['format']} (an imported feature pickle has "
                          "no raw folder); its keys: path, allow_pickle, labels, classes, valid_split")
    if "path" not in ds:
        problem = (f"{where}.path: required for format {ds['format']}: the pickle file (docs/features-text.md, "
                   "'Pickle datasets in the pipeline')")
        if missing is None:
            raise ConfigError(problem)
        return missing.append(problem)
    if "allow_pickle" not in ds and missing is not None:  # one file of several: another may say it
        return missing.append(f"{where}.allow_pickle: required (true) for format {ds['format']}: unpickling runs "
                              "whatever code the file holds")
    if ds.get("allow_pickle") is not True:
        raise ConfigError(
            f"{where}.allow_pickle: {ds['format']} datasets are read by unpickling {ds['path']}, which can run "
            f"arbitrary code stored in the file; only if you trust where it comes from, set "
            f"datasets.{name}.allow_pickle: true")
    split = ds.get("valid_split")
    if isinstance(split, dict) and split.get("standard") and ds.get("labels") == "meld":
        raise ConfigError(f"{where}.valid_split.standard: MELD has no standard validation dialogues inside its "
                          "train list; use {fraction: 0.1, seed: 0}")


def _inspect_pickle(name: str, ds: dict, workdir: Path) -> dict:
    """The pickle's layout, labels, widths and split (ercpipe.features.pickles.inspect_dataset), or a ConfigError
    naming the key and the file: a pickle of the wrong shape stops the run before any job."""
    from ercpipe.features.pickles import inspect_dataset  # only for pickle datasets: numpy, pandas, h5py

    try:
        return inspect_dataset(name, ds, workdir)
    except (ValueError, OSError) as err:
        raise ConfigError(f"datasets.{name}.path: {err}") from None


def _check_feature_settings(config: dict, where: str, dataset: str, features: dict, inspected: dict) -> None:
    """Every feature setting exists; a pickle dataset uses imported settings ({source: pickle}) whose layout, if
    given, is the pickle's and whose modality the pickle holds; a raw dataset uses extractor settings."""
    datasets = config.get("datasets", {})
    pickle = is_pickle_dataset(datasets[dataset])
    for modality, setting in features.items():
        known = config.get("features", {}).get(modality, {})
        if setting not in known:
            raise ConfigError(f"{where}.features.{modality}: unknown setting {setting!r}; "
                              f"known {modality} settings: {sorted(known)}")
        imported = is_imported_setting(known[setting])
        if pickle and not imported:
            raise ConfigError(f"{where}.features.{modality}: {setting!r} is an extractor setting, but dataset "
                              f"{dataset} is a feature pickle ({datasets[dataset]['format']}), whose features are "
                              f"imported as they are: name a setting {{source: pickle}} (features.{modality})")
        if not pickle and imported:
            raise ConfigError(f"{where}.features.{modality}: {setting!r} is an imported setting (source: pickle), "
                              f"but dataset {dataset} is not a pickle dataset; its features are extracted")
        declared = datasets[dataset].get("modalities")
        if not pickle and declared is not None and modality not in declared:
            raise ConfigError(f"{where}.features.{modality}: dataset {dataset} declares modalities {list(declared)} "
                              f"(datasets.{dataset}.modalities), so it has no {modality} to extract; leave "
                              f"{modality} out of this experiment or add it to the dataset's modalities")
        if pickle:
            info = inspected[dataset]
            layout = known[setting].get("layout")
            if layout is not None and layout != info["layout"]:
                raise ConfigError(f"features.{modality}.{setting}.layout: {layout}, but datasets.{dataset}.path holds "
                                  f"the layout {info['layout']}; fix the layout or leave it out")
            if not info["dims"].get(modality):
                raise ConfigError(f"{where}.features.{modality}: the pickle of dataset {dataset} holds no "
                                  f"{modality} features (width 0); leave the modality out")


def _check_exports(config: dict, inspected: dict, workdir: Path) -> None:
    experiments, datasets = config.get("experiments", {}), config.get("datasets", {})
    for name, entry in config.get("exports", {}).items():
        where = f"exports.{name}"
        if bool(entry.get("experiment")) == bool(entry.get("dataset")):
            raise ConfigError(f"{where}: give either experiment (its dataset, features and anchors are exported) "
                              "or dataset with features")
        if entry.get("experiment"):
            if entry["experiment"] not in experiments:
                raise ConfigError(f"{where}.experiment: unknown experiment {entry['experiment']!r}; known: "
                                  f"{sorted(experiments)}")
            if "features" in entry:
                raise ConfigError(f"{where}.features: taken from the experiment; leave it out")
        else:
            if entry["dataset"] not in datasets:
                raise ConfigError(f"{where}.dataset: unknown dataset {entry['dataset']!r}; known: {sorted(datasets)}")
            if not entry.get("features"):
                raise ConfigError(f"{where}.features: name the text, audio and visual settings to export")
        source = export_source(config, name)
        missing = [m for m in MODALITIES if m not in source["features"]]
        if missing:
            raise ConfigError(f"{where}: VEGA's 7-tuple holds text, audio and visual features; "
                              f"{'the experiment' if entry.get('experiment') else 'features'} lacks {missing}")
        _check_feature_settings(config, where, source["dataset"], source["features"], inspected)
        if source["anchors"] is not None and source["anchors"] not in config.get("anchors", {}):
            raise ConfigError(f"{where}.anchors: unknown anchor set {source['anchors']!r}")
        if source["anchors"] is not None:  # the official code trains on them with this dataset
            _check_mined_from_own_dataset(f"{where}.anchors", source["anchors"], config["anchors"][source["anchors"]],
                                          source["dataset"])
        classes = dataset_classes(datasets[source["dataset"]], workdir)
        if not (set(classes) <= set(CLASSES_BY_FORMAT["iemocap"]) or set(classes) <= set(CLASSES_BY_FORMAT["meld"])):
            raise ConfigError(f"{where}: dataset {source['dataset']} has classes {classes}; VEGA's pickle stores "
                              "IEMOCAP or MELD class ids")

