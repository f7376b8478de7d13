# The embedded synthetic raw corpus: lets the whole pipeline run with no dataset and no internet.


rule synthetic_corpus:
    output:
        root=directory("raw/synthetic/{dataset}"),
    params:
        fmt=lambda wc: DATASETS[wc.dataset]["format"],
        settings=lambda wc: synthetic_corpus_settings(DATASETS[wc.dataset]["format"]),
    log:
        "logs/synthetic_corpus/{dataset}.log",
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/synthetic_corpus.py"
