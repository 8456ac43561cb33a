"""Observability at scale: the head's (GCS process) memory while a million tiny tasks run with
task events on, and the time of ``list_tasks`` / ``luminary list tasks`` with the table full.

    .venv/bin/python benchmarks/observability.py [--tasks 1000000] [--batch 10000]

Prints one JSON object.  The GCS's memory is its RSS and PSS (from /proc/PID/smaps_rollup),
sampled after each batch; the table keeps at most $LUMINARY_TASK_EVENTS_MAX tasks (100,000 by
default) and counts the ones it dropped.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import luminary as ray  # noqa: E402
from luminary.util import state  # noqa: E402


def mem_kb(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in ("Rss", "Pss"):
                out[k] = int(rest.split()[0])
    return out


def gcs_pid():
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if cmd.startswith(b"luminary::gcs"):
            # ours: a descendant of this process (node process -> GCS)
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{ppid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                    return int(pid)
    raise RuntimeError("the GCS process of this driver's cluster was not found")


def timed(fn, repeat=3):
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()
    ray.init(num_cpus=args.num_cpus)

    @ray.remote
    def tiny(i):
        return i

    pid = gcs_pid()
    ray.get([tiny.remote(i) for i in range(100)])
    out = {"tasks": args.tasks, "gcs_pid": pid, "gcs_before_kb": mem_kb(pid), "samples": []}
    t0 = time.perf_counter()
    done = 0
    while done < args.tasks:
        n = min(args.batch, args.tasks - done)
        ray.get([tiny.remote(i) for i in range(n)])
        done += n
        if done % (args.tasks // 10 or 1) < args.batch:
            out["samples"].append([done, mem_kb(pid)["Rss"], round(time.perf_counter() - t0, 1)])
    out["run_s"] = round(time.perf_counter() - t0, 1)
    # let the last events arrive (owners flush every 100 ms)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = state.summarize_tasks()["cluster"]
        if s["total_tasks"] + s["dropped"] >= args.tasks + 100:
            break
        time.sleep(0.2)
    s = state.summarize_tasks()["cluster"]
    out["table_tasks"] = s["total_tasks"]
    out["dropped"] = s["dropped"]
    out["gcs_after_kb"] = mem_kb(pid)
    info = state.cluster_info()
    out["task_cap"] = info["task_cap"]
    out["list_tasks_default_s"] = round(timed(lambda: state.list_tasks())[0], 4)
    out["list_tasks_failed_filter_s"] = round(timed(lambda: state.list_tasks(filters=[("state", "=", "FAILED")]))[0], 4)
    t_all, rows = timed(lambda: state.list_tasks(limit=None), repeat=1)
    out["list_tasks_all_s"] = round(t_all, 3)
    out["list_tasks_all_rows"] = len(rows)
    out["summarize_tasks_s"] = round(timed(lambda: state.summarize_tasks())[0], 4)
    import contextlib
    import io

    from luminary.cli.main import main as cli_main

    def cli(*argv):     # the command's own work, in this driver (a private cluster has no address file)
        with contextlib.redirect_stdout(io.StringIO()) as buf, contextlib.redirect_stderr(io.StringIO()):
            cli_main(list(argv))
        return buf.getvalue()
    out["cli_list_tasks_s"] = round(timed(lambda: cli("list", "tasks"))[0], 3)
    out["cli_list_tasks_filter_failed_s"] = round(timed(lambda: cli("list", "tasks", "--filter", "state=FAILED"))[0], 3)
    out["cli_list_tasks_limit_100000_s"] = round(timed(lambda: cli("list", "tasks", "--limit", "100000"), repeat=1)[0], 3)
    out["cli_summary_tasks_s"] = round(timed(lambda: cli("summary", "tasks"))[0], 3)
    out["gcs_end_kb"] = mem_kb(pid)
    ray.shutdown()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
