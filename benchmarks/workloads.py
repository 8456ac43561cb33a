#!/usr/bin/env python
"""Benchmark workloads for Luminary and Ray.

One run of this script = one backend, one local cluster, every selected row
measured once.  It is normally launched by ``benchmarks/run.py``; it can also be
run by hand::

    python benchmarks/workloads.py --backend luminary --json /tmp/lum.json
    /work/rayenv/bin/python benchmarks/workloads.py --backend ray --json /tmp/ray.json

The backend module is chosen with ``importlib.import_module(backend)`` and only
its public API is used (``init``, ``remote``, ``get``, ``put``, ``wait``,
``kill``, ``shutdown``, ``options``, ``<backend>.util.ActorPool``), so the same
code runs on both systems.

Results are written to the ``--json`` file after every row, so a run that is
killed half-way still leaves the rows it finished.  A watchdog thread ends the
process (exit code 3) when a row runs past its time limit; ``run.py`` then
restarts the script for the rows that are left.

Nothing at module level imports anything but the standard library, so ``run.py``
can import this file for the row list (``ROWS``) without starting a backend.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import re
import sys
import threading
import time
import traceback

# Name of the environment variable carrying a per-run tag.  run.py sets it in
# the environment of this process; every process of the cluster that inherits
# the environment carries it too, which is how the memory row (and run.py's
# clean-up) finds processes that are not descendants of the driver.
TAG_VAR = "LUMINARY_BENCH_TAG"

EXIT_ROW_TIMEOUT = 3
EXIT_FATAL = 2


def has_tag(proc, tag):
    """True when ``proc``'s environment holds TAG_VAR=tag.  Reads the raw
    /proc/<pid>/environ bytes: processes that rename themselves (Ray's
    ``ray::...`` workers and agents use setproctitle) may zero the start of
    that block, which makes psutil's parser return an empty environment."""
    needle = ("%s=%s\0" % (TAG_VAR, tag)).encode()
    try:
        with open("/proc/%d/environ" % proc.pid, "rb") as f:
            return needle in f.read() + b"\0"
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return False  # Linux: the process is gone
    except OSError:
        return False
    try:  # no /proc: ask psutil
        return proc.environ().get(TAG_VAR) == tag
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------
# Row registry
# --------------------------------------------------------------------------

class Row:
    def __init__(self, name, unit, better, desc):
        self.name = name
        self.unit = unit
        self.better = better  # "higher" or "lower"
        self.desc = desc


class Workload:
    def __init__(self, fn, rows, timeout):
        self.fn = fn
        self.rows = rows
        self.timeout = timeout

    @property
    def name(self):
        return self.rows[0].name


WORKLOADS: list[Workload] = []


def workload(*rows, timeout=60.0):
    """Register a workload function producing one or more rows.

    ``rows`` are ``(name, unit, better, description)`` tuples.  The function
    takes a ``Ctx`` and returns a number (single row) or a dict mapping row
    names to numbers or to ``{"value": number, "details": {...}}``.
    """

    def deco(fn):
        WORKLOADS.append(Workload(fn, [Row(*r) for r in rows], timeout))
        return fn

    return deco


def all_rows():
    return [r for w in WORKLOADS for r in w.rows]


def find_workloads(names):
    """Workloads that produce any of the given row names (case-insensitive)."""
    wanted = {n.strip().lower() for n in names if n.strip()}
    known = {r.name.lower() for r in all_rows()}
    unknown = sorted(wanted - known)
    if unknown:
        raise KeyError(", ".join(unknown))
    return [w for w in WORKLOADS if any(r.name.lower() in wanted for r in w.rows)]


# --------------------------------------------------------------------------
# Context and timing helpers
# --------------------------------------------------------------------------

