"""Process memory figures for the benchmark scripts (read from /proc; Linux)."""

from __future__ import annotations

import resource
from pathlib import Path


def _status_mib(pid: int | str, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """Peak resident memory of a process in MiB (``VmHWM``), or None where /proc has no answer.

    Not ``ru_maxrss`` for child processes: Linux carries a parent's peak into a child across
    fork and exec, so a small child started by a big parent reports the parent's figure.
    """
    peak = _status_mib(pid, "VmHWM")
    if peak is None and pid == "self":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def rss_mib(pid: int | str = "self") -> float | None:
    """Current resident memory of a process in MiB (``VmRSS``), or None."""
    return _status_mib(pid, "VmRSS")
