"""Rule modality_manifest_shard: one shard's rows as one modality's extraction reads them."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.config import reader_config
    from ercpipe.datasets import NOT_SHARD_KEYS
    from ercpipe.datasets.build import build_modality_shard

    # The dataset's settings come from the config, not the params: the job re-runs on its `rows` digest only
    # (what the modality reads), so a setting that changes nothing of it (a relabelling) re-runs no extraction.
    name = snakemake.wildcards.dataset
    build_modality_shard(name, reader_config(name, snakemake.config["datasets"][name], without=NOT_SHARD_KEYS),
                         int(snakemake.wildcards.shard), snakemake.params.n_shards, snakemake.wildcards.modality,
                         Path(snakemake.output.manifest))
