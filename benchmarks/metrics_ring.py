"""The head's metric ring (gcs/metrics_history.py): memory and cost with simulated time.

usage: metrics_ring.py [NODES] [USER_SERIES]   (defaults: 4 nodes, 20 user metric series)

Feeds one sample a second, as the GCS does, for 1 hour, 24 hours and 26 hours of simulated
time, and reports the ring's own estimate and what tracemalloc sees (the ring alone), the time
of one add (median and max: the max includes moving a sample to the coarse tier) and of the
queries the dashboard makes (a page opening: 720 points; a live tick: the newest sample).
"""
import statistics
import sys
import time
import tracemalloc

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
from luminary._private.gcs.metrics_history import MetricsRing   # noqa: E402


def sample(i, nodes, user):
    d = {f"tasks|{s}": i % 97 for s in ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER",
                                         "RUNNING", "FINISHED", "FAILED")}
    d.update({"actors|ALIVE": 3, "actors|DEAD": 1})
    for n in range(nodes):
        nid = f"{n:056x}"
        d.update({f"cpu|{nid}": 37.5, f"mem|{nid}": 3.2e9 + i, f"store|{nid}": 1e8 + i, f"spilled|{nid}": 0})
    for u in range(user):
        d[f"metric|user_metric_{u % 5}|shard={u}"] = i
    return d


def run(nodes, user):
    tracemalloc.start()
    ring = MetricsRing()
    base = tracemalloc.get_traced_memory()[0]
    adds, t0, out = [], 1.8e9, {}
    for i in range(26 * 3600):
        s = sample(i, nodes, user)
        a = time.perf_counter()
        ring.add(t0 + i, s)
        adds.append(time.perf_counter() - a)
        if i + 1 in (3600, 24 * 3600, 26 * 3600):
            del s
            out[(i + 1) // 3600] = (len(ring), ring.nbytes, tracemalloc.get_traced_memory()[0] - base - 8 * len(adds)
                                    - 24 * len(adds))     # less the timing list's own floats
    tracemalloc.stop()
    a = time.perf_counter()
    q = ring.query(0, 720)
    open_ms = (time.perf_counter() - a) * 1e3
    a = time.perf_counter()
    ring.query(t0 + 26 * 3600 - 2)
    tick_us = (time.perf_counter() - a) * 1e6
    print(f"{nodes} nodes, {len(ring.keys)} series:")
    for h, (n, est, traced) in out.items():
        print(f"  after {h:2d} h: {n} samples kept, estimate {est / 2**20:.2f} MiB, tracemalloc {traced / 2**20:.2f} MiB")
    print(f"  add: median {statistics.median(adds) * 1e6:.1f} us, max {max(adds) * 1e3:.2f} ms; "
          f"query 720 points {open_ms:.1f} ms ({len(q['t'])} points), newest sample {tick_us:.0f} us")


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 4, int(sys.argv[2]) if len(sys.argv) > 2 else 20)
