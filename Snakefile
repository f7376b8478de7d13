# ercpipe: raw emotion-in-conversation datasets -> features -> anchors -> SDT / SDT-VEGA -> report.
# Run `snakemake --cores N` (add --use-conda to use the per-rule envs); see README.md.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")


# The library (ercpipe/) reaches the Snakefile and every job from THIS checkout, never from an install:
# envs/*.yaml hold only pinned third-party packages, so one --conda-prefix can serve several checkouts
# (docs/design.md, "Conda environments"). Set before anything imports ercpipe; a cluster job re-parses this
# file on its node, so it gets the same paths there.
# - sys.path (Snakemake also inserts this folder when it reads the file): common.smk's `from ercpipe import`
#   needs no install. Snakemake's `script:` preamble appends this process's sys.path to the job's, and that
#   is how a --use-conda job gets ercpipe: it runs with the env's python and Snakemake removes PYTHONPATH
#   from its environment (unless --conda-not-block-search-path-envvars); the env itself has no ercpipe.
# - PYTHONPATH, first: a job run without conda uses Snakemake's own interpreter, and an ercpipe installed
#   there (`pip install .`, another version) would otherwise come before the appended checkout.
_CHECKOUT = workflow.basedir
if _CHECKOUT in sys.path:
    sys.path.remove(_CHECKOUT)
sys.path.insert(0, _CHECKOUT)
_pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _CHECKOUT]
# (update(), not os.environ[...] =: the linter reads the latter as a variable the user must set)
os.environ.update(PYTHONPATH=os.pathsep.join([_CHECKOUT, *_pythonpath]))


# config.yaml (the demo) is the default; `--configfile other.yaml` replaces it instead of being merged into
# it, so a real-data configuration never inherits the demo's experiments. `--config key=value` still
# overrides single values of whichever file is used.
if not workflow.overwrite_configfiles:
    # Snakemake's own error for a YAML mistake names neither the file nor the line (a file given with
    # --configfile is read before this runs: `ercpipe check-config FILE` finds its line).
    from ercpipe.config import yaml_syntax_problem

    if os.path.isfile("config.yaml") and (_yaml_problem := yaml_syntax_problem("config.yaml")):
        raise WorkflowError(f"Invalid config: {_yaml_problem}")

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/anchors.smk"
include: "workflow/rules/pickles.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


onstart:
    check_cluster_tools()
    check_interpreter_path()


# `all` only collects targets; everything else is a real job (sbatch on a cluster).
localrules:
    all,


rule all:
    input:
        lambda wc: all_targets(),
    default_target: True
