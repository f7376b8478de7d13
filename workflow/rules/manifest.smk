# Raw dataset -> one manifest row per utterance, plus the issues file and a summary.


rule build_manifest:
    input:
        raw_input,
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
        dataset=lambda wc: {k: v for k, v in DATASETS[wc.dataset].items() if k not in ("shards",)},
        root=lambda wc: str(pipeline_config.dataset_root(wc.dataset, DATASETS[wc.dataset])),
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
        manifest="features/{dataset}/manifest.tsv",
    output:
        wavs=directory("features/{dataset}/media/audio/shard{shard}"),
    params:
        n_shards=lambda wc: n_shards(wc.dataset),
    log:
        "logs/utterance_audio/{dataset}/shard{shard}.log",
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../envs/audio.yaml"
    script:
        "../../scripts/utterance_audio.py"