class Ctx:
    def __init__(self, ray, backend, args):
        self.ray = ray
        self.backend = backend
        self.quick = args.quick
        self.num_cpus = args.num_cpus
        # "n" for the 1:n, n:n and multi-client rows.
        self.n = max(2, args.num_cpus)
        self.duration = args.duration if args.duration else (0.5 if args.quick else 1.5)
        self.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 0.5)
        self.put_bytes = (256 << 20) if args.quick else (1 << 30)
        self.num_actors_create = 20 if args.quick else 100
        self.pool_items = 1_000 if args.quick else 10_000
        self.batch = 1000  # tasks / calls per batch in the "async" rows
        self.init_seconds = None
        self.init_t0_wall = None
        self.r = None  # remote functions / classes, see define_remotes()


def measure(ctx, fn, per_call=1.0, warmup=True):
    """Call ``fn`` repeatedly for ``ctx.duration`` seconds (after a warm-up of
    ``ctx.warmup`` seconds, at least one call) and return operations/second,
    where one call of ``fn`` counts ``per_call`` operations."""
    if warmup:
        t_end = time.perf_counter() + ctx.warmup
        while True:
            fn()
            if time.perf_counter() >= t_end:
                break
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= ctx.duration:
            break
    return n * per_call / elapsed


def kill_all(ray, actors):
    for a in actors:
        try:
            ray.kill(a)
        except Exception:
            pass


def define_remotes(ray):
    """Remote functions and actor classes used by the workloads.  Defined in a
    function so that ``ray`` is whichever backend module was imported; the
    closures pickle the module by name, so workers import the same backend."""
    import numpy as np

    ns = argparse.Namespace()

    @ray.remote
    def trivial():
        return 1

    @ray.remote(num_cpus=0)
    def submitter(m):
        # A "client" task: submits m trivial tasks and waits for all of them.
        # num_cpus=0 so that the clients never hold the CPUs the inner tasks
        # need (no reliance on CPU release while blocked in get).
        return sum(ray.get([trivial.remote() for _ in range(m)]))

    @ray.remote
    class Server:
        def small(self):
            return 1

        def with_arg(self, x):
            return len(x)

        def ping(self):
            return 1

    @ray.remote
    class AsyncServer:
        async def small(self):
            return 1

        async def with_arg(self, x):
            return len(x)

    @ray.remote
    class Client:
        def call_small(self, servers, m):
            k = len(servers)
            return sum(ray.get([servers[i % k].small.remote() for i in range(m)]))

        def call_with_arg(self, servers, m, nbytes):
            # One object of nbytes put by this client, passed by reference to
            # every call; the server resolves it from the object store.
            ref = ray.put(np.ones(nbytes, dtype=np.uint8))
            k = len(servers)
            return sum(ray.get([servers[i % k].with_arg.remote(ref) for i in range(m)]))

    @ray.remote
    class PoolWorker:
        def double(self, v):
            return 2 * v

    ns.trivial = trivial
    ns.submitter = submitter
    ns.Server = Server
    ns.AsyncServer = AsyncServer
    ns.Client = Client
    ns.PoolWorker = PoolWorker
    return ns


def check(cond, what):
    if not cond:
        raise AssertionError(what)


# --------------------------------------------------------------------------
# Workloads (order = table order)
# --------------------------------------------------------------------------

@workload(("init to first result", "s", "lower",
           "Seconds from just before init() to the first get() of a trivial task "
           "returning, in a fresh process (the backend module is already imported)."),
          timeout=120)
def w_init(ctx):
    # The init itself happens in main(), before any row; this row reports it.
    if ctx.init_seconds is None:
        raise RuntimeError("init was not timed in this process")
    return ctx.init_seconds


