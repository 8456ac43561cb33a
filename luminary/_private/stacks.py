"""Live stacks of every process of a cluster, over Luminary's own connections (no ptrace).

    CLI / driver ──cluster_stacks──▶ GCS ──node_stacks──▶ every node manager (in parallel)
                                                          └──dump_stacks──▶ its workers and drivers

The GCS and each node manager add their own threads and the stack of each asyncio task on their
event loop (``dump_service``): a request stuck awaiting a peer shows where it awaits.

Each core worker answers ``dump_stacks`` on its I/O thread with ``sys._current_frames()``
formatted there, so a process whose main thread is busy in user code (or blocked in ``get``)
still answers.  Each level waits ``timeout`` seconds at most: a process that does not answer in
time (stopped, or holding the GIL in C code) is reported as not answering instead of hanging the
command.  ``format_report`` turns the answers into text.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback

DEFAULT_TIMEOUT_S = 3.0


# --- in each driver and worker (I/O thread) ---------------------------------------------------------
def dump_process(core) -> dict:
    """This process's threads and the calls it runs, labelled for a reader."""
    import os
    from .worker.execution import ExecState
    frames = sys._current_frames()
    main = threading.main_thread().ident
    now = time.monotonic()
    ex = getattr(core, "executor", None)
    actor = getattr(ex, "actor", None) if ex is not None else None
    calls, coroutines = [], []
    if ex is not None:
        for t in list(ex.pending.values()):
            if t.state != ExecState.RUNNING:
                continue
            started = getattr(t, "started", None)
            calls.append({"name": t.spec.get("name", "?"), "task_id": t.spec["tid"].hex(),
                          "thread": t.thread or main, "for_s": round(now - started, 1) if started else None})
            if t.afut is not None:
                try:
                    stack = "".join(traceback.StackSummary.extract(
                        (f, f.f_lineno) for f in t.afut.get_stack()).format())
                except Exception as e:  # noqa: BLE001 - a coroutine finishing meanwhile
                    stack = f"(could not read: {e})\n"
                coroutines.append({"name": t.spec.get("name", "?"), "stack": stack})
    if not calls and getattr(core, "current_task_name", None):     # an actor's constructor
        calls.append({"name": core.current_task_name, "task_id": None, "thread": main, "for_s": None})
    threads = thread_stacks(frames, " (Luminary I/O thread)")
    role = "driver" if core.mode != "worker" else ("actor" if actor is not None else "worker")
    return {"pid": os.getpid(), "worker_id": core.worker_id.hex(), "role": role,
            "actor": getattr(actor, "class_name", None) if actor is not None else None,
            "actor_id": actor.actor_id.hex() if actor is not None else None,
            "calls": calls, "threads": threads, "coroutines": coroutines}


def thread_stacks(frames=None, answering=""):
    """Every thread's stack ({ident, name, main, stack}), the main thread first; the thread
    answering (this one) is marked with ``answering`` and shown as such."""
    frames = sys._current_frames() if frames is None else frames
    names = {t.ident: t.name for t in threading.enumerate()}
    main, me = threading.main_thread().ident, threading.get_ident()
    threads = []
    for ident, frame in frames.items():
        label = names.get(ident, f"thread {ident}") + (answering if ident == me else "")
        stack = "    (answering this request)\n" if ident == me else "".join(traceback.format_stack(frame))
        threads.append({"ident": ident, "name": label, "main": ident == main, "stack": stack})
    threads.sort(key=lambda t: (not t["main"], t["name"]))
    return threads


MAX_LOOP_TASKS = 40      # asyncio tasks listed per node manager / GCS (most are long-lived loops)


def dump_service(role) -> dict:
    """(on a service's event loop: a node manager or the GCS) its threads, and the stack of each
    asyncio task it is running, the ones it awaits in (a request waiting on a peer) included."""
    import os
    me = asyncio.current_task()
    coroutines = []
    tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for t in tasks[:MAX_LOOP_TASKS]:
        try:
            stack = "".join(traceback.StackSummary.extract((f, f.f_lineno) for f in t.get_stack()).format())
        except Exception as e:  # noqa: BLE001 - a task finishing meanwhile
            stack = f"(could not read: {e})\n"
        coroutines.append({"name": f"{t.get_name()} ({getattr(t.get_coro(), '__qualname__', '?')})", "stack": stack})
    return {"role": role, "pid": os.getpid(), "threads": thread_stacks(answering=" (event loop)"),
            "coroutines": coroutines, "more_tasks": max(0, len(tasks) - MAX_LOOP_TASKS)}


