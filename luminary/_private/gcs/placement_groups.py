"""Placement groups in the GCS: the I/O shell around the pure group table (``pg_state.py``).

    create_pg / remove_pg / wait_pg, owners leaving ──┐
    the cluster view (plan), node deaths and returns ──┼─▶ GroupTable.handle(event) ─▶ actions
    prepare_bundle / commit_bundle answers           ──┘                                │
        storage writes, replies, prepare/commit/cancel_bundle to node managers ◀────────┘

A committed bundle appears on its node as renamed resources (``CPU_group_<i>_<pg>`` and
``CPU_group_<pg>``); tasks and actors scheduled into the group ask for those, so the ordinary
scheduler and spillback place them on the right node.  The plan itself is
``placement.plan_bundles`` (pure, exact arithmetic), run inside the table on the view the shell
hands it; when nothing fits the shell waits for the GCS's next view change (no polling).

Each group is a storage row (bundles, strategy, name, lifetime, owner's address, state, the node
of each bundle), written when it is created, placed, loses bundles and is removed.  After a GCS
restart the bundles stay on their node managers, which report them when they re-register
(``node_back``): bundles of groups the GCS does not hold there are cancelled; groups still being
placed are planned again.  A node that dies with bundles of a CREATED group sends the group to
RESCHEDULING: its other bundles stay where they are and the lost ones are placed again.
"""
from __future__ import annotations

import asyncio
import logging

from .actors import Request
from .pg_state import GroupTable, PgState
from .storage import pack, unpack
from ..placement import STRATEGIES, plan_bundles

logger = logging.getLogger(__name__)

plan = plan_bundles   # the planner's old name here (tests import it)
__all__ = ["STRATEGIES", "plan", "PlacementGroupManager", "PgState"]


class PlacementGroupManager:
    def __init__(self, gcs):
        self.gcs = gcs
        self.table = GroupTable()
        self.groups = self.table.groups       # read by tests and state queries
        self.handlers = {     # registered by GcsServer with its own
            "create_pg": self.create_pg,
            "remove_pg": self.remove_pg,
            "wait_pg": self.wait_pg,
            "get_pg": self.get_pg,
            "pg_table": self.pg_table,
        }

    @property
    def expected_owners(self):
        return self.table.expected_owners

    # --- the shell ---------------------------------------------------------------------------------
    def feed(self, *event):
        for action in self.table.handle(event):
            getattr(self, "_do_" + action[0])(*action[1:])

    def _do_persist(self, pg_id):
        self.save(self.groups[pg_id])

    def _do_reply(self, req, value):
        req.answer(value)

    def _do_fail(self, req, error):
        req.answer(error=error)

    def _do_watch_owner(self, req, pg_id):
        req.conn.close_callbacks.append(lambda c, pg_id=pg_id: self.feed("remove", pg_id))

    def _do_plan(self, pg_id, attempt, after_change):
        asyncio.ensure_future(self._plan(pg_id, attempt, after_change))

    def _do_prepare(self, pg_id, attempt, items):
        asyncio.ensure_future(self._prepare(pg_id, attempt, items))

    def _do_commit(self, pg_id, attempt, items):
        asyncio.ensure_future(self._commit(pg_id, attempt, items))

    def _do_cancel_bundle(self, nid, pg_id, index):
        c = self.gcs.node_conns.get(nid)
        if c is not None and not c.closed:
            c.notify("cancel_bundle", {"pg_id": pg_id, "index": index})

    def _do_capacity_changed(self):
        self.gcs.view_changed(capacity=True)

    def _do_wait_timer(self, req, pg_id, timeout):
        asyncio.get_event_loop().call_later(max(0.0, timeout), lambda: self.feed("wait_timeout", req, pg_id))

    def _do_log(self, level, text):
        getattr(logger, level)("%s", text)

    # --- waiting work -------------------------------------------------------------------------------
    async def _plan(self, pg_id, attempt, after_change):
        seen = self.gcs.view_version
        if after_change:
            await self.gcs.wait_view_change(seen)
        self.feed("plan", pg_id, attempt, {n.node_id: n.available for n in self.gcs.placeable().alive()})

    async def _prepare(self, pg_id, attempt, items):
        prepared = []
        for i, nid, bundle in items:
            try:
                ok = await self.gcs.node_conns[nid].call("prepare_bundle", {"pg_id": pg_id, "index": i,
                                                                             "resources": bundle})
            except Exception:  # noqa: BLE001 - the node went away: a no
                ok = False
            if not ok:
                self.feed("prepared", pg_id, attempt, prepared, False)
                return
            prepared.append((i, nid))
        self.feed("prepared", pg_id, attempt, prepared, True)

    async def _commit(self, pg_id, attempt, items):
        failed = set()
        for i, nid in items:
            try:
                ok = await self.gcs.node_conns[nid].call("commit_bundle", {"pg_id": pg_id, "index": i})
            except Exception:  # noqa: BLE001 - the node went away
                ok = False
            if not ok:
                failed.add(nid)
        self.feed("committed", pg_id, attempt, failed)

    # --- persistence and recovery --------------------------------------------------------------------
    def save(self, pg):
        self.gcs.storage.put("pgs", pg.pg_id, pack(pg.to_row()))

    def load(self) -> bool:
        self.feed("load", [unpack(b) for b in self.gcs.storage.items("pgs").values()])
        return any(pg.state != PgState.REMOVED for pg in self.groups.values())

    def node_back(self, nid, nconn, bundles):
        self.feed("node_back", nid, [(b["pg_id"], b["index"]) for b in bundles])

    def node_alive(self, nid):
        self.feed("node_alive", nid)

    def node_dead(self, nid):
        self.feed("node_dead", nid)

    def owner_back(self, owner, conn):
        for pg_id in self.table.owned_by(owner):
            conn.close_callbacks.append(lambda c, pg_id=pg_id: self.feed("remove", pg_id))

    def owner_died(self, owner):
        self.feed("owner_died", owner)

    def recovery_ended(self, owners):
        self.feed("recovery_ended", set(owners))

    # --- requests -------------------------------------------------------------------------------------
    def create_pg(self, conn, p):
        req = Request(conn)
        self.feed("create", req, p, conn.state.get("owner_of"))
        return req.result()

    def remove_pg(self, conn, p):
        self.feed("remove", p["pg_id"])
        return True

    def wait_pg(self, conn, p):
        req = Request(conn)
        self.feed("wait", req, p["pg_id"], p.get("timeout"))
        return req.result()

    def get_pg(self, conn, p):
        return self.table.named(p["name"])

    def pg_table(self, conn, p):
        return self.table.table()