def _cluster_processes(tag):
    """Driver + its recursive children + processes carrying the run tag in
    their environment (and their children) + processes whose command line
    names a session directory found on the command line of one of those."""
    import psutil

    me = psutil.Process()
    procs = {me.pid: me}
    for c in me.children(recursive=True):
        procs[c.pid] = c
    # A launcher above the driver may carry the tag too; it is not the cluster.
    ancestors = {p.pid for p in me.parents()}
    # When the driver leads its own session (run.py starts it that way), every
    # process it started that did not call setsid() is in that session, even
    # after being re-parented to init.
    own_sid = os.getpid() if os.getsid(0) == os.getpid() else None
    if tag or own_sid:
        for p in psutil.process_iter():
            if p.pid in procs or p.pid in ancestors:
                continue
            try:
                if (tag and has_tag(p, tag)) or (own_sid and _sid(p.pid) == own_sid):
                    procs[p.pid] = p
                    for c in p.children(recursive=True):
                        procs[c.pid] = c
            except (psutil.Error, OSError):
                pass
    # Session directories named on the cluster's command lines (Ray passes
    # --session-dir/--session_dir to gcs_server, raylet, agents ...).
    sess = set()
    for p in list(procs.values()):
        try:
            for m in re.finditer(r"--session[-_]dir=(\S+)", " ".join(p.cmdline())):
                sess.add(m.group(1).rstrip("/"))
        except (psutil.Error, OSError):
            pass
    if sess:
        for p in psutil.process_iter():
            if p.pid in procs or p.pid in ancestors:
                continue
            try:
                cl = " ".join(p.cmdline())
            except (psutil.Error, OSError):
                continue
            if any(s + "/" in cl or cl.endswith(s) or (s + " ") in cl for s in sess):
                procs[p.pid] = p
                try:
                    for c in p.children(recursive=True):
                        procs[c.pid] = c
                except psutil.Error:
                    pass
    out = []
    for p in procs.values():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        out.append(p)
    return out


def _sid(pid):
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _rss_snapshot(procs):
    import psutil

    total = 0
    alive = []
    for p in procs:
        try:
            total += p.memory_info().rss
            alive.append(p.pid)
        except psutil.Error:
            pass
    return total, frozenset(alive)


@workload(("idle memory of the local cluster", "MB", "lower",
           "Sum of PSS (proportional set size, so shared pages are not counted "
           "twice) over the driver and every process of the local cluster, after "
           "init and one trivial task, once memory and process count stop changing. "
           "MB = 2^20 bytes."),
          ("idle memory of the local cluster (RSS sum)", "MB", "lower",
           "Same processes, sum of RSS (counts shared pages once per process)."),
          ("idle processes of the local cluster", "processes", "lower",
           "Number of processes counted above, the driver included."),
          timeout=120)
def w_idle_memory(ctx):
    import psutil

    ray, r = ctx.ray, ctx.r
    check(ray.get(r.trivial.remote()) == 1, "trivial task result")
    tag = os.environ.get(TAG_VAR)
    # Wait until quiet: same set of processes and RSS sum within 1 % (or 2 MB)
    # over the last 3 seconds; give up waiting after 30 s (10 s with --quick).
    max_wait = 10.0 if ctx.quick else 30.0
    window = 6  # samples, 0.5 s apart
    hist = []
    t0 = time.perf_counter()
    converged = False
    while True:
        procs = _cluster_processes(tag)
        hist.append(_rss_snapshot(procs))
        hist = hist[-window:]
        if len(hist) == window:
            pids = {h[1] for h in hist}
            vals = [h[0] for h in hist]
            if len(pids) == 1 and max(vals) - min(vals) <= max(2 << 20, 0.01 * max(vals)):
                converged = True
                break
        if time.perf_counter() - t0 > max_wait:
            break
        time.sleep(0.5)
    waited = time.perf_counter() - t0
    procs = _cluster_processes(tag)
    pss_total = rss_total = 0
    pss_ok = True
    breakdown = []
    for p in procs:
        try:
            rss = p.memory_info().rss
            try:
                pss = p.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                pss = None
                pss_ok = False
            name = p.name()
            try:
                cl = " ".join(p.cmdline())[:120]
            except psutil.Error:
                cl = ""
        except psutil.Error:
            continue
        rss_total += rss
        if pss is not None:
            pss_total += pss
        breakdown.append({"pid": p.pid, "name": name, "rss_mb": round(rss / 2**20, 1),
                          "pss_mb": None if pss is None else round(pss / 2**20, 1),
                          "cmdline": cl})
    breakdown.sort(key=lambda d: -(d["pss_mb"] or d["rss_mb"]))
    details = {"processes": breakdown, "waited_s": round(waited, 1), "converged": converged,
               "measure": "pss" if pss_ok else "rss (PSS unavailable)"}
    main_val = (pss_total if pss_ok else rss_total) / 2**20
    return {
        "idle memory of the local cluster": {"value": main_val, "details": details},
        "idle memory of the local cluster (RSS sum)": rss_total / 2**20,
        "idle processes of the local cluster": len(breakdown),
    }


