"""Logging for rule scripts: everything (logging records, tqdm bars, warnings) goes to the rule's log."""
from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

from ercpipe.errors import ErcpipeError

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PERCENT = re.compile(r"^(?P<desc>.*?)\s*(?P<pct>\d{1,3})%\|")
_N_OF_TOTAL = re.compile(r"\|\s*(\d+)/(\d+)\b")
_COUNT = re.compile(r"^(?P<desc>.*?):?\s*\d+(?:\.\d+)?\w*it(?:/s)?\b|^(?P<desc2>.*?):?\s*\d+it \[")


class ProgressLines(io.TextIOBase):
    """A text stream that turns tqdm's terminal redraws into plain lines for a log file.

    tqdm redraws a bar with `\\r` and moves between nested bars with escape sequences; in a file that
    is one endless line of control characters. Here a bar is written as a line of its own each time it
    passes another `step` percent (10 %, 20 %, ..., 100 %), a bar without a total at most every
    `every_s` seconds, and a bar that restarts (a new epoch's) starts counting again; blank redraws and
    escape sequences are dropped. Everything else written to the stream passes through unchanged.
    """

    def __init__(self, stream, step: int = 10, every_s: float = 30.0) -> None:
        self.stream, self.step, self.every_s = stream, step, every_s
        self.pending = ""
        self.shown: dict[str, int] = {}  # bar description -> the last step written
        self.last_time: dict[str, float] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += _ANSI.sub("", text)
        *segments, self.pending = re.split(r"(\r|\n)", self.pending)
        for segment, end in zip(segments[::2], segments[1::2]):
            self._segment(segment, end)
        return len(text)

    def _segment(self, text: str, end: str) -> None:
        if not text.strip():
            return
        bar = _PERCENT.match(text)
        if bar:
            desc, counts = bar.group("desc"), _N_OF_TOTAL.search(text)
            # The position in steps; the last step only when the bar is complete (tqdm shows 100 % at 99.5 %).
            done = counts is not None and counts.group(1) == counts.group(2)
            position = 100 // self.step + 1 if done else int(bar.group("pct")) // self.step
            if position < self.shown.get(desc, 0):
                self.shown[desc] = 0  # the bar started again
            if position > self.shown.get(desc, 0):
                self.shown[desc] = position
                self.stream.write(text.rstrip() + "\n")
            return
        count = _COUNT.match(text) if end == "\r" or "it/s]" in text or "?it/s]" in text else None
        if count:
            desc = count.group("desc") or count.group("desc2") or ""
            now = time.monotonic()
            if now - self.last_time.setdefault(desc, now) >= self.every_s:
                self.last_time[desc] = now
                self.stream.write(text.rstrip() + "\n")
            return
        self.stream.write(text + ("\n" if end else ""))

    def flush(self) -> None:
        if self.pending:
            self._segment(self.pending, "")
            self.pending = ""
        self.stream.flush()


class JobAlreadyRunning(ErcpipeError, RuntimeError):
    """Another process runs the same job (same log file) and would write the same outputs."""


def worker_context():
    """The multiprocessing context of a job's worker processes: fork where the platform has it. The rule scripts run
    as Snakemake `script:` files, which spawn and forkserver would import again in every worker (re-running the
    job); start the pool before the job makes objects a fork must not copy (an openSMILE instance, threads)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _is_snakemake(pid: int) -> bool:
    """Whether process `pid` runs Snakemake (Linux: its command line)."""
    try:
        return b"snakemake" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _snakemake_ancestor() -> int | None:
    """The pid of the Snakemake this job runs under (the nearest ancestor running it; None elsewhere, or off
    Linux): a job it still runs is no left-over of a killed one."""
    pid = os.getppid()
    for _ in range(8):  # snakemake -> a shell -> python: a few levels at most
        if pid <= 1:
            return None
        if _is_snakemake(pid):
            return pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent's pid
    return None


@contextlib.contextmanager
def only_run_of_this_job(log_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock beside the job's log file for the whole job, or refuse to start.

    A job outlives a Snakemake that is killed (kill -9, the out-of-memory killer; on a cluster, the login
    node's Snakemake): the re-run then starts the same job again, and whichever ends last writes the outputs
    (the left-over one, with the old settings, behind Snakemake's back). The lock makes the second one stop
    at once, naming the first. The kernel releases it when its holder ends, however it ends."""
    lock_path = Path(log_path).with_name(f".{Path(log_path).name}.lock")
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown pid"
            starter = re.search(r"started by Snakemake pid (\d+) on (\S+)", holder)
            if starter and starter.group(2) == socket.gethostname() and _is_snakemake(int(starter.group(1))):
                raise JobAlreadyRunning(
                    f"this job is already running ({holder}; lock {lock_path}), and the Snakemake that started it is "
                    "still running: another Snakemake in this project runs it now (one started with --nolock, two "
                    "Snakemakes given overlapping targets, or a cluster job's Snakemake); two copies would write the "
                    "same outputs. Let it finish, then run Snakemake again") from None
            raise JobAlreadyRunning(
                f"this job is already running ({holder}; lock {lock_path}), probably left over from a Snakemake that "
                "was killed; it would overwrite this job's outputs when it ends. Stop it (kill PID on that host) or "
                "let it finish, then run Snakemake again") from None
        handle.seek(0)
        handle.truncate()
        starter = _snakemake_ancestor()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}"
                     + (f", started by Snakemake pid {starter} on {socket.gethostname()}" if starter else "") + "\n")
        handle.flush()
        yield
    finally:
        handle.close()


