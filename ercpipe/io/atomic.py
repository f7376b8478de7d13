"""Atomic file output: write to a temporary sibling, rename into place only on success.

A killed job therefore never leaves a file under the final name that looks complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on clean exit it is renamed to `path`, else removed."""
    final = Path(path)
    if final.is_dir():
        raise IsADirectoryError(f"{final} is a folder; give the path of a file to write")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
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
