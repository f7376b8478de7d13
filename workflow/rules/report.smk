# Feature coverage per dataset and the benchmark summary, both shown in `snakemake --report`.


rule feature_coverage:
    input:
        manifest="features/{dataset}/manifest.tsv",
        features=lambda wc: feature_files_of(wc.dataset),
    output:
        coverage=report(
            "results/{dataset}/coverage.tsv",
            caption="../report/coverage.rst",
            category="Data",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "feature coverage per split"},
        ),
    log:
        "logs/feature_coverage/{dataset}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/feature_coverage.py"
