"""Rule feature_coverage: per split, how many utterances have each modality (missing faces/clips)."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.report import feature_coverage

    feature_coverage(snakemake.input.manifest, list(snakemake.input.features), snakemake.output.coverage,
                     snakemake.output.coverage_html, snakemake.input.summary)
