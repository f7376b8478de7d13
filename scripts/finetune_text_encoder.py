"""Rule finetune_text_encoder: fine-tune the text encoder on the training split before extraction."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.device import job_device
    from ercpipe.features.finetune import finetune_text_encoder

    finetune_text_encoder(snakemake.input.manifest, snakemake.params.settings, Path(snakemake.output.encoder),
                          threads=snakemake.threads, classes=list(snakemake.params.classes),
                          device=job_device(snakemake.config))
