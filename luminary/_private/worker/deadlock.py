"""The worker's side of deadlock detection (the wait-for graph is in gcs/deadlock.py).

A call that blocks in ``get`` and cannot let anything else run where it runs reports its wait:
a sync actor with one slot (its only slot), a threaded actor without concurrency groups (one of
its ``max_concurrency`` threads), a plain task (its worker runs nothing else meanwhile).  When
such a call is still blocked $LUMINARY_DEADLOCK_CHECK_S later (1 s; 0 turns detection off), the
worker tells the GCS "this actor or task, in this method, waits on these calls" (``actor_wait``:
calls of actors it made, and results of tasks) and takes it back when the get returns
(``actor_wait_end``).  The fast path costs one timer on the I/O thread, cancelled when the get
returns.  Async actors (their loop serves other calls while one awaits) never report.

The GCS answers with the cycle when its waits leave no way out.  The cycle is written to stderr,
named by the wait diagnostics, and, unless $LUMINARY_DEADLOCK_ERROR is 0, the get raises
``DeadlockError`` naming the actors, tasks and methods in it.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

from ... import exceptions as exc
from .. import ids

logger = logging.getLogger(__name__)


def _seconds(name, default):
    try:
        return max(0.0, float(os.environ.get(name, default) or 0))
    except ValueError:
        return float(default)


CHECK_AFTER_S = _seconds("LUMINARY_DEADLOCK_CHECK_S", "1")
RAISE = os.environ.get("LUMINARY_DEADLOCK_ERROR", "1").strip().lower() not in ("0", "false", "no", "off")


class Watch:
    __slots__ = ("oids", "actor", "task", "method", "slots", "timer", "reported", "done", "cycle")

    def __init__(self, oids, actor, task, method, slots=1):
        self.oids, self.actor, self.task, self.method, self.slots = oids, actor, task, method, slots
        self.timer = None
        self.reported = self.done = False
        self.cycle = None          # the GCS's answer: {"cycle": [...], "text": ...}


def begin(core, oids):
    """(the thread about to block in get) A Watch when this call holds a slot nothing else can use
    while it waits (see the module docstring); else None (nothing to watch)."""
    if not CHECK_AFTER_S:
        return None
    ex = getattr(core, "executor", None)
    if ex is None:
        return None
    actor = getattr(ex, "actor", None)
    slots = 1
    if actor is None or not actor.threaded:
        if (actor is not None and actor.is_async) or ex.running is None \
                or threading.current_thread() is not threading.main_thread():
            return None
        running = ex.running
    else:
        if actor.groups:
            return None
        me = threading.get_ident()
        running = next((t for t in list(ex.pending.values()) if t.thread == me), None)
        if running is None:
            return None
        slots = actor.max_concurrency
    spec = running.spec
    w = Watch(list(oids), actor.actor_id if actor is not None else None, spec["tid"],
              spec.get("method") or spec.get("name", "?"), slots)
    core.io.post(_arm, core, w)
    return w


def end(core, w):
    """(main thread) The get returned (or raised)."""
    w.done = True
    core.io.post(_end, core, w)


def error(w):
    return exc.DeadlockError(w.cycle["text"], w.cycle["cycle"])


# --- I/O thread ---------------------------------------------------------------------------------------
def _arm(core, w):
    if not w.done:
        w.timer = core.io.loop.call_later(CHECK_AFTER_S, _report, core, w)


def _report(core, w):
    if w.done:
        return
    calls = core.submitter.owner.calls
    values = core.memory.values
    on = []
    for oid in w.oids:
        if oid in values or ids.index_of(oid) & ids.PUT_BIT:
            continue        # here already, or a put object (no call makes it)
        call = calls.get(ids.task_of(oid))
        if call is not None and call.actor is not None:
            on.append({"actor": call.actor, "task": call.tid, "method": call.spec.get("method") or call.name})
        else:               # a task's result (ours or someone else's): the task may be blocked too
            on.append({"task": ids.task_of(oid)})
    if not on:
        return
    w.reported = True
    p = {"task": w.task, "method": w.method, "on": on, "slots": w.slots}
    if w.actor is not None:
        p["actor"] = w.actor
    core.gcs.request("actor_wait", p, lambda ok, res: _answered(core, w, ok, res))


def _answered(core, w, ok, res):
    if not ok or not isinstance(res, dict) or w.done:
        return
    w.cycle = res
    text = res.get("text", "deadlock")
    logger.warning("%s", text)
    try:
        sys.stderr.write(f"Warning: {text}\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - diagnostics never break the wait
        pass
    if RAISE:
        core.memory.wake_waiters(w.oids)


def _end(core, w):
    if w.timer is not None:
        w.timer.cancel()
    if w.reported and w.cycle is None:
        core.gcs.notify("actor_wait_end", {"actor": w.actor, "task": w.task} if w.actor is not None
                        else {"task": w.task})