@workload(("single client tasks sync", "tasks/s", "higher",
           "Submit one trivial task, get its result, repeat."))
def w_tasks_sync(ctx):
    ray, r = ctx.ray, ctx.r

    def op():
        check(ray.get(r.trivial.remote()) == 1, "result")

    return measure(ctx, op)


@workload(("single client tasks async", "tasks/s", "higher",
           "Submit 1,000 trivial tasks, then one get() of all 1,000 refs; "
           "rate counted in tasks."))
def w_tasks_async(ctx):
    ray, r, b = ctx.ray, ctx.r, ctx.batch

    def op():
        refs = [r.trivial.remote() for _ in range(b)]
        check(sum(ray.get(refs)) == b, "results")

    return measure(ctx, op, per_call=b)


@workload(("single client tasks and get batch", "batches/s", "higher",
           "Same loop as 'tasks async' (1,000 submits + one get), rate counted in "
           "batches of 1,000."))
def w_tasks_batch(ctx):
    ray, r, b = ctx.ray, ctx.r, ctx.batch

    def op():
        check(sum(ray.get([r.trivial.remote() for _ in range(b)])) == b, "results")

    return measure(ctx, op)


@workload(("single client put calls", "puts/s", "higher",
           "put() of a small int; the ref is dropped right away."))
def w_put_calls(ctx):
    ray = ctx.ray

    def op():
        ray.put(0)

    return measure(ctx, op)


@workload(("single client get calls", "gets/s", "higher",
           "get() of a small int that was put once before the loop."))
def w_get_calls(ctx):
    ray = ctx.ray
    ref = ray.put(7)

    def op():
        check(ray.get(ref) == 7, "value")

    return measure(ctx, op)


@workload(("single client put gigabytes", "GiB/s", "higher",
           "put() of one 1 GiB numpy uint8 array (256 MiB with --quick), all pages "
           "touched beforehand; the ref is dropped after each put."),
          timeout=180)
def w_put_gigabytes(ctx):
    import numpy as np

    ray = ctx.ray
    arr = np.ones(ctx.put_bytes, dtype=np.uint8)
    gib = ctx.put_bytes / 2**30

    def op():
        ref = ray.put(arr)
        del ref

    try:
        return measure(ctx, op, per_call=gib)
    finally:
        del arr
        gc.collect()


@workload(("single client get 100 MB object", "gets/s", "higher",
           "A 100 MB numpy uint8 array is put once; the loop times get() of it, "
           "dropping each result (the object is already in this node's store)."),
          timeout=120)
def w_get_100mb(ctx):
    import numpy as np

    ray = ctx.ray
    ref = ray.put(np.ones(100 * 1000 * 1000, dtype=np.uint8))

    def op():
        got = ray.get(ref)
        check(got.nbytes == 100 * 1000 * 1000, "size")
        del got

    try:
        return measure(ctx, op)
    finally:
        del ref
        gc.collect()


@workload(("single client get object containing 10k refs", "gets/s", "higher",
           "A list of 10,000 refs (each to a small put object) is put once; the "
           "loop times get() of that list (10,000 refs deserialized per get)."),
          timeout=120)
