"""Process figures from the OS: CPU seconds and RSS of one process, busy CPU of the whole machine.

psutil when it is installed, else /proc read directly (Linux).
"""

from __future__ import annotations

import os

try:  # optional: /proc is read directly when psutil is absent
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

#: Where the CPU figures come from, as the results document records it.
CPU_FIGURES_FROM = "psutil" if psutil is not None else "/proc/<pid>/stat"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, in seconds."""
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cores_busy(start: float | None, end: float | None, seconds: float) -> float | None:
    """Cores kept busy on average: CPU seconds between two samples over the wall seconds between them."""
    if start is None or end is None or seconds <= 0:
        return None
    return round((end - start) / seconds, 2)


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    kb = _status_kb(pid, "VmRSS")
    return (kb or 0) * 1024


def peak_rss_bytes(pid: int, sampled: int) -> int:
    """The kernel's high-water mark of the RSS when it keeps one (Linux), else the largest sample."""
    kb = _status_kb(pid, "VmHWM")
    return max(sampled, kb * 1024) if kb is not None else sampled
