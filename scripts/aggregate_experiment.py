"""Rule aggregate_experiment: mean +- std over seeds, curves, confusion matrix and t-SNE plots."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.train import aggregate

    aggregate([Path(p).parent for p in snakemake.input.runs], Path(snakemake.output.summary).parent)
