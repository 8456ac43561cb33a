"""The GCS's actor table: creation, restarts, names, kills, checkpoints.

    register ─▶ PENDING ─ lease a worker from a node manager, push create_actor ─▶ ALIVE
                                                        constructor raised ─▶ DEAD (cause kept)
    ALIVE ─ worker connection lost ─▶ RESTARTING (max_restarts left; from its last checkpoint)
                                  └─▶ DEAD (no restarts left, killed, exited, or owner died)

Callers never pass through here per call: they ask once (``wait_actor``, a long poll answered
when the actor is ALIVE at a new incarnation or DEAD) and then push calls to the actor's worker
directly.  The creation spec (class, arguments, options) and the latest checkpoint stay here,
outside the actor's process and node, so a restart needs nothing from the dead worker.

Every change of an entry (registered, ALIVE at an address, restarting, DEAD) is one storage
transaction (the row, and the name index with it) before anyone is told; checkpoints too.  After
a GCS restart (``load``) an ALIVE actor has no connection to its worker yet: when its node comes
back and reports the actor's lease (``node_back``) the GCS reconnects to the worker and the actor
keeps its incarnation and state; a lease that is gone, or a node that does not come back
(``node_dead``), restarts it as a worker death would.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time

from ... import exceptions as exc
from .storage import pack, unpack
from ..placement import ResourceSet, actor_load, place_actor
from ..rpc import protocol

logger = logging.getLogger(__name__)

PENDING, ALIVE, RESTARTING, DEAD = "PENDING", "ALIVE", "RESTARTING", "DEAD"


ROW_FIELDS = ("actor_id", "spec", "resources", "name", "namespace", "detached", "owner", "max_restarts", "meta",
              "class_name", "strategy", "state", "address", "node_id", "pid", "worker_id", "lease", "incarnation",
              "num_restarts", "cause", "cause_text", "exiting")


class ActorEntry:
    def to_row(self):
        return {f: getattr(self, f) for f in ROW_FIELDS}

    @classmethod
    def from_row(cls, row):
        a = cls(row)
        for f in ROW_FIELDS[11:]:
            setattr(a, f, row.get(f))
        a.lease = tuple(a.lease) if a.lease else None
        a.exiting = bool(a.exiting)
        a.cause_text = a.cause_text or ""
        return a

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
        self.planned = None
        self.state = PENDING
        self.pending_since = time.time()      # when it last became PENDING or RESTARTING (luminary status)
        self.address = None
        self.node_id = None
        self.pid = None
        self.worker_id = None
        self.lease = None
        self.wconn = None
        self.incarnation = 0
        self.num_restarts = 0
        self.cause = None                     # pickled exception, or text
        self.cause_text = ""
        self.checkpoint = None
        self.waiters = []
        self.exiting = False


class ActorManager:
    def __init__(self, gcs):
        self.gcs = gcs
        self.actors: dict[bytes, ActorEntry] = {}
        self.names: dict[tuple, bytes] = {}
        self.lease_counter = 0
        self.expected_owners = set()   # after a restart: owners of non-detached actors, until they are back
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

    # --- persistence ------------------------------------------------------------------------------
    def save(self, a, *extra):
        """One transaction: the actor's row, plus ``extra`` rows (the name index)."""
        self.gcs.storage.write([("actors", a.actor_id, pack(a.to_row())), *extra])

    def load(self) -> bool:
        st = self.gcs.storage
        checkpoints = st.items("checkpoints")
        for aid, blob in st.items("actors").items():
            a = ActorEntry.from_row(unpack(blob))
            a.checkpoint = checkpoints.get(aid)
            self.actors[aid] = a
        for key, aid in st.items("names").items():
            if aid in self.actors:
                ns, _, name = key.partition(b"\x00")
                self.names[(ns.decode(), name.decode())] = aid
        for a in self.actors.values():
            if a.state == DEAD:
                continue
            if a.owner and not a.detached:
                self.expected_owners.add(a.owner)
            if a.state in (PENDING, RESTARTING):
                asyncio.ensure_future(self._create(a))
        return any(a.state != DEAD for a in self.actors.values())

    def node_back(self, nid, nconn, leases):
        """A node manager re-registered after a GCS restart, holding ``leases`` it granted to a GCS:
        actors whose lease is there keep their worker; leases no actor owns are ended."""
        held = {l["lease_id"]: l for l in leases}
        mine = set()
        for a in list(self.actors.values()):
            if a.state == DEAD or a.lease is None or a.lease[0] != nid:
                continue
            lease_id = a.lease[1]
            mine.add(lease_id)
            if a.state == ALIVE and a.wconn is None:
                if lease_id in held:
                    asyncio.ensure_future(self._reattach(a, a.incarnation))
                else:
                    self._worker_lost(a, a.incarnation)   # its worker died while the GCS was away
        for lease_id in held:
            if lease_id not in mine:
                nconn.notify("return_lease", {"lease_id": lease_id, "kill": True})

    async def _reattach(self, a, incarnation):
        try:
            wconn = await protocol.connect(a.address, self.gcs.secret, {}, name=f"actor-{a.actor_id.hex()[:8]}")
        except Exception as e:   # noqa: BLE001 - the worker is gone
            logger.info("actor %s: its worker at %s is gone (%s)", a.actor_id.hex(), a.address, e)
            self._worker_lost(a, incarnation)
            return
        if a.state != ALIVE or a.incarnation != incarnation or a.wconn is not None:
            wconn.close()
            return
        a.wconn = wconn
        wconn.close_callbacks.append(lambda c, a=a, inc=incarnation: self._worker_lost(a, inc))
        logger.info("actor %s kept its worker across the GCS restart (incarnation %d)", a.actor_id.hex(), incarnation)

    def node_dead(self, nid):
        """Actors on a dead node that the GCS holds no connection to (after a restart) restart now;
        the others learn it from their worker's connection."""
        for a in list(self.actors.values()):
            if a.state == ALIVE and a.node_id == nid and a.wconn is None:
                self._worker_lost(a, a.incarnation)

    def recovery_ended(self, owners):
        for owner in self.expected_owners - set(owners):
            self.owner_died(owner, after_restart=True)
        self.expected_owners = set()

    # --- creation ------------------------------------------------------------------------------
    def register_actor(self, conn, p):
        known = self.actors.get(p["actor_id"])
        if known is not None:   # sent again after a GCS restart: it was registered
            return {"existing": False, "actor_id": known.actor_id}
        name = p.get("name")
        ns = p.get("namespace") or ""
        if name:
            existing = self.names.get((ns, name))
            if existing is not None and self.actors[existing].state != DEAD:
                if p.get("get_if_exists"):
                    a = self.actors[existing]
                    return {"existing": True, "actor_id": a.actor_id, "meta": a.meta}
                raise ValueError(f"An actor named {name!r} already exists in namespace {ns!r}. "
                                 "Pick another name, use get_actor() to reach it, or pass get_if_exists=True.")
        a = ActorEntry(p)
        self.actors[a.actor_id] = a
        extra = []
        if name:
            self.names[(ns, name)] = a.actor_id
            extra.append(("names", ns.encode() + b"\x00" + name.encode(), a.actor_id))
        self.save(a, *extra)    # durable before the caller hears of it
        if a.owner and not a.detached:
            self.gcs.watch_owner(conn, a.owner)
        asyncio.ensure_future(self._create(a))
        return {"existing": False, "actor_id": a.actor_id}

    def owner_died(self, owner, after_restart=False):
        why = (" (it did not reconnect after the GCS restarted)" if after_restart else "")
        for a in list(self.actors.values()):
            if a.owner == owner and not a.detached and a.state != DEAD:
                self._kill(a, f"The actor's owner (the process that created it) died{why}; non-detached actors "
                              "die with their owner. Use lifetime='detached' to keep an actor alive.")

    def _pick_node(self, a: ActorEntry):
        """Where to lease the actor's worker (placement.place_actor), or None when no alive node
        could ever hold it.  Actors placed but not yet running count as taking their resources."""
        placed = []
        for other in self.actors.values():
            if other.state == ALIVE:
                placed.append((other.node_id, other.need, True))
            elif other.state in (PENDING, RESTARTING):
                placed.append((other.planned, other.need, False))
        counts, pending = actor_load(placed)
        return place_actor(a.need, self.gcs.placeable(), a.strategy, counts, pending)

    async def _create(self, a: ActorEntry):
        while a.state in (PENDING, RESTARTING):
            a.planned = None
            seen = self.gcs.capacity_version
            nid = self._pick_node(a)
            a.planned = nid
            if nid is None:
                if not getattr(a, "warned", False):
                    a.warned = True
                    logger.warning("actor %s needs %s, which no alive node has; waiting", a.actor_id.hex(), a.resources)
                # only a node joining or gaining resources (new totals) can change that
                await self.gcs.wait_view_change(seen, capacity=True)
                continue
            nconn = self.gcs.node_conns[nid]
            self.lease_counter += 1
            # unique across GCS restarts: a restarted GCS must not reuse a lease id a node still holds
            lease_id = b"gcs-actor" + os.urandom(8)
            try:
                req = {"lease_id": lease_id, "resources": a.resources, "actor": True}
                if a.spec.get("renv"):
                    req["renv"] = a.spec["renv"]
                if a.strategy and a.strategy.get("type") in ("NODE_AFFINITY", "SPREAD"):
                    req["no_spill"] = True
                try:
                    # a node whose report was stale may not have room: give it a moment, then re-plan
                    grant = await asyncio.wait_for(asyncio.shield(call := nconn.call("request_lease", req)), 2.0)
                except asyncio.TimeoutError:
                    nconn.request("cancel_lease_request", {"lease_id": lease_id, "release_if_granted": True},
                                  lambda ok, r: None)
                    call.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
                    continue
                if isinstance(grant, dict) and "spillback" in grant:
                    # the node's own, fresher view found a better place: ask there, once
                    nid = grant["node_id"]
                    nconn = self.gcs.node_conns.get(nid)
                    if nconn is None or nconn.closed:
                        continue
                    grant = await nconn.call("request_lease", dict(req, no_spill=True))
                if isinstance(grant, dict) and "error" in grant:
                    if grant.get("type") == "RuntimeEnvSetupError":   # callers raise the setup error itself
                        self._set_dead(a, grant["message"], pickle.dumps(exc.RuntimeEnvSetupError(grant["message"])))
                        return
                    self._set_dead(a, f"The actor cannot be scheduled: {grant['message']}")
                    return
            except Exception as e:  # node died while we waited
                logger.warning("lease for actor %s failed: %s", a.actor_id.hex(), e)
                if nid in self.gcs.placeable():
                    # still there as far as we know: re-plan when the view next changes
                    await self.gcs.wait_view_change(self.gcs.view_version)
                continue
            if grant is None:
                continue
            if a.state == DEAD:  # killed while we waited
                nconn.notify("return_lease", {"lease_id": lease_id, "kill": True})
                return
            try:
                wconn = await protocol.connect(grant["address"], self.gcs.secret, {}, name=f"actor-{a.actor_id.hex()[:8]}")
                spec = dict(a.spec, actor_id=a.actor_id, incarnation=a.incarnation, checkpoint=a.checkpoint,
                            gcs_address=self.gcs.address, gpus=grant.get("gpu_ids") or [])
                reply = await wconn.call("create_actor", spec)
            except Exception as e:
                logger.warning("creating actor %s failed: %s", a.actor_id.hex(), e)
                nconn.notify("return_lease", {"lease_id": lease_id, "kill": True})
                if not self._may_restart(a):
                    self._set_dead(a, f"The actor's worker died while running its constructor: {e}")
                    return
                continue
            if reply.get("error") is not None:
                nconn.notify("return_lease", {"lease_id": lease_id, "kill": True})
                wconn.close()
                self._set_dead(a, reply.get("error_text", "the constructor raised"), reply["error"])
                return
            if a.state == DEAD:
                nconn.notify("return_lease", {"lease_id": lease_id, "kill": True})
                wconn.close()
                return
            a.state = ALIVE
            a.address = grant["address"]
            a.node_id = nid
            a.worker_id = grant["worker_id"]
            a.pid = reply.get("pid")
            a.lease = (nid, lease_id)
            a.wconn = wconn
            wconn.close_callbacks.append(lambda c, a=a, inc=a.incarnation: self._worker_lost(a, inc))
            self.save(a)
            self._wake(a)
            return

    def _may_restart(self, a):
        return a.max_restarts == -1 or a.num_restarts < a.max_restarts

    def _worker_lost(self, a: ActorEntry, incarnation):
        if a.incarnation != incarnation or a.state != ALIVE:
            return
        a.wconn = None
        self._release_lease(a, kill=True)
        if a.exiting:
            self._set_dead(a, "The actor exited intentionally (exit_actor or __ray_terminate__).")
            return
        if self._may_restart(a):
            a.num_restarts += 1
            a.incarnation += 1
            a.state = RESTARTING
            a.pending_since = time.time()
            a.address = None
            self.save(a)
            logger.info("restarting actor %s (restart %d)", a.actor_id.hex(), a.num_restarts)
            self._wake(a)
            asyncio.ensure_future(self._create(a))
        else:
            self._set_dead(a, "The actor's worker process died unexpectedly (crashed, killed, or os._exit) "
                              f"and it has no restarts left (max_restarts={a.max_restarts}).")

    def _release_lease(self, a, kill):
        if a.lease is not None:
            nid, lease_id = a.lease
            a.lease = None
            nconn = self.gcs.node_conns.get(nid)
            if nconn is not None and not nconn.closed:
                nconn.notify("return_lease", {"lease_id": lease_id, "kill": kill})

    def _set_dead(self, a, text, cause=None):
        a.state = DEAD
        a.cause_text = text
        a.cause = cause
        extra = []
        if a.name and self.names.get((a.namespace, a.name)) == a.actor_id:
            del self.names[(a.namespace, a.name)]
            extra.append(("names", a.namespace.encode() + b"\x00" + a.name.encode(), None))
        if a.checkpoint is not None:
            a.checkpoint = None
            extra.append(("checkpoints", a.actor_id, None))
        self.save(a, *extra)
        self._wake(a)

    def _kill(self, a, text):
        if a.state == DEAD:
            return
        wconn = a.wconn
        a.wconn = None
        self._release_lease(a, kill=True)
        if wconn is not None:
            wconn.close()
        self._set_dead(a, text)

    def _wake(self, a):
        waiters, a.waiters = a.waiters, []
        for fut, min_inc in waiters:
            if fut.done():
                continue
            if a.state == DEAD or (a.state == ALIVE and a.incarnation >= min_inc):
                fut.set_result(self._info(a))
            else:
                a.waiters.append((fut, min_inc))

    def _info(self, a):
        return {"state": a.state, "address": a.address, "incarnation": a.incarnation, "cause": a.cause,
                "cause_text": a.cause_text, "node_id": a.node_id, "pid": a.pid, "meta": a.meta,
                "name": a.name, "namespace": a.namespace, "num_restarts": a.num_restarts,
                "class_name": a.class_name, "worker_id": a.worker_id}

    # --- queries -------------------------------------------------------------------------------
    def wait_actor(self, conn, p):
        a = self.actors.get(p["actor_id"])
        if a is None:
            return {"state": DEAD, "cause_text": "This actor is not known to the cluster (it was never created here).",
                    "cause": None, "incarnation": 0}
        min_inc = p.get("min_incarnation", 0)
        if a.state == DEAD or (a.state == ALIVE and a.incarnation >= min_inc):
            return self._info(a)
        if not p.get("wait", True):
            return self._info(a)
        fut = asyncio.get_event_loop().create_future()
        a.waiters.append((fut, min_inc))
        return fut

    def get_named_actor(self, conn, p):
        aid = self.names.get((p.get("namespace") or "", p["name"]))
        if aid is None:
            return None
        a = self.actors[aid]
        return {"actor_id": aid, "meta": a.meta, "state": a.state}

    def list_named_actors(self, conn, p):
        out = []
        for (ns, name), aid in self.names.items():
            if self.actors[aid].state == DEAD:
                continue
            if p.get("all_namespaces") or ns == (p.get("namespace") or ""):
                out.append({"name": name, "namespace": ns})
        return out

    def list_actors(self, conn, p):
        return [{"actor_id": a.actor_id.hex(), "state": a.state, "name": a.name or "", "class_name": a.class_name,
                 "namespace": a.namespace, "pid": a.pid, "num_restarts": a.num_restarts,
                 "death_cause": a.cause_text if a.state == DEAD else None}
                for a in self.actors.values()]

    # --- changes from callers and actors ----------------------------------------------------------
    def kill_actor(self, conn, p):
        a = self.actors.get(p["actor_id"])
        if a is None:
            return False
        if p.get("no_restart", True):
            self._kill(a, "The actor was killed by luminary.kill().")
        else:
            nid = a.node_id
            nconn = self.gcs.node_conns.get(nid) if nid else None
            if nconn is not None and a.worker_id is not None:
                nconn.notify("kill_worker_nowait", {"worker_id": a.worker_id})
            elif a.wconn is not None:
                a.wconn.close()
        return True

    def actor_exit(self, conn, p):
        a = self.actors.get(p["actor_id"])
        if a is not None and not a.exiting:
            a.exiting = True
            self.save(a)
        return True

    def actor_checkpoint(self, conn, p):
        a = self.actors.get(p["actor_id"])
        if a is not None and a.state != DEAD:
            a.checkpoint = p["state"]
            self.gcs.storage.put("checkpoints", a.actor_id, p["state"])
        return True
