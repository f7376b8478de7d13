"""Rule aggregate_experiment: mean +- std over seeds, curves, confusion matrix and t-SNE plots."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.train import aggregate

    # The experiment's settings now: a seed trained with others (left over from a killed run) is refused.
    aggregate([Path(p).parent for p in snakemake.input.runs], Path(snakemake.output.summary).parent,
              expected=dict(snakemake.params.experiment))
