# Config validation and the helpers the rules share.
import functools
import re
import shutil
import sys
from pathlib import Path

import snakemake.report
from snakemake.logging import logger
from snakemake.settings.enums import RerunTrigger
from snakemake.utils import validate

from ercpipe import config as pipeline_config
from ercpipe import report_guard
from ercpipe.clip_setting import ENCODING_KEYS, clip_settings
from ercpipe.datasets import FACE_KEYS, NOT_SHARD_KEYS
from ercpipe.datasets.fingerprint import dataset_fingerprint
from ercpipe.features.settings import training_view
from ercpipe.io.digest import path_digest
from ercpipe.io.features import expected_settings
from ercpipe.labels import MODALITIES, vega_label_order
from ercpipe.mining_setting import mining_params
from ercpipe.resources import extraction_resources
from ercpipe.train.presets import active_settings, resolve_experiment, without_non_training_keys

try:
    pipeline_config.check_config_files(workflow.configfiles)
    # Our own pass first: it names every bad key as a dotted path; validate() then fills defaults.
    SCHEMA = workflow.source_path("../schemas/config.schema.yaml")
    pipeline_config.validate_schema(config, SCHEMA)
    pipeline_config.normalize_modalities(config)
    pipeline_config.expand_searches(config, Path.cwd(), schema_path=SCHEMA)
    pipeline_config.check(config, Path.cwd())
    if any(an.get("synthetic") for an in config.get("anchors", {}).values()):
        from ercpipe.synthetic.faces import DRAWABLE_EMOTIONS

        pipeline_config.check_drawable_anchors(config, DRAWABLE_EMOTIONS)
except pipeline_config.ConfigError as err:
    files = ", ".join(map(str, workflow.configfiles)) or "none"
    # A value given with --config replaces the files' value for that top-level key: name both sources.
    overrides = ", ".join(sorted(workflow.config_settings.config))
    source = f"config files: {files}" + (f"; set with --config: {overrides}" if overrides else "")
    raise WorkflowError(f"Invalid config ({source}): {err}") from None
validate(config, schema="../schemas/config.schema.yaml")

DATASETS = config["datasets"]
EXPERIMENTS = config.get("experiments", {})
SELECTIONS = config.get("selections", {})
ANCHORS = config.get("anchors", {})
FEATURES = config.get("features", {})
EXPORTS = config.get("exports", {})
GPU = 1 if config.get("use_gpu") else 0
# Datasets read from a raw release or a CSV (manifest and extraction rules) and datasets imported from a
# feature pickle (rules in pickles.smk); anchor sets encoded from images and those imported from a 35_anchor.pt.
PICKLE_DATASETS = [name for name, ds in DATASETS.items() if pipeline_config.is_pickle_dataset(ds)]
RAW_DATASETS = [name for name in DATASETS if name not in PICKLE_DATASETS]
OFFICIAL_ANCHORS = [name for name, an in ANCHORS.items() if an.get("official")]
ENCODED_ANCHORS = [name for name in ANCHORS if name not in OFFICIAL_ANCHORS]
# Sets whose images are made by the workflow; a user's folder (`images:`) may sit where those images are
# written, e.g. anchors/{set}/images, and must not be taken for them.
SYNTHETIC_ANCHORS = [name for name, an in ANCHORS.items() if an.get("synthetic")]
MINED_ANCHORS = [name for name, an in ANCHORS.items() if an.get("mine")]


def one_of(names, none):
    """A wildcard constraint matching exactly these names (`none`, a name no config uses, when empty)."""
    return "|".join(re.escape(n) for n in names) or none


wildcard_constraints:
    dataset=one_of(DATASETS, "NO_DATASET"),
    modality="text|audio|visual",
    setting=r"[A-Za-z0-9_.-]+",
    shard=r"\d+",
    seed=r"\d+",
    experiment=one_of(EXPERIMENTS, "NO_EXPERIMENT"),
    selection=one_of(SELECTIONS, "NO_SELECTION"),
    anchor_set=one_of(ANCHORS, "NO_ANCHOR_SET"),
    clip=r"[A-Za-z0-9._-]+",


