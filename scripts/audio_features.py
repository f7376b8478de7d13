"""Rule audio_features_shard: openSMILE functionals for the utterances of one shard."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.features.audio import extract_shard

    extract_shard(snakemake.input.manifest, int(snakemake.wildcards.shard), snakemake.params.n_shards,
                  Path(snakemake.input.wavs), snakemake.params.settings, snakemake.output.shard,
                  threads=snakemake.threads)
