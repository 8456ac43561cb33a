"""Deadlock detection between actors and tasks (beyond Ray): a wait-for graph in the GCS.

A node of the graph is something that runs a fixed number of calls at once: a sync actor (one
slot), a threaded actor without concurrency groups (``max_concurrency`` slots), or a plain task
(one: itself).  When a call blocks in ``get`` for a second (``worker/deadlock.py``), its worker
reports "node X, in method m (task t), waits on call c of actor Y / on the result of task T"
(``actor_wait``).  A node is *stuck* when every slot it has is taken by a reported wait: the
calls queued for it cannot start.

The waits leave no way out for a set S of stuck nodes when each wait of each node in S waits on
at least one node of S (``get`` needs all its objects): the largest such S is found by removing,
until nothing changes, every stuck node that has a wait with no target left in S.  Every node of
S then waits, through a chain of blocked slots, on itself: none can finish.  Async actors (their
loop serves other calls while one awaits) never report, nor do actors with concurrency groups.

``WaitGraph`` is pure.  ``DeadlockDetector`` answers each ``actor_wait`` request when its wait
ends (``actor_wait_end``, or the reporter's connection closing: None) or when a deadlock through
it is confirmed (the cycle, named).  A deadlock is confirmed when the same waits still make it a
short moment later, so a wait that just ended (its end still in flight) is never taken for one.
"""
from __future__ import annotations

import asyncio

CONFIRM_S = 0.3
MAX_RECHECKS = 20       # a deadlock whose waits keep changing is looked at again this many times


class Wait:
    __slots__ = ("node", "actor", "task", "method", "slots", "on", "fut", "conn")

    def __init__(self, actor, task, method, on, fut=None, conn=None, slots=1):
        self.actor, self.task, self.method, self.slots = actor, task, method, slots
        self.node = actor if actor is not None else task     # what runs it: an actor, or the task itself
        self.on = on          # [(target node: an actor id or a task id, task, method or None)]
        self.fut, self.conn = fut, conn


class WaitGraph:
    """node (actor id, or a plain task's id) -> {task: the Wait of one of its blocked calls}."""

    def __init__(self):
        self.waits: dict[bytes, dict[bytes, Wait]] = {}

    def add(self, w: Wait):
        """Add ``w``; returns the waits it replaces (with one slot: the node's earlier one)."""
        mine = self.waits.setdefault(w.node, {})
        old = [o for o in mine.values() if o.task != w.task and w.slots == 1]
        old += [mine[w.task]] if w.task in mine else []
        for o in old:
            del mine[o.task]
        mine[w.task] = w
        return old

    def remove(self, node, task):
        mine = self.waits.get(node)
        w = mine.pop(task, None) if mine else None
        if mine is not None and not mine:
            del self.waits[node]
        return w

    def stuck(self, node):
        mine = self.waits.get(node)
        return bool(mine) and len(mine) >= next(iter(mine.values())).slots

    def deadlocked(self):
        """The largest set of stuck nodes whose every wait has a target in the set."""
        s = {n for n in self.waits if self.stuck(n)}
        changed = True
        while changed:
            changed = False
            for n in list(s):
                if any(not any(t in s for t, _, _ in w.on) for w in self.waits[n].values()):
                    s.discard(n)
                    changed = True
        return s

    def cycle_from(self, node, within):
        """The waits of a cycle reached from ``node`` following targets inside ``within`` (starting
        with ``node``'s when it is on the cycle), or None; and the nodes reached on the way."""
        if node not in within:
            return None, set()
        path, index = [], {}
        cur = node
        while cur not in index:
            index[cur] = len(path)
            w = next(w for w in self.waits[cur].values() if any(t in within for t, _, _ in w.on))
            path.append(w)
            cur = next(t for t, _, _ in w.on if t in within)
        reached = set(index)
        seen = list(reached)        # everything the first cycle's nodes wait on inside the set too
        while seen:
            n = seen.pop()
            for w in self.waits[n].values():
                for t, _, _ in w.on:
                    if t in within and t not in reached:
                        reached.add(t)
                        seen.append(t)
        return path[index[cur]:], reached


