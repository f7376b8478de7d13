"""Rule import_pickle: a feature pickle dataset's manifest.tsv, issues.tsv and summary.json."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.features.pickles import import_dataset

    import_dataset(snakemake.wildcards.dataset, dict(snakemake.params.dataset), Path(snakemake.output.manifest).parent)
