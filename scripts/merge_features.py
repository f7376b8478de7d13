"""Rule merge_features: concatenate the shard files of one feature setting in manifest order."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.io import features, manifest

    ids = manifest.read(snakemake.input.manifest)["utterance_id"].tolist()
    features.merge(list(snakemake.input.shards), snakemake.output.features, ids)