logger = logging.getLogger(__name__)
JOB_END_VARIABLE = "ERCPIPE_JOB_END_TIME"


def _slurm_time_left(text: str) -> float | None:
    """Seconds in squeue's %L ("[days-]hours:minutes:seconds", "minutes:seconds"); None for UNLIMITED / NOT_SET."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def job_end_time() -> float | None:
    """When the scheduler will stop this job (Unix time), or None when no limit is known: the environment
    variable ERCPIPE_JOB_END_TIME (Unix seconds; for other schedulers) or, in a SLURM job, its time left as
    squeue reports it. Training uses it to write its resume state after every epoch near the end."""
    if os.environ.get(JOB_END_VARIABLE):
        try:
            return float(os.environ[JOB_END_VARIABLE])
        except ValueError:
            logger.warning("%s=%r is not a Unix time in seconds; ignored", JOB_END_VARIABLE,
                           os.environ[JOB_END_VARIABLE])
            return None
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format", "%L"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.warning("the time left of SLURM job %s is unknown (squeue: %s)", job, err)
        return None
    left = _slurm_time_left(out.stdout) if out.returncode == 0 else None
    if left is None and out.stdout.strip() not in ("UNLIMITED", "NOT_SET"):
        logger.warning("the time left of SLURM job %s is unknown (squeue said %r %r)", job, out.stdout.strip(),
                       out.stderr.strip()[-200:])
    return None if left is None else time.time() + left


def _scheduler_limits() -> str:
    """The SLURM job and the limits it runs under, when it runs in one."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return ""
    limits = [f"{name} {os.environ[var]}" for name, var in (("memory", "SLURM_MEM_PER_NODE"),
                                                             ("cpus", "SLURM_CPUS_PER_TASK")) if os.environ.get(var)]
    return f", SLURM job {job}" + (f" ({', '.join(limits)})" if limits else "")


def _keep_a_replaced_log(stream, log_path: str | os.PathLike) -> None:
    """Snakemake deletes a job's log before it starts the job. When it starts one again that a killed Snakemake
    left running, the running one writes on to a file no longer listed, and the log shows only the second copy's
    refusal (only_run_of_this_job): the job's own record (epochs, choices, what it wrote) would be lost. So a job
    whose log file was replaced appends what it wrote to the file at that path now."""
    try:
        mine, listed = os.fstat(stream.fileno()), os.stat(log_path)
        if (mine.st_dev, mine.st_ino) == (listed.st_dev, listed.st_ino):
            return
    except FileNotFoundError:
        pass
    stream.flush()
    stream.seek(0)
    with open(log_path, "a", encoding="utf-8") as current:
        current.write(f"--- below: the log of pid {os.getpid()}, the run of this job that was already running when "
                      "another copy was started (and refused, above), and went on after that replaced its log "
                      f"file ---\n{stream.read()}")


@contextlib.contextmanager
def rule_logging(log_path: str | os.PathLike | None, threads: int = 1) -> Iterator[logging.Logger]:
    """Route logging, stdout and stderr (tqdm writes there) into `log_path` for the duration.

    Progress bars become plain lines every 10 % (ProgressLines), so the log reads without a terminal.

    Thread counts of the numeric libraries follow the rule's `threads:` so jobs do not oversubscribe
    (the extractors also pass `threads` to torch themselves), and their idle threads sleep instead of spinning
    (OMP_WAIT_POLICY=PASSIVE unless the environment sets it): on a machine shared with other jobs a spinning
    thread keeps a core busy while the worker it waits for is descheduled, and 2-thread training ran 14-18x
    slower than 1-thread there (3.3 against 46 s per epoch with PASSIVE; the same numbers either way).
    An exception is logged with its message before it propagates, so the log says what went wrong.
    """
    with _job_settings(threads), _routed_logging(log_path) as logger, _stops_once_complete():
        yield logger


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Job:
    """The job rule_logging runs in this process: whether its outputs are complete (outputs_complete)."""

    def __init__(self) -> None:
        self.complete = False


