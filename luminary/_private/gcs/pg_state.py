"""Placement groups as a pure state machine: ``GroupTable.handle(event) -> actions``.

No sockets, no timers, no awaits; the shell in ``placement_groups.py`` feeds requests, views of
the cluster, node events and the node managers' answers, and carries out the actions.

    create ─▶ PENDING ─ plan (view) ─▶ prepare the bundles ─ all yes ─▶ PREPARED ─ all committed ─▶ CREATED
                 ▲  └── no room: wait for a view change, plan again     │ a commit failed           │ a node holding
                 │      a node said no: cancel what was prepared, again │ (node died)               │ bundles died
                 └──────────────────────────────────────────────────────┘                           ▼
                                            RESCHEDULING ◀── (its lost bundles only) ── RESCHEDULING ┘
                                            plan / prepare / commit the lost bundles as above ─▶ CREATED
    remove (any state; the owner dying does it for a non-detached group) ─▶ REMOVED

Two-phase reservation: the shell prepares the planned bundles one by one on their nodes and
reports the outcome as one event; only when every prepare said yes does the group commit.  Each
planning round is an *attempt*; an answer for an attempt that is no longer current (the group was
removed, or planned again) has what it reserved cancelled.  ``nodes`` records where each bundle
is reserved (prepared or committed; None: not placed), so every bundle is reserved on at most one
node and cancelled exactly once; ``validate_state`` checks it.

Actions (tuples, carried out in order):
    ("persist", pg_id)                      write the group's row
    ("reply", req, value) / ("fail", req, error)
    ("watch_owner", req, pg_id)             remove the group when the request's connection closes
    ("plan", pg_id, attempt, after_change)  feed ``plan`` with the view (after the next view change)
    ("prepare", pg_id, attempt, [(index, node_id, bundle)])   then feed ``prepared``
    ("commit", pg_id, attempt, [(index, node_id)])            then feed ``committed`` (failed nodes)
    ("cancel_bundle", node_id, pg_id, index)
    ("capacity_changed",)                   bundles were released: waiting placements look again
    ("wait_timer", req, pg_id, timeout)     feed ``wait_timeout`` for req after timeout seconds
    ("log", level, text)
"""
from __future__ import annotations

import enum

from ..placement import STRATEGIES, plan_bundles


class PgState(str, enum.Enum):
    PENDING = "PENDING"
    PREPARED = "PREPARED"
    CREATED = "CREATED"
    REMOVED = "REMOVED"
    RESCHEDULING = "RESCHEDULING"

    def __str__(self):
        return self.value


S = PgState
TRANSITIONS = {
    S.PENDING: {S.PREPARED, S.REMOVED},
    S.PREPARED: {S.CREATED, S.PENDING, S.RESCHEDULING, S.REMOVED},
    S.CREATED: {S.RESCHEDULING, S.REMOVED},
    S.RESCHEDULING: {S.PREPARED, S.REMOVED},
    S.REMOVED: set(),
}
PLACING = (S.PENDING, S.RESCHEDULING)


class Group:
    def __init__(self, p, owner):
        self.pg_id = p["pg_id"]
        self.bundles = p["bundles"]
        self.strategy = p["strategy"]
        self.name = p.get("name") or ""
        self.detached = p.get("lifetime") == "detached"
        self.owner = owner          # the creator's address (None: known only by its connection)
        self.state = S.PENDING
        self.nodes = [None] * len(self.bundles)   # where each bundle is reserved (None: nowhere)
        self.shown = None           # bundle -> node as last CREATED (kept for the table once REMOVED)
        self.attempt = 0
        self.waiters = []
        self.warned = False

    def to_row(self):
        return {"pg_id": self.pg_id, "bundles": self.bundles, "strategy": self.strategy, "name": self.name,
                "lifetime": "detached" if self.detached else None, "owner": self.owner,
                "state": self.state.value, "nodes": self.nodes if self.state != S.REMOVED else self.shown}

    @classmethod
    def from_row(cls, row):
        pg = cls(row, row.get("owner"))
        state = S(row["state"])
        nodes = row.get("nodes")
        if state == S.PREPARED:     # commits were in flight when the GCS stopped: the nodes decide
            state = S.PENDING
        if state == S.REMOVED:
            pg.shown = nodes
        elif state != S.PENDING and nodes:
            pg.nodes = list(nodes)
            pg.shown = list(nodes)
        pg.state = state
        return pg

    def __repr__(self):
        return f"Group({self.pg_id.hex()[:12]}, {self.state.name})"


