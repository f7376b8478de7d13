"""Rule select_experiment: rank the candidate experiments on dev and publish the chosen one's summary."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.train import select_experiment

    select_experiment(dict(snakemake.input.items()), Path(snakemake.output.summary).parent, snakemake.params.metric)
