"""Rule select_experiment: rank the candidate experiments on dev and publish the chosen one's summary."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.train import select_experiment

    candidates = snakemake.params.candidates
    select_experiment(dict(zip(candidates, snakemake.input.summaries)), Path(snakemake.output.summary).parent,
                      snakemake.params.metric, ensemble=snakemake.params.ensemble, skipped=snakemake.params.skipped)