class GroupTable:
    def __init__(self):
        self.groups: dict[bytes, Group] = {}
        self.dead_nodes = set()
        self.expected_owners = set()
        self.out = []
        self.trace = None

    def handle(self, event):
        getattr(self, "on_" + event[0])(*event[1:])
        out, self.out = self.out, []
        return out

    def _to(self, pg, state):
        assert state in TRANSITIONS[pg.state], f"{pg!r}: {pg.state.name} -> {state.name} is not allowed"
        pg.state = state
        if self.trace is not None:
            self.trace.append((pg.pg_id, state))

    def _plan_again(self, pg, after_change):
        pg.attempt += 1
        self.out.append(("plan", pg.pg_id, pg.attempt, after_change))

    # --- loading ----------------------------------------------------------------------------------
    def on_load(self, rows):
        for row in rows:
            pg = Group.from_row(row)
            self.groups[pg.pg_id] = pg
            if pg.state == S.REMOVED:
                continue
            if pg.owner and not pg.detached:
                self.expected_owners.add(pg.owner)
            if pg.state in PLACING:
                self._plan_again(pg, False)

    # --- requests ---------------------------------------------------------------------------------
    def on_create(self, req, p, owner):
        if p["strategy"] not in STRATEGIES:
            self.out.append(("fail", req, ValueError(f"unknown strategy {p['strategy']!r}")))
            return
        if p["pg_id"] in self.groups:    # sent again after a GCS restart: it was created
            self.out.append(("reply", req, True))
            return
        pg = Group(p, owner)
        self.groups[pg.pg_id] = pg
        self.out.append(("persist", pg.pg_id))
        if not pg.detached:
            self.out.append(("watch_owner", req, pg.pg_id))
        self._plan_again(pg, False)
        self.out.append(("reply", req, True))

    def on_remove(self, pg_id):
        pg = self.groups.get(pg_id)
        if pg is None or pg.state == S.REMOVED:
            return
        released = self._cancel(pg, range(len(pg.bundles)))
        self._to(pg, S.REMOVED)
        pg.attempt = 0
        self.out.append(("persist", pg_id))
        if released:
            self.out.append(("capacity_changed",))   # bundles released: waiting groups and actors look again
        self._wake(pg)

    def on_wait(self, req, pg_id, timeout=None):
        pg = self.groups.get(pg_id)
        if pg is None:
            self.out.append(("reply", req, S.REMOVED.value))
        elif pg.state in (S.CREATED, S.REMOVED):
            self.out.append(("reply", req, pg.state.value))
        else:
            pg.waiters.append(req)
            if timeout is not None:
                self.out.append(("wait_timer", req, pg_id, timeout))

    def on_wait_timeout(self, req, pg_id):
        pg = self.groups.get(pg_id)
        if pg is not None and req in pg.waiters:
            pg.waiters.remove(req)
            self.out.append(("reply", req, S.PENDING.value if pg.state in PLACING else pg.state.value))

    def _wake(self, pg):
        waiters, pg.waiters = pg.waiters, []
        for req in waiters:
            self.out.append(("reply", req, pg.state.value))

    # --- placing ------------------------------------------------------------------------------------
    def _current(self, pg_id, attempt, *states):
        pg = self.groups.get(pg_id)
        if pg is None or pg.attempt != attempt or pg.state not in states:
            return None
        return pg

    def on_plan(self, pg_id, attempt, nodes):
        """``nodes``: {node_id: available} of the alive nodes the GCS can reach now."""
        pg = self._current(pg_id, attempt, *PLACING)
        if pg is None:
            return
        lost = [i for i, n in enumerate(pg.nodes) if n is None]
        kept = {n for n in pg.nodes if n is not None}
        if pg.strategy == "STRICT_SPREAD":
            nodes = {nid: a for nid, a in nodes.items() if nid not in kept}
        elif pg.strategy == "STRICT_PACK" and kept:
            nodes = {nid: a for nid, a in nodes.items() if nid in kept}
        choice = plan_bundles([pg.bundles[i] for i in lost], pg.strategy, nodes)
        if choice is None:
            if not pg.warned:
                pg.warned = True
                self.out.append(("log", "info", f"placement group {pg_id.hex()} cannot be placed yet "
                                                f"({pg.strategy} {pg.bundles})"))
            self._plan_again(pg, True)    # room freed, a node joined, bundles released
            return
        self.out.append(("prepare", pg_id, attempt, [(i, nid, pg.bundles[i]) for i, nid in zip(lost, choice)]))

    def on_prepared(self, pg_id, attempt, prepared, ok):
        """``prepared``: [(index, node_id)] that said yes, in order; ``ok``: all of them did."""
        pg = self._current(pg_id, attempt, *PLACING)
        if pg is not None and ok and not any(nid in self.dead_nodes for _, nid in prepared):
            for i, nid in prepared:
                pg.nodes[i] = nid
            self._to(pg, S.PREPARED)
            self.out.append(("commit", pg_id, attempt, list(prepared)))
            return
        for i, nid in prepared:
            self.out.append(("cancel_bundle", nid, pg_id, i))
        if pg is not None:
            # a node refused: our view of it was stale; plan again once a fresher report is in
            self._plan_again(pg, True)

    def on_committed(self, pg_id, attempt, failed=()):
        """``failed``: the nodes whose commit did not succeed (refused, or the node died)."""
        pg = self._current(pg_id, attempt, S.PREPARED)
        if pg is None:
            return
        failed = set(failed)
        if not failed and not any(n in self.dead_nodes for n in pg.nodes):
            self._to(pg, S.CREATED)
            pg.attempt = 0
            pg.warned = False
            pg.shown = list(pg.nodes)
            self.out.append(("persist", pg_id))
            self._wake(pg)
            return
        # a node died (or forgot the bundle) under the commit: what it held is placed again
        self._lose(pg, lambda nid: nid in self.dead_nodes or nid in failed)

    def _lose(self, pg, gone):
        """Bundles on nodes for which ``gone(node)`` holds are no longer reserved; place them again."""
        lost = [i for i, n in enumerate(pg.nodes) if n is not None and gone(n)]
        if not lost:
            return
        for i in lost:
            nid, pg.nodes[i] = pg.nodes[i], None
            if nid not in self.dead_nodes:
                self.out.append(("cancel_bundle", nid, pg.pg_id, i))
        kept = any(n is not None for n in pg.nodes)
        self._to(pg, S.RESCHEDULING if (kept or pg.shown) else S.PENDING)
        self.out.append(("persist", pg.pg_id))
        self._plan_again(pg, False)

    def _cancel(self, pg, indexes):
        released = False
        for i in indexes:
            nid = pg.nodes[i]
            if nid is not None:
                pg.nodes[i] = None
                released = True
                if nid not in self.dead_nodes:
                    self.out.append(("cancel_bundle", nid, pg.pg_id, i))
        return released

    # --- nodes, owners and GCS restarts -----------------------------------------------------------------
    def on_node_dead(self, node_id):
        self.dead_nodes.add(node_id)
        for pg in list(self.groups.values()):
            if pg.state in (S.CREATED, S.RESCHEDULING) and node_id in pg.nodes:
                if pg.state == S.RESCHEDULING:
                    pg.nodes = [None if n == node_id else n for n in pg.nodes]
                    self.out.append(("persist", pg.pg_id))
                    self._plan_again(pg, False)
                else:
                    self.out.append(("log", "warning", f"placement group {pg.pg_id.hex()} lost bundles on dead "
                                                       f"node {node_id.hex()}; rescheduling them"))
                    self._lose(pg, lambda nid: nid == node_id)

    def on_node_alive(self, node_id):
        self.dead_nodes.discard(node_id)

    def on_node_back(self, node_id, bundles):
        """A node re-registered after a GCS restart holding ``bundles`` [(pg_id, index)]: those of
        groups that do not hold them there are cancelled."""
        self.dead_nodes.discard(node_id)
        for pg_id, i in bundles:
            pg = self.groups.get(pg_id)
            if pg is None or pg.state not in (S.CREATED, S.RESCHEDULING) or i >= len(pg.nodes) \
                    or pg.nodes[i] != node_id:
                self.out.append(("cancel_bundle", node_id, pg_id, i))

    def owned_by(self, owner):
        return [pg.pg_id for pg in self.groups.values()
                if pg.owner == owner and not pg.detached and pg.state != S.REMOVED]

    def on_owner_died(self, owner):
        for pg_id in self.owned_by(owner):
            self.on_remove(pg_id)

    def on_recovery_ended(self, owners):
        for owner in self.expected_owners - set(owners):
            self.on_owner_died(owner)
        self.expected_owners = set()

    # --- queries -------------------------------------------------------------------------------------
    def named(self, name):
        for pg in self.groups.values():
            if pg.name == name and pg.state != S.REMOVED:
                return {"pg_id": pg.pg_id, "bundles": pg.bundles, "strategy": pg.strategy}
        return None

    def table(self):
        # keys are strings: the driver's msgpack decoder takes no other map keys
        return {pg.pg_id.hex(): {"placement_group_id": pg.pg_id.hex(), "name": pg.name, "strategy": pg.strategy,
                                 "state": pg.state.value, "bundles": dict(enumerate(pg.bundles)),
                                 "bundles_to_node_id": {i: n.hex() for i, n in enumerate(pg.shown or [])
                                                        if n is not None}}
                for pg in self.groups.values()}

    # --- invariants ------------------------------------------------------------------------------------
    def validate_state(self):
        for pg_id, pg in self.groups.items():
            assert pg.pg_id == pg_id and isinstance(pg.state, S), pg
            assert len(pg.nodes) == len(pg.bundles), pg
            placed = [n for n in pg.nodes if n is not None]
            if pg.state in (S.CREATED, S.PREPARED):
                assert len(placed) == len(pg.bundles), f"{pg!r}: a bundle with no node"
            if pg.state == S.PENDING:
                assert not placed, f"{pg!r}: bundles reserved while PENDING"
            if pg.state == S.RESCHEDULING:
                assert len(placed) < len(pg.bundles), f"{pg!r}: nothing to reschedule"
            if pg.state == S.REMOVED:
                assert not placed and not pg.waiters and pg.attempt == 0, f"{pg!r}: still holds bundles"
            if pg.state in PLACING:
                assert pg.attempt > 0, f"{pg!r}: being placed with no attempt"
            if pg.state == S.CREATED:
                assert pg.attempt == 0 and not pg.waiters, pg
                if pg.strategy == "STRICT_PACK":
                    assert len(set(placed)) == 1, f"{pg!r}: STRICT_PACK over several nodes"
            if pg.strategy == "STRICT_SPREAD":
                assert len(set(placed)) == len(placed), f"{pg!r}: STRICT_SPREAD with two bundles on a node"
