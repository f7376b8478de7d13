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