def n_shards(dataset):
    return DATASETS[dataset].get("shards", 1)


def manifest_path(dataset):
    return f"features/{dataset}/manifest.tsv"


def feature_path(dataset, modality, setting):
    return f"features/{dataset}/{modality}/{setting}.h5"


def anchor_path(set_name):
    return f"anchors/{set_name}/{pipeline_config.clip_name(ANCHORS[set_name]['clip'])}.h5"


def experiment_dir(name):
    return f"results/{EXPERIMENTS[name]['dataset']}/{name}"


def selection_dataset(name):
    return EXPERIMENTS[SELECTIONS[name]["candidates"][0]]["dataset"]  # config.check: one dataset for all


def selection_dir(name):
    return f"results/{selection_dataset(name)}/{name}"


def experiment_features(name):
    """{modality: setting name} of what the experiment trains on: its `features:`, narrowed by `model.modalities`
    when given (a feature listed but not used is neither extracted nor an input)."""
    exp = EXPERIMENTS[name]
    chosen = (exp.get("model") or {}).get("modalities")
    return {m: s for m, s in exp["features"].items() if chosen is None or m in chosen}


def experiment_feature_files(name):
    dataset = EXPERIMENTS[name]["dataset"]
    return {m: feature_path(dataset, m, s) for m, s in experiment_features(name).items()}


def datasets_in_use():
    used = {exp["dataset"] for exp in EXPERIMENTS.values()}
    used |= {a["mine"]["dataset"] for a in ANCHORS.values() if a.get("mine")}
    return sorted(used)


def feature_files_of(dataset):
    """Every feature file an experiment (or anchor mining) needs for this dataset."""
    files = set()
    for name, exp in EXPERIMENTS.items():
        if exp["dataset"] == dataset:
            files |= set(experiment_feature_files(name).values())
    for a in ANCHORS.values():
        if a.get("mine") and a["mine"]["dataset"] == dataset:
            files.add(feature_path(dataset, "visual", a["mine"]["visual"]))
    return sorted(files)


def anchor_sets_in_use():
    return sorted({exp["anchors"] for exp in EXPERIMENTS.values() if exp.get("anchors")})


def benchmarked_jobs():
    """(`benchmark:` file, the file the job makes, or that a job using it makes) of every extraction, anchor and
    training job the experiments need. Rule benchmark_summary takes the products as inputs and reads the
    benchmark files that exist: as inputs, deleting results/ (benchmarks included) re-ran every extraction."""
    jobs = []
    for ds in datasets_in_use():
        for path in feature_files_of(ds):
            modality, setting = Path(path).parent.name, Path(path).stem
            if ds in PICKLE_DATASETS:
                jobs.append((f"results/benchmarks/import_pickle_features/{ds}/{modality}/{setting}.tsv", path))
                continue
            jobs += [(f"results/benchmarks/{modality}_features/{ds}/{setting}/shard{k}.tsv", path)
                     for k in range(n_shards(ds))]
            if modality == "text" and FEATURES["text"][setting].get("finetune"):
                jobs.append((f"results/benchmarks/finetune_text_encoder/{ds}/{setting}.tsv", path))
    for name in anchor_sets_in_use():
        rule_name = "import_official_anchors" if name in OFFICIAL_ANCHORS else "encode_anchors"
        clip = pipeline_config.clip_name(ANCHORS[name]["clip"])
        jobs.append((f"results/benchmarks/{rule_name}/{name}/{clip}.tsv", anchor_path(name)))
    for name, exp in EXPERIMENTS.items():
        jobs += [(f"results/benchmarks/train_model/{exp['dataset']}/{name}/seed{seed}.tsv",
                  f"{experiment_dir(name)}/seed{seed}/metrics.json") for seed in exp["seeds"]]
    return jobs


# What a training job writes per seed (rule train_model's outputs).
RUN_FILES = ("metrics.json", "model.pt", "history.tsv", "predictions.tsv", "fused.npz")


def run_files(name, files=RUN_FILES):
    """These files of every seed of experiment `name`."""
    return [f"{experiment_dir(name)}/seed{seed}/{file}" for seed in EXPERIMENTS[name]["seeds"] for file in files]


