"""The benchmark scripts other than bench_gpu.py (tests/test_bench_gpu.py) at their smallest: they run as the docs
cite them, and a misspelt name is refused before any work."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def _bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_bench_finetune_prints_its_four_rows():
    """It called fine-tuning's class list with an argument fewer than that function takes, and crashed."""
    proc = _bench("bench_finetune.py", "--n", "40", "--steps", "1", "--batch-size", "4", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| none") or line.startswith("| previous")]
    assert len(rows) == 4 and all(float(row.split("|")[5]) > 0 for row in rows)


@pytest.mark.parametrize("script, args", [("bench_gpu.py", ["--device", "cpu", "--quick", "--stages", "clip"]),
                                          ("bench_features.py", ["--sizes", "tiny"]),
                                          ("bench_text.py", ["--extractors", "minilm2"])])
def test_a_misspelt_stage_extractor_or_size_is_refused_naming_the_choices(script, args):
    proc = _bench(script, *args)
    assert proc.returncode == 2 and "give a comma list of" in proc.stderr, proc.stderr[-2000:]
