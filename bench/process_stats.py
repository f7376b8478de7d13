"""What every benchmark measures in its worker process (peak resident memory, CPU seconds) and how it prints
its results (a Markdown table); imported by the bench_* scripts, which import nothing from each other here."""
from __future__ import annotations

import resource
from typing import Callable, Sequence

Column = tuple[str, Callable[[dict], str]]  # header, cell of a row


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB. VmHWM rather than ru_maxrss: on Linux a spawned child's
    ru_maxrss starts at its parent's RSS at fork time, VmHWM belongs to the child's own address space."""
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
