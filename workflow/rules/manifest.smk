# Raw dataset -> one manifest row per utterance, plus the issues file and a summary. Built per shard
# (the dialogue chunks of the extraction jobs), so fixing one clip or one CSV row re-runs one shard's
# manifest job and that shard's extraction jobs; the join then rewrites the dataset's manifest, and
# rule manifest_issues its issues.tsv and summary.json.


rule build_manifest_shard:
    wildcard_constraints:
        dataset=one_of(RAW_DATASETS, "NO_RAW_DATASET"),  # a pickle dataset's manifest: rule import_pickle
    input:
        shard_raw_input,
    output:
        manifest="features/{dataset}/manifest_shards/shard{shard}.tsv",
        issues="features/{dataset}/manifest_shards/shard{shard}.issues.tsv",
    params:
        dataset=lambda wc: reader_config(wc.dataset, without=NOT_SHARD_KEYS),
        n_shards=lambda wc: n_shards(wc.dataset),
        raw=raw_digest("shards"),
    log:
        "logs/build_manifest_shard/{dataset}/shard{shard}.log",
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
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
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
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
    output:
        manifest="features/{dataset}/manifest.tsv",
    params:
        dataset=lambda wc: reader_config(wc.dataset, without=FACE_KEYS),
        raw=raw_digest("dataset"),
    log:
        "logs/build_manifest/{dataset}.log",
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/build_manifest.py"


# Its own job: a rejected row (a duplicate transcript line, an unlabelled turn) belongs to no shard and is not
# in the manifest, so adding or fixing one changes only these two files (params `raw`), not what trains.
rule manifest_issues:
    wildcard_constraints:
        dataset=one_of(RAW_DATASETS, "NO_RAW_DATASET"),
    input:
        manifest="features/{dataset}/manifest.tsv",
        shard_issues=lambda wc: expand(
            "features/{{dataset}}/manifest_shards/shard{k}.issues.tsv", k=range(n_shards(wc.dataset))
        ),
    output:
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
        raw=raw_digest("issues"),
    log:
        "logs/manifest_issues/{dataset}.log",
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/manifest_issues.py"


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
