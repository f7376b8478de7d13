"""Rule train_model: train one experiment with one seed; writes metrics, checkpoint and curves."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.device import job_device
    from ercpipe.train import resolve_experiment, run_training
    from ercpipe.train.presets import with_non_training_keys

    feature_paths = {key.removeprefix("features_"): Path(path) for key, path in snakemake.input.items()
                     if key.startswith("features_")}
    anchors = snakemake.input.get("anchors")
    # The config's feature settings ({modality: setting dict}) and the dataset's face selection: every
    # feature file is checked against them (settings hash, width, utterance ids) before training.
    feature_settings = getattr(snakemake.params, "feature_settings", None)
    face_selection = getattr(snakemake.params, "face_selection", None)
    classes = getattr(snakemake.params, "classes", None)  # the dataset's class list (None: summary.json's)
    # Left out of the params (they change no result: NON_TRAINING_KEYS), so taken from the config.
    configured = snakemake.config["experiments"].get(snakemake.wildcards.experiment, {})
    experiment = with_non_training_keys(dict(snakemake.params.experiment), configured)
    run_training(Path(snakemake.input.manifest), feature_paths, Path(anchors) if anchors else None,
                 resolve_experiment(experiment), int(snakemake.wildcards.seed),
                 Path(snakemake.output.metrics).parent, threads=snakemake.threads,
                 device=job_device(snakemake.config),
                 feature_settings=dict(feature_settings) if feature_settings is not None else None,
                 face_selection=dict(face_selection) if face_selection is not None else None,
                 classes=list(classes) if classes is not None else None)
