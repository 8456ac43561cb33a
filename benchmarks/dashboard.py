"""What the web dashboard costs the head: start-up time of `luminary start --head` with and
without it, and the head's memory (node manager + GCS RSS) with 100,000 task events in the GCS's
table, before and while a page polls every endpoint.  Prints a markdown table.

    .venv/bin/python benchmarks/dashboard.py [--tasks 100000] [--starts 5]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import psutil  # noqa: E402

CLI = [sys.executable, "-m", "luminary.cli.main"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(dashboard):
    port, api = _port(), _port()
    t = time.perf_counter()
    out = subprocess.run(CLI + ["start", "--head", "--port", str(port), "--dashboard-port", str(api), "--num-cpus", "2",
                                "--include-dashboard", "true" if dashboard else "false"],
                         capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t
    assert out.returncode == 0, out.stderr
    return port, api, took


def stop(port):
    from test_jobs import _stop_head
    _stop_head(port)


def head_procs(port):
    from luminary._private import procutil
    import glob
    for path in glob.glob(os.path.join(procutil.state_dir("nodes"), "*.json")):
        rec = json.load(open(path))
        if rec.get("gcs_address") == f"tcp:127.0.0.1:{port}":
            nm = psutil.Process(rec["pid"])
            gcs = [c for c in nm.children() if "gcs" in " ".join(c.cmdline()) or "gcs" in c.name()]
            return nm, gcs[0] if gcs else None
    raise RuntimeError("head not found")


def rss(procs):
    return {name: p.memory_info().rss / 2**20 for name, p in procs.items() if p is not None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--polls", type=int, default=60)
    a = ap.parse_args()
    times = {True: [], False: []}
    for _ in range(a.starts):
        for dash in (False, True):
            port, _, took = start(dash)
            times[dash].append(took)
            stop(port)
    print("| `luminary start --head` (s, median of %d) | without dashboard/job API | with |" % a.starts)
    print("| --- | --- | --- |")
    print("| | %.2f | %.2f |" % (statistics.median(times[False]), statistics.median(times[True])))

    port, api, _ = start(True)
    try:
        nm, gcs = head_procs(port)
        procs = {"node manager": nm, "gcs": gcs}
        empty = rss(procs)
        import luminary as ray
        ray.init(address=f"127.0.0.1:{port}")

        @ray.remote
        def noop(i):
            return i
        t = time.perf_counter()
        for lo in range(0, a.tasks, 10_000):
            ray.get([noop.remote(i) for i in range(lo, min(a.tasks, lo + 10_000))])
        ran = time.perf_counter() - t
        from luminary.util.state import _query
        while _query("task_counts")["counts"].get("FINISHED", 0) < a.tasks:
            time.sleep(0.2)
        full = rss(procs)
        from luminary.job_submission import _find_token
        hdr = {"Authorization": "Bearer " + _find_token(f"http://127.0.0.1:{api}")}
        lat = {}
        peak = dict(full)
        for i in range(a.polls):
            for ep in ("overview", "stream?since=0", "tasks?limit=200", "actors"):
                t = time.perf_counter()
                with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{api}/api/dash/{ep}", headers=hdr)) as r:
                    r.read()
                lat.setdefault(ep, []).append(time.perf_counter() - t)
            for k, v in rss(procs).items():
                peak[k] = max(peak[k], v)
        after = rss(procs)
        ray.shutdown()
    finally:
        stop(port)
    print()
    print(f"{a.tasks} tasks ran in {ran:.1f} s")
    print("| head RSS (MiB) | empty | %d task events | peak while polled %d x | after polling |" % (a.tasks, a.polls))
    print("| --- | --- | --- | --- | --- |")
    for k in empty:
        print(f"| {k} | {empty[k]:.0f} | {full[k]:.0f} | {peak[k]:.0f} | {after[k]:.0f} |")
    print()
    print("| endpoint (%d task events) | median ms | max ms |" % a.tasks)
    print("| --- | --- | --- |")
    for ep, v in lat.items():
        print(f"| /api/dash/{ep} | {1000 * statistics.median(v):.1f} | {1000 * max(v):.1f} |")


if __name__ == "__main__":
    main()
