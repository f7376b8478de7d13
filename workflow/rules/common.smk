# Config validation and the helpers the rules share.
import functools
from pathlib import Path

from snakemake.utils import validate

from ercpipe import config as pipeline_config
from ercpipe.datasets.fingerprint import dataset_fingerprint
from ercpipe.resources import extraction_resources

try:
    # Our own pass first: it names every bad key as a dotted path; validate() then fills defaults.
    pipeline_config.validate_schema(config, workflow.source_path("../schemas/config.schema.yaml"))
    pipeline_config.check(config, Path.cwd())
except pipeline_config.ConfigError as err:
    raise WorkflowError(f"Invalid config: {err}") from None
validate(config, schema="../schemas/config.schema.yaml")

DATASETS = config["datasets"]
EXPERIMENTS = config.get("experiments", {})
SELECTIONS = config.get("selections", {})
ANCHORS = config.get("anchors", {})
FEATURES = config.get("features", {})
GPU = 1 if config.get("use_gpu") else 0


wildcard_constraints:
    dataset="|".join(DATASETS) or "NO_DATASET",
    modality="text|audio|visual",
    setting=r"[A-Za-z0-9_.-]+",
    shard=r"\d+",
    seed=r"\d+",
    experiment="|".join(EXPERIMENTS) or "NO_EXPERIMENT",
    selection="|".join(SELECTIONS) or "NO_SELECTION",
    anchor_set="|".join(ANCHORS) or "NO_ANCHOR_SET",
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


def experiment_feature_files(name):
    exp = EXPERIMENTS[name]
    return {m: feature_path(exp["dataset"], m, s) for m, s in exp["features"].items()}


def datasets_in_use():
    used = {exp["dataset"] for exp in EXPERIMENTS.values()}
    used |= {a["mine"]["dataset"] for a in ANCHORS.values() if a.get("mine")}
    return sorted(used)


def feature_files_of(dataset):
    """Every feature file an experiment (or anchor mining) needs for this dataset."""
    files = set()
    for exp in EXPERIMENTS.values():
        if exp["dataset"] == dataset:
            files |= {feature_path(dataset, m, s) for m, s in exp["features"].items()}
    for a in ANCHORS.values():
        if a.get("mine") and a["mine"]["dataset"] == dataset:
            files.add(feature_path(dataset, "visual", a["mine"]["visual"]))
    return sorted(files)


def anchor_sets_in_use():
    return sorted({exp["anchors"] for exp in EXPERIMENTS.values() if exp.get("anchors")})


def benchmark_files():
    """The `benchmark:` file of every extraction, anchor and training job the experiments need."""
    files = []
    for ds in datasets_in_use():
        for path in feature_files_of(ds):
            modality, setting = Path(path).parent.name, Path(path).stem
            files += [f"results/benchmarks/{modality}_features/{ds}/{setting}/shard{k}.tsv"
                      for k in range(n_shards(ds))]
            if modality == "text" and FEATURES["text"][setting].get("finetune"):
                files.append(f"results/benchmarks/finetune_text_encoder/{ds}/{setting}.tsv")
    for name in anchor_sets_in_use():
        files.append(f"results/benchmarks/encode_anchors/{name}/{pipeline_config.clip_name(ANCHORS[name]['clip'])}.tsv")
    for name, exp in EXPERIMENTS.items():
        files += [f"results/benchmarks/train_model/{exp['dataset']}/{name}/seed{seed}.tsv" for seed in exp["seeds"]]
    return files


def all_targets():
    targets = [f"{experiment_dir(name)}/summary.json" for name in EXPERIMENTS]
    targets += [f"{selection_dir(name)}/summary.json" for name in SELECTIONS]
    targets += [f"results/{ds}/coverage.tsv" for ds in datasets_in_use()]
    if EXPERIMENTS:
        targets.append("results/benchmarks.tsv")
    return targets


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


def reader_config(dataset):
    """The dataset's settings as its reader takes them: root resolved, pipeline-only keys dropped."""
    cfg = {k: v for k, v in DATASETS[dataset].items() if k not in ("shards", "synthetic")}
    root = pipeline_config.dataset_root(dataset, DATASETS[dataset])
    if root is not None:
        cfg["root"] = str(root)
    return canonical(cfg)