def w_get_10k_refs(ctx):
    ray = ctx.ray
    inner = [ray.put(i) for i in range(10_000)]
    outer = ray.put(inner)

    def op():
        got = ray.get(outer)
        check(len(got) == 10_000, "length")

    try:
        return measure(ctx, op)
    finally:
        del outer, inner
        gc.collect()


@workload(("single client wait 1k refs", "rounds/s", "higher",
           "One round: submit 1,000 trivial tasks, then call wait(pending, "
           "num_returns=1) until nothing is pending."))
def w_wait_1k(ctx):
    ray, r = ctx.ray, ctx.r

    def op():
        pending = [r.trivial.remote() for _ in range(1000)]
        calls = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            check(len(ready) == 1, "wait returned %d refs" % len(ready))
            calls += 1
        check(calls == 1000, "wait calls")

    return measure(ctx, op)


@workload(("multi client tasks async", "tasks/s", "higher",
           "n client tasks (n = max(2, num_cpus), declared num_cpus=0) run at once; "
           "each submits 1,000 trivial tasks and gets them. Rate counts the inner "
           "tasks."))
def w_multi_client_tasks(ctx):
    ray, r, n, b = ctx.ray, ctx.r, ctx.n, ctx.batch

    def op():
        check(sum(ray.get([r.submitter.remote(b) for _ in range(n)])) == n * b, "results")

    return measure(ctx, op, per_call=n * b)


# ---- actors (issue 3) ----------------------------------------------------

@workload(("1:1 actor calls sync", "calls/s", "higher",
           "One actor; call a trivial method and get the result, repeat."))
def w_actor_sync(ctx):
    ray, r = ctx.ray, ctx.r
    a = r.Server.remote()
    try:
        def op():
            check(ray.get(a.small.remote()) == 1, "result")
        return measure(ctx, op)
    finally:
        kill_all(ray, [a])


@workload(("1:1 actor calls async", "calls/s", "higher",
           "One actor; 1,000 trivial method calls, then one get() of all."))
def w_actor_async(ctx):
    ray, r, b = ctx.ray, ctx.r, ctx.batch
    a = r.Server.remote()
    try:
        def op():
            check(sum(ray.get([a.small.remote() for _ in range(b)])) == b, "results")
        return measure(ctx, op, per_call=b)
    finally:
        kill_all(ray, [a])


@workload(("1:1 actor calls concurrent", "calls/s", "higher",
           "One threaded actor with max_concurrency=16; 1,000 trivial calls, then "
           "one get() of all."))
def w_actor_concurrent(ctx):
    ray, r, b = ctx.ray, ctx.r, ctx.batch
    a = r.Server.options(max_concurrency=16).remote()
    try:
        def op():
            check(sum(ray.get([a.small.remote() for _ in range(b)])) == b, "results")
        return measure(ctx, op, per_call=b)
    finally:
        kill_all(ray, [a])


@workload(("1:n actor calls async", "calls/s", "higher",
           "The driver and n actors (n = max(2, num_cpus)); 1,000 calls spread "
           "round-robin over the actors, then one get() of all."))
def w_actor_1n(ctx):
    ray, r, n, b = ctx.ray, ctx.r, ctx.n, ctx.batch
    servers = [r.Server.remote() for _ in range(n)]
    try:
        def op():
            check(sum(ray.get([servers[i % n].small.remote() for i in range(b)])) == b,
                  "results")
        return measure(ctx, op, per_call=b)
    finally:
        kill_all(ray, servers)


@workload(("n:n actor calls async", "calls/s", "higher",
           "n client actors and n server actors (n = max(2, num_cpus)); each client "
           "makes 1,000 trivial calls round-robin over all servers and gets them; "
           "the driver waits for all clients. Rate counts the server calls."))
def w_actor_nn(ctx):
    ray, r, n, b = ctx.ray, ctx.r, ctx.n, ctx.batch
    servers = [r.Server.remote() for _ in range(n)]
    clients = [r.Client.remote() for _ in range(n)]
    try:
        def op():
            check(sum(ray.get([c.call_small.remote(servers, b) for c in clients])) == n * b,
                  "results")
        return measure(ctx, op, per_call=n * b)
    finally:
        kill_all(ray, clients + servers)


