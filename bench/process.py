"""Process figures from the OS: CPU seconds and RSS of one process or of its whole tree (the peers that fork
workers), busy CPU of the whole machine.

psutil when it is installed, else /proc read directly (Linux).
"""

from __future__ import annotations

import os

try:  # optional: /proc is read directly when psutil is absent
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

#: What reading a process that just exited raises.
_GONE: tuple[type[Exception], ...] = (OSError, ValueError, *(() if psutil is None else (psutil.Error,)))

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


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first)."""
    if psutil is not None:
        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def _own_and_reaped_cpu(pid: int) -> float:
    """CPU of one process plus that of the children it has reaped (cutime/cstime): summed over a live tree,
    every process that ever ran in it counts exactly once (an exited child's time moved to its parent)."""
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system + times.children_user + times.children_system)
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants, the exited ones included once reaped."""
    total = _own_and_reaped_cpu(pid)
    for child in _descendants(pid):
        try:
            total += _own_and_reaped_cpu(child)
        except _GONE:
            continue
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident set size of a process and its live descendants, added up (pages shared after a fork count
    once per process, as RSS does: an upper bound of the memory the tree needs)."""
    total = rss_bytes(pid)
    for child in _descendants(pid):
        try:
            total += rss_bytes(child)
        except _GONE:
            continue
    return total


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