@functools.cache
def warn_without_params_trigger():
    """Fixed raw files reach the jobs only through params digests (the media are no inputs, the text files ancient
    ones), and so do changed settings: without that trigger old results pass for current ones. Said once, while
    the DAG is built (the trigger set is not known when the Snakefile is parsed)."""
    settings = workflow.dag_settings
    if settings is None or workflow.remote_exec or workflow.subprocess_exec:
        return
    if RerunTrigger.PARAMS not in settings.rerun_triggers:
        logger.warning("--rerun-triggers without params: a fixed raw file (a transcript or label line, a replaced "
                       "clip) and a changed setting re-run nothing, so results made before the change stay as if "
                       "current. Keep params in the list (e.g. --rerun-triggers mtime params) unless that is meant "
                       "(docs/design.md, 'Re-runs after the raw data changed')")


def all_targets():
    warn_without_params_trigger()
    unreadable = unreadable_datasets()
    if unreadable:
        raise WorkflowError("\n".join(unreadable) + "\nFix it (or take the dataset out of the config); the other "
                            "datasets' files can still be made by naming them as targets.")
    without_valid = valid_split_problems()
    if without_valid:  # known now; the jobs would fail after the manifest and every extraction had run
        raise WorkflowError("\n".join(without_valid))
    # Every seed's files are targets too: Snakemake does not remake a missing file whose consumers' outputs
    # exist, so a training job's outputs that were removed (Ctrl-C removes a failed job's outputs) or deleted
    # would otherwise never come back, and the old summary would stand.
    targets = [f"{experiment_dir(name)}/summary.json" for name in EXPERIMENTS]
    targets += [path for name in EXPERIMENTS for path in run_files(name)]
    targets += [f"{selection_dir(name)}/summary.json" for name in SELECTIONS]
    targets += [f"results/{ds}/coverage.tsv" for ds in datasets_in_use()]
    targets += [f"features/{ds}/issues.tsv" for ds in datasets_in_use()]
    # The manifests, feature files and anchor files too: `ercpipe predict --manifest` and the exports read them, and
    # one deleted after the run would otherwise stay missing while Snakemake calls the run complete.
    targets += [f"features/{ds}/manifest.tsv" for ds in datasets_in_use()]
    targets += [path for ds in datasets_in_use() for path in feature_files_of(ds)]
    targets += [anchor_path(name) for name in anchor_sets_in_use()]
    # Fine-tuned encoders too: `ercpipe predict --conversation` loads the one a checkpoint was trained with, and a
    # fine-tuning job stopped while its text features exist would otherwise leave it missing for good.
    targets += finetuned_encoders()
    if EXPERIMENTS:
        targets.append("results/benchmarks.tsv")
    targets += [path for name in EXPORTS for path in export_outputs(name)]
    return targets


def valid_split_problems():
    """One line per raw dataset without valid rows that an experiment choosing its epoch on valid (all but
    train.paper_compat ones) or a fine-tuned text setting uses: the dotted key to set and who needs it."""
    problems = []
    for ds in RAW_DATASETS:
        fingerprint = raw_fingerprint(ds)
        if not getattr(fingerprint, "no_valid", ""):
            continue
        needs = [f"experiments.{name}" for name, exp in EXPERIMENTS.items() if exp["dataset"] == ds
                 and not resolve_experiment(exp)["train"]["paper_compat"]]
        needs += [f"features.text.{Path(folder).name} (fine-tuning)" for folder in finetuned_encoders()
                  if Path(folder).parent.parent.name == ds]
        if needs:
            problems.append(f"datasets.{ds}: {fingerprint.no_valid}. Needed by {', '.join(needs[:4])}"
                            + (f" and {len(needs) - 4} more" if len(needs) > 4 else ""))
    return problems


def finetuned_encoders():
    """The encoder folder of every fine-tuned text setting the experiments use."""
    folders = []
    for ds in datasets_in_use():
        if ds in PICKLE_DATASETS:
            continue
        for path in feature_files_of(ds):
            modality, setting = Path(path).parent.name, Path(path).stem
            if modality == "text" and FEATURES["text"][setting].get("finetune"):
                folders.append(f"features/{ds}/text_encoders/{setting}")
    return sorted(folders)


