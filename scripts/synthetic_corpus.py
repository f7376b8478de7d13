"""Rule synthetic_corpus: generate the embedded raw corpus in the dataset owner's layout."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe import synthetic

    root = Path(snakemake.output.root)
    if snakemake.params.fmt == "iemocap":
        from ercpipe.datasets.iemocap import DEFAULT_SPLIT_FILE

        synthetic.generate_iemocap(root, snakemake.params.settings, DEFAULT_SPLIT_FILE)
    else:
        synthetic.generate_meld(root, snakemake.params.settings)
