"""Rule manifest_issues: a dataset's issues.tsv and summary.json (rejected rows, flags, counts, release checks)."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.datasets.build import write_dataset_issues

    write_dataset_issues(snakemake.wildcards.dataset, dict(snakemake.params.dataset), Path(snakemake.input.manifest),
                         list(snakemake.input.shard_issues), Path(snakemake.output.summary).parent)
