"""Rule audio_features_shard: openSMILE functionals for the utterances of one shard."""
from pathlib import Path

from ercpipe.runlog import rule_logging

# snakemake.input.manifest is this shard's own manifest (rule build_manifest_shard): all of it is shard 0 of 1.
with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.features.audio import extract_shard

    extract_shard(snakemake.input.manifest, 0, 1,
                  Path(snakemake.input.wavs), snakemake.params.settings, snakemake.output.shard,
                  threads=snakemake.threads)
