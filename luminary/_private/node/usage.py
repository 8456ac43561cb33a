"""This machine's CPU and memory use, from /proc (for the metrics endpoint and the event log)."""
from __future__ import annotations

_last = [None]


def _cpu_times():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals), idle


def node_usage():
    """{cpu_percent (since the previous call), mem_used, mem_total} or {} where /proc is missing."""
    out = {}
    try:
        total, idle = _cpu_times()
        prev, _last[0] = _last[0], (total, idle)
        if prev is not None and total > prev[0]:
            out["cpu_percent"] = 100.0 * (1 - (idle - prev[1]) / (total - prev[0]))
        else:
            out["cpu_percent"] = 0.0
        mem = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                mem[k] = int(v.split()[0]) * 1024
        out["mem_total"] = mem.get("MemTotal", 0)
        out["mem_used"] = mem.get("MemTotal", 0) - mem.get("MemAvailable", mem.get("MemFree", 0))
    except (OSError, ValueError, IndexError):
        pass
    return out
