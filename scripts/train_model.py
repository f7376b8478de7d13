"""Rule train_model: train one experiment with one seed; writes metrics, checkpoint and curves."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.train import resolve_experiment, run_training

    feature_paths = {key.removeprefix("features_"): Path(path) for key, path in snakemake.input.items()
                     if key.startswith("features_")}
    anchors = snakemake.input.get("anchors")
    run_training(Path(snakemake.input.manifest), feature_paths, Path(anchors) if anchors else None,
                 resolve_experiment(snakemake.params.experiment), int(snakemake.wildcards.seed),
                 Path(snakemake.output.metrics).parent, threads=snakemake.threads)
