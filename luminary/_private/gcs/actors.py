"""The GCS's actor manager: the I/O shell around the pure actor table (``actor_state.py``).

    requests (register_actor, wait_actor, kill_actor, ...) ──┐
    worker connections closing, node managers coming back  ──┼─▶ ActorTable.handle(event) ─▶ actions
    results of creation attempts (lease, create_actor)     ──┘                                 │
        storage writes, replies, return_lease, create_actor pushes, worker connections ◀──────┘

Callers never pass through here per call: they ask once (``wait_actor``, a long poll answered
when the actor is ALIVE at a new incarnation or DEAD) and then push calls to the actor's worker
directly.  The creation spec (class, arguments, options) and the latest checkpoint stay here,
outside the actor's process and node, so a restart needs nothing from the dead worker.

Every change of an entry (registered, ALIVE at an address, restarting, DEAD) is one storage
transaction (the row, and the name index with it) written when the action is carried out, before
any reply that follows it.  After a GCS restart (``load``) an ALIVE actor has no connection to
its worker yet: when its node comes back and reports the actor's lease (``node_back``) the GCS
reconnects to the worker and the actor keeps its incarnation and state; a lease that is gone, or
a node that does not come back (``node_dead``), restarts it as a worker death would.

One creation attempt (``_attempt``) is the only place that waits: it places the actor
(``placement.place_actor`` over the GCS's view), asks the node manager for a lease (following
one spillback, re-planning when a stale view made the node slow to answer), connects to the
leased worker and pushes ``create_actor``; each outcome goes back into the table as an event.
"""
from __future__ import annotations

import asyncio
import logging
import os

from .actor_state import ActorState, ActorTable, ROW_FIELDS  # noqa: F401 - ActorState, ROW_FIELDS: part of this module's interface
from .storage import pack, unpack
from ..placement import actor_load, place_actor
from ..rpc import protocol

logger = logging.getLogger(__name__)

PENDING, ALIVE, RESTARTING, DEAD = (ActorState.PENDING_CREATION, ActorState.ALIVE, ActorState.RESTARTING,
                                    ActorState.DEAD)
LEASE_PATIENCE_S = 2.0     # a node slower than this to grant a lease had a stale report: re-plan


class Request:
    """An answer to give: at once (the handler returns it) or later (a future)."""
    __slots__ = ("conn", "done", "value", "error", "fut")

    def __init__(self, conn):
        self.conn, self.done, self.value, self.error, self.fut = conn, False, None, None, None

    def answer(self, value=None, error=None):
        if self.fut is not None:
            if not self.fut.done():
                if error is not None:
                    self.fut.set_exception(error)
                else:
                    self.fut.set_result(value)
            return
        self.done, self.value, self.error = True, value, error

    def result(self):
        """What the handler returns: the answer, or a future answered later."""
        if self.done:
            if self.error is not None:
                raise self.error
            return self.value
        self.fut = asyncio.get_event_loop().create_future()
        return self.fut


