"""Shared test set-up: offline hubs, the repository root, and a small synthetic raw corpus."""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Nothing may download weights or data during the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Run inside a scheduler's job (an interactive SLURM allocation), training would read that job's time limit from
# squeue and stop early, and the jobs' logs would name its limits: the tests see a workstation, as on CI.
for _var in [v for v in os.environ if v.startswith("SLURM_")] + ["ERCPIPE_JOB_END_TIME"]:
    os.environ.pop(_var, None)

REPO = Path(__file__).resolve().parents[1]
# The torch device of the training and fine-tuning tests: cpu (CI); ERCPIPE_TEST_DEVICE=cuda runs them on a GPU,
# with the CUDA-only tests (fp16 autocast) that are skipped elsewhere.
TEST_DEVICE = os.environ.get("ERCPIPE_TEST_DEVICE", "cpu")
SHARED = REPO.parent / "shared"


def python_as_a_user(code: str) -> subprocess.CompletedProcess:
    """Run `code` in Python as a process that file permissions apply to: root (CI) drops its capabilities to
    override them, so that a chmod 000 file is unreadable as it is to a researcher's account."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux): file permissions cannot be applied")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def meld_csv_dir() -> Path:
    """The real MELD CSVs (../shared/data/meld); tests that need them skip with a reason if absent."""
    path = Path(os.environ.get("ERCPIPE_MELD_CSV_DIR", SHARED / "data" / "meld"))
    if not (path / "train_sent_emo.csv").exists():
        pytest.skip(f"real MELD CSVs not found at {path} (set ERCPIPE_MELD_CSV_DIR)")
    return path


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """The whole demo DAG (smaller corpus, few epochs) run once locally: (workdir, configfile, output)."""
    from workflow_run import small_config, snakemake, write_config

    workdir = tmp_path_factory.mktemp("pipeline") / "local"
    configfile = write_config(workdir, small_config())
    result = snakemake(workdir, configfile, "--cores", "2")
    return workdir, configfile, result.stdout


# `make test` runs one pytest-xdist worker per core plus one (Makefile). Each module stays on one worker, so
# its module-scoped fixtures (a trained model, a DAG run) are built once, and the modules that read the demo DAG's
# session run (pipeline_run) form one unit, handed out first since it is the longest, then the modules with a DAG
# fixture. (xdist's own `loadgroup` cannot do this under pytest 9.2: the group it appends to a test's id is lost.)
PIPELINE_RUN_GROUP = "pipeline_run"


@functools.cache
def _pipeline_run_modules() -> frozenset[str]:
    """The test modules with a test or fixture taking pipeline_run (the controller sees no fixtures: it reads the
    files)."""
    takes = re.compile(r"^def \w+\([^)]*\bpipeline_run\b", re.MULTILINE)
    return frozenset(path.name for path in Path(__file__).parent.glob("test_*.py") if takes.search(path.read_text()))


@functools.cache
def _dag_fixture_modules() -> frozenset[str]:
    """The test modules whose module-scoped fixture runs a whole DAG (minutes): handed out early, so that no
    worker is left with one of them at the end while the other idles."""
    fixture = re.compile(r'@pytest\.fixture\(scope="module"\)\ndef \w+\(.*?(?=\n(?:@|def |class )|\Z)', re.DOTALL)
    return frozenset(path.name for path in Path(__file__).parent.glob("test_*.py")
                     if any("snakemake(" in match.group(0) for match in fixture.finditer(path.read_text())))


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker: the same stable order on every worker
        shared, dag = _pipeline_run_modules(), _dag_fixture_modules()
        items.sort(key=lambda item: (item.path.name not in shared, item.path.name not in dag))


def pytest_xdist_make_scheduler(config, log):
    if config.option.dist != "load":  # another --dist given on the command line is honoured
        return None
    from xdist.scheduler import LoadScopeScheduling

    shared = _pipeline_run_modules()

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return PIPELINE_RUN_GROUP if Path(module).name in shared else module

    config.option.loadscopereorder = False  # collection order: the pipeline_run unit first
    return ModuleScheduling(config, log)
