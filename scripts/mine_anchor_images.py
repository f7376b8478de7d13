"""Rule mine_anchor_images: face crops of the training utterances closest to each class mean."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.anchors import mine_anchor_images

    # dataset / visual name the inputs; the miner itself takes only its own settings.
    settings = {k: v for k, v in snakemake.params.settings.items() if k not in ("dataset", "visual")}
    mine_anchor_images(snakemake.input.manifest, snakemake.input.visual, snakemake.params.classes,
                       settings, Path(snakemake.output.images),
                       snakemake.params.face_settings, snakemake.params.face_selection)