@workload(("n:n actor calls with arg async", "calls/s", "higher",
           "As 'n:n actor calls async', but each call passes an ObjectRef to a "
           "1 MiB numpy array (put once per round by each client); the server "
           "resolves it and returns its length."))
def w_actor_nn_arg(ctx):
    ray, r, n, b = ctx.ray, ctx.r, ctx.n, ctx.batch
    servers = [r.Server.remote() for _ in range(n)]
    clients = [r.Client.remote() for _ in range(n)]
    nbytes = 1 << 20
    try:
        def op():
            got = ray.get([c.call_with_arg.remote(servers, b, nbytes) for c in clients])
            check(sum(got) == n * b * nbytes, "results")
        return measure(ctx, op, per_call=n * b)
    finally:
        kill_all(ray, clients + servers)


@workload(("1:1 async-actor calls sync", "calls/s", "higher",
           "One async actor (async def methods); call, get, repeat."))
def w_async_actor_sync(ctx):
    ray, r = ctx.ray, ctx.r
    a = r.AsyncServer.remote()
    try:
        def op():
            check(ray.get(a.small.remote()) == 1, "result")
        return measure(ctx, op)
    finally:
        kill_all(ray, [a])


@workload(("1:1 async-actor calls async", "calls/s", "higher",
           "One async actor; 1,000 calls, then one get() of all."))
def w_async_actor_async(ctx):
    ray, r, b = ctx.ray, ctx.r, ctx.batch
    a = r.AsyncServer.remote()
    try:
        def op():
            check(sum(ray.get([a.small.remote() for _ in range(b)])) == b, "results")
        return measure(ctx, op, per_call=b)
    finally:
        kill_all(ray, [a])


@workload(("1:1 async-actor calls with args async", "calls/s", "higher",
           "One async actor; 1,000 calls each passing a 1 KiB bytes value by value, "
           "then one get() of all."))
def w_async_actor_args(ctx):
    ray, r, b = ctx.ray, ctx.r, ctx.batch
    a = r.AsyncServer.remote()
    payload = b"x" * 1024
    try:
        def op():
            check(sum(ray.get([a.with_arg.remote(payload) for _ in range(b)])) == b * 1024,
                  "results")
        return measure(ctx, op, per_call=b)
    finally:
        kill_all(ray, [a])


@workload(("1:n async-actor calls async", "calls/s", "higher",
           "The driver and n async actors; 1,000 calls round-robin, one get() of all."))
def w_async_actor_1n(ctx):
    ray, r, n, b = ctx.ray, ctx.r, ctx.n, ctx.batch
    servers = [r.AsyncServer.remote() for _ in range(n)]
    try:
        def op():
            check(sum(ray.get([servers[i % n].small.remote() for i in range(b)])) == b,
                  "results")
        return measure(ctx, op, per_call=b)
    finally:
        kill_all(ray, servers)


@workload(("n:n async-actor calls async", "calls/s", "higher",
           "n (ordinary) client actors, n async server actors; each client makes "
           "1,000 calls round-robin over the servers and gets them."))
def w_async_actor_nn(ctx):
    ray, r, n, b = ctx.ray, ctx.r, ctx.n, ctx.batch
    servers = [r.AsyncServer.remote() for _ in range(n)]
    clients = [r.Client.remote() for _ in range(n)]
    try:
        def op():
            check(sum(ray.get([c.call_small.remote(servers, b) for c in clients])) == n * b,
                  "results")
        return measure(ctx, op, per_call=n * b)
    finally:
        kill_all(ray, clients + servers)


@workload(("ActorPool map", "items/s", "higher",
           "<backend>.util.ActorPool of n actors; list(pool.map(...)) over 10,000 "
           "ints (1,000 with --quick), each item one method call returning 2*v. "
           "Warm-up: one map over 100 items."),
          timeout=180)
