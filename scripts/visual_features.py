"""Rule visual_features_shard: frames -> MTCNN speaker face -> DenseNet, mean-pooled per utterance."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.features.visual import extract_shard

    extract_shard(snakemake.input.manifest, int(snakemake.wildcards.shard), snakemake.params.n_shards,
                  snakemake.params.settings, snakemake.params.face_selection, snakemake.output.shard,
                  threads=snakemake.threads)