def export_outputs(name):
    """features.pkl (VEGA 7-tuple) of an `exports:` entry, and 35_anchor.pt when it exports anchors."""
    folder = pipeline_config.export_name_dir(config, name)
    outputs = [f"{folder}/features.pkl"]
    if pipeline_config.export_source(config, name)["anchors"]:
        outputs.append(f"{folder}/35_anchor.pt")
    return outputs


# Input and params functions of the rules.


def canonical(value):
    """`value` with every mapping's keys in sorted order.

    Snakemake compares a rule's params between runs by their repr, and a dict's repr follows its key
    order, so the same config written in another order (e.g. by yaml.safe_dump) would re-run every job.
    Every `params:` value goes through this.
    """
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def reader_config(dataset, without=()):
    """The dataset's settings as its reader takes them, but the keys `without` (ercpipe.config.reader_config), in
    canonical form."""
    return canonical(pipeline_config.reader_config(dataset, DATASETS[dataset], without))


class UnreadableRaw(str):
    """Why a raw dataset cannot be read now (the reader's error): what raw_fingerprint gives instead of digests."""


@functools.cache
def raw_fingerprint(dataset):
    """Digests of what each step reads of a real raw dataset (ercpipe.datasets.fingerprint), or UnreadableRaw.

    None for a generated corpus: it is an output of the pipeline, so its files do not exist while the
    DAG is built; its steps depend on the corpus folder and the manifest file instead.
    """
    if DATASETS[dataset].get("synthetic"):
        return None
    try:
        return dataset_fingerprint(dataset, reader_config(dataset), n_shards(dataset))
    except (ValueError, OSError) as err:
        return UnreadableRaw(f"dataset {dataset}: the raw data cannot be read: {err}")


def readable_fingerprint(dataset):
    """raw_fingerprint, raising the reader's error for a dataset that cannot be read (input and params functions)."""
    warn_without_params_trigger()  # a target named on the command line does not go through rule all
    fingerprint = raw_fingerprint(dataset)
    if isinstance(fingerprint, UnreadableRaw):
        raise WorkflowError(fingerprint)
    return fingerprint


def unreadable_datasets():
    """The reader's error of every raw dataset that cannot be read now."""
    return [raw_fingerprint(name) for name in RAW_DATASETS if isinstance(raw_fingerprint(name), UnreadableRaw)]


# Every raw dataset is read now, and one that cannot be read is said to be so at once; rule `all` then stops
# with its error (all_targets). An error raised only in a job's input or params function is taken by Snakemake
# for "no job makes this file" when the file exists: a finished run said "Nothing to be done" and kept the old
# results. Nothing is held up but what needs that dataset: other targets, --unlock and --lint still work. A
# cluster job reads only its own dataset (when its DAG asks).
def unused_datasets():
    """Datasets that no experiment (selections included), export or anchor mining uses: rule all makes nothing of
    them, which looked like a run that had finished."""
    used = set(datasets_in_use()) | {pipeline_config.export_source(config, name)["dataset"] for name in EXPORTS}
    return [name for name in DATASETS if name not in used]


if not (workflow.remote_exec or workflow.subprocess_exec):
    for problem in unreadable_datasets():
        logger.warning(problem)
    for name in RAW_DATASETS:
        for message in getattr(raw_fingerprint(name), "warnings", ()):  # a readable dataset's reader warnings
            logger.warning(f"dataset {name}: {message}")
    if not EXPERIMENTS and not EXPORTS:
        logger.warning("The config has no experiments, selections or exports: `snakemake` (rule all) makes nothing "
                       "but what anchor mining needs. Add an experiment (README, \"Your data\"), or name files as "
                       "targets, e.g. features/{dataset}/manifest.tsv or features/{dataset}/{modality}/{setting}.h5.")
    else:
        for name in unused_datasets():
            logger.warning(f"datasets.{name}: no experiment, selection, export or anchor mining uses it, so "
                           f"`snakemake` (rule all) makes nothing of it; add an experiment, or name its files as "
                           f"targets, e.g. features/{name}/manifest.tsv or features/{name}/{{modality}}/{{setting}}.h5")


