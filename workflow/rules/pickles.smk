# The community feature pickles and the official anchor file as pipeline inputs, and the way back out.
#
# A dataset of format vega_pickle / sdt_pickle has no raw folder and no extraction: import_pickle writes its
# manifest, issues and summary (the validation split formed as datasets.{name}.valid_split says), and
# import_pickle_features one feature file per imported setting ({source: pickle}) an experiment names. From
# there, training, aggregation, selection, coverage and the report are the same as for any dataset.
# An anchor set with `official:` is imported from a 35_anchor.pt instead of being encoded from images.
# An `exports:` entry writes a dataset's features as VEGA's 7-tuple (+ its anchors as 35_anchor.pt).

# A pickle dataset's feature files are imported, never merged from extraction shards.
ruleorder: import_pickle_features > merge_features


rule import_pickle:
    wildcard_constraints:
        dataset=one_of(PICKLE_DATASETS, "NO_PICKLE_DATASET"),
    input:
        pickle=pickle_input,
    output:
        manifest="features/{dataset}/manifest.tsv",
        issues="features/{dataset}/issues.tsv",
        summary="features/{dataset}/summary.json",
    params:
        dataset=lambda wc: pickle_dataset_params(wc.dataset),
    log:
        "logs/import_pickle/{dataset}.log",
    resources:
        mem_mb=pickle_mem_mb,
        runtime=per_attempt(30),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/import_pickle.py"


rule import_pickle_features:
    wildcard_constraints:
        dataset=one_of(PICKLE_DATASETS, "NO_PICKLE_DATASET"),
    input:
        pickle=pickle_input,
    output:
        features="features/{dataset}/{modality}/{setting}.h5",
    params:
        dataset=lambda wc: pickle_dataset_params(wc.dataset, with_split=False),
        setting=imported_setting,
    log:
        "logs/import_pickle_features/{dataset}/{modality}/{setting}.log",
    benchmark:
        "results/benchmarks/import_pickle_features/{dataset}/{modality}/{setting}.tsv"
    resources:
        mem_mb=pickle_mem_mb,
        runtime=per_attempt(30),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/import_pickle_features.py"


rule import_official_anchors:
    wildcard_constraints:
        anchor_set=one_of(OFFICIAL_ANCHORS, "NO_OFFICIAL_ANCHOR_SET"),
    input:
        official=lambda wc: ANCHORS[wc.anchor_set]["official"],
    output:
        anchors="anchors/{anchor_set}/{clip}.h5",
    params:
        clip=lambda wc: canonical(ANCHORS[wc.anchor_set]["clip"]),
        classes=lambda wc: pipeline_config.anchor_classes(config, wc.anchor_set),
        allow_pickle=lambda wc: bool(ANCHORS[wc.anchor_set].get("allow_pickle", False)),
    log:
        "logs/import_official_anchors/{anchor_set}/{clip}.log",
    benchmark:
        "results/benchmarks/import_official_anchors/{anchor_set}/{clip}.tsv"
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    conda:
        "../../envs/clip.yaml"
    script:
        "../../scripts/import_official_anchors.py"


rule export_vega:
    wildcard_constraints:
        export=one_of(EXPORTS, "NO_EXPORT"),
    input:
        unpack(export_inputs),
    output:
        pickle="results/{dataset}/export/{export}/features.pkl",
    params:
        valid_as=lambda wc: EXPORTS[wc.export].get("valid_as", "train"),
        features=lambda wc: canonical(pipeline_config.export_source(config, wc.export)["features"]),
        # An export that no longer names anchors removes the 35_anchor.pt an earlier run left beside the pickle.
        with_anchors=lambda wc: bool(pipeline_config.export_source(config, wc.export)["anchors"]),
    log:
        "logs/export_vega/{dataset}/{export}.log",
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(30),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/export_vega.py"


rule export_official_anchors:
    wildcard_constraints:
        export=one_of(EXPORTS, "NO_EXPORT"),
    input:
        anchors=lambda wc: anchor_path(require_export_dataset(wc)["anchors"]),
    output:
        official="results/{dataset}/export/{export}/35_anchor.pt",
    params:
        # a row per label id of the exported features.pkl (a shared set holds other datasets' classes too)
        classes=lambda wc: vega_label_order(dataset_class_list(wc.dataset)),
    log:
        "logs/export_official_anchors/{dataset}/{export}.log",
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    conda:
        "../../envs/clip.yaml"
    script:
        "../../scripts/export_official_anchors.py"
