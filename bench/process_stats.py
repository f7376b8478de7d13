"""What every benchmark measures in its worker process: peak resident memory and CPU seconds (imported by
bench_features, bench_text and bench_audio_memory, which import nothing from each other at this level)."""
from __future__ import annotations

import resource


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