async def _ask(conn, method, payload, timeout):
    """``conn``'s answer to ``method``, or an ``{"error": ...}`` when it does not answer in time."""
    fut = asyncio.get_event_loop().create_future()

    def done(ok, res):
        if not fut.done():
            fut.set_result(res if ok else {"error": f"failed: {res}"})
    conn.request(method, payload, done)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except asyncio.TimeoutError:
        return {"error": f"did not answer within {timeout:g} s (stopped, or holding the GIL in native code)"}


# --- in each node manager --------------------------------------------------------------------------
async def gather_node(nm, p) -> dict:
    """Every local worker's and driver's stacks, asked in parallel, each within ``timeout``."""
    timeout = p["timeout"]
    procs = [(w, "worker") for w in list(nm.workers.values())]
    procs += [(c.state.get("worker"), "driver") for c in list(nm.drivers.values())]
    procs = [(w, kind) for w, kind in procs if w is not None and w.conn is not None and not w.conn.closed]
    answers = await asyncio.gather(*(_ask(w.conn, "dump_stacks", None, timeout) for w, _ in procs))
    out = []
    for (w, kind), ans in zip(procs, answers):
        if not isinstance(ans, dict):
            ans = {"error": f"unexpected answer {type(ans).__name__}"}
        if "error" in ans:
            ans = {"error": ans["error"], "role": kind, "pid": w.pid, "worker_id": w.worker_id.hex()}
        lease = getattr(w, "lease", None)
        if lease is not None and "error" in ans:
            ans["leased"] = True
        out.append(ans)
    return {"node_id": nm.node_id.hex(), "ip": nm.cfg.get("node_ip"), "processes": out,
            "manager": dump_service("node manager")}


# --- in the GCS ------------------------------------------------------------------------------------
async def gather_cluster(gcs, p) -> dict:
    """Every alive node's answer; a node manager that does not answer is reported as such."""
    timeout = p.get("timeout", DEFAULT_TIMEOUT_S)
    nodes = [(nid, c) for nid, c in list(gcs.node_conns.items())
             if not c.closed and gcs.nodes.get(nid, {}).get("Alive")]
    answers = await asyncio.gather(*(_ask(c, "node_stacks", {"timeout": timeout}, timeout + 2.0) for _, c in nodes))
    out = []
    for (nid, _), ans in zip(nodes, answers):
        if not isinstance(ans, dict) or "processes" not in ans:
            err = ans.get("error") if isinstance(ans, dict) else "no answer"
            ans = {"node_id": nid.hex(), "ip": gcs.nodes[nid].get("NodeManagerAddress"), "error": err, "processes": []}
        out.append(ans)
    return {"nodes": out, "timeout": timeout, "gcs": dump_service("GCS")}


# --- text ------------------------------------------------------------------------------------------
def format_report(report: dict) -> str:
    lines = []
    if report.get("gcs"):
        lines.extend(_format_process(report["gcs"], "==="))
    for node in report.get("nodes", []):
        head = f"=== node {node['node_id'][:12]} ({node.get('ip') or '?'})"
        if node.get("error"):
            lines.append(f"{head}: the node manager {node['error']}")
            continue
        lines.append(f"{head}: {len(node['processes'])} process(es)")
        if node.get("manager"):
            lines.extend(_format_process(node["manager"]))
        for proc in node["processes"]:
            lines.extend(_format_process(proc))
    return "\n".join(lines) + "\n"


def _format_process(proc, mark="---"):
    who = proc.get("role", "?")
    if proc.get("actor"):
        who = f"actor {proc['actor']} ({proc['actor_id'][:12]})"
    label = f"{mark} {who} pid {proc.get('pid')}"
    if proc.get("worker_id"):
        label += f" worker {proc['worker_id'][:12]}"
    if proc.get("error"):
        return [f"{label}: NOT ANSWERING: {proc['error']}", ""]
    calls = proc.get("calls") or []
    if calls:
        label += ": running " + ", ".join(
            c["name"] + (f" for {c['for_s']:.1f} s" if c.get("for_s") is not None else "") for c in calls)
    elif proc.get("role") in ("worker", "actor"):
        label += ": idle"
    out = [label]
    by_thread = {c["thread"]: c for c in calls}
    for t in proc.get("threads", []):
        call = by_thread.get(t["ident"])
        what = f" running {call['name']}" if call else ""
        out.append(f"  Thread {t['name']}{' (main)' if t['main'] else ''}{what}:")
        out.extend("  " + ln for ln in t["stack"].rstrip("\n").split("\n"))
    for co in proc.get("coroutines", []):
        out.append(f"  {'Task' if 'more_tasks' in proc else 'Coroutine'} {co['name']}:")
        out.extend("  " + ln for ln in co["stack"].rstrip("\n").split("\n"))
    if proc.get("more_tasks"):
        out.append(f"  ... and {proc['more_tasks']} more task(s)")
    out.append("")
    return out
