"""Rule encode_anchors: CLIP image embeddings of an anchor set and the per-class centers."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.anchors import encode_image_set

    encode_image_set(snakemake.input.images, snakemake.params.classes, snakemake.params.clip,
                     snakemake.output.anchors)
