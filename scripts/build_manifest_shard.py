"""Rule build_manifest_shard: the manifest rows of one shard, opening only that shard's media."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.datasets.build import build_manifest_shard

    build_manifest_shard(snakemake.wildcards.dataset, dict(snakemake.params.dataset), int(snakemake.wildcards.shard),
                         snakemake.params.n_shards, Path(snakemake.output.manifest), Path(snakemake.output.issues))
