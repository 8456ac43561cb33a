"""Placement groups in the GCS: bundles of resources reserved atomically across nodes.

    create ─▶ PENDING ─ plan (strategy) ─▶ prepare on every chosen node ─┬─ all yes ─▶ commit ─▶ CREATED
                 ▲                                                    └─ any no ─▶ cancel prepared,
                 └──────────── retry when the GCS's cluster view changes ◀───────── retry
    remove ─▶ bundles cancelled on their nodes ─▶ REMOVED

A committed bundle appears on its node as renamed resources (``CPU_group_<i>_<pg>`` and
``CPU_group_<pg>``); tasks and actors scheduled into the group ask for those, so the ordinary
scheduler and spillback place them on the right node.  The plan itself is
``placement.plan_bundles`` (pure, exact arithmetic).

Each group is a storage row (bundles, strategy, name, lifetime, owner's address, state, the node
of each bundle), written when it is created, placed and removed.  After a GCS restart the bundles
stay on their node managers, which report them when they re-register (``node_back``): bundles of
groups the GCS does not hold as CREATED there are cancelled; PENDING groups are planned again.
"""
from __future__ import annotations

import asyncio
import logging

from .storage import pack, unpack
from ..placement import STRATEGIES, plan_bundles

logger = logging.getLogger(__name__)

plan = plan_bundles   # the planner's old name here (tests import it)
__all__ = ["STRATEGIES", "plan", "PlacementGroup", "PlacementGroupManager"]


class PlacementGroup:
    def __init__(self, p, owner):
        self.pg_id = p["pg_id"]
        self.bundles = p["bundles"]
        self.strategy = p["strategy"]
        self.name = p.get("name") or ""
        self.detached = p.get("lifetime") == "detached"
        self.owner = owner          # the creator's address (None: known only by its connection)
        self.state = "PENDING"
        self.nodes = None
        self.waiters = []

    def to_row(self):
        return {"pg_id": self.pg_id, "bundles": self.bundles, "strategy": self.strategy, "name": self.name,
                "lifetime": "detached" if self.detached else None, "owner": self.owner, "state": self.state,
                "nodes": self.nodes}

    @classmethod
    def from_row(cls, row):
        pg = cls(row, row.get("owner"))
        pg.state = row["state"]
        pg.nodes = row.get("nodes")
        return pg


