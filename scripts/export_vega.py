"""Rule export_vega: a dataset's manifest and text/audio/visual feature files as VEGA's 7-tuple pickle."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.features.pickles import export_vega, remove_stale_anchor_export

    features = {key.removeprefix("features_"): path for key, path in snakemake.input.items()
                if key.startswith("features_")}
    export_vega(snakemake.input.manifest, features, snakemake.output.pickle, valid_as=snakemake.params.valid_as)
    if not snakemake.params.with_anchors:
        remove_stale_anchor_export(snakemake.output.pickle)
