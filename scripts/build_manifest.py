"""Rule build_manifest: join the manifest shards into manifest.tsv, issues.tsv and summary.json."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.datasets.build import join_manifest_shards

    join_manifest_shards(snakemake.wildcards.dataset, dict(snakemake.params.dataset), list(snakemake.input.shards),
                         list(snakemake.input.shard_issues), Path(snakemake.output.manifest).parent)