_job: _Job | None = None


def outputs_complete() -> None:
    """Say that the running job's outputs are all written: from here on a SIGTERM or SIGINT is logged and ignored,
    so the job ends with status 0. Snakemake deletes the outputs of a job that dies by a signal, and training and
    fine-tuning delete their resume state once their outputs are written: a stop that came while such a job wound
    down (its log already said the encoder was saved, or "done") cost the whole run, and a SLURM job whose time
    limit landed there got the same time again. Called by rule_logging when the job's body returns, and earlier by
    the trainer and the fine-tuning at the point their outputs are complete. Outside a job it does nothing."""
    if _job is None or _job.complete:
        return
    _job.complete = True
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _ignore_stop)


def outputs_are_complete() -> bool:
    return _job is not None and _job.complete


def _ignore_stop(signum: int, frame) -> None:
    logger.warning("%s after the job's outputs were complete: ignored; the job ends normally",
                   signal.Signals(signum).name)


@contextlib.contextmanager
def _stops_once_complete() -> Iterator[None]:
    """A job's stop signals: theirs as the process had them (a SIGTERM ends the job where it is, a handler such as
    the trainer's finishes its epoch first) until the outputs are complete, ignored after (outputs_complete).
    In a job process (one Snakemake runs) they stay ignored until the process has ended, through the
    interpreter's shutdown; a job run in-process (a test, a notebook) gets the caller's handlers back."""
    global _job
    main = threading.current_thread() is threading.main_thread()
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} if main else {}
    outer, _job = _job, _Job()
    try:
        yield
        outputs_complete()
    finally:
        complete, _job = _job.complete, outer
        if not (complete and _snakemake_ancestor() is not None):
            for signum, handler in saved.items():
                if handler is not None:
                    signal.signal(signum, handler)


@contextlib.contextmanager
def _job_settings(threads: int) -> Iterator[None]:
    """The numeric libraries' thread settings and the logging state a job sets, undone when it ends: a job run
    in-process (a test, a notebook) leaves the caller's process as it was."""
    thread_vars = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")
    saved_env = {var: os.environ.get(var) for var in thread_vars}
    root = logging.getLogger()
    saved_level = root.level
    warnings_captured = logging._warnings_showwarning is not None  # logging keeps no public flag for this
    for var in thread_vars[:3]:
        os.environ[var] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when the OpenMP runtime starts (torch's import)
    try:
        yield
    finally:
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        root.setLevel(saved_level)
        logging.captureWarnings(warnings_captured)


@contextlib.contextmanager
def _routed_logging(log_path: str | os.PathLike | None) -> Iterator[logging.Logger]:
    logger = logging.getLogger("ercpipe")
    if log_path is None:
        logging.basicConfig(level=logging.INFO, format=_FORMAT)
        yield logger
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    lock = only_run_of_this_job(log_path)
    try:
        lock.__enter__()
    except JobAlreadyRunning as err:
        # Snakemake removed the log before starting this copy (the running one writes to a file no longer
        # listed): the refusal is appended, so `--show-failed-logs` and the log file say why.
        with open(log_path, "a", encoding="utf-8") as stream:
            stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR ercpipe: {err}\n")
        raise
    with contextlib.ExitStack() as stack, open(log_path, "w+", buffering=1, encoding="utf-8") as stream:
        stack.push(lock)
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        # First, before the job's work: a job killed for its memory dies without a word, and Snakemake shows no
        # log after an empty one (not even the scheduler's, which says why).
        logger.info("started: pid %d on %s%s", os.getpid(), socket.gethostname(), _scheduler_limits())
        start = time.time()
        try:
            progress = ProgressLines(stream)
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(progress):
                try:
                    yield logger
                finally:
                    progress.flush()
            logger.info("done in %.1f s", time.time() - start)
        except KeyboardInterrupt:  # Ctrl-C: the log would end at the last step with no word on why
            logger.error("interrupted (SIGINT, Ctrl-C) after %.1f s; run Snakemake again to redo this job",
                         time.time() - start)
            raise
        except Exception as err:
            logger.error("failed: %s: %s", type(err).__name__, err, exc_info=True)
            raise
        finally:
            root.removeHandler(handler)
            _keep_a_replaced_log(stream, log_path)
