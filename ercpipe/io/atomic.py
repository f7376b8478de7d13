"""Atomic file output: write to a temporary sibling, rename into place only on success.

A killed job therefore never leaves a file under the final name that looks complete.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ercpipe.errors import DISK_FULL, ErcpipeError

if TYPE_CHECKING:
    import h5py


def _tmp_sibling(path: Path) -> Path:
    # Same directory, so the final rename never crosses a file system. The suffix keeps the
    # extension last so tools that sniff it (h5py, torch) still work on the temporary file.
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(final: Path) -> None:
    """Delete the temporary siblings of `final` that killed writers left (their pid is no process now): each
    killed job would otherwise leave one behind, e.g. a fine-tuned encoder or a training state of a GB. Only one
    job writes an output at a time (ercpipe.runlog.only_run_of_this_job), so a dead pid's file is no one's."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.tmp(\d+)")
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        match = pattern.match(entry.name)
        if not match or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


class WriteFailedError(ErcpipeError, OSError):
    """A write that stopped, with a message naming the final file, the room left and what to do (write_failed)."""


def write_failed(final: Path, tmp: Path, err: BaseException) -> WriteFailedError:
    """The error to raise for a write of `final` (through `tmp`) that stopped: it names the final file (the
    system's names no file, or the temporary one), what was written and the room left."""
    written = tmp.stat().st_size if tmp.is_file() else 0
    try:
        free = f"{shutil.disk_usage(tmp.parent).free / 2**20:.0f} MiB free on its disk"
    except OSError:
        free = "its disk's free space unknown"
    size = f"{written / 2**20:.0f} MiB" if written >= 2**20 else f"{written / 2**10:.0f} KiB"
    failed = WriteFailedError(f"could not write {final}: the write stopped after {size} with "
                              f"{free} ({type(err).__name__}: {err}); free space or raise the file size limit "
                              "(ulimit -f) or the quota, then run again")
    failed.errno = getattr(err, "errno", None) or errno.EIO  # (given to the constructor, it would lead the message)
    return failed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on clean exit it is renamed to `path`, else removed. A write that
    fails for want of room (DISK_FULL) is raised as write_failed's OSError."""
    final = Path(path)
    if final.is_dir():
        raise IsADirectoryError(f"{final} is a folder; give the path of a file to write")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    try:
        try:
            yield tmp
        except OSError as err:
            if err.errno not in DISK_FULL or isinstance(err, WriteFailedError):
                raise
            raise write_failed(final, tmp, err) from err
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {final}")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike) -> Iterator["h5py.File"]:
    """An HDF5 file to fill, built in memory and written to `path` through atomic_path on clean exit. HDF5 writing
    to disk itself could not close a file whose write had failed (a full disk, ulimit -f): the job then ended in a
    segmentation fault at exit, and the message named only the temporary file."""
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        yield handle
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_path for a directory: build it under a temporary name, then swap it in."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def staged_attribute_path(holder: object, attribute: str = "path") -> Iterator[Path]:
    """For a writer that opens its output in place, at the path an object of its gives (Snakemake's report
    settings: a killed `--report` left an empty report.html where the last good one was): point
    `holder.<attribute>` at a file of the same name in a hidden sibling folder meanwhile, and move that file into
    place on clean exit. The name is kept because writers use it (a report .zip names its folder after it)."""
    original = getattr(holder, attribute)
    final = Path(original)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    staging = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    setattr(holder, attribute, type(original)(staging / final.name))
    try:
        yield staging / final.name
        os.replace(staging / final.name, final)
    finally:
        setattr(holder, attribute, original)
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: object) -> object:
    # numpy scalars and arrays show up in summaries; convert instead of failing the job at the end.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