def raw_input(wildcards):
    """What the joining manifest job reads: the generated corpus folder, or a real dataset's text files.

    A real dataset's files are `ancient`: whether a manifest job re-runs is decided by the digest of what it
    reads, text and media (params `raw`), so touching a file without changing it re-runs nothing, and
    fixing one re-runs only the shards whose rows or media changed.
    """
    fingerprint = readable_fingerprint(wildcards.dataset)
    if fingerprint is None:
        return [f"raw/synthetic/{wildcards.dataset}"]
    return [ancient(path) for path in fingerprint.sources]


def shard_raw_input(wildcards):
    """What a shard's manifest job waits for: the generated corpus folder; nothing for a real dataset, whose
    shard jobs re-run on their own digest only (params `raw`). With the dataset's text files as inputs, adding
    or removing one dialogue's file changed every shard's input set and re-ran every shard's extraction."""
    return raw_input(wildcards) if readable_fingerprint(wildcards.dataset) is None else []


def per_attempt(base):
    """A resources callable: `base` (mem_mb or runtime) on a job's first attempt, `attempt` times it on a retry
    (the SLURM profile's `retries`): a job killed for its memory or time limit is resubmitted with more."""

    def value(wildcards, attempt):
        return base * attempt

    return value


def shard_resource(kind, key):
    """A resources callable: `key` (mem_mb or runtime) of an extraction job of `kind`, from what its shard holds
    (the longest and total utterance durations; ercpipe.resources), `attempt` times that on a retry. Snakemake
    shows <TBD> until the shard's inputs exist and evaluates it again before the job starts."""

    def value(wildcards, input, threads, attempt):
        extra = {}
        if kind in ("audio", "visual"):
            extra["settings"] = FEATURES[kind][wildcards.setting]
        if kind == "audio":
            extra["audio_dir"] = input.wavs
        return extraction_resources(input.manifest, 0, 1, kind, threads, **extra)[key] * attempt

    return value


def corpus_view_settings(dataset, without):
    """The reader settings that stand for a generated corpus's rows in a view of them (a modality's, fine-tuning's).
    The corpus holds every medium: its `modalities` decide which views are made, not what one holds (as the digests
    of a real dataset's views show), so they are given as every modality, the value they always had by default."""
    return canonical({**reader_config(dataset, without), "modalities": list(MODALITIES)})


def modality_digest(wildcards):
    """The digest of what one modality's extraction reads of a shard (rows, flags, media;
    ercpipe.datasets.MODALITY_VIEWS): the `rows` param of rule modality_manifest_shard; for a generated corpus,
    the reader settings (a changed class list or relabelling left the copies of the old rows in place)."""
    fingerprint = readable_fingerprint(wildcards.dataset)
    if fingerprint is None:  # a generated corpus is not there to be read: its reader settings stand for its rows
        return corpus_view_settings(wildcards.dataset, NOT_SHARD_KEYS)
    return fingerprint.modality_shards[wildcards.modality][int(wildcards.shard)]


def raw_digest(part):
    """A params function: the digest of the whole raw dataset ('dataset') or of the job's shard ('shards')."""

    def digest(wildcards):
        fingerprint = readable_fingerprint(wildcards.dataset)
        if fingerprint is None:
            return ""
        value = getattr(fingerprint, part)
        return value[int(wildcards.shard)] if isinstance(value, tuple) else value

    return digest


def dataset_class_list(dataset):
    """The dataset's classes in label-id order, as its reader (or the pickle import) gives them: a param of the jobs
    that read labels from the manifest (training, fine-tuning). Given as a param rather than read from
    summary.json, which rule manifest_issues rewrites whenever only rejected rows change."""
    fingerprint = readable_fingerprint(dataset) if dataset in RAW_DATASETS else None
    if fingerprint is not None:
        return list(fingerprint.classes)
    return pipeline_config.dataset_classes(DATASETS[dataset], Path.cwd())