class ActorManager:
    def __init__(self, gcs):
        self.gcs = gcs
        self.table = ActorTable()
        self.actors = self.table.actors         # read by the observer, the deadlock detector, tests
        self.names = self.table.names
        self.wconns = {}                        # actor id -> its worker's connection (kept)
        self._opening = {}                      # (actor id, tag) -> a worker connection being set up
        self.handlers = {     # registered by GcsServer with its own
            "register_actor": self.register_actor,
            "wait_actor": self.wait_actor,
            "get_named_actor": self.get_named_actor,
            "list_named_actors": self.list_named_actors,
            "kill_actor": self.kill_actor,
            "actor_exit": self.actor_exit,
            "actor_checkpoint": self.actor_checkpoint,
            "list_actors": self.list_actors,
        }

    @property
    def expected_owners(self):
        return self.table.expected_owners

    # --- the shell: events in, actions carried out ----------------------------------------------
    def feed(self, *event):
        for action in self.table.handle(event):
            getattr(self, "_do_" + action[0])(*action[1:])

    def _do_persist(self, aid, extra):
        self.save(self.actors[aid], *extra)

    def _do_persist_checkpoint(self, aid, blob):
        if blob is None:
            self.gcs.storage.delete("checkpoints", aid)
        else:
            self.gcs.storage.put("checkpoints", aid, blob)

    def _do_reply(self, req, value):
        req.answer(value)

    def _do_fail(self, req, error):
        req.answer(error=error)

    def _do_watch_owner(self, req, owner):
        self.gcs.watch_owner(req.conn, owner)

    def _do_schedule(self, aid, attempt):
        asyncio.ensure_future(self._attempt(aid, attempt))

    def _do_create(self, aid, attempt, address, spec):
        asyncio.ensure_future(self._create_on_worker(aid, attempt, address, spec))

    def _do_keep_worker(self, aid, tag, incarnation):
        wconn = self._opening.pop((aid, tag), None)
        if wconn is None or wconn.closed:
            self.feed("worker_lost", aid, incarnation)
            return
        self.wconns[aid] = wconn
        wconn.close_callbacks.append(lambda c, aid=aid, inc=incarnation: self._wconn_closed(aid, inc, c))

    def _wconn_closed(self, aid, incarnation, wconn):
        if self.wconns.get(aid) is wconn:
            del self.wconns[aid]
        self.feed("worker_lost", aid, incarnation)

    def _do_drop_worker(self, aid, tag):
        wconn = self._opening.pop((aid, tag), None)
        if wconn is not None:
            wconn.close()

    def _do_close_worker(self, aid):
        wconn = self.wconns.pop(aid, None)
        if wconn is not None:
            wconn.close()

    def _do_return_lease(self, nid, lease_id, kill):
        nconn = self.gcs.node_conns.get(nid)
        if nconn is not None and not nconn.closed:
            nconn.notify("return_lease", {"lease_id": lease_id, "kill": kill})

    def _do_kill_worker(self, aid, nid, worker_id):
        nconn = self.gcs.node_conns.get(nid) if nid else None
        if nconn is not None and not nconn.closed and worker_id is not None:
            nconn.notify("kill_worker_nowait", {"worker_id": worker_id})
        elif aid in self.wconns:
            self.wconns[aid].close()

    def _do_reattach(self, aid, incarnation, address):
        asyncio.ensure_future(self._reattach(aid, incarnation, address))

    def _do_log(self, level, text):
        getattr(logger, level)("%s", text)

    # --- persistence ------------------------------------------------------------------------------
    def save(self, a, *extra):
        """One transaction: the actor's row, plus ``extra`` rows (the name index)."""
        self.gcs.storage.write([("actors", a.actor_id, pack(a.to_row())), *extra])

    def load(self) -> bool:
        st = self.gcs.storage
        self.feed("load", [unpack(b) for b in st.items("actors").values()], st.items("checkpoints"),
                  st.items("names"))
        return any(a.state != DEAD for a in self.actors.values())

    def node_back(self, nid, nconn, leases):
        self.feed("node_back", nid, [lease["lease_id"] for lease in leases])

    def node_dead(self, nid):
        self.feed("node_dead", nid)

    def recovery_ended(self, owners):
        self.feed("recovery_ended", set(owners))

    def owner_died(self, owner, after_restart=False):
        self.feed("owner_died", owner, after_restart)

    # --- waiting work: one creation attempt, one reconnection -------------------------------------------
    async def _attempt(self, aid, attempt):
        """Place the actor and lease a worker for it, until a lease is granted (``leased``), the
        node refuses for good (``lease_refused``) or the attempt is no longer current."""
        gcs, table = self.gcs, self.table
        while (a := table.current(aid, attempt)) is not None:
            seen = gcs.capacity_version
            counts, pending = actor_load(table.placed(exclude=aid))
            nid = place_actor(a.need, gcs.placeable(), a.strategy, counts, pending)
            self.feed("planned", aid, attempt, nid)
            if nid is None:
                # only a node joining or gaining resources (new totals) can change that
                await gcs.wait_view_change(seen, capacity=True)
                continue
            lease_id = b"gcs-actor" + os.urandom(8)   # unique across GCS restarts: nodes may still hold old ids
            req = {"lease_id": lease_id, "resources": a.resources, "actor": True}
            if a.spec.get("renv"):
                req["renv"] = a.spec["renv"]
            if a.strategy and a.strategy.get("type") in ("NODE_AFFINITY", "SPREAD"):
                req["no_spill"] = True
            nconn = gcs.node_conns[nid]
            try:
                try:
                    # a node whose report was stale may not have room: give it a moment, then re-plan
                    grant = await asyncio.wait_for(asyncio.shield(call := nconn.call("request_lease", req)),
                                                   LEASE_PATIENCE_S)
                except asyncio.TimeoutError:
                    nconn.request("cancel_lease_request", {"lease_id": lease_id, "release_if_granted": True},
                                  lambda ok, r: None)
                    call.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
                    continue
                if isinstance(grant, dict) and "spillback" in grant:
                    # the node's own, fresher view found a better place: ask there, once
                    nid = grant["node_id"]
                    nconn = gcs.node_conns.get(nid)
                    if nconn is None or nconn.closed:
                        continue
                    grant = await nconn.call("request_lease", dict(req, no_spill=True))
            except Exception as e:  # noqa: BLE001 - the node died while we waited
                logger.warning("lease for actor %s failed: %s", aid.hex(), e)
                if nid in gcs.placeable():
                    # still there as far as we know: re-plan when the view next changes
                    await gcs.wait_view_change(gcs.view_version)
                continue
            if grant is None:
                continue
            if isinstance(grant, dict) and "error" in grant:
                self.feed("lease_refused", aid, attempt, grant["message"], grant.get("type") == "RuntimeEnvSetupError")
                return
            self.feed("leased", aid, attempt, nid, lease_id, grant)
            return

    async def _create_on_worker(self, aid, attempt, address, spec):
        try:
            wconn = await self.gcs.connect(address, self.gcs.secret, {}, name=f"actor-{aid.hex()[:8]}")
        except Exception as e:  # noqa: BLE001 - the worker is gone
            logger.warning("creating actor %s failed: %s", aid.hex(), e)
            self.feed("create_crashed", aid, attempt, str(e))
            return
        self._opening[(aid, attempt)] = wconn
        try:
            reply = await wconn.call("create_actor", dict(spec, gcs_address=self.gcs.address))
        except Exception as e:  # noqa: BLE001 - the worker died in the constructor
            logger.warning("creating actor %s failed: %s", aid.hex(), e)
            self.feed("create_crashed", aid, attempt, str(e))
            return
        if reply.get("error") is not None:
            self.feed("create_failed", aid, attempt, reply["error"], reply.get("error_text"))
        else:
            self.feed("created", aid, attempt, address, reply.get("pid"))

    async def _reattach(self, aid, incarnation, address):
        try:
            wconn = await self.gcs.connect(address, self.gcs.secret, {}, name=f"actor-{aid.hex()[:8]}")
        except Exception as e:  # noqa: BLE001 - the worker is gone
            self.feed("reattached", aid, incarnation, False, str(e))
            return
        self._opening[(aid, ("reattach", incarnation))] = wconn
        self.feed("reattached", aid, incarnation, True)

    # --- requests ------------------------------------------------------------------------------------
    def _ask(self, conn, *event):
        req = Request(conn)
        self.feed(event[0], req, *event[1:])
        return req.result()

    def register_actor(self, conn, p):
        res = self._ask(conn, "register", p)
        if not res.get("existing"):
            self.feed("dependencies_ready", p["actor_id"])
        return res

    def wait_actor(self, conn, p):
        return self._ask(conn, "wait", p["actor_id"], p.get("min_incarnation", 0), p.get("wait", True))

    def get_named_actor(self, conn, p):
        return self.table.named(p["name"], p.get("namespace"))

    def list_named_actors(self, conn, p):
        return self.table.list_named(p.get("all_namespaces"), p.get("namespace"))

    def list_actors(self, conn, p):
        return self.table.rows()

    def kill_actor(self, conn, p):
        return self._ask(conn, "kill", p["actor_id"], p.get("no_restart", True))

    def actor_exit(self, conn, p):
        self.feed("exit", p["actor_id"])
        return True

    def actor_checkpoint(self, conn, p):
        self.feed("checkpoint", p["actor_id"], p["state"])
        return True
