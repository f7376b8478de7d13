# ercpipe: raw emotion-in-conversation datasets -> features -> anchors -> SDT / SDT-VEGA -> report.
# Run `snakemake --cores N` (add --use-conda to use the per-rule envs); see README.md.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml (the demo) is the default; `--configfile other.yaml` replaces it instead of being merged into
# it, so a real-data configuration never inherits the demo's experiments. `--config key=value` still
# overrides single values of whichever file is used.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/anchors.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


# `all` only collects targets; everything else is a real job (sbatch on a cluster).
localrules:
    all,


rule all:
    input:
        all_targets(),
    default_target: True
