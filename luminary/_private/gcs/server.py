"""The GCS server process.

    node managers ──register / heartbeat──▶ ┌──────────────┐ ◀──nodes(), resources, KV── drivers
                                            │  GCS tables   │
                                            │  nodes  jobs  │──▶ storage (memory | SQLite)
                                            │  KV           │
                                            └──────────────┘
It is never on the per-task path: tasks and objects go owner ⇄ node manager ⇄ worker directly.
A node that misses HEARTBEAT_MISSES heartbeats is marked dead.

``cluster`` is the placement view (exact resources, ``placement.ClusterView``).  Every change to
it that placement depends on (a node joining or dying, a heartbeat with new availability or
totals) bumps ``view_version`` and wakes whoever waits in ``wait_view_change``: actors and
placement groups waiting for room are woken by the change itself, not by polling.  Changes to
what the cluster could ever hold (joins, deaths, new totals) also bump ``capacity_version``,
which is all an actor that no node could hold waits for.

Persistence and restart (``storage.py``): every table recovery needs is written through to the
storage before the reply that reports it leaves.  A GCS started on storage that holds a cluster
(``_load``) is *recovering* for ``reconcile_s`` (LUMINARY_GCS_RECONCILE_S, default 10 s): node
managers re-register with the leases and bundles they hold (``register_node`` with ``leases``),
actors whose worker is still there keep their incarnation (the GCS reconnects to the worker),
owners re-announce themselves (``register_owner``).  When the window ends, nodes that did not
come back are dead (their actors restart elsewhere) and non-detached actors and groups whose
owner did not come back die.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import time

from ..config import HEARTBEAT_MISSES, HEARTBEAT_S
from ..placement import ClusterView, NodeView, ResourceSet
from .. import stacks
from ..rpc import messages, protocol
from .storage import MemoryStorage, StorageError, open_storage, pack, unpack

logger = logging.getLogger(__name__)
VIEW_PERIOD_S = 0.1
VIEW_WAIT_SAFETY_S = 2.0   # waiting for a view change re-checks at least this often (a safety net)
NODE_FIELDS = ("NodeID", "Alive", "NodeManagerAddress", "NodeManagerPort", "Address", "Resources", "NodeName",
               "ObjectStoreSocketName", "IsHead", "pid", "Labels", "death_reason")


def reconcile_window() -> float:
    return float(os.environ.get("LUMINARY_GCS_RECONCILE_S", "10"))


class GcsServer:
    def __init__(self, secret: bytes, storage=None, reconcile_s=None, session_dir=None):
        self.secret = secret
        self.storage = storage or MemoryStorage()
        self.reconcile_s = reconcile_window() if reconcile_s is None else reconcile_s
        self.recovering_until = None   # monotonic end of the reconcile window after a restart
        self.owners: dict[str, object] = {}      # owner address -> its connection (non-detached lifetimes)
        self.nodes: dict[bytes, dict] = {}
        self.view_dirty = False
        self.cluster = ClusterView()
        self.view_version = 0          # any change placement depends on
        self.capacity_version = 0      # changes to what nodes could ever hold: joins, deaths, totals
        self._view_waiters: list = []
        self.node_conns: dict[bytes, protocol.Connection] = {}
        self.connect = protocol.connect     # opens connections to workers (tests pass an in-memory one)
        self.next_job = int.from_bytes(self.storage.get("meta", b"job") or b"\x00", "big")
        handlers = {
            "register_node": self.register_node,
            "heartbeat": self.heartbeat,
            "get_nodes": self.get_nodes,
            "next_job_id": self.next_job_id,
            "kv_put": self.kv_put,
            "kv_get": self.kv_get,
            "kv_del": self.kv_del,
            "kv_keys": self.kv_keys,
            "cluster_resources": self.cluster_resources,
            "ping": lambda conn, p: "pong",
            "log": self.relay_log,
        }
        from .actors import ActorManager
        from .placement_groups import PlacementGroupManager
        from .events import Observer
        self.actors = ActorManager(self)
        self.placement_groups = PlacementGroupManager(self)
        handlers["register_owner"] = self.register_owner
        handlers["cluster_stacks"] = lambda conn, p: stacks.gather_cluster(self, p)
        self.observer = Observer(self, session_dir)     # task events, state queries, metrics, history
        from .deadlock import DeadlockDetector
        self.deadlocks = DeadlockDetector(self)          # actors waiting on each other through get
        self.handlers = messages.handlers(messages.GCS, {
            **handlers, **self.actors.handlers, **self.placement_groups.handlers, **self.observer.handlers,
            **self.deadlocks.handlers})
        self._load()

    # --- persistence and recovery --------------------------------------------------------------
    def _load(self):
        """Tables from storage (a restart): nodes that were alive are waited for, not yet dead."""
        now = time.monotonic()
        recovered = False
        for nid, blob in self.storage.items("nodes").items():
            row = unpack(blob)
            node = dict(row, Available=dict(row["Resources"]), last=now)
            self.nodes[nid] = node
            if node["Alive"]:
                recovered = True
                node["reconnecting"] = True
                self.cluster.upsert(NodeView(nid, node["Address"], ResourceSet.from_wire(node["Resources"]),
                                             labels={"head": bool(node.get("IsHead"))}))
        recovered = self.actors.load() or recovered
        recovered = self.placement_groups.load() or recovered
        if recovered:
            self.recovering_until = now + self.reconcile_s
            logger.warning("GCS restarted on %s: %d node(s), %d actor(s), %d placement group(s) to reconcile "
                           "within %.0fs", self.storage.description, sum(n["Alive"] for n in self.nodes.values()),
                           len(self.actors.actors), len(self.placement_groups.groups), self.reconcile_s)

    def save_node(self, nid):
        node = self.nodes[nid]
        self.storage.put("nodes", nid, pack({k: node[k] for k in NODE_FIELDS if k in node}))

    def _end_recovery(self):
        self.recovering_until = None
        for nid, node in list(self.nodes.items()):
            if node.pop("reconnecting", False) and node["Alive"]:
                self._node_lost(nid, "did not reconnect within the reconcile window after the GCS restarted")
        self.actors.recovery_ended(self.owners)
        self.placement_groups.recovery_ended(self.owners)
        logger.info("GCS recovery ended")

    # --- owners (non-detached actors and groups die with theirs) --------------------------------
    def register_owner(self, conn, p):
        self.watch_owner(conn, p["address"])
        return True

    def watch_owner(self, conn, owner):
        if conn.state.get("owner_of") is None:
            conn.state["owner_of"] = owner
            self.owners[owner] = conn
            conn.close_callbacks.append(lambda c, o=owner: self._owner_died(o, c))
            self.placement_groups.owner_back(owner, conn)

    def _owner_died(self, owner, conn):
        if self.owners.get(owner) is conn:
            del self.owners[owner]
        self.actors.owner_died(owner)
        self.placement_groups.owner_died(owner)

    async def start(self, address):
        self.server, self.address = await protocol.serve(address, self.secret, self.handlers.accepting(
            messages.NODE_MANAGER, messages.DRIVER, messages.WORKER), name="gcs")
        asyncio.get_event_loop().create_task(self._health_loop())
        asyncio.get_event_loop().create_task(self._broadcast_loop())
        await self.observer.start()
        if self.storage.persistent:
            asyncio.get_event_loop().create_task(self._lock_loop())
        return self.address

    async def _lock_loop(self):
        while True:
            await asyncio.sleep(2.0)
            try:
                self.storage.refresh_lock()
            except StorageError as e:
                logger.error("%s; this GCS stops", e)
                os._exit(3)
            except Exception as e:   # noqa: BLE001 - a Redis hiccup: try again at the next period
                logger.warning("refreshing the storage lock failed: %s", e)

    # --- nodes -------------------------------------------------------------------------------
    def register_node(self, conn, p):
        nid = p["node_id"]
        old = self.nodes.get(nid)
        if old is not None and old.get("Alive") and self.node_conns.get(nid) not in (None, conn) \
                and not self.node_conns[nid].closed:
            raise ValueError(f"node {nid.hex()} is already registered on another connection")
        self.nodes[nid] = {"NodeID": nid.hex(), "Alive": True, "NodeManagerAddress": p["ip"],
                           "NodeManagerPort": p.get("port", 0), "Address": p["address"],
                           "Resources": p["resources"], "Available": dict(p["resources"]),
                           "NodeName": p["ip"], "ObjectStoreSocketName": "memfd",
                           "IsHead": p.get("head", False), "pid": p.get("pid"),
                           "last": time.monotonic(), "Labels": {}}
        self.cluster.upsert(NodeView(nid, p["address"], ResourceSet.from_wire(p["resources"]),
                                     labels={"head": bool(p.get("head"))}))
        self.node_conns[nid] = conn
        self.save_node(nid)
        self.view_changed(capacity=True)
        conn.close_callbacks.append(lambda c, nid=nid: self._conn_lost(nid, c))
        self.placement_groups.node_alive(nid)
        if "leases" in p or "bundles" in p:     # a node manager coming back after a GCS restart
            self.actors.node_back(nid, conn, p.get("leases") or [])
            self.placement_groups.node_back(nid, conn, p.get("bundles") or [])
        self.broadcast_view(exclude=nid)
        return self.view()

    def _conn_lost(self, nid, conn):
        if self.node_conns.get(nid) is conn:
            self._node_lost(nid, "connection closed")

    def broadcast_view(self, exclude=None):
        view = self.view()
        for other, c in self.node_conns.items():
            if other != exclude and not c.closed and self.nodes[other]["Alive"]:
                c.notify("view", view)

    def heartbeat(self, conn, p):
        """A node's report; the answer is the cluster view its scheduler spills back with."""
        node = self.nodes.get(p["node_id"])
        if node is not None and node["Alive"]:
            node["last"] = time.monotonic()
            node["Available"] = p["available"]
            if "total" in p and p["total"] != node.get("Total"):
                changed = "Total" in node
                node["Total"] = p["total"]
                if changed:   # bundles came or went: every scheduler should know at once
                    self.broadcast_view(exclude=p["node_id"])
            node["pending"] = p.get("pending", [])
            self.view_dirty = True
            total = ResourceSet.from_wire(p["total"]) if "total" in p else None
            changed = self.cluster.report(p["node_id"], ResourceSet.from_wire(p["available"]), total)
            if changed:
                self.view_changed(capacity=changed == "total")
        return self.view()

    def relay_log(self, conn, p):
        for nid, c in self.node_conns.items():
            if c is not conn and not c.closed and self.nodes[nid]["Alive"]:
                c.notify("log_remote", p)

    def view(self):
        return {nid: {"address": n["Address"], "total": n.get("Total", n["Resources"]), "available": n["Available"]}
                for nid, n in self.nodes.items() if n["Alive"]}

    def _node_lost(self, nid, why):
        node = self.nodes.get(nid)
        if node is not None and node["Alive"]:
            node["Alive"] = False
            node["death_reason"] = why
            logger.warning("node %s is dead: %s", nid.hex(), why)
            node.pop("reconnecting", None)
            self.cluster.mark_dead(nid)
            self.save_node(nid)
            self.actors.node_dead(nid)
            self.placement_groups.node_dead(nid)
            self.view_changed(capacity=True)
            self.broadcast_view(exclude=nid)

    # --- view changes (placement waits on these instead of polling) ------------------------------
    def placeable(self) -> ClusterView:
        """The alive nodes the GCS can reach, for placement decisions."""
        conns = self.node_conns
        return self.cluster.restricted_to(lambda nid: nid in conns and not conns[nid].closed)

    def view_changed(self, capacity=False):
        """Wake the placement waiters: all of them, or when only room changed (``capacity``
        False), those not waiting for capacity alone."""
        self.view_version += 1
        if capacity:
            self.capacity_version += 1
        waiters, self._view_waiters = self._view_waiters, []
        for entry in waiters:
            fut, capacity_only = entry
            if capacity_only and not capacity:
                self._view_waiters.append(entry)
            elif not fut.done():
                fut.set_result(True)

    async def wait_view_change(self, since: int, timeout: float = VIEW_WAIT_SAFETY_S, capacity=False) -> bool:
        """Return once ``view_version`` (``capacity_version`` with ``capacity``) is past ``since``,
        at once if it already is; False when ``timeout`` passed first (a safety net: the caller
        simply re-plans)."""
        if (self.capacity_version if capacity else self.view_version) != since:
            return True
        fut = asyncio.get_event_loop().create_future()
        entry = (fut, capacity)
        self._view_waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            if not fut.done():
                fut.cancel()
            try:
                self._view_waiters.remove(entry)
            except ValueError:
                pass

    async def _broadcast_loop(self):
        """Resource views go to every node manager at most every VIEW_PERIOD_S when something
        changed, so spillback decisions see other nodes' room within a fraction of a second."""
        while True:
            await asyncio.sleep(VIEW_PERIOD_S)
            if self.view_dirty and len(self.node_conns) > 1:
                self.view_dirty = False
                self.broadcast_view()

    async def _health_loop(self):
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            now = time.monotonic()
            if self.recovering_until is not None and now >= self.recovering_until:
                self._end_recovery()
            for nid, node in list(self.nodes.items()):
                if node.get("reconnecting"):
                    continue
                if node["Alive"] and now - node["last"] > HEARTBEAT_S * HEARTBEAT_MISSES:
                    self._node_lost(nid, f"missed heartbeats for {now - node['last']:.1f}s")

    def get_nodes(self, conn, p):
        return [{k: v for k, v in n.items() if k not in ("last", "Total", "reconnecting")} for n in self.nodes.values()]

    def cluster_resources(self, conn, p):
        total, avail = {}, {}
        for n in self.nodes.values():
            if not n["Alive"]:
                continue
            for k, v in n.get("Total", n["Resources"]).items():
                total[k] = total.get(k, 0) + v
            for k, v in n["Available"].items():
                avail[k] = avail.get(k, 0) + v
        return {"total": total, "available": avail}

    # --- jobs and KV ---------------------------------------------------------------------------
    def next_job_id(self, conn, p):
        self.next_job += 1
        self.storage.put("meta", b"job", self.next_job.to_bytes(4, "big"))
        return self.next_job

    def kv_put(self, conn, p):
        ns = p.get("ns") or ""
        key = ns.encode() + b"\x00" + p["key"]
        if not p.get("overwrite", True):
            existing = self.storage.get("kv", key)
            if existing is not None:
                return existing == p["value"]   # a request sent again after a GCS restart: already done
        self.storage.put("kv", key, p["value"])
        return True

    def kv_get(self, conn, p):
        return self.storage.get("kv", (p.get("ns") or "").encode() + b"\x00" + p["key"])

    def kv_del(self, conn, p):
        return self.storage.delete("kv", (p.get("ns") or "").encode() + b"\x00" + p["key"])

    def kv_keys(self, conn, p):
        ns = (p.get("ns") or "").encode() + b"\x00"
        return [k[len(ns):] for k in self.storage.keys("kv", ns + p.get("prefix", b""))]


def run_gcs(secret: bytes, address: str, ready_fd: int, storage_spec: str | None = None, lock_token: str = "",
            session_dir=None):
    """Entry point of the GCS process (forked, or started again, by the head node process)."""
    from ..rpc.loop import new_event_loop
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        storage = open_storage(storage_spec, lock_token)
    except StorageError as e:
        os.write(ready_fd, f"error:storage:{e}".replace("\n", " ").encode() + b"\n")
        raise SystemExit(1)
    gcs = GcsServer(secret, storage, session_dir=session_dir)
    if address.startswith("unix:") and storage.persistent:
        try:
            os.unlink(address[5:])    # the socket of the GCS this one replaces
        except OSError:
            pass
    try:
        bound = loop.run_until_complete(gcs.start(address))
    except OSError as e:
        storage.close()
        os.write(ready_fd, f"error:{e}\n".encode())
        raise SystemExit(1)
    os.write(ready_fd, bound.encode() + b"\n")
    gc.freeze()      # everything built at start-up lives as long as the GCS: out of the collector's way
    os.close(ready_fd)
    try:
        loop.run_forever()
    finally:
        storage.close()
