"""Rule import_pickle: a feature pickle dataset's manifest.tsv, issues.tsv and summary.json."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.features.pickles import import_dataset

    # The dataset's settings as written (the params hold them as the import resolves them, for re-runs).
    name = snakemake.wildcards.dataset
    import_dataset(name, dict(snakemake.config["datasets"][name]), Path(snakemake.output.manifest).parent)