def finetune_rows_digest(wildcards):
    """The digest of what fine-tuning reads of a raw dataset (the `rows` param of rule finetune_manifest); for a
    generated corpus, whose files are not there to be read, its reader settings."""
    fingerprint = readable_fingerprint(wildcards.dataset)
    if fingerprint is None:
        return corpus_view_settings(wildcards.dataset, FACE_KEYS)
    return fingerprint.finetune


def text_encoder_input(wildcards):
    settings = FEATURES["text"][wildcards.setting]
    if settings.get("finetune"):
        return {"encoder": f"features/{wildcards.dataset}/text_encoders/{wildcards.setting}"}
    return {}


def synthetic_corpus_settings(fmt):
    """A synthetic corpus's settings, defaults filled in (written out, they re-run nothing)."""
    from ercpipe.synthetic import resolve_settings  # OpenCV: only for a config with a generated corpus

    return canonical(resolve_settings(fmt, config.get("synthetic", {}).get(fmt)))


def synthetic_anchor_settings(wildcards):
    """A synthetic anchor set's settings, defaults filled in (written out, they re-run nothing)."""
    from ercpipe.synthetic.faces import ANCHOR_IMAGE_DEFAULTS  # OpenCV: only for a config with such a set

    return canonical({**ANCHOR_IMAGE_DEFAULTS, **ANCHORS[wildcards.anchor_set]["synthetic"]})


def anchor_clip_settings(wildcards):
    """The CLIP an anchor set is encoded with, defaults filled in (`ViT-B/32` is `ViT-B-32`), without the keys
    that only say how the images are fed (ENCODING_KEYS: the job reads them from the config)."""
    clip = ANCHORS[wildcards.anchor_set]["clip"]
    return canonical(clip_settings({k: v for k, v in clip.items() if k not in ENCODING_KEYS}))


def local_model_files(value):
    """A params entry for a model a setting may name by path (features.text.*.model, features.visual.*.weights,
    anchors.*.clip.pretrained): the digest of its files (ercpipe.io.digest.path_digest: names, sizes, mtimes), so
    that another model copied under the same path re-runs the jobs that read it (the path alone did not change,
    and the file is not an input). For anything else (a hub name, a tag, random init) Ellipsis, a value Snakemake
    does not record as a param (it records builtin values only): those settings keep the params they had."""
    if isinstance(value, str) and value and Path(value).exists():
        return path_digest(value)
    return ...


def anchor_images_digest(wildcards):
    """A user's image folder is an `ancient` input (its own timestamp changes with anything put beside the class
    folders, and does not change when an image in a class folder is added, replaced or deleted): the digest of
    what the encoder reads of it (ercpipe.anchors.images.image_set_digest: the requested classes' image files,
    and which of them EXIF turns upright) is a param, so a change there re-encodes the set and nothing else
    does. Mined and synthetic images are outputs of their own rules."""
    an = ANCHORS[wildcards.anchor_set]
    if not an.get("images"):
        return ""
    from ercpipe.anchors.images import image_set_digest  # Pillow: only for a config with such a set

    return image_set_digest(an["images"], pipeline_config.anchor_classes(config, wildcards.anchor_set))


def anchor_image_dir(wildcards):
    an = ANCHORS[wildcards.anchor_set]
    if an.get("images"):
        # ancient: the folder's own timestamp changes with anything put beside the class folders (a .DS_Store, a
        # README); what the encoder reads is in the images_digest param.
        return ancient(an["images"])
    if an.get("mine"):
        return f"anchors/{wildcards.anchor_set}/mined"
    return f"anchors/{wildcards.anchor_set}/images"


def require_experiment_dataset(wildcards):
    """Refuse a target path that puts an experiment under another dataset's folder (its results would be filed
    there); returns the experiment's config entry."""
    exp = EXPERIMENTS[wildcards.experiment]
    if exp["dataset"] != wildcards.dataset:
        raise WorkflowError(f"experiment {wildcards.experiment} trains on {exp['dataset']}, "
                            f"not {wildcards.dataset}; use {experiment_dir(wildcards.experiment)}/")
    return exp


