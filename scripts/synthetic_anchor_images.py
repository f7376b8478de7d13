"""Rule synthetic_anchor_images: drawn faces per emotion, the demo's CLIP anchor image set."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.synthetic import make_anchor_image_set

    make_anchor_image_set(Path(snakemake.output.images), snakemake.params.classes, **snakemake.params.settings)
