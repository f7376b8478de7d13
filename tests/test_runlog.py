"""Rule logs read without a terminal: progress bars become plain lines, nothing else is lost."""
from __future__ import annotations

import logging
import re

import pytest
from tqdm.auto import tqdm

from ercpipe.runlog import rule_logging


def test_progress_bars_become_a_line_every_ten_percent(tmp_path):
    log = tmp_path / "rule.log"
    with rule_logging(log) as logger:
        logger.info("starting")
        for epoch in range(3):  # a bar per epoch that is left behind, as nested bars are
            for _ in tqdm(range(40), desc="inner", leave=False, mininterval=0):
                pass
        for _ in tqdm(range(1000), desc="text", unit="utt", mininterval=0):
            pass
        print("printed by a library")
        logging.getLogger("ercpipe.test").info("finished")
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    text_lines = [line for line in lines if line.startswith("text:")]
    # 10 %, 20 %, ..., 100 % (tqdm already prints 100 % at 995/1000), then the complete bar.
    assert [int(re.search(r"(\d+)%", line).group(1)) for line in text_lines] == [10, 20, 30, 40, 50, 60, 70, 80,
                                                                                  90, 100, 100]
    assert text_lines[-1].split("|")[2].strip().startswith("1000/1000")
    assert sum(line.startswith("inner:") for line in lines) == 3 * 10  # 10 % ... 100 %; each restart counts again
    assert "printed by a library" in lines
    assert "starting" in lines[1] and any(line.endswith("finished") for line in lines)


def test_the_log_says_where_the_job_runs_before_its_work(tmp_path, monkeypatch):
    """A job killed for its memory left an empty log, and Snakemake shows no log after an empty one (not even the
    scheduler's, which says why): the first line is written before the job's work."""
    import os
    import socket

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "16000")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    log = tmp_path / "rule.log"
    with rule_logging(log):
        first = log.read_text()
    assert first.endswith(f"started: pid {os.getpid()} on {socket.gethostname()}, SLURM job 4242 (memory 16000)\n")


def test_a_bar_without_total_writes_no_redraws(tmp_path):
    log = tmp_path / "rule.log"
    with rule_logging(log):
        for _ in tqdm(iter(range(500)), desc="frames", mininterval=0):
            pass
    text = log.read_text()
    assert "\r" not in text and text.count("frames:") <= 1


def test_a_second_run_of_a_job_still_running_stops_naming_the_first(tmp_path):
    """A job outlives a killed Snakemake; the re-run's job and the left-over one then both write the outputs,
    and the one that ends last wins. The second one now stops at once; the lock goes with its holder."""
    import os
    import signal
    import subprocess
    import sys

    import pytest

    from ercpipe.runlog import JobAlreadyRunning

    log = tmp_path / "logs" / "train_model" / "seed0.log"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom ercpipe.runlog import rule_logging\n"
        f"with rule_logging({str(log)!r}):\n    print('ready', file=sys.__stdout__, flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(JobAlreadyRunning, match=rf"this job is already running \(pid {holder.pid} on .*; "
                                                    r"lock .*\.seed0\.log\.lock\), probably left over"):
            with rule_logging(log):
                raise AssertionError("the second run must not start")
        # Snakemake deletes a job's log before it starts: the refused copy's log then says why it stopped.
        log.unlink()
        with pytest.raises(JobAlreadyRunning):
            with rule_logging(log):
                raise AssertionError("the second run must not start")
        assert f"ERROR ercpipe: this job is already running (pid {holder.pid} on" in log.read_text()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with rule_logging(log) as logger:  # the holder is gone, so is its lock
        logger.info("second run")
    assert "second run" in log.read_text()


