"""Rule text_features_shard: encode the utterances of one shard with a transformers text encoder."""
from ercpipe.features import ExtractionContext, extract_shard
from ercpipe.runlog import rule_logging

# snakemake.input.manifest is this shard's own manifest (rule build_manifest_shard).
with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.device import job_device

    extract_shard("text", snakemake.input.manifest, snakemake.params.settings, snakemake.output.shard,
                  threads=snakemake.threads, device=job_device(snakemake.config),
                  context=ExtractionContext(encoder_dir=snakemake.input.get("encoder")))
