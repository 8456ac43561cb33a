"""The GCS's actor table as a pure state machine: ``ActorTable.handle(event) -> actions``.

No sockets, no timers, no awaits.  The shell in ``actors.py`` turns requests, node and worker
connection events and storage into events, and carries out the actions (replies, leases,
create_actor pushes, storage writes).  One record per actor, one state enum (Ray's names):

    register ─▶ DEPENDENCIES_UNREADY ─ dependencies_ready ─▶ PENDING_CREATION ─┐
                                                                               │ schedule: the shell
                  ┌── lease refused, constructor raised, killed, owner died ◀──┤ places it, leases a
                  ▼                                                            │ worker (leased), pushes
                 DEAD ◀── killed, exited, owner died, no restarts left ──┐     ▼ create_actor (created)
                  ▲                                                    ALIVE ◀─────────────────┐
                  └──── killed, owner died, lease refused ── RESTARTING ◀── worker_lost ───────┘
                                                                   (max_restarts left; counted)

A registration carries everything the worker needs (its ObjectRef arguments are resolved by the
actor's worker), so the shell feeds ``dependencies_ready`` right after ``register``: the record
passes DEPENDENCIES_UNREADY as Ray's does between RegisterActor and CreateActor.  The stored row
is not rewritten for that step: a row loaded in DEPENDENCIES_UNREADY is scheduled like a pending one.

Creation runs in numbered *attempts*: ``("schedule", aid, attempt)`` asks the shell for one; every
result names its attempt, and a result for an attempt that is no longer current (the actor was
killed meanwhile) only gives back what it holds.  A worker whose process dies mid-constructor is
tried again without counting a restart (when restarts are allowed at all), as before.

Leases: each lease granted to the GCS for an actor is held by exactly one record (``creating``
while the constructor runs, ``lease`` once ALIVE) and given back exactly once (``return_lease``);
``held`` maps every lease held to its actor and ``validate_state`` checks both agree.

Actions (tuples, carried out in order):
    ("persist", aid, extra_rows)            write the actor's row (+ name index rows) in one transaction
    ("persist_checkpoint", aid, blob)       write (or with None delete) its checkpoint row
    ("reply", req, value) / ("fail", req, error)       answer a request
    ("watch_owner", req, owner)             the request's connection is the owner's: watch it
    ("schedule", aid, attempt)              place it and lease a worker (results: planned, leased, ...)
    ("create", aid, attempt, address, spec) connect to the leased worker and push create_actor
    ("keep_worker", aid, tag, incarnation)  keep the worker connection opened for ``tag`` (attempt
                                            number or ("reattach", incarnation)); its loss is worker_lost
    ("drop_worker", aid, tag)               close a worker connection opened for ``tag``, if any
    ("close_worker", aid)                   close the kept worker connection, if any
    ("return_lease", node_id, lease_id, kill)
    ("kill_worker", aid, node_id, worker_id)    kill without marking dead (kill(no_restart=False))
    ("reattach", aid, incarnation, address) reconnect to an ALIVE actor's worker after a GCS restart
    ("log", level, text)
"""
from __future__ import annotations

import enum
import pickle
import time

from ... import exceptions as exc
from ..placement import ResourceSet


class ActorState(str, enum.Enum):
    DEPENDENCIES_UNREADY = "DEPENDENCIES_UNREADY"
    PENDING_CREATION = "PENDING_CREATION"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"

    def __str__(self):
        return self.value


S = ActorState
TRANSITIONS = {
    S.DEPENDENCIES_UNREADY: {S.PENDING_CREATION, S.DEAD},
    S.PENDING_CREATION: {S.ALIVE, S.DEAD},
    S.ALIVE: {S.RESTARTING, S.DEAD},
    S.RESTARTING: {S.ALIVE, S.DEAD},
    S.DEAD: set(),
}
CREATING = (S.PENDING_CREATION, S.RESTARTING)
_OLD_NAMES = {"PENDING": S.PENDING_CREATION}     # rows written before the states had Ray's names

ROW_FIELDS = ("actor_id", "spec", "resources", "name", "namespace", "detached", "owner", "max_restarts", "meta",
              "class_name", "strategy", "state", "address", "node_id", "pid", "worker_id", "lease", "incarnation",
              "num_restarts", "cause", "cause_text", "exiting")
_KEPT = ROW_FIELDS.index("state")     # fields from here on are state, not registration


