"""A real one-node SLURM on localhost for the cluster tests (started and stopped by the test itself).

Needs Debian's slurm-wlm and munge (the Makefile's test target installs them) and root, because the
executor plugin drops SLURM_CONF before its inner srun: slurm.conf must live at /etc/slurm/slurm.conf.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

SLURM_CONF = Path("/etc/slurm/slurm.conf")


def unavailable_reason() -> str | None:
    """Why a local SLURM cannot be started here, or None if it can."""
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "squeue", "munged") if not _which(tool)]
    if missing:
        return f"SLURM tools not installed ({', '.join(missing)}); `make test` installs slurm-wlm and munge"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd and writing /etc/slurm/slurm.conf needs root"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next((str(p) for p in (Path("/usr/sbin") / tool,) if p.exists()), None)


def _slurm_conf(state: Path, spool: Path, cpus: int, memory_mb: int) -> str:
    return "\n".join([
        "ClusterName=ercpipe-test",
        "SlurmctldHost=localhost(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        # The node's CPUs and memory are what the tests configure, not what this host has: slurmd otherwise marks
        # a node configured with more memory than the host's invalid, and no job ever starts.
        "SlurmdParameters=config_overrides",
        f"StateSaveLocation={state}/ctld",
        f"SlurmdSpoolDir={spool}",
        f"SlurmctldPidFile={state}/slurmctld.pid",
        f"SlurmdPidFile={state}/slurmd.pid",
        f"SlurmctldLogFile={state}/slurmctld.log",
        f"SlurmdLogFile={state}/slurmd.log",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "MinJobAge=300",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _start_munge() -> None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run([_which("mungekey") or "mungekey", "--create"], check=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", _which("munged")], check=True)


def _stop_by_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_slurm(state: Path, cpus: int | None = None, memory_mb: int = 16000) -> Iterator[Path]:
    """Start munged, slurmctld and slurmd with a private state dir; yield the state dir; always stop them."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "ctld").mkdir(exist_ok=True)
    # slurmstepd makes a Unix socket per job in the spool folder, named within 108 bytes: a pytest folder (longer
    # still under pytest-xdist, .../popen-gw1/...) is too long, and every job then failed to launch and was held.
    spool = Path(tempfile.mkdtemp(prefix="slurmd-", dir="/tmp"))
    previous = SLURM_CONF.read_text() if SLURM_CONF.exists() else None
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(_slurm_conf(state, spool, cpus or os.cpu_count() or 2, memory_mb))
    try:
        _start_munge()
        subprocess.run([_which("slurmctld"), "-c"], check=True)
        subprocess.run([_which("slurmd"), "-N", "localhost"], check=True)
        deadline = time.time() + 60
        while True:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                break
            if time.time() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in state.glob("*.log"))
                raise RuntimeError(f"local SLURM did not become idle (sinfo: {out.stdout!r} {out.stderr!r})\n{logs}")
            time.sleep(0.5)
        yield state
    finally:
        _stop_by_pidfile(state / "slurmd.pid")
        _stop_by_pidfile(state / "slurmctld.pid")
        shutil.rmtree(spool, ignore_errors=True)
        if previous is None:
            SLURM_CONF.unlink(missing_ok=True)
        else:
            SLURM_CONF.write_text(previous)