def w_actor_pool(ctx):
    ray, r, n = ctx.ray, ctx.r, ctx.n
    ActorPool = importlib.import_module(ctx.backend + ".util").ActorPool
    actors = [r.PoolWorker.remote() for _ in range(n)]
    items = ctx.pool_items
    try:
        def run(k):
            pool = ActorPool(actors)
            out = list(pool.map(lambda a, v: a.double.remote(v), range(k)))
            check(out == [2 * v for v in range(k)], "ActorPool results")

        run(100)
        return measure(ctx, lambda: run(items), per_call=items, warmup=False)
    finally:
        kill_all(ray, actors)


@workload(("actor creation", "actors/s", "higher",
           "Create 100 actors (20 with --quick) and get one method reply from each; "
           "rate = actors / seconds to the last reply. One round, after one warm-up "
           "actor; actors are killed afterwards."),
          timeout=300)
def w_actor_creation(ctx):
    ray, r = ctx.ray, ctx.r
    warm = r.Server.remote()
    check(ray.get(warm.ping.remote()) == 1, "warm-up actor")
    kill_all(ray, [warm])
    k = ctx.num_actors_create
    actors = []
    try:
        t0 = time.perf_counter()
        actors = [r.Server.remote() for _ in range(k)]
        check(sum(ray.get([a.ping.remote() for a in actors])) == k, "replies")
        elapsed = time.perf_counter() - t0
        return k / elapsed
    finally:
        kill_all(ray, actors)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

class Recorder:
    """Keeps the result document and rewrites it atomically after each change."""

    def __init__(self, path, meta):
        self.path = path
        self.lock = threading.Lock()
        self.doc = {"meta": meta, "rows": {}, "current": None, "fatal": None,
                    "finished": False}
        self.flush()

    def flush(self):
        if not self.path:
            return
        with self.lock:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.doc, f, indent=1, default=str)
            os.replace(tmp, self.path)

    def set(self, key, value):
        self.doc[key] = value
        self.flush()

    def row(self, name, entry):
        self.doc["rows"][name] = entry
        self.flush()


def log(msg):
    print("[bench] " + msg, file=sys.stderr, flush=True)


def error_entry(exc):
    name = type(exc).__name__
    msg = str(exc).strip().splitlines()
    return {"error": name, "message": (msg[0][:300] if msg else "")}


