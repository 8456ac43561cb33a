"""The worker's side of deadlock detection (the wait-for graph is in gcs/deadlock.py).

When a call of a sync actor with one slot blocks in ``get`` on results of actor calls it made,
and is still blocked $LUMINARY_DEADLOCK_CHECK_S later (1 s; 0 turns detection off), the worker
tells the GCS "this actor, in this method, waits on these calls of those actors"
(``actor_wait``) and takes it back when the get returns (``actor_wait_end``).  The fast path
costs one timer on the I/O thread, cancelled when the get returns.

The GCS answers with the cycle when one closes through this wait.  The cycle is written to
stderr, named by the wait diagnostics, and, unless $LUMINARY_DEADLOCK_ERROR is 0, the get
raises ``DeadlockError`` naming the actors and methods in it.
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
    __slots__ = ("oids", "actor", "task", "method", "timer", "reported", "done", "cycle")

    def __init__(self, oids, actor, task, method):
        self.oids, self.actor, self.task, self.method = oids, actor, task, method
        self.timer = None
        self.reported = self.done = False
        self.cycle = None          # the GCS's answer: {"cycle": [...], "text": ...}


def begin(core, oids):
    """(main thread, about to block in get) A Watch when this process is a sync actor with one
    slot running a call on its main thread; else None (nothing to watch)."""
    if not CHECK_AFTER_S:
        return None
    ex = getattr(core, "executor", None)
    actor = getattr(ex, "actor", None)
    if actor is None or actor.is_async or actor.threaded or ex.running is None \
            or threading.current_thread() is not threading.main_thread():
        return None
    spec = ex.running.spec
    w = Watch(list(oids), actor.actor_id, spec["tid"], spec.get("method") or spec.get("name", "?"))
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
        call = calls.get(ids.task_of(oid)) if oid not in values else None
        if call is not None and call.actor is not None:
            on.append({"actor": call.actor, "task": call.tid, "method": call.spec.get("method") or call.name})
    if not on:
        return              # it waits on tasks or on objects it does not own: not an actor cycle
    w.reported = True
    core.gcs.request("actor_wait", {"actor": w.actor, "task": w.task, "method": w.method, "on": on},
                     lambda ok, res: _answered(core, w, ok, res))


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
        core.gcs.notify("actor_wait_end", {"actor": w.actor, "task": w.task})
