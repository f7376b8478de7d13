"""Rule import_pickle_features: one modality of a feature pickle dataset as an HDF5 feature file."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.features.pickles import import_dataset_features

    # The dataset's settings as written (the params hold them as the import resolves them, for re-runs).
    name = snakemake.wildcards.dataset
    import_dataset_features(name, dict(snakemake.config["datasets"][name]), snakemake.wildcards.modality,
                            snakemake.output.features, expected_layout=snakemake.params.setting.get("layout"))
