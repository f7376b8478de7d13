"""Short content digests that identify an input file (weights, checkpoints) in logs and attributes."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """The first `length` hex digits of the file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def folder_digest(path: str | os.PathLike, length: int = 16) -> str:
    """A digest of what a folder holds: the relative path, size and mtime of every file below it (symbolic
    links followed), so that adding, replacing or deleting a file changes it; "" for a missing folder.
    Cheap (no file is read): a rule's `params` entry for a folder of user files (a model directory; an
    anchor image set has its own, ercpipe.anchors.images.image_set_digest)."""
    root = Path(path)
    if not root.is_dir():
        return ""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            digest.update(file_entry(root, Path(folder) / name))
    return digest.hexdigest()[:length]


# What transformers reads of a model folder: the weights, config and tokenizer files (not a README or a notebook).
MODEL_FILE_SUFFIXES = frozenset({".safetensors", ".bin", ".json", ".model", ".txt"})


# model_folder_sha256's results in this process, by what the folder's files are on disk: `ercpipe predict` checks a
# model before extracting with it, and the extraction records the same digest (roberta-large: 1.4 GB read twice).
_MODEL_DIGESTS: dict[tuple, str] = {}


def model_folder_sha256(path: str | os.PathLike, length: int = 16) -> str:
    """A digest of the bytes of a model folder's files (MODEL_FILE_SUFFIXES, hidden ones left out), with their
    paths: what a text model's features record, so that predict can tell the model it is given from the one
    they were made with, wherever the folder was copied (its times need not survive)."""
    root = Path(path)
    files = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / name for name in sorted(names)
                  if not name.startswith(".") and Path(name).suffix in MODEL_FILE_SUFFIXES]
    key = (str(root.resolve()), length, tuple((str(f), stat_identity(f)) for f in files))
    if key not in _MODEL_DIGESTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.relative_to(root).as_posix()}\0{file_digest(file, 64)}\n".encode(
                "utf-8", "surrogateescape"))
        _MODEL_DIGESTS[key] = digest.hexdigest()[:length]
    return _MODEL_DIGESTS[key]


def stat_identity(path: str | os.PathLike) -> tuple[int, ...]:
    """What tells one state of a file from the next for an in-process cache: a file replaced (written to a temp
    file and renamed) or rewritten within one tick of the file system's clock keeps its mtime, not its inode or
    ctime."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_entry(root: Path, file: Path) -> bytes:
    """What a folder digest holds of one file: its path below `root`, size and mtime ("unreadable" for a dangling
    link). surrogateescape: a name that is not UTF-8 (from a zip made on Windows) is digested as its bytes."""
    try:
        st = file.stat()
        stat = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stat = "unreadable"
    return f"{file.relative_to(root).as_posix()}\0{stat}\n".encode("utf-8", "surrogateescape")


def path_digest(path: str | os.PathLike, length: int = 16) -> str:
    """folder_digest of a folder; for a file, a digest of its size and mtime; "" when nothing is there. Cheap
    (nothing is read): a rule's `params` entry for a model the config names by path (a weights file, a model
    directory), so that another model copied under the same path re-runs the jobs that read it."""
    path = Path(path)
    if path.is_dir():
        return folder_digest(path, length)
    if not path.is_file():
        return ""
    st = path.stat()
    return hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:length]
