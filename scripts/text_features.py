"""Rule text_features_shard: encode the utterances of one shard with a transformers text encoder."""
from pathlib import Path

from ercpipe.runlog import rule_logging

# snakemake.input.manifest is this shard's own manifest (rule build_manifest_shard): all of it is shard 0 of 1.
with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.features.text import extract_shard

    encoder = snakemake.input.get("encoder")
    extract_shard(snakemake.input.manifest, 0, 1,
                  snakemake.params.settings, snakemake.output.shard, threads=snakemake.threads,
                  encoder_dir=Path(encoder) if encoder else None)
