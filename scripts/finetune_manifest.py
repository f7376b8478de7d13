"""Rule finetune_manifest: the train and valid rows that text fine-tuning reads."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.config import reader_config
    from ercpipe.datasets.build import build_finetune_rows

    # The dataset's settings come from the config, not the params: the job re-runs on its `rows` digest only.
    name = snakemake.wildcards.dataset
    build_finetune_rows(name, reader_config(name, snakemake.config["datasets"][name]), Path(snakemake.output.manifest))
