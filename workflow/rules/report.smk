# Feature coverage per dataset and the benchmark summary, both shown in `snakemake --report` (which
# refuses while jobs are pending: ercpipe.report_guard).


rule feature_coverage:
    input:
        manifest="features/{dataset}/manifest.tsv",
        summary="features/{dataset}/summary.json",
        features=lambda wc: feature_files_of(wc.dataset),
    output:
        coverage="results/{dataset}/coverage.tsv",
        coverage_html=report(
            "results/{dataset}/coverage.html",
            caption="../report/coverage.rst",
            category="Data",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "feature coverage per split"},
        ),
    log:
        "logs/feature_coverage/{dataset}.log",
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/feature_coverage.py"


BENCHMARKED_JOBS = benchmarked_jobs()


rule benchmark_summary:
    input:
        products=sorted({product for _, product in BENCHMARKED_JOBS}),
    params:
        benchmarks=sorted(benchmark for benchmark, _ in BENCHMARKED_JOBS),  # the config's key order changes nothing
    output:
        table="results/benchmarks.tsv",
        table_html=report(
            "results/benchmarks.html",
            caption="../report/benchmarks.rst",
            category="Benchmarks",
            labels={"table": "wall time, peak memory and CPU time per job"},
        ),
    log:
        "logs/benchmark_summary.log",
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(5),
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/benchmark_summary.py"
