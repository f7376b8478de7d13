"""Rule export_official_anchors: an anchor set in the official 35_anchor.pt layout."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.anchors import export_official

    export_official(snakemake.input.anchors, snakemake.output.official, classes=snakemake.params.classes)
