"""What every benchmark measures in its worker process (peak resident memory, CPU seconds) and how it prints
its results (a Markdown table); imported by the bench_* scripts, which import nothing from each other here."""
from __future__ import annotations

import argparse
import resource
from typing import Callable, Collection, Sequence

Column = tuple[str, Callable[[dict], str]]  # header, cell of a row


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB of 2**20 bytes (MiB; every bench table's "MB"). VmHWM rather
    than ru_maxrss: on Linux a spawned child's ru_maxrss starts at its parent's RSS at fork time, VmHWM belongs
    to the child's own address space."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def markdown_row(row: dict, columns: Sequence[Column]) -> str:
    return "| " + " | ".join(cell(row) for _, cell in columns) + " |"


def markdown_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    head = "| " + " | ".join(name for name, _ in columns) + " |\n|" + "---|" * len(columns)
    return "\n".join([head] + [markdown_row(r, columns) for r in rows])


def comma_list(known: Collection[str]) -> Callable[[str], list[str]]:
    """An argparse `type`: a comma list of names from `known`, refused at once otherwise (a misspelt stage or
    extractor used to run nothing, or fail with a KeyError after the corpus was made)."""
    def parse(value: str) -> list[str]:
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{unknown or value!r}: give a comma list of {', '.join(known)}")
        return names
    return parse