class Actor:
    """One actor: its registration (spec, resources, options) and where it is in its lifecycle."""

    def __init__(self, p):
        self.actor_id = p["actor_id"]
        self.spec = p["spec"]                 # sent to the worker in create_actor
        self.resources = p["resources"]
        self.need = ResourceSet.request(p["resources"])   # exact, for placement
        self.name = p.get("name")
        self.namespace = p.get("namespace") or ""
        self.detached = bool(p.get("detached"))
        self.owner = p.get("owner")
        self.max_restarts = p.get("max_restarts", 0)
        self.meta = p.get("meta")             # the handle's method table, for get_actor
        self.class_name = p.get("class_name", "")
        self.strategy = p.get("strategy")
        self.state = S.DEPENDENCIES_UNREADY
        self.pending_since = time.time()      # when it last became pending or RESTARTING (luminary status)
        self.planned = None                   # the node the current attempt aims at (placement load)
        self.attempt = 0                      # the current creation attempt (0: none running)
        self.creating = None                  # (node_id, lease_id) leased for the current attempt
        self.address = None
        self.node_id = None
        self.pid = None
        self.worker_id = None
        self.lease = None                     # (node_id, lease_id) of its worker while ALIVE
        self.attached = False                 # the GCS holds a connection to its worker
        self.incarnation = 0
        self.num_restarts = 0
        self.cause = None                     # pickled exception, or None
        self.cause_text = ""
        self.checkpoint = None
        self.waiters = []                     # [(req, min_incarnation)] of wait_actor long polls
        self.exiting = False
        self.warned = False

    def to_row(self):
        row = {f: getattr(self, f) for f in ROW_FIELDS}
        row["state"] = self.state.value
        return row

    @classmethod
    def from_row(cls, row):
        a = cls(row)
        for f in ROW_FIELDS[_KEPT:]:
            setattr(a, f, row.get(f))
        a.state = _OLD_NAMES.get(a.state) or S(a.state)
        a.lease = tuple(a.lease) if a.lease else None
        a.exiting = bool(a.exiting)
        a.cause_text = a.cause_text or ""
        a.incarnation = a.incarnation or 0
        a.num_restarts = a.num_restarts or 0
        return a

    def __repr__(self):
        return f"Actor({self.class_name}, {self.actor_id.hex()[:12]}, {self.state.name})"


def name_key(ns, name):
    return ns.encode() + b"\x00" + name.encode()


