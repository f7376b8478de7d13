"""Rule visual_features_shard: frames -> MTCNN speaker face -> DenseNet, mean-pooled per utterance."""
from ercpipe.runlog import rule_logging

# snakemake.input.manifest is this shard's own manifest (rule build_manifest_shard): all of it is shard 0 of 1.
with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.features.visual import extract_shard

    extract_shard(snakemake.input.manifest, 0, 1,
                  snakemake.params.settings, snakemake.params.face_selection, snakemake.output.shard,
                  threads=snakemake.threads)
