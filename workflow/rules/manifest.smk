# Raw dataset -> one manifest row per utterance, plus the issues file and a summary. Built per shard
# (the dialogue chunks of the extraction jobs), so fixing one clip or one CSV row re-runs one shard's
# manifest job and that shard's extraction jobs; the join then rewrites the dataset's manifest.


rule build_manifest_shard:
    wildcard_constraints:
        dataset=one_of(RAW_DATASETS, "NO_RAW_DATASET"),  # a pickle dataset's manifest: rule import_pickle
    input:
        shard_raw_input,
    output:
        manifest="features/{dataset}/manifest_shards/shard{shard}.tsv",
        issues="features/{dataset}/manifest_shards/shard{shard}.issues.tsv",
    params:
        dataset=lambda wc: reader_config(wc.dataset, with_split=False),
        n_shards=lambda wc: n_shards(wc.dataset),
        raw=raw_digest("shards"),
    log:
        "logs/build_manifest_shard/{dataset}/shard{shard}.log",
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/build_manifest_shard.py"


rule modality_manifest_shard:
    wildcard_constraints:
        dataset=one_of(RAW_DATASETS, "NO_RAW_DATASET"),
    input:
        shard_raw_input,
    output:
        manifest="features/{dataset}/manifest_shards/{modality}/shard{shard}.tsv",
    params:
        rows=modality_digest,
        n_shards=lambda wc: n_shards(wc.dataset),
    log:
        "logs/modality_manifest_shard/{dataset}/{modality}/shard{shard}.log",
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/modality_manifest_shard.py"


rule build_manifest:
    wildcard_constraints:
        dataset=one_of(RAW_DATASETS, "NO_RAW_DATASET"),  # a pickle dataset's manifest: rule import_pickle
    input:
        raw_input,
        shards=lambda wc: expand("features/{{dataset}}/manifest_shards/shard{k}.tsv", k=range(n_shards(wc.dataset))),
        shard_issues=lambda wc: expand(
            "features/{{dataset}}/manifest_shards/shard{k}.issues.tsv", k=range(n_shards(wc.dataset))
        ),
    output:
        manifest="features/{dataset}/manifest.tsv",
        issues=report(
            "features/{dataset}/issues.tsv",
            caption="../report/issues.rst",
            category="Data",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "flagged and rejected utterances"},
        ),
        summary="features/{dataset}/summary.json",
    params:
        dataset=lambda wc: reader_config(wc.dataset),
        raw=raw_digest("dataset"),
    log:
        "logs/build_manifest/{dataset}.log",
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/build_manifest.py"


rule utterance_audio:
    input:
        manifest="features/{dataset}/manifest_shards/audio/shard{shard}.tsv",
    output:
        wavs=directory("features/{dataset}/media/audio/shard{shard}"),
    log:
        "logs/utterance_audio/{dataset}/shard{shard}.log",
    threads: 2
    resources:
        mem_mb=shard_resource("utterance_audio", "mem_mb"),
        runtime=shard_resource("utterance_audio", "runtime"),
    conda:
        "../../envs/audio.yaml"
    script:
        "../../scripts/utterance_audio.py"
