"""Rule audio_features_shard: openSMILE functionals for the utterances of one shard."""
from ercpipe.features import ExtractionContext, extract_shard
from ercpipe.runlog import rule_logging

# snakemake.input.manifest is this shard's own manifest (rule build_manifest_shard).
with rule_logging(snakemake.log[0], snakemake.threads):
    extract_shard("audio", snakemake.input.manifest, snakemake.params.settings, snakemake.output.shard,
                  threads=snakemake.threads, context=ExtractionContext(audio_dir=snakemake.input.wavs))