def train_inputs(wildcards):
    exp = require_experiment_dataset(wildcards)
    inputs = {"manifest": manifest_path(exp["dataset"])}
    inputs.update({f"features_{m}": path for m, path in experiment_feature_files(wildcards.experiment).items()})
    if exp.get("anchors"):
        inputs["anchors"] = anchor_path(exp["anchors"])
    return inputs


def selection_inputs(wildcards):
    """The summaries of a selection's candidates (in candidate order, all on the selection's dataset) and, when it
    averages the best of them (ensemble), every candidate's per-seed predictions."""
    if selection_dataset(wildcards.selection) != wildcards.dataset:
        raise WorkflowError(f"selection {wildcards.selection} chooses among experiments on "
                            f"{selection_dataset(wildcards.selection)}; use {selection_dir(wildcards.selection)}/")
    selection = SELECTIONS[wildcards.selection]
    inputs = {"summaries": [f"{experiment_dir(name)}/summary.json" for name in selection["candidates"]]}
    if selection.get("ensemble"):
        inputs["predictions"] = [f"{experiment_dir(name)}/seed{seed}/predictions.tsv"
                                 for name in selection["candidates"] for seed in EXPERIMENTS[name]["seeds"]]
    return inputs


def experiment_params(wildcards):
    """The experiment's training configuration, resolved (its preset with the user's keys over it): changing it
    re-runs this experiment's training only, and writing a preset's value out (or dropping a key that only
    repeated it) changes nothing. Without the seeds (each job has its own) and the keys that never shape a
    training (ercpipe.train.presets.NON_TRAINING_KEYS: when the resume state is written, which CLIP the anchors
    must come from; changing one must not re-train finished runs, and the job reads them from the config,
    scripts/train_model.py), and without the keys its other settings make inactive (e.g. train.momentum with
    AdamW; ercpipe.train.presets.inactive_keys): the job resolves them back to the preset's values and
    metrics.json lists them as inactive."""
    exp = dict(EXPERIMENTS[wildcards.experiment])
    exp.pop("seeds", None)
    return canonical(without_non_training_keys(active_settings(resolve_experiment(exp))))


def feature_setting_params(modality, name, dataset=None):
    """A feature setting as its extractor resolves it (defaults filled in): the same setting written with or
    without a default value re-runs nothing. An imported setting ({source: pickle}) gets the `layout` of the
    `dataset`'s pickle when it names none (the layout its import checks and records)."""
    setting = FEATURES[modality][name]
    if pipeline_config.is_imported_setting(setting):
        if dataset in PICKLE_DATASETS:
            setting = {"layout": pickle_inspection(dataset)["layout"], **setting}
        return canonical(setting)
    return canonical(expected_settings(modality, setting))


# Input and params functions of the pickle rules (pickles.smk).


def pickle_input(wildcards):
    """The dataset's pickle, `ancient` (the params hold its sha256: a byte-identical copy or download re-runs
    nothing) and spelled one way (`./x.pkl`, `x.pkl` and the absolute path inside the working directory are the
    same file; Snakemake re-runs a job whose set of input paths changed)."""
    return ancient(str(pipeline_config.one_spelling(DATASETS[wildcards.dataset]["path"])))


def pickle_inspection(dataset):
    """What the dataset's pickle holds (ercpipe.features.pickles.inspect_dataset; the config check has read it)."""
    from ercpipe.features.pickles import inspect_dataset

    return inspect_dataset(dataset, DATASETS[dataset], Path.cwd())


def pickle_dataset_params(dataset, with_split=True):
    """The dataset's config slice as the import resolves it: the file by its content (sha256), not its path or
    modification time (the input is `ancient`), and `labels`, `classes` and `valid_split` with the values the
    import takes when they are left out, so writing a default out re-runs nothing. The feature files do not
    depend on how valid is formed."""
    from ercpipe.features.pickles import default_valid_split

    cfg = dict(DATASETS[dataset])
    for key in ("shards", "path"):
        cfg.pop(key, None)
    found = pickle_inspection(dataset)
    cfg.update(labels=found["labels"], classes=found["classes"], content=found["sha256"])
    cfg["valid_split"] = cfg.get("valid_split", "default")
    if cfg["valid_split"] == "default":
        cfg["valid_split"] = default_valid_split(found["labels"])
    if not with_split:
        cfg.pop("valid_split")
    return canonical(cfg)


