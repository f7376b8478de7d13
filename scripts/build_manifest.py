"""Rule build_manifest: join the manifest shards into manifest.tsv."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.datasets.build import join_manifest_shards

    join_manifest_shards(snakemake.wildcards.dataset, dict(snakemake.params.dataset), list(snakemake.input.shards),
                         Path(snakemake.output.manifest))
