# ercpipe: raw emotion-in-conversation datasets -> features -> anchors -> SDT / SDT-VEGA -> report.
# Run `snakemake --cores N` (add --use-conda to use the per-rule envs); see README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/anchors.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        all_targets(),
    default_target: True
