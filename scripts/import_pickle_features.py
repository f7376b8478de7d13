"""Rule import_pickle_features: one modality of a feature pickle dataset as an HDF5 feature file."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.features.pickles import import_dataset_features

    import_dataset_features(snakemake.wildcards.dataset, dict(snakemake.params.dataset), snakemake.wildcards.modality,
                            snakemake.output.features, expected_layout=snakemake.params.setting.get("layout"))