def describe(cycle, class_of):
    """[{actor_id, class_name, method, waits_for}] and one sentence naming each actor or task and
    method of the cycle."""
    def task_name(w):          # "module.outer.<locals>.f" -> "f"
        return f"task {w.method.rsplit('.', 1)[-1]}({w.task.hex()[:8]})"

    def name(w):
        if w.actor is None:
            return task_name(w)
        return f"{class_of(w.actor)}({w.actor.hex()[:8]}).{w.method}"
    rows, parts = [], []
    for i, w in enumerate(cycle):
        nxt = cycle[(i + 1) % len(cycle)]
        callee = next((m for t, _, m in w.on if t == nxt.node and m), None)
        if nxt.actor is None:
            target = f"the result of {task_name(nxt)}"
        else:
            target = f"{class_of(nxt.actor)}({nxt.actor.hex()[:8]}).{callee or nxt.method}"
        rows.append({"actor_id": (w.actor or w.task).hex(), "class_name": class_of(w.actor) if w.actor else "task",
                     "method": w.method, "waits_for": target})
        parts.append(f"{name(w)} waits in get() for {target}")
    if len(cycle) == 1:
        why = "a call to itself, queued behind the call that waits for it"
    else:
        why = "calls queued behind calls that are themselves blocked"
    text = (f"Deadlock between {len(cycle)} actor(s)/task(s): " + "; ".join(parts) + ". Each runs a fixed number "
            f"of calls at once (a sync actor one, a threaded actor max_concurrency, a task itself), all blocked "
            f"on {why}, so none can ever finish. Make one of the actors async (async def methods) or give it "
            "a larger max_concurrency, or do not get() the inner call's result inside the method.")
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
        on = [(o.get("actor") or o["task"], o["task"], o.get("method")) for o in p["on"]]
        w = Wait(p.get("actor"), p["task"], p["method"], on, fut, conn, p.get("slots", 1))
        for old in self.graph.add(w):
            _answer(old, None)
        if not conn.state.get("deadlock_watch"):
            conn.state["deadlock_watch"] = True
            conn.close_callbacks.append(self._conn_gone)
        self._check(w.node, MAX_RECHECKS)
        return fut

    def _check(self, node, rechecks):
        cycle, reached = self.graph.cycle_from(node, self.graph.deadlocked())
        if cycle is not None:
            snapshot = {id(w) for n in reached for w in self.graph.waits[n].values()}
            asyncio.get_event_loop().call_later(CONFIRM_S, self._confirm, node, snapshot, rechecks)

    def h_end(self, conn, p):
        w = self.graph.remove(p.get("actor") or p["task"], p["task"])
        if w is not None:
            _answer(w, None)

    def _conn_gone(self, conn):
        for node, mine in list(self.graph.waits.items()):
            for w in list(mine.values()):
                if w.conn is conn:
                    self.graph.remove(node, w.task)
                    _answer(w, None)

    def _confirm(self, node, snapshot, rechecks):
        cycle, reached = self.graph.cycle_from(node, self.graph.deadlocked())
        if cycle is None:
            return          # a wait in it ended meanwhile: no deadlock
        waits = [w for n in reached for w in self.graph.waits[n].values()]
        if {id(w) for w in waits} != snapshot:
            if rechecks > 0:    # the waits changed (one replaced by a newer one): look again later
                self._check(node, rechecks - 1)
            return
        rows, text = describe(cycle, self._class_of)
        for w in waits:
            self.graph.remove(w.node, w.task)
            _answer(w, {"cycle": rows, "text": text})


def _answer(w, value):
    if w.fut is not None and not w.fut.done():
        w.fut.set_result(value)