class PlacementGroupManager:
    def __init__(self, gcs):
        self.gcs = gcs
        self.groups: dict[bytes, PlacementGroup] = {}
        self.expected_owners = set()
        self.handlers = {     # registered by GcsServer with its own
            "create_pg": self.create_pg,
            "remove_pg": self.remove_pg,
            "wait_pg": self.wait_pg,
            "get_pg": self.get_pg,
            "pg_table": self.pg_table,
        }

    def save(self, pg):
        self.gcs.storage.put("pgs", pg.pg_id, pack(pg.to_row()))

    def load(self) -> bool:
        for pid, blob in self.gcs.storage.items("pgs").items():
            pg = PlacementGroup.from_row(unpack(blob))
            self.groups[pid] = pg
            if pg.state == "REMOVED":
                continue
            if pg.owner and not pg.detached:
                self.expected_owners.add(pg.owner)
            if pg.state == "PENDING":
                asyncio.ensure_future(self._schedule(pg))
        return any(pg.state != "REMOVED" for pg in self.groups.values())

    def node_back(self, nid, nconn, bundles):
        for b in bundles:
            pg = self.groups.get(b["pg_id"])
            i = b["index"]
            if pg is None or pg.state != "CREATED" or not pg.nodes or i >= len(pg.nodes) or pg.nodes[i] != nid:
                nconn.notify("cancel_bundle", {"pg_id": b["pg_id"], "index": i})

    def owner_back(self, owner, conn):
        for pg in self.groups.values():
            if pg.owner == owner and not pg.detached and pg.state != "REMOVED":
                conn.close_callbacks.append(lambda c, pg=pg: asyncio.ensure_future(self._remove(pg)))

    def owner_died(self, owner):
        for pg in list(self.groups.values()):
            if pg.owner == owner and not pg.detached and pg.state != "REMOVED":
                asyncio.ensure_future(self._remove(pg))

    def recovery_ended(self, owners):
        for owner in self.expected_owners - set(owners):
            self.owner_died(owner)
        self.expected_owners = set()

    def create_pg(self, conn, p):
        if p["strategy"] not in STRATEGIES:
            raise ValueError(f"unknown strategy {p['strategy']!r}")
        if p["pg_id"] in self.groups:    # sent again after a GCS restart: it was created
            return True
        pg = PlacementGroup(p, conn.state.get("owner_of"))
        self.groups[pg.pg_id] = pg
        self.save(pg)
        if not pg.detached:
            conn.close_callbacks.append(lambda c, pg=pg: asyncio.ensure_future(self._remove(pg)))
        asyncio.ensure_future(self._schedule(pg))
        return True

    async def _schedule(self, pg):
        warned = False
        while pg.state == "PENDING":
            seen = self.gcs.view_version
            nodes = {n.node_id: n.available for n in self.gcs.placeable().alive()}
            choice = plan_bundles(pg.bundles, pg.strategy, nodes)
            if choice is None:
                if not warned:
                    warned = True
                    logger.info("placement group %s cannot be placed yet (%s %s)", pg.pg_id.hex(), pg.strategy, pg.bundles)
                await self.gcs.wait_view_change(seen)    # room freed, a node joined, bundles released
                continue
            prepared = []
            ok = True
            for i, (nid, b) in enumerate(zip(choice, pg.bundles)):
                try:
                    res = await self.gcs.node_conns[nid].call("prepare_bundle", {"pg_id": pg.pg_id, "index": i, "resources": b})
                except Exception:
                    res = False
                if not res:
                    ok = False
                    break
                prepared.append((nid, i))
            if not ok or pg.state != "PENDING":
                for nid, i in prepared:
                    c = self.gcs.node_conns.get(nid)
                    if c is not None and not c.closed:
                        c.notify("cancel_bundle", {"pg_id": pg.pg_id, "index": i})
                if pg.state == "PENDING":
                    # a node refused: our view of it was stale; plan again once a fresher report is in
                    await self.gcs.wait_view_change(seen)
                continue
            for nid, i in prepared:
                await self.gcs.node_conns[nid].call("commit_bundle", {"pg_id": pg.pg_id, "index": i})
            pg.nodes = choice
            pg.state = "CREATED"
            self.save(pg)
            self._wake(pg)

    def _wake(self, pg):
        waiters, pg.waiters = pg.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(pg.state)

    async def _remove(self, pg):
        if pg.state == "REMOVED":
            return
        nodes = pg.nodes
        pg.state = "REMOVED"
        self.save(pg)
        if nodes:
            for i, nid in enumerate(nodes):
                c = self.gcs.node_conns.get(nid)
                if c is not None and not c.closed:
                    c.notify("cancel_bundle", {"pg_id": pg.pg_id, "index": i})
            self.gcs.view_changed(capacity=True)   # bundles released: waiting groups and actors look again
        self._wake(pg)

    def remove_pg(self, conn, p):
        pg = self.groups.get(p["pg_id"])
        if pg is not None:
            asyncio.ensure_future(self._remove(pg))
        return True

    def wait_pg(self, conn, p):
        pg = self.groups.get(p["pg_id"])
        if pg is None:
            return "REMOVED"
        if pg.state != "PENDING":
            return pg.state
        fut = asyncio.get_event_loop().create_future()
        pg.waiters.append(fut)
        timeout = p.get("timeout")

        async def bounded():
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                return pg.state
        return bounded()

    def get_pg(self, conn, p):
        for pg in self.groups.values():
            if pg.name == p["name"] and pg.state != "REMOVED":
                return {"pg_id": pg.pg_id, "bundles": pg.bundles, "strategy": pg.strategy}
        return None

    def pg_table(self, conn, p):
        return {pg.pg_id.hex(): {"placement_group_id": pg.pg_id.hex(), "name": pg.name, "strategy": pg.strategy,
                                 "state": pg.state, "bundles": dict(enumerate(pg.bundles)),
                                 "bundles_to_node_id": {i: n.hex() for i, n in enumerate(pg.nodes or [])}}
                for pg in self.groups.values()}