def test_a_job_run_by_a_snakemake_still_running_is_not_called_left_over(tmp_path):
    """Under --nolock (or two Snakemakes with overlapping targets) the refusal said the running copy was probably
    left over from a killed Snakemake and told the user to kill it: a healthy job of the other Snakemake."""
    import os
    import signal
    import subprocess
    import sys

    import pytest

    from ercpipe.runlog import JobAlreadyRunning

    log = tmp_path / "logs" / "seed0.log"
    job = ("import sys, time\nfrom ercpipe.runlog import rule_logging\n"
           f"with rule_logging({str(log)!r}):\n    print('ready', file=sys.__stdout__, flush=True)\n    time.sleep(60)\n")
    # A stand-in for Snakemake: a parent process whose command line names it, which runs the job and waits.
    starter = subprocess.Popen(["bash", "-c", f'"{sys.executable}" -c "$1"; true', "snakemake", job],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert starter.stdout.readline().strip() == "ready"
        assert f"started by Snakemake pid {starter.pid} on " in (log.parent / ".seed0.log.lock").read_text()
        with pytest.raises(JobAlreadyRunning, match=r"this job is already running \(pid \d+ on .*, started by "
                                                    rf"Snakemake pid {starter.pid} on .*\), and the Snakemake that "
                                                    r"started it is still running: .*--nolock.*Let it finish"):
            with rule_logging(log):
                raise AssertionError("the second run must not start")
    finally:
        os.killpg(starter.pid, signal.SIGKILL)
        starter.wait()


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    """A killed job leaves its `.NAME.tmpPID` behind (a fine-tuned encoder, a training state of a GB); the pid in
    the name made the next run never find it."""
    import os
    import subprocess
    import sys

    from ercpipe.io.atomic import atomic_dir, atomic_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    live = str(os.getppid())  # the process that started this one is running
    for name in ("last.pt", "encoder"):
        (tmp_path / f".{name}.tmp{dead}.pt").write_bytes(b"half")
        (tmp_path / f".{name}.tmp{live}.pt").write_bytes(b"in use")
        (tmp_path / f".{name}.tmp{dead}").mkdir()
    (tmp_path / f".other.tmp{dead}").write_bytes(b"another output's")
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"done")
    with atomic_dir(tmp_path / "encoder") as tmp:
        (tmp / "model.bin").write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".encoder.tmp" + live + ".pt", ".last.pt.tmp" + live + ".pt", f".other.tmp{dead}", "encoder", "last.pt"])


def test_a_job_stopped_with_ctrl_c_says_so_in_its_log(tmp_path):
    """A job interrupted while it was still starting (loading a model) left a log ending at its last step."""
    import pytest

    log = tmp_path / "job.log"
    with pytest.raises(KeyboardInterrupt):
        with rule_logging(log):
            logging.getLogger("ercpipe.test").info("loading")
            raise KeyboardInterrupt
    assert re.search(r"interrupted \(SIGINT, Ctrl-C\) after \d+\.\d s; run Snakemake again", log.read_text())


def test_outputs_name_the_commit_of_the_code_and_whether_it_was_changed(tmp_path):
    """ercpipe's version number is the same for every commit; the versions an output records carry the last commit
    of the checkout the job ran from that changed its code, and ".modified" where its code (not the config) differs
    from it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    project = tmp_path / "project"  # a checkout of this code: the package and a config, committed
    shutil.copytree(Path(__file__).resolve().parents[1] / "ercpipe", project / "ercpipe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / "config.yaml").write_text("datasets: {}\n")
    (project / ".gitignore").write_text("__pycache__/\n")  # as the project's: byte code is no change of code
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "code"]):
        subprocess.run([*git, *command], check=True, timeout=60)
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()

    def recorded() -> str:
        code = "from ercpipe.io.features import package_versions; print(package_versions(['ercpipe'])['ercpipe'])"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                              env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"}).stdout.strip()

    assert recorded().endswith(f"+g{head}")
    with open(project / "config.yaml", "a") as config:
        config.write("# a user's edit\n")
    assert recorded().endswith(f"+g{head}")  # the config is not the code
    for command in (["add", "config.yaml"], ["commit", "-q", "-m", "the user's config"]):  # nor is its commit
        subprocess.run([*git, *command], check=True, timeout=60)
    assert recorded().endswith(f"+g{head}")
    with open(project / "ercpipe" / "labels.py", "a") as code:
        code.write("# a change to the code\n")
    assert recorded().endswith(f"+g{head}.modified")
    (project / "ercpipe" / "labels.py").write_text((project / "ercpipe" / "labels.py").read_text()
                                                   .removesuffix("# a change to the code\n"))
    assert recorded().endswith(f"+g{head}")
    (project / "ercpipe" / "new_module.py").write_text("x = 1\n")  # a new file of code, not yet committed
    assert recorded().endswith(f"+g{head}.modified")
    shutil.rmtree(project / ".git")
    assert recorded() == __import__("ercpipe").__version__  # not a git checkout: the version alone


def test_idle_openmp_threads_sleep_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    """Spinning OpenMP threads made 2-thread training 14-18x slower than 1-thread on a shared machine; the job's
    scripts enter rule_logging before importing torch, so the OpenMP runtime starts with this policy."""
    import os

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with rule_logging(tmp_path / "a.log", threads=2):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a cluster node of one's own: the user's choice stands
    with rule_logging(tmp_path / "b.log", threads=2):
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_job_run_in_process_leaves_the_callers_settings_as_they_were(tmp_path, monkeypatch):
    """A job run in the caller's process (a test, a notebook) set the thread counts, the root log level and the
    capture of warnings for good: later work in that process ran single-threaded and logged at INFO."""
    import logging
    import os
    import warnings

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.WARNING)
    showwarning = warnings.showwarning
    with rule_logging(tmp_path / "a.log", threads=2):
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "2"
        assert root.level == logging.INFO and warnings.showwarning is not showwarning
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert "MKL_NUM_THREADS" not in os.environ and "OMP_WAIT_POLICY" not in os.environ
    assert root.level == logging.WARNING and warnings.showwarning is showwarning


_ENDING_JOB = """
import os, signal, sys, time
from ercpipe.runlog import outputs_complete, rule_logging
log = sys.argv[1]
with rule_logging(log):
    outputs_complete()
    os.kill(os.getpid(), signal.SIGINT)  # while the job winds down: logged and ignored
    time.sleep(0.2)