class Watchdog(threading.Thread):
    """Ends the process when the current step runs past its limit.  A row is
    recorded as a timeout first (run.py restarts the script for the rows that
    are left); an init that hangs is recorded as fatal."""

    def __init__(self, rec):
        super().__init__(daemon=True)
        self.rec = rec
        self.row_names = None
        self.kind = None
        self.deadline = None
        self.limit = None

    def arm(self, row_names, limit, kind="row"):
        self.row_names, self.limit, self.kind = row_names, limit, kind
        self.deadline = time.monotonic() + limit

    def disarm(self):
        self.deadline = None

    def run(self):
        while True:
            time.sleep(0.25)
            d = self.deadline
            if d is not None and time.monotonic() > d:
                ent = {"error": "Timeout", "message": "%s ran past %.0f s" % (
                    self.row_names[0] if self.kind == "row" else self.kind, self.limit)}
                if self.kind == "row":
                    for name in self.row_names:
                        self.rec.doc["rows"][name] = dict(ent)
                elif self.kind == "init":
                    self.rec.doc["fatal"] = ent
                else:
                    self.rec.doc["shutdown_error"] = ent
                self.rec.doc["current"] = None
                self.rec.flush()
                log(ent["message"] + "; exiting")
                os._exit(EXIT_ROW_TIMEOUT if self.kind != "init" else EXIT_FATAL)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", required=False, default="luminary",
                   help="module to import: luminary or ray")
    p.add_argument("--json", help="write results here (rewritten after every row)")
    p.add_argument("--only", default="", help="comma-separated row names")
    p.add_argument("--quick", action="store_true", help="smaller sizes, shorter loops")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per timed loop (default 1.5, 0.5 with --quick)")
    p.add_argument("--warmup", type=float, default=None,
                   help="warm-up seconds per row (default 0.5, 0.2 with --quick)")
    p.add_argument("--timeout-scale", type=float, default=1.0,
                   help="multiply every per-row time limit by this")
    p.add_argument("--init-kwargs", default="{}",
                   help="extra init() keyword arguments as JSON (default none)")
    p.add_argument("--list", action="store_true", help="print the row names and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for row in all_rows():
            print("%-48s %-10s %s is better" % (row.name, row.unit, row.better))
        return 0
    try:
        selected = find_workloads(args.only.split(",")) if args.only else list(WORKLOADS)
    except KeyError as e:
        print("unknown row name(s): %s (see --list)" % e, file=sys.stderr)
        return EXIT_FATAL
    init_kwargs = json.loads(args.init_kwargs)

    meta = {"backend": args.backend, "python": platform.python_version(),
            "executable": sys.executable, "num_cpus": args.num_cpus, "quick": args.quick,
            "pid": os.getpid(), "init_kwargs": init_kwargs,
            "workloads": [w.name for w in selected], "started": time.time()}
    rec = Recorder(args.json, meta)
    dog = Watchdog(rec)
    dog.start()

    # ---- import + init (the init row's measurement) ----
    rec.set("current", "<init>")
    dog.arm(["<init>"], 120 * args.timeout_scale, kind="init")
    try:
        ray = importlib.import_module(args.backend)
        meta["version"] = getattr(ray, "__version__", "unknown")
        r = define_remotes(ray)
        ctx = Ctx(ray, args.backend, args)
        ctx.r = r
        t0 = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, **init_kwargs)
        first = ray.get(r.trivial.remote())
        ctx.init_seconds = time.perf_counter() - t0
        check(first == 1, "first result")
        log("%s %s: init to first result %.3f s" % (args.backend, meta["version"],
                                                     ctx.init_seconds))
    except BaseException as e:  # noqa: BLE001 - any failure here is fatal
        dog.disarm()
        traceback.print_exc()
        ent = error_entry(e)
        rec.doc["fatal"] = ent
        rec.doc["current"] = None
        rec.flush()
        return EXIT_FATAL
    dog.disarm()
    rec.flush()

    # ---- rows ----
    for w in selected:
        names = [row.name for row in w.rows]
        rec.set("current", w.name)
        log("running %r" % w.name)
        gc.collect()
        dog.arm(names, w.timeout * args.timeout_scale)
        t_row = time.perf_counter()
        try:
            out = w.fn(ctx)
            if not isinstance(out, dict):
                out = {w.name: out}
            for name in names:
                v = out.get(name)
                if isinstance(v, dict):
                    ent = {"value": float(v["value"]), "details": v.get("details")}
                elif v is None:
                    ent = {"error": "Missing", "message": "workload returned no value"}
                else:
                    ent = {"value": float(v)}
                rec.row(name, ent)
                if "value" in ent:
                    log("  %-48s %.6g" % (name, ent["value"]))
        except Exception as e:  # noqa: BLE001 - rows are isolated
            traceback.print_exc()
            ent = error_entry(e)
            for name in names:
                rec.row(name, dict(ent))
            log("  %-48s error: %s: %s" % (w.name, ent["error"], ent["message"][:120]))
        finally:
            dog.disarm()
        log("  (%.1f s)" % (time.perf_counter() - t_row))

    rec.set("current", "<shutdown>")
    dog.arm(["<shutdown>"], 60 * args.timeout_scale, kind="shutdown")
    try:
        ctx.ray.shutdown()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    dog.disarm()
    rec.doc["current"] = None
    rec.doc["finished"] = True
    rec.doc["meta"]["ended"] = time.time()
    rec.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