def imported_setting(wildcards):
    """The imported setting, its layout filled in with the pickle's (feature_setting_params)."""
    settings = FEATURES.get(wildcards.modality, {})
    if wildcards.setting not in settings or not pipeline_config.is_imported_setting(settings[wildcards.setting]):
        raise WorkflowError(f"features/{wildcards.dataset}/{wildcards.modality}/{wildcards.setting}.h5: dataset "
                            f"{wildcards.dataset} is a feature pickle; its {wildcards.modality} files are imported "
                            f"under a setting {{source: pickle}} in features.{wildcards.modality}")
    return feature_setting_params(wildcards.modality, wildcards.setting, wildcards.dataset)


def pickle_mem_mb(wildcards, input, attempt):
    """Unpickling holds the whole tuple, then the manifest frame and one modality's array: ~4x the file (times
    `attempt` on a retry, as per_attempt)."""
    return max(2000, int(4 * input.size_mb) + 1000) * attempt


def aggregate_inputs(wildcards):
    """Every seed's metrics, history (the curves) and fused features (the t-SNE plot) of the experiment."""
    require_experiment_dataset(wildcards)
    name = wildcards.experiment
    return {"runs": run_files(name, ["metrics.json"]), "histories": run_files(name, ["history.tsv"]),
            "fused": run_files(name, ["fused.npz"])}


def require_export_dataset(wildcards):
    """As require_experiment_dataset, for an export; returns its {dataset, features, anchors}."""
    source = pipeline_config.export_source(config, wildcards.export)
    if source["dataset"] != wildcards.dataset:
        raise WorkflowError(f"export {wildcards.export} is of dataset {source['dataset']}, not {wildcards.dataset}; "
                            f"use {pipeline_config.export_name_dir(config, wildcards.export)}/")
    return source


def export_inputs(wildcards):
    source = require_export_dataset(wildcards)
    inputs = {"manifest": manifest_path(source["dataset"])}
    inputs.update({f"features_{m}": feature_path(source["dataset"], m, s) for m, s in source["features"].items()})
    return inputs


if not getattr(snakemake.report.auto_report, "ercpipe_pending_check", False):  # the Snakefile may be read twice
    snakemake.report.auto_report = report_guard.refuse_reports_with_pending_jobs(snakemake.report.auto_report)


def check_cluster_tools():
    """An executor whose submit command is missing makes every job fail after a while with a message about
    sacct; say at the start what is wrong (called from the Snakefile's onstart, once the executor is known)."""
    executor = getattr(workflow.executor_plugin, "name", None)
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise WorkflowError("the slurm executor (--profile profiles/slurm) submits every job with sbatch, which is "
                            "not on this machine's PATH: run Snakemake on the cluster's login node, or run "
                            "locally without the profile (--cores N)")


# What a shell reads in an unquoted word: it splits at blanks and expands or redirects at the rest (letters of any
# script are words like any other).
SHELL_SPECIAL = frozenset(" \t\n'\"\\$`;&|<>()*?[]{}!")


def check_interpreter_path():
    """Snakemake runs a job's script as `<this interpreter> <script>` with the interpreter's path unquoted (9.x), so
    a shell splits a path with a space (or reads its $ or quote): every job failed with "/tmp/my: No such file or
    directory". It happens where the venv sits in a project folder so named (`make venv` puts it at .venv); the
    project folder itself may keep its name. With --use-conda every job runs the `python` of its own env (each of
    the rules names one), so the check is for runs without it. (Called from onstart: a dry run runs no script.)"""
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return
    if set(sys.executable) & SHELL_SPECIAL:
        raise WorkflowError(f"Snakemake runs every job's script with this Python, {sys.executable}, whose path it "
                            "does not quote, so the shell would split it at its space (or read its $ or quote) "
                            "and every job would fail: put the virtual environment at a path of plain characters "
                            "(`make venv VENV=/path/to/venv`) and run that one's snakemake; the project folder "
                            "may keep its name")
