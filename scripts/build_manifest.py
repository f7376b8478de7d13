"""Rule build_manifest: read a raw dataset into manifest.tsv, issues.tsv and summary.json."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.datasets.build import build_manifest

    dataset_cfg = dict(snakemake.params.dataset, root=snakemake.params.root)
    dataset_cfg.pop("synthetic", None)
    build_manifest(snakemake.wildcards.dataset, dataset_cfg, Path(snakemake.output.manifest).parent)
