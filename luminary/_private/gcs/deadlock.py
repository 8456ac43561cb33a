"""Deadlock detection between actors (beyond Ray): a wait-for graph in the GCS.

A sync actor with one slot (not async, ``max_concurrency`` 1, no concurrency groups) runs one
call at a time.  When such a call blocks in ``get`` on calls to actors for a second
(``worker/deadlock.py``), its worker reports the edge "actor X, running method m (task t), waits
on call c of actor Y" (``actor_wait``).  Only such actors report, so every actor in a cycle of
reported edges is blocked in its only slot on a call queued behind a blocked call: none can ever
finish.  Async and threaded actors can serve the inner call while the outer one waits, and
never report.

``WaitGraph`` is pure.  ``DeadlockDetector`` answers each ``actor_wait`` request when its wait
ends (``actor_wait_end``, or the reporter's connection closing: None) or when a cycle through it
is confirmed (the cycle, named).  A cycle is confirmed when it is still made of the same waits a
short moment after it closed, so a wait that just ended (its end still in flight) is never
taken for a deadlock.
"""
from __future__ import annotations

import asyncio

CONFIRM_S = 0.3


class Wait:
    __slots__ = ("actor", "task", "method", "on", "fut", "conn")

    def __init__(self, actor, task, method, on, fut=None, conn=None):
        self.actor, self.task, self.method, self.on = actor, task, method, on   # on: [(actor, task, method)]
        self.fut, self.conn = fut, conn


class WaitGraph:
    """actor id -> the Wait of the call it runs (one per actor: it has one slot)."""

    def __init__(self):
        self.waits: dict[bytes, Wait] = {}

    def add(self, w: Wait):
        """Add ``w``; returns the wait it replaces (the same actor's earlier one), if any."""
        old = self.waits.get(w.actor)
        self.waits[w.actor] = w
        return old

    def remove(self, actor, task):
        w = self.waits.get(actor)
        if w is not None and w.task == task:
            del self.waits[actor]
            return w
        return None

    def cycle_from(self, actor):
        """The waits forming a cycle back to ``actor`` (starting with its own), or None."""
        start = self.waits.get(actor)
        if start is None:
            return None
        path, seen = [start], {actor}

        def visit(w):
            for target, _, _ in w.on:
                if target == actor:
                    return True
                nxt = self.waits.get(target)
                if nxt is None or target in seen:
                    continue
                seen.add(target)
                path.append(nxt)
                if visit(nxt):
                    return True
                path.pop()
            return False
        return list(path) if visit(start) else None


def describe(cycle, class_of):
    """[{actor_id, class_name, method, waits_for}] and one sentence naming each actor and method."""
    rows, parts = [], []
    for i, w in enumerate(cycle):
        nxt = cycle[(i + 1) % len(cycle)]
        callee = next((m for a, _, m in w.on if a == nxt.actor), "?")
        name = f"{class_of(w.actor)}({w.actor.hex()[:8]})"
        next_name = f"{class_of(nxt.actor)}({nxt.actor.hex()[:8]})"
        rows.append({"actor_id": w.actor.hex(), "class_name": class_of(w.actor), "method": w.method,
                     "waits_for": f"{next_name}.{callee}"})
        parts.append(f"{name}.{w.method} waits in get() for {next_name}.{callee}")
    if len(cycle) == 1:
        why = "a call to itself, queued behind the call that waits for it"
    else:
        why = "a call queued behind a call that is itself blocked"
    text = (f"Deadlock between {len(cycle)} actor(s): " + "; ".join(parts) + f". Each is a sync actor with one "
            f"slot, blocked on {why}, so none can ever finish. Make one of them async (async def methods) or "
            "give it max_concurrency > 1, or do not get() the inner call's result inside the method.")
    return rows, text


class DeadlockDetector:
    def __init__(self, gcs):
        self.gcs = gcs
        self.graph = WaitGraph()
        self.handlers = {"actor_wait": self.h_wait, "actor_wait_end": self.h_end}

    def _class_of(self, actor_id):
        a = self.gcs.actors.actors.get(actor_id)
        return (a.class_name if a is not None else "") or "Actor"

    def h_wait(self, conn, p):
        fut = asyncio.get_event_loop().create_future()
        w = Wait(p["actor"], p["task"], p["method"], [(o["actor"], o["task"], o["method"]) for o in p["on"]], fut, conn)
        old = self.graph.add(w)
        if old is not None:
            _answer(old, None)
        if not conn.state.get("deadlock_watch"):
            conn.state["deadlock_watch"] = True
            conn.close_callbacks.append(self._conn_gone)
        cycle = self.graph.cycle_from(w.actor)
        if cycle is not None:
            asyncio.get_event_loop().call_later(CONFIRM_S, self._confirm, w.actor, cycle)
        return fut

    def h_end(self, conn, p):
        w = self.graph.remove(p["actor"], p["task"])
        if w is not None:
            _answer(w, None)

    def _conn_gone(self, conn):
        for actor, w in list(self.graph.waits.items()):
            if w.conn is conn:
                self.graph.remove(actor, w.task)
                _answer(w, None)

    def _confirm(self, actor, cycle):
        now = self.graph.cycle_from(actor)
        if now is None or len(now) != len(cycle) or any(a is not b for a, b in zip(now, cycle)):
            return          # a wait in it ended (or changed) meanwhile: no deadlock
        rows, text = describe(cycle, self._class_of)
        for w in cycle:
            self.graph.remove(w.actor, w.task)
            _answer(w, {"cycle": rows, "text": text})


def _answer(w, value):
    if w.fut is not None and not w.fut.done():
        w.fut.set_result(value)
