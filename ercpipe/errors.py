"""The library's error base class, and the one-line form the `ercpipe` command prints.

Every exception class of ercpipe derives from ErcpipeError, usually together with the built-in class
it has always been (ValueError, RuntimeError, PermissionError), so code that catches those still works:

    class ManifestError(ErcpipeError, ValueError): ...

An ErcpipeError means bad input (a config key, a file, a setting), never a bug; its message names the
file or dotted config key and what to change. `ercpipe` (ercpipe/cli.py) prints it as one line,
``ercpipe: error: <message>``, with exit status 2, and the traceback only with ``--debug``.
This module imports nothing of the library: the Snakefile imports the library at parse time.
"""
from __future__ import annotations

import errno

__all__ = ["DISK_FULL", "MORE_MEMORY", "ErcpipeError", "is_out_of_memory", "one_line"]

# A write that failed for want of room: a full disk, a file size limit (ulimit -f), a quota.
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class ErcpipeError(Exception):
    """Base class of every ercpipe error: bad input, described by a message naming the file/key and the fix."""


def one_line(err: BaseException) -> str:
    """The error's message on one line: the lines of a multi-line message joined with '; '.

    An OSError raised by the system (FileNotFoundError from open(), ...) reads "FILE: reason" instead
    of Python's "[Errno 2] No such file or directory: 'FILE'".
    """
    if isinstance(err, OSError) and err.filename is not None and err.strerror and not isinstance(err, ErcpipeError):
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) if str(err) else type(err).__name__
        if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
            text = err.args[0]  # str(KeyError) quotes its message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    out = ""
    for line in lines:
        if not out:
            out = line
        elif out.endswith((":", ";", ",")):
            out = f"{out} {line}"
        else:
            out = f"{out}; {line}"
    return out


# What to do when a job runs out of memory (is_out_of_memory), for the messages that say so.
MORE_MEMORY = "give the job more memory (the rule's mem_mb resource, a cluster job's memory limit)"


def is_out_of_memory(err: BaseException) -> bool:
    """True for the forms an allocation that failed takes when a library loads or computes: MemoryError, ENOMEM, a
    torch allocator's RuntimeError, a shared library that cannot be mapped (ImportError "failed to map segment")."""
    if isinstance(err, MemoryError) or (isinstance(err, OSError) and err.errno == errno.ENOMEM):
        return True
    text = str(err)
    return any(sign in text for sign in ("Cannot allocate memory", "out of memory", "can't allocate memory",
                                         "failed to map segment"))
