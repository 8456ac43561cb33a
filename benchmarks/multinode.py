#!/usr/bin/env python
"""Multi-node benchmarks: Luminary next to Ray on a 3-node cluster on one machine.

    python benchmarks/multinode.py                # 3 repeats per backend
    python benchmarks/multinode.py --quick        # smoke run: 1 repeat, fewer rounds
    python benchmarks/multinode.py --write-docs   # also refresh the "Multi-node"
                                                  # section of docs/benchmarks.md

Each backend run is one subprocess (this file with --worker) that starts a
3-node cluster with ``<backend>.cluster_utils.Cluster`` (a head node and two
more nodes, every node a real set of processes talking TCP over loopback),
connects the driver to the head node, and measures every selected row.  The
two backends alternate, as in ``run.py``, and every cell is the median over
the repeats.  The plain socket copy (the limit for a cross-node transfer on
this machine) is measured by this process between repeats, with no backend
running.  See the "Multi-node" part of benchmarks/README.md for the rows.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import workloads as W  # noqa: E402  (standard library only at import time)
import run as R  # noqa: E402  (standard library only at import time)

BACKENDS = R.BACKENDS
TITLES = R.TITLES
GiB = 1 << 30
MiB = 1 << 20

DOCS_BEGIN = R.MULTINODE_BEGIN  # run.py --write-docs keeps what lies between
DOCS_END = R.MULTINODE_END

SOCKET_ROW = W.Row("plain socket copy on loopback (limit)", "GiB/s", "higher",
                   "1 GiB sent by one process with sendall() from a bytearray and "
                   "received by another with recv_into() a preallocated buffer.")
TRANSFER_ROW = "cross-node transfer 1 GB"


# --------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------

class Sizes:
    def __init__(self, quick):
        self.transfer_bytes = GiB
        self.transfer_rounds = 1 if quick else 5
        self.store_bytes = int(2.5 * GiB)      # per node
        self.task_batch = 1000
        self.task_batches = 1 if quick else 5
        self.bcast_bytes = 100 * MiB
        self.bcast_rounds = 2 if quick else 5
        self.socket_rounds = 2 if quick else 3


# --------------------------------------------------------------------------
# Worker side: one backend, one 3-node cluster, every selected row
# --------------------------------------------------------------------------

class Ctx:
    pass


def node_id_of(ray):
    return ray.get_runtime_context().get_node_id()


def start_cluster(ray, backend, sizes):
    cu = importlib.import_module(backend + ".cluster_utils")
    S = sizes.store_bytes
    cluster = cu.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"n0": 1}, "object_store_memory": S})
    nodes = [cluster.head_node]
    for i in (1, 2):
        nodes.append(cluster.add_node(num_cpus=1, resources={"n%d" % i: 1},
                                      object_store_memory=S))
    cluster.wait_for_nodes()
    cluster.connect()
    return cluster, nodes


def define_remotes(ray):
    import numpy as np

    class NS:
        pass

    ns = NS()

    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    @ray.remote
    def trivial():
        return 1

    @ray.remote(num_cpus=1)
    def one_ms():
        time.sleep(0.001)
        return ray.get_runtime_context().get_node_id()

    @ray.remote(resources={"n1": 1})
    def make_array(nbytes, fill):
        a = np.empty(nbytes, dtype=np.uint8)
        a.fill(fill)
        return a

    @ray.remote
    def total(a):
        return int(a.sum(dtype=np.uint64)), ray.get_runtime_context().get_node_id()

    ns.where, ns.trivial, ns.one_ms = where, trivial, one_ms
    ns.make_array, ns.total = make_array, total
    return ns


def w_transfer(ctx):
    """A task pinned to node n1 fills a fresh 1 GiB uint8 array; after wait()
    (fetch_local=False) says it is ready, time the driver's get() on the head."""
    import numpy as np

    ray, r, sz = ctx.ray, ctx.r, ctx.sizes
    n = sz.transfer_bytes
    # Warm-up: a small object over the same path (connections, workers).
    ref = r.make_array.remote(8 * MiB, 7)
    a = ray.get(ref, timeout=60)
    W.check(a.nbytes == 8 * MiB and a[0] == 7 and a[-1] == 7, "warm-up array")
    del a, ref
    times = []
    for i in range(sz.transfer_rounds):
        fill = 11 + i
        ref = r.make_array.remote(n, fill)
        ready, _ = ray.wait([ref], num_returns=1, timeout=120, fetch_local=False)
        W.check(ready, "the 1 GiB array was not ready within 120 s")
        t0 = time.perf_counter()
        a = ray.get(ref, timeout=120)
        dt = time.perf_counter() - t0
        W.check(a.nbytes == n and a.dtype == np.uint8, "array size/dtype")
        W.check(int(a[0]) == fill and int(a[-1]) == fill and int(a[n // 2]) == fill
                and bool((a[::65536] == fill).all()), "array contents")
        times.append(dt)
        W.log("    transfer %d: %.3f s, %.3f GiB/s" % (i + 1, dt, n / GiB / dt))
        del a, ref
        gc.collect()
        time.sleep(0.5)  # let the frees reach both stores before the next array
    rates = [n / GiB / t for t in times]
    return {"value": statistics.median(rates),
            "details": {"seconds": times, "gib_per_s": rates, "bytes": n}}


def w_bcast(ctx):
    """put() a 100 MiB array on the driver, then one task per node (pinned by
    the custom resources n0/n1/n2) takes the ref and returns its sum; the time
    runs from just before put() to the last result."""
    import numpy as np

    ray, r, sz = ctx.ray, ctx.r, ctx.sizes
    n = sz.bcast_bytes
    arr = np.ones(n, dtype=np.uint8)
    t_local = time.perf_counter()
    W.check(int(arr.sum(dtype=np.uint64)) == n, "local sum")
    t_local = time.perf_counter() - t_local

    def once(x, expect):
        ref = ray.put(x)
        refs = [r.total.options(resources={"n%d" % k: 1}).remote(ref) for k in range(3)]
        out = ray.get(refs, timeout=120)
        W.check([s for s, _ in out] == [expect] * 3, "broadcast sums")
        W.check(len({nid for _, nid in out}) == 3, "one task per node")
        return out

    once(np.ones(MiB, dtype=np.uint8), MiB)  # warm-up: workers and connections
    times = []
    for i in range(sz.bcast_rounds):
        t0 = time.perf_counter()
        once(arr, n)
        times.append(time.perf_counter() - t0)
        gc.collect()
    return {"value": statistics.median(times),
            "details": {"seconds": times, "bytes": n,
                        "driver_local_sum_s": t_local}}


def _counts(ids, nodes):
    order = {nd.node_id: "n%d" % i for i, nd in enumerate(nodes)}
    c = {}
    for x in ids:
        k = order.get(x, x[:8])
        c[k] = c.get(k, 0) + 1
    return dict(sorted(c.items()))


def w_spread(ctx):
    """1,000 tasks with scheduling_strategy="SPREAD" that return their node id,
    one get() of all.  The tasks per node are recorded, not asserted: SPREAD is
    best-effort on both systems."""
    ray, r, sz = ctx.ray, ctx.r, ctx.sizes
    m = sz.task_batch
    # Warm-up: one batch, so that workers run on every node before timing.
    ray.get([r.where.options(scheduling_strategy="SPREAD").remote() for _ in range(m)],
            timeout=120)
    rates, dists = [], []
    for _ in range(sz.task_batches):
        t0 = time.perf_counter()
        ids = ray.get([r.where.options(scheduling_strategy="SPREAD").remote()
                       for _ in range(m)], timeout=120)
        dt = time.perf_counter() - t0
        W.check(len(ids) == m and all(ids), "batch results")
        rates.append(m / dt)
        dists.append(_counts(ids, ctx.nodes))
    return {"value": statistics.median(rates),
            "details": {"tasks_per_s": rates, "distribution": dists}}


def w_default(ctx):
    """1,000 tasks of ~1 ms (time.sleep(0.001)) with num_cpus=1 and the default
    strategy: one node has 1 CPU, so the work has to spill to the others."""
    ray, r, sz = ctx.ray, ctx.r, ctx.sizes
    m = sz.task_batch
    ray.get([r.one_ms.remote() for _ in range(200)], timeout=120)  # warm-up
    rates, dists = [], []
    for _ in range(sz.task_batches):
        t0 = time.perf_counter()
        ids = ray.get([r.one_ms.remote() for _ in range(m)], timeout=120)
        dt = time.perf_counter() - t0
        W.check(len(ids) == m, "batch size")
        rates.append(m / dt)
        dists.append(_counts(ids, ctx.nodes))
    return {"value": statistics.median(rates),
            "details": {"tasks_per_s": rates, "distribution": dists}}


def w_start(ctx):
    if ctx.start_seconds is None:
        raise RuntimeError("cluster start was not timed in this process")
    return ctx.start_seconds


# Order = table order (after the socket row, which run by the launcher).
WORKLOADS = [
    W.Workload(w_start, [W.Row(
        "3-node cluster start to first result", "s", "lower",
        "Seconds from Cluster(initialize_head=True) to the driver's first result "
        "of a task on every node.")], timeout=150),
    W.Workload(w_transfer, [W.Row(
        TRANSFER_ROW, "GiB/s", "higher",
        "get() on the head node of a fresh 1 GiB uint8 array made by a task on "
        "another node; only the get() is timed.")], timeout=300),
    W.Workload(w_bcast, [W.Row(
        "100 MB broadcast to 3 nodes", "s", "lower",
        "put() of a 100 MiB array and one task per node summing it, to the last "
        "result.")], timeout=150),
    W.Workload(w_spread, [W.Row(
        "1,000 tasks spread over 3 nodes (SPREAD)", "tasks/s", "higher",
        "1,000 tasks returning their node id, scheduling_strategy=\"SPREAD\", one "
        "get().")],
        timeout=150),
    W.Workload(w_default, [W.Row(
        "1,000 1-ms tasks over 3 nodes (default strategy)", "tasks/s", "higher",
        "1,000 num_cpus=1 tasks sleeping 1 ms, default strategy, one get().")],
        timeout=150),
]


# Short names for --only (the row names contain commas).
KEYS = dict(zip(("start", "transfer", "broadcast", "spread", "default"), WORKLOADS))
SOCKET_KEY = "socket"


def pick(only):
    keys = [x.strip().lower() for x in only.split(",") if x.strip()]
    unknown = [k for k in keys if k not in KEYS and k != SOCKET_KEY]
    if unknown:
        raise KeyError(", ".join(unknown))
    return keys


def worker_main(args):
    keys = pick(args.only)
    selected = [w for k, w in KEYS.items() if not keys or k in keys]
    sizes = Sizes(args.quick)
    meta = {"backend": args.backend, "python": platform.python_version(),
            "executable": sys.executable, "quick": args.quick, "pid": os.getpid(),
            "workloads": [w.name for w in selected], "started": time.time()}
    rec = W.Recorder(args.json, meta)
    dog = W.Watchdog(rec)
    dog.start()

    rec.set("current", "<init>")
    dog.arm(["<init>"], 150 * args.timeout_scale, kind="init")
    ctx = Ctx()
    ctx.sizes = sizes
    ctx.start_seconds = None
    try:
        ray = importlib.import_module(args.backend)
        meta["version"] = getattr(ray, "__version__", "unknown")
        ctx.ray = ray
        ctx.r = define_remotes(ray)
        t0 = time.perf_counter()
        ctx.cluster, ctx.nodes = start_cluster(ray, args.backend, sizes)
        ids = ray.get([ctx.r.where.options(resources={"n%d" % k: 1}).remote()
                       for k in range(3)], timeout=120)
        ctx.start_seconds = time.perf_counter() - t0
        want = [nd.node_id for nd in ctx.nodes]
        W.check(ids == want, "tasks pinned by n0/n1/n2 ran on %s, nodes are %s"
                % (ids, want))
        drv = node_id_of(ray)
        W.check(drv == want[0], "the driver is not on the head node")
        meta["node_ids"] = want
        W.log("%s %s: 3-node cluster up, first results after %.2f s"
              % (args.backend, meta["version"], ctx.start_seconds))
    except BaseException as e:  # noqa: BLE001
        dog.disarm()
        traceback.print_exc()
        rec.doc["fatal"] = W.error_entry(e)
        rec.doc["current"] = None
        rec.flush()
        return W.EXIT_FATAL
    dog.disarm()
    rec.flush()

    for w in selected:
        names = [row.name for row in w.rows]
        rec.set("current", w.name)
        W.log("running %r" % w.name)
        gc.collect()
        dog.arm(names, w.timeout * args.timeout_scale)
        t_row = time.perf_counter()
        try:
            v = w.fn(ctx)
            ent = ({"value": float(v["value"]), "details": v.get("details")}
                   if isinstance(v, dict) else {"value": float(v)})
            rec.row(w.name, ent)
            W.log("  %-48s %.6g" % (w.name, ent["value"]))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            ent = W.error_entry(e)
            rec.row(w.name, dict(ent))
            W.log("  %-48s error: %s: %s" % (w.name, ent["error"], ent["message"][:120]))
        finally:
            dog.disarm()
        W.log("  (%.1f s)" % (time.perf_counter() - t_row))

    rec.set("current", "<shutdown>")
    dog.arm(["<shutdown>"], 60 * args.timeout_scale, kind="shutdown")
    try:
        ctx.ray.shutdown()
        ctx.cluster.shutdown()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    dog.disarm()
    rec.doc["current"] = None
    rec.doc["finished"] = True
    rec.doc["meta"]["ended"] = time.time()
    rec.flush()
    return 0


# --------------------------------------------------------------------------
# Plain socket copy on loopback (the limit for a cross-node transfer here)
# --------------------------------------------------------------------------

def socket_sender(port, nbytes, rounds):
    buf = bytearray(b"\x5a") * nbytes  # every page written
    s = socket.create_connection(("127.0.0.1", port))
    for _ in range(rounds):
        if s.recv(1) != b"g":
            return 1
        s.sendall(buf)
    s.recv(1)
    return 0


def socket_copy(nbytes, rounds, timeout=120.0):
    """GiB/s of each round: the receiver sends one byte, then times recv_into()
    of ``nbytes`` into a preallocated, touched buffer until all have arrived."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.settimeout(timeout)
    port = lst.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--socket-sender",
                             str(port), str(nbytes), str(rounds)], stdin=subprocess.DEVNULL)
    rates = []
    try:
        conn, _ = lst.accept()
        conn.settimeout(timeout)
        buf = bytearray(b"\x00") * nbytes
        mv = memoryview(buf)
        for _ in range(rounds):
            conn.sendall(b"g")
            got = 0
            t0 = time.perf_counter()
            while got < nbytes:
                k = conn.recv_into(mv[got:])
                if not k:
                    raise ConnectionError("sender closed early")
                got += k
            dt = time.perf_counter() - t0
            if buf[0] != 0x5A or buf[-1] != 0x5A:
                raise AssertionError("socket copy: wrong bytes")
            rates.append(nbytes / GiB / dt)
            buf[0] = buf[-1] = 0
        conn.sendall(b"x")
        conn.close()
        proc.wait(timeout=30)
    finally:
        lst.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rates


# --------------------------------------------------------------------------
# Launcher side
# --------------------------------------------------------------------------

class MultiNodeRun(R.BackendRun):
    """run.py's backend run (restarts, timeouts, clean-up by tag), launching
    this file's --worker instead of workloads.py."""

    def _cmd(self, json_path, only):
        cmd = [self.python, "-u", os.path.abspath(__file__), "--worker",
               "--backend", self.backend, "--json", json_path,
               "--only", ",".join(k for k, w in KEYS.items() if w.name in only),
               "--timeout-scale", str(self.args.row_timeout_scale)]
        if self.args.quick:
            cmd.append("--quick")
        return cmd

    def _env(self, tag):
        env = super()._env(tag)
        if self.backend == "ray":
            # A fresh, short temp dir per launch: keeps this cluster apart from
            # any other Ray cluster on the machine (unix socket paths stay short).
            d = tempfile.mkdtemp(prefix="lmnb-ray-")
            self.ray_tmpdirs.append(d)
            env["RAY_TMPDIR"] = d
        return env

    def run(self):
        self.ray_tmpdirs = []
        try:
            return super().run()
        finally:
            for d in self.ray_tmpdirs:
                shutil.rmtree(d, ignore_errors=True)


def fmt(v, unit):
    if v is None:
        return ""
    if unit == "s":
        return "%.3f s" % v if v < 1 else "%.2f s" % v
    return R.fmt_value(v, unit)


def build_table(rows, per_backend, available, socket_rates):
    header = ["row", "unit", "Luminary", "Ray", "speed-up (x, >1 = Luminary better)"]
    lines = []
    sock = statistics.median(socket_rates) if socket_rates else None
    meds = {}
    for row in [SOCKET_ROW] + rows:
        unit = row.unit + (" (lower is better)" if row.better == "lower" else "")
        if row is SOCKET_ROW:
            c = fmt(sock, row.unit) if sock else "error"
            lines.append([row.name, unit, c, c, "(limit)"])
            continue
        cells, m = {}, {}
        for b in BACKENDS:
            if not available.get(b):
                cells[b], m[b] = "n/a", None
                continue
            med, ok, n, err = R.summarize(per_backend[b].get(row.name, []))
            m[b] = med
            cells[b] = ("error: %s" % (err or "NoResult") if med is None else
                        fmt(med, row.unit) + ("" if ok == n else " (%d/%d ok)" % (ok, n)))
        meds[row.name] = m
        speed = ""
        lum, ray = m["luminary"], m["ray"]
        if lum and ray and lum > 0 and ray > 0:
            speed = "%.2fx" % (lum / ray if row.better == "higher" else ray / lum)
        lines.append([row.name, unit, cells["luminary"], cells["ray"], speed])
    return header, lines, sock, meds


def detail_notes(rows, per_backend, available, sock, meds):
    notes = []
    tm = meds.get(TRANSFER_ROW, {})
    if sock:
        parts = ["%s %.0f %%" % (TITLES[b], 100 * tm[b] / sock)
                 for b in BACKENDS if tm.get(b)]
        if parts:
            notes.append("Cross-node transfer as a fraction of the plain socket copy "
                         "(%.2f GiB/s): %s." % (sock, ", ".join(parts)))
    for b in BACKENDS:
        if not available.get(b):
            continue
        for key, what in (("spread", "SPREAD"), ("default", "default strategy, 1-ms tasks")):
            ds = [d for e in per_backend[b].get(KEYS[key].name, [])
                  for d in (e.get("details") or {}).get("distribution") or []]
            if ds:
                notes.append("%s %s, tasks per node (n0 = head) in each timed batch: %s."
                             % (TITLES[b], what, "; ".join(
                                 "/".join(str(d.get("n%d" % k, 0)) for k in range(3))
                                 for d in ds)))
        for e in per_backend[b].get("100 MB broadcast to 3 nodes", []):
            d = (e.get("details") or {}).get("driver_local_sum_s")
            if d:
                notes.append("%s broadcast: the sum of 100 MiB alone takes %.3f s in "
                             "the driver." % (TITLES[b], d))
                break
    return notes


def render_docs_section(table_md, info):
    m = info["machine"]
    L = [DOCS_BEGIN, "", "## Multi-node", ""]
    L.append("Generated by `benchmarks/multinode.py --write-docs`; `benchmarks/run.py "
             "--write-docs` keeps this section. What each row measures is in "
             "[benchmarks/README.md](../benchmarks/README.md#multi-node).")
    L.append("")
    L.append("- Date: %s" % info["date"])
    L.append("- Machine: %s, %s cores, %.1f GiB RAM, %s"
             % (m["cpu"], m["cores"], m["ram_gib"] or 0, m["os"]))
    L.append("- Luminary: %s, Python %s, working tree at %s"
             % (info["luminary_version"] or "not importable",
                info["luminary_python_version"], info["git"]))
    if info["ray_available"]:
        L.append("- Ray: %s, Python %s (`%s`), defaults; `RAY_USAGE_STATS_ENABLED=0` and "
                 "a fresh `RAY_TMPDIR` per run" % (info["ray_version"],
                                                   info["ray_python_version"],
                                                   info["ray_python"]))
    else:
        L.append("- Ray: not run (%s)" % info["ray_reason"])
    L.append("- Command: `%s`" % info["command"])
    L.append("- Cluster, both systems: `cluster_utils.Cluster` with a head node and two "
             "more nodes on this one machine, every node `num_cpus=1`, a custom resource "
             "`n0`/`n1`/`n2` and `object_store_memory` %.1f GiB; the driver is on the "
             "head node (`n0`). The nodes talk TCP over loopback, so every node shares "
             "the same %s cores." % (info["store_gib"], m["cores"]))
    L.append("- Load average before the run: %s; after: %s"
             % tuple("/".join("%.2f" % x for x in v) if v else "n/a"
                     for v in (info["load_before"], info["load_after"])))
    if info.get("note"):
        L.append("- Note: %s" % info["note"])
    L.append("")
    L.append("Every cell is the **median of %d runs** (backends alternating, each run a "
             "fresh process and a fresh cluster); inside a run, a row is the median of "
             "its rounds. The speed-up is Luminary/Ray for rates and Ray/Luminary for "
             "seconds. The socket row is not a backend: it is the same number in both "
             "columns, measured by the launcher with no cluster running." % info["repeat"])
    L.append("")
    L.append(table_md)
    L.append("")
    for n in info["notes"]:
        L.append("- " + n.replace("|", "\\|"))
    if info["errors"]:
        L.append("")
        L.append("Errors seen (first of each kind):")
        L.append("")
        for n in info["errors"][:40]:
            L.append("- " + n.replace("|", "\\|"))
    L.append("")
    L.append("Raw per-run results: `%s` (not committed)."
             % os.path.relpath(info["out_dir"], ROOT))
    L.append("")
    L.append(DOCS_END)
    return "\n".join(L)


def replace_section(text, section):
    """``text`` with the marked multi-node section replaced by ``section``
    (appended when there is none).  Everything outside the markers is kept."""
    pat = re.compile(re.escape(DOCS_BEGIN.split(" (")[0]) + r".*?" + re.escape(DOCS_END),
                     re.S)
    if pat.search(text):
        return pat.sub(lambda _m: section, text, count=1)
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"


def write_docs(path, section):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(replace_section(text, section))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Multi-node benchmarks, Luminary next to Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per backend; cells are medians (default 3, 1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="1 repeat, 1 transfer, 1 task batch, 2 broadcasts")
    p.add_argument("--only", default="",
                   help="comma-separated row keys: socket, start, transfer, broadcast, "
                        "spread, default (see --list)")
    p.add_argument("--write-docs", action="store_true",
                   help="replace the Multi-node section of docs/benchmarks.md")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds allowed for one backend run, all rows (default 300)")
    p.add_argument("--row-timeout-scale", type=float, default=1.0,
                   help="multiply each row's own limit (150-300 s) by this")
    p.add_argument("--ray-python", default=R.default_ray_python())
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--no-luminary", action="store_true")
    p.add_argument("--no-socket", action="store_true", help="skip the socket baseline")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--docs-path", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    p.add_argument("--note", default="",
                   help="one more line for the docs section, e.g. what else ran meanwhile")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--list", action="store_true")
    # internal
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="luminary", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--timeout-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--socket-sender", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.socket_sender:
        return socket_sender(*args.socket_sender)
    if args.worker:
        return worker_main(args)
    if args.list:
        for k, r in [(SOCKET_KEY, SOCKET_ROW)] + [(k, w.rows[0]) for k, w in KEYS.items()]:
            print("%-10s %-50s %-8s %s is better" % (k, r.name, r.unit, r.better))
        return 0
    try:
        keys = pick(args.only)
    except KeyError as e:
        print("unknown row key(s): %s; --list shows the keys" % e, file=sys.stderr)
        return 2
    selected = [w for k, w in KEYS.items() if not keys or k in keys]
    do_socket = not args.no_socket and (not keys or SOCKET_KEY in keys)
    rows = [r for w in selected for r in w.rows]
    sizes = Sizes(args.quick)

    available = {"luminary": not args.no_luminary, "ray": False}
    ray_version = ray_pyver = None
    ray_reason = ""
    if args.no_ray:
        ray_reason = "--no-ray"
    elif not args.ray_python:
        ray_reason = "no Ray interpreter (set RAY_PYTHON or --ray-python)"
    else:
        try:
            ray_version, ray_pyver = R.probe_ray(args.ray_python)
            available["ray"] = True
        except Exception as e:  # noqa: BLE001
            ray_reason = "cannot import ray with %s: %s" % (args.ray_python, e)
    if ray_reason:
        print("Ray column: n/a (%s)" % ray_reason, flush=True)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out_dir or os.path.join(ROOT, "bench-results", "multinode-" + stamp)
    os.makedirs(out_dir, exist_ok=True)
    load_before = R.loadavg()
    t0 = time.monotonic()
    print("multi-node benchmarks: %d row(s), %d repeat(s)%s; raw results in %s"
          % (len(rows) + do_socket, args.repeat, ", quick" if args.quick else "",
             os.path.relpath(out_dir)), flush=True)
    if load_before and load_before[0] > 0.5 * (os.cpu_count() or 1):
        print("note: load average is %.2f before starting; other work on this machine "
              "will skew the numbers" % load_before[0], flush=True)

    per_backend = {b: {r.name: [] for r in rows} for b in BACKENDS}
    socket_rates, problems, metas = [], [], {}
    pythons = {"luminary": sys.executable, "ray": args.ray_python}
    for rep in range(1, args.repeat + 1):
        if do_socket:
            try:
                rs = socket_copy(sizes.transfer_bytes, sizes.socket_rounds)
                socket_rates += rs
                print("[run %d/%d] plain socket copy: %s GiB/s"
                      % (rep, args.repeat, ", ".join("%.2f" % x for x in rs)), flush=True)
            except Exception as e:  # noqa: BLE001
                problems.append("socket copy, run %d: %s: %s" % (rep, type(e).__name__, e))
        order = list(BACKENDS) if rep % 2 == 1 else list(reversed(BACKENDS))
        for b in order:
            if not available[b] or not selected:
                continue
            print("[run %d/%d] %s (%s)" % (rep, args.repeat, TITLES[b], pythons[b]),
                  flush=True)
            br = MultiNodeRun(b, pythons[b], args, selected, rep, out_dir)
            res = br.run()
            if br.meta and (b not in metas or br.meta.get("version")):
                metas[b] = br.meta
            problems += br.problems
            n_ok = sum(1 for e in res.values() if "value" in e)
            print("[run %d/%d] %s: %d/%d rows ok in %.0f s"
                  % (rep, args.repeat, TITLES[b], n_ok, len(rows), br.wall), flush=True)
            for r in rows:
                per_backend[b][r.name].append(res.get(r.name, {"error": "NoResult",
                                                                "message": ""}))
    load_after = R.loadavg()

    header, lines, sock, meds = build_table(rows, per_backend, available,
                                            socket_rates if do_socket else [])
    if not do_socket:
        lines = lines[1:]
    table_md = R.render_markdown(header, lines)
    notes = detail_notes(rows, per_backend, available, sock, meds)
    errors = R.error_notes(rows, per_backend, available)
    print()
    print("Medians of %d run(s); speed-up = Luminary/Ray for rates, Ray/Luminary for "
          "seconds." % args.repeat)
    print(table_md)
    for n in notes:
        print("  " + n)
    if errors:
        print("\nErrors (first of each kind):")
        for n in errors[:60]:
            print("  " + n)
    if problems:
        print("\nRun problems:")
        for p in problems:
            print("  " + p)
    print("\ntotal %.0f s; raw results in %s" % (time.monotonic() - t0, out_dir))

    lum_meta = metas.get("luminary") or {}
    cmd_args = sys.argv[1:] if argv is None else argv
    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": R.machine_info(),
        "luminary_version": lum_meta.get("version"),
        "luminary_python": sys.executable,
        "luminary_python_version": platform.python_version(),
        "git": R.git_rev(),
        "ray_available": available["ray"],
        "ray_version": ray_version,
        "ray_python": args.ray_python,
        "ray_python_version": ray_pyver,
        "ray_reason": ray_reason,
        "command": "python benchmarks/multinode.py" + (
            " " + shlex.join(cmd_args) if cmd_args else ""),
        "repeat": args.repeat,
        "quick": args.quick,
        "store_gib": sizes.store_bytes / GiB,
        "load_before": load_before,
        "load_after": load_after,
        "notes": notes,
        "errors": errors,
        "out_dir": out_dir,
        "socket_rates": socket_rates,
        "note": args.note,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"info": info, "metas": metas, "problems": problems,
                   "table": {"header": header, "lines": lines}, "runs": per_backend},
                  f, indent=1, default=str)
    if args.write_docs:
        write_docs(args.docs_path, render_docs_section(table_md, info))
        print("wrote the Multi-node section of %s" % os.path.relpath(args.docs_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