class ActorTable:
    def __init__(self):
        self.actors: dict[bytes, Actor] = {}
        self.names: dict[tuple, bytes] = {}       # (namespace, name) -> actor id, actors not DEAD
        self.held: dict[tuple, bytes] = {}        # (node_id, lease_id) -> actor id holding it
        self.expected_owners = set()              # after a restart: owners not back yet
        self.out = []
        self.trace = None                         # a list: every state change noted as (aid, state)

    # --- the one entry point ------------------------------------------------------------------
    def handle(self, event):
        """Apply one event ``(name, *args)``; returns the actions to carry out, in order."""
        getattr(self, "on_" + event[0])(*event[1:])
        out, self.out = self.out, []
        return out

    def _to(self, a, state):
        assert state in TRANSITIONS[a.state], f"{a!r}: {a.state.name} -> {state.name} is not allowed"
        a.state = state
        if self.trace is not None:
            self.trace.append((a.actor_id, state))

    # --- loading after a GCS restart ------------------------------------------------------------
    def on_load(self, rows, checkpoints, names):
        """Rows as stored (``to_row`` dicts), checkpoints {aid: blob}, names {name key: aid}."""
        for row in rows:
            a = Actor.from_row(row)
            a.checkpoint = checkpoints.get(a.actor_id)
            self.actors[a.actor_id] = a
        for key, aid in names.items():
            a = self.actors.get(aid)
            if a is not None and a.state != S.DEAD:
                ns, _, name = key.partition(b"\x00")
                self.names[(ns.decode(), name.decode())] = aid
        for a in self.actors.values():
            if a.state == S.DEAD:
                continue
            if a.owner and not a.detached:
                self.expected_owners.add(a.owner)
            if a.state == S.ALIVE:
                self.held[a.lease] = a.actor_id
            else:
                if a.state == S.DEPENDENCIES_UNREADY:
                    self._to(a, S.PENDING_CREATION)
                self._schedule(a)

    # --- registration and creation -------------------------------------------------------------
    def on_register(self, req, p):
        known = self.actors.get(p["actor_id"])
        if known is not None:   # sent again after a GCS restart: it was registered
            self.out.append(("reply", req, {"existing": False, "actor_id": known.actor_id}))
            return
        name, ns = p.get("name"), p.get("namespace") or ""
        if name:
            existing = self.names.get((ns, name))
            if existing is not None:
                if p.get("get_if_exists"):
                    e = self.actors[existing]
                    self.out.append(("reply", req, {"existing": True, "actor_id": e.actor_id, "meta": e.meta}))
                else:
                    self.out.append(("fail", req, ValueError(
                        f"An actor named {name!r} already exists in namespace {ns!r}. Pick another name, use "
                        "get_actor() to reach it, or pass get_if_exists=True.")))
                return
        a = Actor(p)
        self.actors[a.actor_id] = a
        extra = []
        if name:
            self.names[(ns, name)] = a.actor_id
            extra.append(("names", name_key(ns, name), a.actor_id))
        self.out.append(("persist", a.actor_id, extra))    # durable before the caller hears of it
        if a.owner and not a.detached:
            self.out.append(("watch_owner", req, a.owner))
        self.out.append(("reply", req, {"existing": False, "actor_id": a.actor_id}))

    def on_dependencies_ready(self, aid):
        a = self.actors.get(aid)
        if a is not None and a.state == S.DEPENDENCIES_UNREADY:
            self._to(a, S.PENDING_CREATION)
            self._schedule(a)

    def _schedule(self, a):
        a.attempt += 1
        a.planned = None
        a.pending_since = time.time()
        self.out.append(("schedule", a.actor_id, a.attempt))

    def current(self, aid, attempt):
        """The actor if ``attempt`` is its creation attempt still running, else None."""
        a = self.actors.get(aid)
        if a is None or a.state not in CREATING or a.attempt != attempt:
            return None
        return a

    def placed(self, exclude=None):
        """(node_id, need, reported) of every actor alive or being placed (placement.actor_load),
        but ``exclude`` (the actor being placed)."""
        out = []
        for a in self.actors.values():
            if a.actor_id == exclude:
                continue
            if a.state == S.ALIVE:
                out.append((a.node_id, a.need, True))
            elif a.state in CREATING:
                out.append((a.planned, a.need, False))
        return out

    def on_planned(self, aid, attempt, node_id):
        a = self.current(aid, attempt)
        if a is None:
            return
        a.planned = node_id
        if node_id is None and not a.warned:
            a.warned = True
            self.out.append(("log", "warning", f"actor {aid.hex()} needs {a.resources}, which no alive node has; "
                                               "waiting"))

    def on_leased(self, aid, attempt, node_id, lease_id, grant):
        a = self.current(aid, attempt)
        if a is None or a.creating is not None:    # killed meanwhile: give it straight back
            self.out.append(("return_lease", node_id, lease_id, True))
            return
        a.creating = (node_id, lease_id)
        self.held[a.creating] = aid
        a.worker_id = grant.get("worker_id")
        spec = dict(a.spec, actor_id=aid, incarnation=a.incarnation, checkpoint=a.checkpoint,
                    gpus=grant.get("gpu_ids") or [])
        self.out.append(("create", aid, attempt, grant["address"], spec))

    def on_lease_refused(self, aid, attempt, message, setup_error=False):
        """The node said the actor can never run (its error reply to request_lease)."""
        a = self.current(aid, attempt)
        if a is None:
            return
        if setup_error:    # callers raise the setup error itself
            self._set_dead(a, message, pickle.dumps(exc.RuntimeEnvSetupError(message)))
        else:
            self._set_dead(a, f"The actor cannot be scheduled: {message}")

    def _end_attempt(self, a, attempt):
        """The current attempt's lease goes back (with its worker); True if it was current."""
        if a is None or a.attempt != attempt or a.creating is None:
            return False
        self._give_back(a.creating)
        a.creating = None
        return True

    def _give_back(self, lease, kill=True):
        if self.held.pop(lease, None) is not None:
            self.out.append(("return_lease", lease[0], lease[1], kill))

    def on_created(self, aid, attempt, address, pid):
        a = self.current(aid, attempt)
        if a is None or a.creating is None:
            self.out.append(("drop_worker", aid, attempt))
            return
        self._to(a, S.ALIVE)
        a.lease, a.creating = a.creating, None
        a.node_id = a.lease[0]
        a.address = address
        a.pid = pid
        a.attached = True
        a.attempt = 0
        a.planned = None
        self.out.append(("keep_worker", aid, attempt, a.incarnation))
        self.out.append(("persist", aid, []))
        self._wake(a)

    def on_create_failed(self, aid, attempt, cause, text):
        """The constructor raised: the actor is DEAD with that error (no restart)."""
        a = self.actors.get(aid)
        self.out.append(("drop_worker", aid, attempt))
        if self._end_attempt(a, attempt):
            self._set_dead(a, text or "the constructor raised", cause)

    def on_create_crashed(self, aid, attempt, why):
        """The worker died (or could not be reached) while running the constructor."""
        a = self.actors.get(aid)
        self.out.append(("drop_worker", aid, attempt))
        if not self._end_attempt(a, attempt):
            return
        if self._may_restart(a):
            self._schedule(a)
        else:
            self._set_dead(a, f"The actor's worker died while running its constructor: {why}")

    # --- the running actor ------------------------------------------------------------------------
    def _may_restart(self, a):
        return a.max_restarts == -1 or a.num_restarts < a.max_restarts

    def on_worker_lost(self, aid, incarnation):
        a = self.actors.get(aid)
        if a is None or a.incarnation != incarnation or a.state != S.ALIVE:
            return
        a.attached = False
        self._give_back(a.lease)
        a.lease = None
        if a.exiting:
            self._set_dead(a, "The actor exited intentionally (exit_actor or __ray_terminate__).")
        elif self._may_restart(a):
            a.num_restarts += 1
            a.incarnation += 1
            self._to(a, S.RESTARTING)
            a.address = None
            self.out.append(("persist", aid, []))
            self.out.append(("log", "info", f"restarting actor {aid.hex()} (restart {a.num_restarts})"))
            self._wake(a)
            self._schedule(a)
        else:
            self._set_dead(a, "The actor's worker process died unexpectedly (crashed, killed, or os._exit) "
                              f"and it has no restarts left (max_restarts={a.max_restarts}).")

    def _set_dead(self, a, text, cause=None):
        self._to(a, S.DEAD)
        a.cause_text = text
        a.cause = cause
        a.attempt = 0
        a.planned = None
        if a.creating is not None:
            self._give_back(a.creating)
            a.creating = None
        if a.lease is not None:
            self._give_back(a.lease)
            a.lease = None
        if a.attached:
            a.attached = False
            self.out.append(("close_worker", a.actor_id))
        extra = []
        if a.name and self.names.get((a.namespace, a.name)) == a.actor_id:
            del self.names[(a.namespace, a.name)]
            extra.append(("names", name_key(a.namespace, a.name), None))
        if a.checkpoint is not None:
            a.checkpoint = None
            extra.append(("checkpoints", a.actor_id, None))
        self.out.append(("persist", a.actor_id, extra))
        self._wake(a)

    def _wake(self, a):
        waiters, a.waiters = a.waiters, []
        for req, min_inc in waiters:
            if a.state == S.DEAD or (a.state == S.ALIVE and a.incarnation >= min_inc):
                self.out.append(("reply", req, self.info(a)))
            else:
                a.waiters.append((req, min_inc))

    def on_kill(self, req, aid, no_restart=True):
        a = self.actors.get(aid)
        if a is None:
            self.out.append(("reply", req, False))
            return
        if no_restart:
            if a.state != S.DEAD:
                self._set_dead(a, "The actor was killed by luminary.kill().")
        elif a.state == S.ALIVE:
            self.out.append(("kill_worker", aid, a.node_id, a.worker_id))   # restarts as a crash would
        self.out.append(("reply", req, True))

    def on_exit(self, aid):
        a = self.actors.get(aid)
        if a is not None and not a.exiting:
            a.exiting = True
            self.out.append(("persist", aid, []))

    def on_checkpoint(self, aid, blob):
        a = self.actors.get(aid)
        if a is not None and a.state != S.DEAD:
            a.checkpoint = blob
            self.out.append(("persist_checkpoint", aid, blob))

    def on_owner_died(self, owner, after_restart=False):
        why = " (it did not reconnect after the GCS restarted)" if after_restart else ""
        for a in list(self.actors.values()):
            if a.owner == owner and not a.detached and a.state != S.DEAD:
                self._set_dead(a, f"The actor's owner (the process that created it) died{why}; non-detached "
                                  "actors die with their owner. Use lifetime='detached' to keep an actor alive.")

    # --- nodes and GCS restarts -----------------------------------------------------------------------
    def on_node_back(self, node_id, leases):
        """A node manager re-registered after a GCS restart holding ``leases`` (ids) it granted to a
        GCS: actors whose lease is there keep their worker; leases no actor holds are ended."""
        held = set(leases)
        for a in list(self.actors.values()):
            if a.state != S.ALIVE or a.attached or a.lease[0] != node_id:
                continue
            if a.lease[1] in held:
                self.out.append(("reattach", a.actor_id, a.incarnation, a.address))
            else:
                self.on_worker_lost(a.actor_id, a.incarnation)    # its worker died while the GCS was away
        for lease_id in leases:
            if (node_id, lease_id) not in self.held:
                self.out.append(("return_lease", node_id, lease_id, True))

    def on_reattached(self, aid, incarnation, ok, why=""):
        a = self.actors.get(aid)
        tag = ("reattach", incarnation)
        if a is None or a.state != S.ALIVE or a.incarnation != incarnation or a.attached:
            self.out.append(("drop_worker", aid, tag))
            return
        if not ok:
            self.out.append(("log", "info", f"actor {aid.hex()}: its worker at {a.address} is gone ({why})"))
            self.on_worker_lost(aid, incarnation)
            return
        a.attached = True
        self.out.append(("keep_worker", aid, tag, incarnation))
        self.out.append(("log", "info", f"actor {aid.hex()} kept its worker across the GCS restart "
                                        f"(incarnation {incarnation})"))

    def on_node_dead(self, node_id):
        """Actors on a dead node the GCS holds no connection to (after a restart) restart now; the
        others learn it from their worker's connection."""
        for a in list(self.actors.values()):
            if a.state == S.ALIVE and a.node_id == node_id and not a.attached:
                self.on_worker_lost(a.actor_id, a.incarnation)

    def on_recovery_ended(self, owners):
        for owner in self.expected_owners - set(owners):
            self.on_owner_died(owner, after_restart=True)
        self.expected_owners = set()

    # --- queries (read only) --------------------------------------------------------------------------
    def on_wait(self, req, aid, min_inc=0, wait=True):
        a = self.actors.get(aid)
        if a is None:
            self.out.append(("reply", req, {"state": S.DEAD.value, "cause": None, "incarnation": 0,
                                            "cause_text": "This actor is not known to the cluster "
                                                          "(it was never created here)."}))
        elif a.state == S.DEAD or (a.state == S.ALIVE and a.incarnation >= min_inc) or not wait:
            self.out.append(("reply", req, self.info(a)))
        else:
            a.waiters.append((req, min_inc))

    def info(self, a):
        return {"state": a.state.value, "address": a.address, "incarnation": a.incarnation, "cause": a.cause,
                "cause_text": a.cause_text, "node_id": a.node_id, "pid": a.pid, "meta": a.meta,
                "name": a.name, "namespace": a.namespace, "num_restarts": a.num_restarts,
                "class_name": a.class_name, "worker_id": a.worker_id}

    def named(self, name, namespace):
        aid = self.names.get((namespace or "", name))
        if aid is None:
            return None
        a = self.actors[aid]
        return {"actor_id": aid, "meta": a.meta, "state": a.state.value}

    def list_named(self, all_namespaces, namespace):
        return [{"name": name, "namespace": ns} for (ns, name) in self.names
                if all_namespaces or ns == (namespace or "")]

    def rows(self):
        return [{"actor_id": a.actor_id.hex(), "state": a.state.value, "name": a.name or "",
                 "class_name": a.class_name, "namespace": a.namespace, "pid": a.pid,
                 "num_restarts": a.num_restarts, "death_cause": a.cause_text if a.state == S.DEAD else None}
                for a in self.actors.values()]

    # --- invariants ------------------------------------------------------------------------------------
    def validate_state(self):
        held = {}
        for aid, a in self.actors.items():
            assert a.actor_id == aid and isinstance(a.state, S), a
            assert a.max_restarts == -1 or a.num_restarts <= a.max_restarts, f"{a!r}: too many restarts"
            if a.state == S.ALIVE:
                assert a.lease is not None and a.address is not None and a.creating is None, a
                assert a.node_id == a.lease[0] and a.attempt == 0, a
                assert all(a.incarnation < m for _, m in a.waiters), f"{a!r}: a waiter it should have answered"
            else:
                assert a.lease is None and not a.attached, f"{a!r}: holds a worker while {a.state.name}"
            if a.state in CREATING:
                assert a.attempt > 0, f"{a!r}: pending with no creation attempt"
            else:
                assert a.creating is None, f"{a!r}: a creation lease while {a.state.name}"
            if a.state == S.DEAD:
                assert not a.waiters and a.attempt == 0, a
                assert self.names.get((a.namespace, a.name)) != aid, f"{a!r}: dead but still holds its name"
            elif a.name:
                assert self.names.get((a.namespace, a.name)) == aid, f"{a!r}: its name is not indexed to it"
            for lease in (a.lease, a.creating):
                if lease is not None:
                    assert lease not in held, f"lease {lease} held by {a!r} and {held[lease]}"
                    held[lease] = aid
        assert held == self.held, f"leases held {held} != recorded {self.held}"
        for (ns, name), aid in self.names.items():
            a = self.actors[aid]
            assert (a.namespace, a.name) == (ns, name) and a.state != S.DEAD, (ns, name, a)
