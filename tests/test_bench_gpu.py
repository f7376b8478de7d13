"""bench/bench_gpu.py (the one-command GPU check) runs end to end on the CPU at its --quick size: one table row
per stage with a positive speed, and a stage that fails is reported as failed (exit status 1), not hidden."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "bench" / "bench_gpu.py"
STAGES = ("train: whole run", "text: packaged MiniLM", "visual: mtcnn+densenet121", "visual: mtcnn+denseface",
          "anchors: CLIP", "audio: openSMILE IS10")


def _run(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    return proc, json.loads(out.read_text()) if out.exists() else {}


def _table_rows(stdout: str) -> dict[str, list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_quick_run_on_cpu_has_every_stage_with_a_speed(tmp_path):
    proc, result = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = _table_rows(proc.stdout)
    assert len(table) == len(STAGES)
    for prefix in STAGES:
        matches = [name for name in table if name.startswith(prefix)]
        assert len(matches) == 1, (prefix, list(table))
        row = table[matches[0]]
        assert float(row["utterances/s"]) > 0, row
        assert float(row["peak RSS (MB)"]) > 0, row
        assert row["peak CUDA (MB)"] == "—"  # CPU run
    assert table[next(n for n in table if n.startswith("audio"))]["device"] == "cpu (no GPU path)"
    rows = result["rows"]
    assert [r["stage"] for r in rows] == list(table)
    assert all("error" not in r and r["utt_per_s"] > 0 and r["items"] > 0 for r in rows)
    assert result["machine"]["device"] == "cpu" and result["machine"]["size"] == "quick"


def test_a_failing_stage_is_a_failed_row_and_exit_status_1(tmp_path):
    # bench_train.py refuses an unknown option: the train stage fails, the others are not run (--stages)
    proc, result = _run(tmp_path, "--stages", "train", "--train-args=--no-such-option")
    assert proc.returncode == 1
    table = _table_rows(proc.stdout)
    assert len(table) == 1
    (row,) = table.values()
    assert row["utterances/s"] == "FAILED" and "no-such-option" in row["note"]
    assert "error" in result["rows"][0]
