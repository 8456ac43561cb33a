"""What persisting the GCS's state costs, and how fast the head recovers from a GCS kill.

    python benchmarks/gcs_persistence.py [--runs 5] [--actors 100] [--write-docs]

For each storage (``memory``, the default SQLite of ``luminary start --head``) it starts a CLI head
(2 CPUs) on a free port, connects a driver and measures, as medians of ``--runs`` rounds:
actor creation (create N actors, one reply from each), named-actor creation (the same with a name
each: one more row in the same transaction) and ``get_actor`` lookups.  With SQLite it then
SIGKILLs the GCS ``--runs`` times and measures the time from the kill to the first successful
actor creation afterwards (the actor's first reply).  ``--write-docs`` replaces the marked
section of docs/benchmarks.md.  Nodes are stopped by their PIDs (never ``luminary stop``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BEGIN = "<!-- gcs-persistence:begin (written by benchmarks/gcs_persistence.py --write-docs) -->"
END = "<!-- gcs-persistence:end -->"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head(storage):
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "luminary.cli.main", "start", "--head", "--port", str(port),
                          "--num-cpus", "2", "--storage", storage] if storage else
                         [sys.executable, "-m", "luminary.cli.main", "start", "--head", "--port", str(port),
                          "--num-cpus", "2"], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise SystemExit(out.stderr)
    return f"127.0.0.1:{port}"


def records(address):
    from luminary._private import procutil
    for path in glob.glob(os.path.join(procutil.state_dir("nodes"), "*.json")):
        rec = json.load(open(path))
        if rec["gcs_address"] == "tcp:" + address:
            yield path, rec


def stop(address):
    from luminary._private.node import launch
    for path, rec in list(records(address)):
        try:
            os.kill(rec["pid"], signal.SIGTERM)
        except OSError:
            pass
        os.unlink(path)
    launch.remove_cluster_file("tcp:" + address)


def gcs_pid(address):
    import psutil
    (_, rec), = [r for r in records(address) if r[1]["head"]]
    for c in psutil.Process(rec["pid"]).children():
        if "gcs" in " ".join(c.cmdline()) and c.status() != psutil.STATUS_ZOMBIE:
            return c.pid
    return None


def measure(storage, args):
    import luminary as ray
    address = head(storage)
    try:
        ray.init(address=address)

        @ray.remote
        class Server:
            def ping(self):
                return 1

        a = Server.remote()
        ray.get(a.ping.remote())
        ray.kill(a)
        rows = {"actor creation": [], "named actor creation": [], "get_actor lookups": []}
        for run in range(args.runs):
            t0 = time.perf_counter()
            actors = [Server.remote() for _ in range(args.actors)]
            assert sum(ray.get([x.ping.remote() for x in actors])) == args.actors
            rows["actor creation"].append(args.actors / (time.perf_counter() - t0))
            for x in actors:
                ray.kill(x)
            t0 = time.perf_counter()
            actors = [Server.options(name=f"s{run}_{i}").remote() for i in range(args.actors)]
            assert sum(ray.get([x.ping.remote() for x in actors])) == args.actors
            rows["named actor creation"].append(args.actors / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for i in range(args.actors):
                ray.get_actor(f"s{run}_{i}")
            rows["get_actor lookups"].append(args.actors / (time.perf_counter() - t0))
            for x in actors:
                ray.kill(x)
        recovery = []
        if storage != "memory":
            for _ in range(args.runs):
                pid = None
                while pid is None:
                    pid = gcs_pid(address)
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                x = Server.remote()
                ray.get(x.ping.remote())
                recovery.append(time.perf_counter() - t0)
                ray.kill(x)
                while gcs_pid(address) in (None, pid):     # the next round kills the new one
                    time.sleep(0.01)
        ray.shutdown()
        return {k: statistics.median(v) for k, v in rows.items()}, recovery
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop(address)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--actors", type=int, default=100)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    mem, _ = measure("memory", args)
    sql, recovery = measure(None, args)
    lines = [BEGIN, "", "## GCS persistence and restart", "",
             f"`benchmarks/gcs_persistence.py --runs {args.runs} --actors {args.actors}` "
             f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, Python {platform.python_version()}): a "
             "`luminary start --head --num-cpus 2` cluster with `--storage memory` vs its default SQLite storage "
             "(WAL, synchronous=NORMAL, one transaction per change); medians of "
             f"{args.runs} rounds of {args.actors} actors.", "",
             "| row | unit | memory | SQLite | SQLite/memory |", "|---|---|---:|---:|---:|"]
    for k in mem:
        lines.append(f"| {k} | per s | {mem[k]:,.0f} | {sql[k]:,.0f} | {sql[k] / mem[k]:.2f}x |")
    lines += ["", f"GCS SIGKILL to the first successful actor creation afterwards (its first reply): median "
              f"{statistics.median(recovery):.2f} s, max {max(recovery):.2f} s over {len(recovery)} kills "
              "(goal < 2 s): the head restarts the GCS in a fresh interpreter, it loads its tables, the node "
              "manager and the driver reconnect (backoff from 50 ms) and re-register.", "", END]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        path = os.path.join(ROOT, "docs", "benchmarks.md")
        doc = open(path).read()
        i, j = doc.find(BEGIN.split(" (")[0]), doc.find(END)
        doc = (doc[:i] + text + doc[j + len(END):]) if i >= 0 and j >= 0 else doc.rstrip("\n") + "\n\n" + text + "\n"
        open(path, "w").write(doc)


if __name__ == "__main__":
    main()
