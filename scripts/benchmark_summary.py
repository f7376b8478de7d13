"""Rule benchmark_summary: one table of the extraction, anchor and training jobs' `benchmark:` files."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.report import benchmark_summary

    # Job names are the benchmark paths below results/benchmarks/, the folder beside the table.
    root = Path(snakemake.output.table).parent / "benchmarks"
    benchmark_summary(list(snakemake.params.benchmarks), root, snakemake.output.table, snakemake.output.table_html)