print("default handler after the job:", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
os.kill(os.getpid(), signal.SIGTERM)  # as the process ends (a job process only: ignored)
time.sleep(0.2)
print("ended normally", flush=True)
"""


@pytest.mark.parametrize("under_snakemake", [True, False])
def test_a_stop_once_the_jobs_outputs_are_complete_does_not_fail_it(tmp_path, under_snakemake):
    """A SIGTERM that came after a job had written its outputs (its log said "done", the interpreter was shutting
    down) ended it by the default action: Snakemake then deleted the complete outputs. In a job process stops stay
    ignored to the end; run in-process (not under Snakemake), the caller's handlers come back after the job."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(_ENDING_JOB)
    log = tmp_path / "job.log"
    command = [sys.executable, str(script), str(log)]
    if under_snakemake:  # a parent whose command line names snakemake, as a job's shell does
        command = ["sh", "-c", '"$@"; exit $?', "snakemake-job", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "SIGINT after the job's outputs were complete: ignored; the job ends normally" in log.read_text()
    assert "done in" in log.read_text()
    if under_snakemake:
        assert result.returncode == 0 and "ended normally" in result.stdout, result.stderr
    else:
        assert result.returncode == -signal.SIGTERM, result.stderr
        assert "default handler after the job: True" in result.stdout


def test_a_job_whose_log_was_replaced_while_it_ran_appends_its_log(tmp_path):
    """Snakemake deletes a job's log before starting it again: a left-over run of the job (a killed Snakemake's)
    wrote on to the deleted file, and the log held only the re-run's refusal; the left-over run's record was lost."""
    log = tmp_path / "seed0.log"
    with rule_logging(log) as logger:
        logger.info("epoch 1: valid 0.5")
        log.unlink()
        log.write_text("ERROR ercpipe: this job is already running (pid 1 ...)\n")  # the refused re-run's line
        logger.info("epoch 2: valid 0.6")
    text = log.read_text()
    assert text.startswith("ERROR ercpipe: this job is already running (pid 1 ...)\n--- below: the log of pid ")
    assert "epoch 1: valid 0.5" in text and "epoch 2: valid 0.6" in text and " done in " in text
    # A log left in place is written once.
    with rule_logging(log) as logger:
        logger.info("again")
    assert log.read_text().count("started: pid") == 1 and "again" in log.read_text()


def test_a_killed_report_leaves_the_last_good_one(tmp_path):
    """Snakemake's reporter opens its path in place: a kill during `--report` left an empty report.html. It now
    writes a staged copy of the same name (a .zip names its folder after it), moved into place at the end."""
    from types import SimpleNamespace

    import pytest

    from ercpipe.io.atomic import staged_attribute_path

    report = tmp_path / "results" / "report.html"
    report.parent.mkdir()
    report.write_text("last good report")
    settings = SimpleNamespace(path=report)
    with pytest.raises(KeyboardInterrupt):
        with staged_attribute_path(settings) as staged:
            assert settings.path == staged and staged.name == "report.html" and staged.parent != report.parent
            staged.write_text("half a rep")
            raise KeyboardInterrupt
    assert report.read_text() == "last good report" and settings.path == report
    with staged_attribute_path(settings):
        settings.path.write_text("new report")
    assert report.read_text() == "new report" and settings.path == report
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.html"]  # nothing staged is left
