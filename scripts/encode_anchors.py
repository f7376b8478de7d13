"""Rule encode_anchors: CLIP image embeddings of an anchor set and the per-class centers."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.anchors import encode_image_set
    from ercpipe.device import job_device

    # batch_size only says how the images are fed: from the config, not the params (changing it re-runs nothing).
    batch_size = snakemake.config["anchors"][snakemake.wildcards.anchor_set]["clip"].get("batch_size", 32)
    encode_image_set(snakemake.input.images, snakemake.params.classes, snakemake.params.clip,
                     snakemake.output.anchors, batch_size=batch_size, device=job_device(snakemake.config))
