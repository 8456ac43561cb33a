"""The node's memory monitor: end one worker before the kernel's OOM killer ends something worse.

    every refresh: used / limit  (the cgroup's memory.max and memory.current when a limit is
    set, else the machine's MemTotal - MemAvailable)
      above memory_usage_threshold (0.95, as Ray) ─▶ pick_victim ─▶ SIGKILL it, and tell the
      owner of its lease why (``worker_oom``): its task fails with OutOfMemoryError or is retried

Choosing (``pick_victim``, pure): idle workers first (they free memory and fail nothing); then
workers running tasks, grouped by owner, from the owner with the most running workers, newest
first (its other tasks keep their progress and the owner can retry the newest); actors only
when nothing else is left.
"""
from __future__ import annotations

import os

DEFAULT_THRESHOLD = 0.95
DEFAULT_REFRESH_S = 0.25


def read_memory(cgroup_root="/sys/fs/cgroup", meminfo="/proc/meminfo"):
    """(used_bytes, limit_bytes) for this node: the cgroup's when it sets a limit, else the machine's."""
    try:
        with open(os.path.join(cgroup_root, "memory.max")) as f:
            limit = f.read().strip()
        if limit != "max":
            with open(os.path.join(cgroup_root, "memory.current")) as f:
                used = int(f.read().strip())
            # page cache the kernel can drop does not count as used (as `free` and Ray see it)
            inactive = 0
            try:
                with open(os.path.join(cgroup_root, "memory.stat")) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == "inactive_file":
                            inactive = int(v)
            except OSError:
                pass
            return max(0, used - inactive), int(limit)
    except (OSError, ValueError):
        pass
    values = {}
    with open(meminfo) as f:
        for line in f:
            k, _, rest = line.partition(":")
            values[k] = int(rest.split()[0]) * 1024
    total = values.get("MemTotal", 0)
    return total - values.get("MemAvailable", total), total


def rss_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pick_victim(workers):
    """``workers``: dicts with ``kind`` ("idle", "task" or "actor"), ``owner``, ``started`` (when
    its current lease began) and ``rss``.  Returns the one to end, or None."""
    idle = [w for w in workers if w["kind"] == "idle"]
    if idle:
        return max(idle, key=lambda w: w["rss"])
    tasks = [w for w in workers if w["kind"] == "task"]
    if tasks:
        groups = {}
        for w in tasks:
            groups.setdefault(w["owner"], []).append(w)
        biggest = max(groups.values(), key=lambda g: (len(g), max(x["started"] for x in g)))
        return max(biggest, key=lambda w: w["started"])
    actors = [w for w in workers if w["kind"] == "actor"]
    if actors:
        return max(actors, key=lambda w: w["rss"])
    return None


def describe_usage(used, limit, workers, node, threshold):
    """The message a task killed for memory carries: the figures, the top users and the fix."""
    top = sorted(workers, key=lambda w: w["rss"], reverse=True)[:5]
    lines = "\n".join(f"  pid {w['pid']:>8}  {w['rss'] / 2**20:10.1f} MiB  {w.get('what', w['kind'])}" for w in top)
    return (f"Memory on node {node} was running low: {used / 2**30:.2f} GiB used of {limit / 2**30:.2f} GiB "
            f"({used / max(limit, 1):.0%} > the {threshold:.0%} threshold), so the worker running this task "
            f"was ended before the kernel's OOM killer could end something worse.\n"
            f"Top memory users on that node:\n{lines}\n"
            "To fix it: use less memory per task, run fewer tasks at once (ask more num_cpus or `memory=` "
            "per task), or add memory; the threshold is _system_config={'memory_usage_threshold': ...} "
            "and the check can be turned off with memory_monitor_refresh_ms=0.")