@functools.cache
def raw_fingerprint(dataset):
    """Digests of what each step reads of a real raw dataset (ercpipe.datasets.fingerprint).

    None for a generated corpus: it is an output of the pipeline, so its files do not exist while the
    DAG is built; its steps depend on the corpus folder and the manifest file instead.
    """
    if DATASETS[dataset].get("synthetic"):
        return None
    try:
        return dataset_fingerprint(dataset, reader_config(dataset), n_shards(dataset))
    except (ValueError, OSError) as err:
        raise WorkflowError(f"dataset {dataset}: the raw data cannot be read: {err}") from None


def raw_input(wildcards):
    """The raw files the manifest rule reads: the generated corpus folder, or a real dataset's text files.

    A real dataset's files are `ancient`: whether a manifest job re-runs is decided by the digest of what it
    reads, text and media (params `raw`), so touching a file without changing it re-runs nothing, and
    fixing one re-runs only the shards whose rows or media changed.
    """
    fingerprint = raw_fingerprint(wildcards.dataset)
    if fingerprint is None:
        return [f"raw/synthetic/{wildcards.dataset}"]
    return [ancient(path) for path in fingerprint.sources]


def shard_resource(kind, key):
    """A resources callable: `key` (mem_mb or runtime) of an extraction job of `kind`, from what its shard holds
    (the longest and total utterance durations; ercpipe.resources). Snakemake shows <TBD> until the
    shard's inputs exist and evaluates it again before the job starts."""

    def value(wildcards, input, threads):
        extra = {}
        if kind in ("audio", "visual"):
            extra["settings"] = FEATURES[kind][wildcards.setting]
        if kind == "audio":
            extra["audio_dir"] = input.wavs
        return extraction_resources(input.manifest, 0, 1, kind, threads, **extra)[key]

    return value


def raw_digest(part):
    """A params function: the digest of the whole raw dataset ('dataset') or of the job's shard ('shards')."""

    def digest(wildcards):
        fingerprint = raw_fingerprint(wildcards.dataset)
        if fingerprint is None:
            return ""
        value = getattr(fingerprint, part)
        return value[int(wildcards.shard)] if isinstance(value, tuple) else value

    return digest


def text_encoder_input(wildcards):
    settings = FEATURES["text"][wildcards.setting]
    if settings.get("finetune"):
        return {"encoder": f"features/{wildcards.dataset}/text_encoders/{wildcards.setting}"}
    return {}


def anchor_image_dir(wildcards):
    an = ANCHORS[wildcards.anchor_set]
    if an.get("images"):
        return an["images"]
    if an.get("mine"):
        return f"anchors/{wildcards.anchor_set}/mined"
    return f"anchors/{wildcards.anchor_set}/images"


def train_inputs(wildcards):
    exp = EXPERIMENTS[wildcards.experiment]
    if exp["dataset"] != wildcards.dataset:
        raise WorkflowError(f"experiment {wildcards.experiment} trains on {exp['dataset']}, "
                            f"not {wildcards.dataset}; use {experiment_dir(wildcards.experiment)}/")
    inputs = {"manifest": manifest_path(exp["dataset"])}
    inputs.update({f"features_{m}": path for m, path in experiment_feature_files(wildcards.experiment).items()})
    if exp.get("anchors"):
        inputs["anchors"] = anchor_path(exp["anchors"])
    return inputs


def selection_inputs(wildcards):
    """The summaries of a selection's candidates, keyed by experiment name (all on the selection's dataset)."""
    if selection_dataset(wildcards.selection) != wildcards.dataset:
        raise WorkflowError(f"selection {wildcards.selection} chooses among experiments on "
                            f"{selection_dataset(wildcards.selection)}; use {selection_dir(wildcards.selection)}/")
    return {name: f"{experiment_dir(name)}/summary.json" for name in SELECTIONS[wildcards.selection]["candidates"]}


def experiment_params(wildcards):
    """The experiment's own config slice: changing it re-runs this experiment's training only."""
    exp = dict(EXPERIMENTS[wildcards.experiment])
    exp.pop("seeds", None)
    return canonical(exp)
