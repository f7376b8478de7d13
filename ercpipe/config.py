"""Pipeline configuration: cross-reference checks and the names derived from config values.

The JSON schema (workflow/schemas/config.schema.yaml) checks keys and types; this module checks what a
schema cannot (an experiment naming a feature setting that does not exist, a raw folder that is not
there) and derives file names. It imports nothing heavy: the Snakefile calls it at parse time, also in
every cluster job.
"""
from __future__ import annotations

import re
from pathlib import Path

from ercpipe.labels import CLASSES_BY_FORMAT, canonical_emotion

MODALITIES: tuple[str, ...] = ("text", "audio", "visual")
SYNTHETIC_ROOT = Path("raw/synthetic")


class ConfigError(ValueError):
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
        problems.append(f"  {where}: {err.message}")
    if problems:
        raise ConfigError("config does not match workflow/schemas/config.schema.yaml:\n" + "\n".join(problems))


def dataset_root(name: str, cfg: dict) -> Path:
    """Raw folder of a dataset: raw/synthetic/{name} for generated corpora, else the configured root."""
    return SYNTHETIC_ROOT / name if cfg.get("synthetic") else Path(cfg["root"])


def dataset_classes(cfg: dict) -> list[str]:
    if cfg["format"] == "csv":
        return list(cfg["classes"])
    return list(CLASSES_BY_FORMAT[cfg["format"]])


def face_selection(cfg: dict) -> dict:
    """How the visual extractor picks the speaker's face in this dataset's video."""
    if "face_selection" in cfg:
        return dict(cfg["face_selection"])
    if cfg["format"] == "iemocap":
        return {"mode": "side", "sides": dict(cfg.get("sides", {"F": "left", "M": "right"}))}
    return {"mode": "largest_central"}


def clip_name(clip: dict) -> str:
    """File-system-safe name of a CLIP setting, e.g. ViT-B-32 or ViT-L-14-336_openai."""
    pretrained = clip.get("pretrained")
    tag = clip["model"] if not pretrained else f"{clip['model']}_{Path(str(pretrained)).stem}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tag)


def anchor_classes(config: dict, set_name: str) -> list[str]:
    """Canonical class names an anchor set must cover: every class of every dataset that uses it."""
    names: list[str] = list(config["anchors"][set_name].get("classes") or [])
    for exp in config.get("experiments", {}).values():
        if exp.get("anchors") == set_name:
            for label in dataset_classes(config["datasets"][exp["dataset"]]):
                if canonical_emotion(label) not in names:
                    names.append(canonical_emotion(label))
    mine = config["anchors"][set_name].get("mine")
    if mine:
        for label in dataset_classes(config["datasets"][mine["dataset"]]):
            if canonical_emotion(label) not in names:
                names.append(canonical_emotion(label))
    return [canonical_emotion(n) for n in names]


def check(config: dict, workdir: Path = Path(".")) -> None:
    """Raise ConfigError for every reference that points nowhere (after schema validation)."""
    datasets = config.get("datasets", {})
    for name, ds in datasets.items():
        where = f"datasets.{name}"
        if ds.get("synthetic"):
            if ds["format"] not in ("iemocap", "meld"):
                raise ConfigError(f"{where}.synthetic: only iemocap and meld corpora can be generated")
        elif "root" not in ds and ds["format"] != "csv":
            raise ConfigError(f"{where}.root: give the raw dataset folder (or set synthetic: true)")
        elif ds["format"] != "csv" and not (workdir / ds["root"]).is_dir():
            raise ConfigError(f"{where}.root: folder {ds['root']} does not exist; point it at the raw "
                              f"{ds['format'].upper()} release (see README, 'Real data')")
        if ds["format"] == "csv":
            for key in ("manifest", "classes"):
                if key not in ds:
                    raise ConfigError(f"{where}.{key}: required for format csv (see docs/manifest.md)")
            if not (workdir / ds["manifest"]).is_file():
                raise ConfigError(f"{where}.manifest: file {ds['manifest']} does not exist")
    anchors = config.get("anchors", {})
    for name, an in anchors.items():
        where = f"anchors.{name}"
        sources = [k for k in ("images", "synthetic", "mine") if an.get(k)]
        if len(sources) != 1:
            raise ConfigError(f"{where}: give exactly one of images (a folder), synthetic, mine; got {sources}")
        if an.get("images") and not (workdir / an["images"]).is_dir():
            raise ConfigError(f"{where}.images: folder {an['images']} does not exist")
        mine = an.get("mine")
        if mine:
            if mine["dataset"] not in datasets:
                raise ConfigError(f"{where}.mine.dataset: unknown dataset {mine['dataset']!r}")
            if mine["visual"] not in config.get("features", {}).get("visual", {}):
                raise ConfigError(f"{where}.mine.visual: unknown visual feature setting {mine['visual']!r}")
    from ercpipe.train.presets import resolve_experiment  # here: presets imports this module; light, no torch

    for name, exp in config.get("experiments", {}).items():
        where = f"experiments.{name}"
        if exp["dataset"] not in datasets:
            raise ConfigError(f"{where}.dataset: unknown dataset {exp['dataset']!r}; known: {sorted(datasets)}")
        if not exp["features"]:
            raise ConfigError(f"{where}.features: choose at least one modality")
        for modality, setting in exp["features"].items():
            known = config.get("features", {}).get(modality, {})
            if setting not in known:
                raise ConfigError(f"{where}.features.{modality}: unknown setting {setting!r}; "
                                  f"known {modality} settings: {sorted(known)}")
        if exp.get("anchors") is not None and exp["anchors"] not in anchors:
            raise ConfigError(f"{where}.anchors: unknown anchor set {exp['anchors']!r}; known: {sorted(anchors)}")
        if len(set(exp["seeds"])) != len(exp["seeds"]):
            raise ConfigError(f"{where}.seeds: seeds must be distinct")
        try:
            resolved = resolve_experiment(exp)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        vega = resolved["loss"]["clip_loss"]
        if vega and exp.get("anchors") is None:
            raise ConfigError(f"{where}.anchors: null, but preset {resolved['preset']!r} trains the VEGA branch "
                              "(loss.clip_loss: true), which needs anchors: name an anchor set, or train SDT "
                              "with loss: {clip_loss: false} or a preset without VEGA (sdt, sdt-vega-backbone)")
        if not vega and exp.get("anchors") is not None:
            raise ConfigError(f"{where}.anchors: {exp['anchors']!r} is never used because loss.clip_loss is false; "
                              "set anchors: null, or turn the VEGA branch on")
    experiments = config.get("experiments", {})
    for name, sel in config.get("selections", {}).items():
        where = f"selections.{name}"
        if name in experiments:
            raise ConfigError(f"{where}: an experiment has the same name; both would write results/<dataset>/{name}/, "
                              "so rename one")
        unknown = [c for c in sel["candidates"] if c not in experiments]
        if unknown:
            raise ConfigError(f"{where}.candidates: unknown experiment(s) {unknown}; known: {sorted(experiments)}")
        if len(set(sel["candidates"])) != len(sel["candidates"]):
            raise ConfigError(f"{where}.candidates: candidates must be distinct")
        on = {experiments[c]["dataset"] for c in sel["candidates"]}
        if len(on) != 1:
            raise ConfigError(f"{where}.candidates: the candidates train on different datasets {sorted(on)}; "
                              "a dev score only compares models on the same dev split")


def with_defaults(settings: dict | None, defaults: dict, what: str) -> dict:
    """`settings` with `defaults` filled in; a key not in `defaults` is a ValueError naming it and `what`."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **settings}


def require_int(value, minimum: int, what: str) -> int:
    """`value` if it is an integer >= minimum (not a bool), else a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value
