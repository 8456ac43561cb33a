"""The node manager process: one per node.

    owners (drivers, workers) ──request_lease──▶ ┌───────────────────────────┐
                               ◀─grant: worker──  │ NodeManager               │──register/heartbeat──▶ GCS
    workers ──register, blocked/unblocked, log──▶ │  LocalScheduler (sans-IO) │
    any local process ──store_create/seal/get──▶  │  ObjectStore    (sans-IO) │
                                                  │  worker pool ─ zygote ─▶ fork
                                                  └───────────────────────────┘
Tasks never pass through here: an owner gets a lease on a worker, then pushes tasks to that
worker directly.  The node manager only hands out workers, keeps the shared-memory store, and
watches processes: a worker whose connection drops is gone (its lease's resources come back),
a driver whose connection drops has its leased workers killed and its objects freed; a cluster
started by ``init()`` ends with its driver.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import socket
import time

import msgpack

from .. import ids
from ..config import HEARTBEAT_S, IDLE_WORKER_TIMEOUT_S
from ..placement import ClusterView, NodeView, Reject, ResourceSet, Spill, TaskPlacer, group_resources
from ..rpc import messages, protocol
from .scheduler import LeaseRequest, LocalScheduler
from .store import ObjectStore

logger = logging.getLogger(__name__)


class WorkerInfo:
    __slots__ = ("worker_id", "pid", "address", "conn", "lease", "idle_since", "kind")

    def __init__(self, worker_id, pid, address, conn, kind):
        self.worker_id = worker_id
        self.pid = pid
        self.address = address
        self.conn = conn
        self.lease = None
        self.idle_since = time.monotonic()
        self.kind = kind


class NodeManager:
    def __init__(self, cfg: dict, zygote_sock: socket.socket, arena_fd: int, arena_mm, gcs_pid=None):
        self.cfg = cfg
        self.secret = cfg["secret"]
        self.node_id = cfg.get("node_id") or ids.random_id()
        self.session_dir = cfg["session_dir"]
        resources = dict(cfg.get("resources") or {})
        resources["CPU"] = float(cfg["num_cpus"])
        if cfg.get("num_gpus"):
            resources["GPU"] = float(cfg["num_gpus"])
        resources["memory"] = float(cfg.get("memory", 0) or 0)
        resources["object_store_memory"] = float(cfg["object_store_memory"])
        resources[f"node:{cfg['node_ip']}"] = 1.0
        if cfg.get("head"):
            resources["node:__internal_head__"] = 1.0
        self.resources = {k: v for k, v in resources.items() if v}
        self.scheduler = LocalScheduler(self.resources)
        self.arena_fd = arena_fd
        self.arena_mm = arena_mm
        self.store = ObjectStore(memoryview(arena_mm), cfg["object_store_memory"],
                                 os.path.join(self.session_dir, "spill"))
        self.store_waiters = collections.defaultdict(list)
        self.zygote_sock = zygote_sock
        self.gcs_pid = gcs_pid
        self.workers: dict[bytes, WorkerInfo] = {}
        self.idle = collections.deque()
        self.starting: dict[bytes, float] = {}
        self.pid_to_worker: dict[int, bytes] = {}
        self.drivers: dict[bytes, protocol.Connection] = {}
        self.lease_waiters: dict = {}
        self.shutting_down = False
        self.stopped = asyncio.get_event_loop().create_future()
        self._report_scheduled = False
        self.view = ClusterView()  # alive nodes' totals and availability, as the GCS last reported them
        self.peers = {}           # node manager address -> Connection (transfers)
        self.pulls = {}           # oid -> future of a pull in progress
        self.copies = {}          # oid -> peer connections that pulled a copy of our primary
        self.placer = TaskPlacer(self.node_id)   # spillback rules (SPREAD round robin, recent spills)
        self.bundles = {}         # (pg_id, index) -> reserved resources
        self.handlers = messages.handlers(messages.NODE_MANAGER, {
            "register_worker": self.register_worker,
            "register_driver": self.register_driver,
            "request_lease": self.request_lease,
            "cancel_lease_request": self.cancel_lease_request,
            "return_lease": self.return_lease,
            "blocked": self.worker_blocked,
            "unblocked": self.worker_unblocked,
            "store_create": self.store_create,
            "store_seal": self.store_seal,
            "store_abort": self.store_abort,
            "store_get": self.store_get,
            "store_release": self.store_release,
            "store_delete": self.store_delete,
            "store_stats": lambda c, p: self.store.stats(),
            "kill_worker": self.kill_worker,
            "kill_worker_nowait": self.kill_worker,
            "log": self.forward_log,
            "log_remote": self.log_to_local_drivers,
            "node_info": self.node_info,
            "shutdown": self.request_shutdown,
            "view": lambda c, p: self._on_view(True, p),
            "transfer_begin": self.transfer_begin,
            "drop_copies": self.drop_copies,
            "fetch_chunk": self.fetch_chunk,
            "transfer_end": self.transfer_end,
            "prepare_bundle": self.prepare_bundle,
            "commit_bundle": self.commit_bundle,
            "cancel_bundle": self.cancel_bundle,
            "ping": lambda c, p: "pong",
            "flush_logs": self.flush_logs,
        })

    # --- start and stop ----------------------------------------------------------------------
    async def start(self):
        loop = asyncio.get_event_loop()
        self.address = f"unix:{os.path.join(self.session_dir, 'nm.sock')}"
        self.server, _ = await protocol.serve(self.address, self.secret, self.handlers.accepting(
            messages.DRIVER, messages.WORKER), name="node-manager")
        self.tcp_address = None
        if self.cfg.get("tcp_port") is not None:
            self.tcp_server, self.tcp_address = await protocol.serve(
                f"tcp:{self.cfg['node_ip']}:{self.cfg['tcp_port']}", self.secret,
                self.handlers.accepting(messages.DRIVER, messages.WORKER, messages.NODE_MANAGER), name="node-manager")
        _, self.zygote = await loop.create_connection(lambda: _ZygoteProtocol(self), sock=self.zygote_sock)
        self.gcs = await protocol.connect(self.cfg["gcs_address"], self.secret, self.handlers.accepting(messages.GCS),
                                          name="gcs")
        self.gcs.close_callbacks.append(lambda c: self._gcs_lost())
        self.view = ClusterView.from_wire(await self.gcs.call("register_node", {
            "node_id": self.node_id, "address": self.tcp_address or self.address, "ip": self.cfg["node_ip"],
            "resources": self.resources, "head": bool(self.cfg.get("head")), "pid": os.getpid()}))
        for _ in range(int(self.cfg.get("prestart", self.resources.get("CPU", 1)))):
            self._start_worker()
        loop.create_task(self._heartbeat_loop())
        loop.create_task(self._reap_idle_loop())
        if self.cfg.get("watch_stdin", self.cfg.get("exit_with_driver")):
            loop.add_reader(0, self._stdin_readable)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: self.shutdown("signal"))

    def _stdin_readable(self):
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_event_loop().remove_reader(0)
            self.shutdown("the process that started this node exited")

    def _gcs_lost(self):
        if not self.shutting_down:
            logger.error("lost the connection to the GCS; shutting down this node")
            self.shutdown("GCS connection lost")

    def request_shutdown(self, conn, p):
        asyncio.get_event_loop().call_soon(self.shutdown, "requested")
        return True

    def shutdown(self, why=""):
        if self.shutting_down:
            return
        self.shutting_down = True
        logger.info("node manager shutting down: %s", why)
        for w in list(self.workers.values()):
            _kill(w.pid)
        for wid, _ in list(self.starting.items()):
            pass
        try:
            self.zygote.close()
        except Exception:
            pass
        if self.gcs_pid:
            _kill(self.gcs_pid)
        self.server.close()
        if getattr(self, "tcp_server", None):
            self.tcp_server.close()
        if not self.stopped.done():
            self.stopped.set_result(why)

    # --- workers -------------------------------------------------------------------------------
    def _start_worker(self):
        wid = ids.random_id()
        self.starting[wid] = time.monotonic()
        self.zygote.write(msgpack.packb({"worker_id": wid}))

    def on_zygote_message(self, m):
        if "forked" in m:
            self.pid_to_worker[m["pid"]] = m["forked"]
        elif "exit" in m:
            wid = self.pid_to_worker.pop(m["exit"], None)
            if wid is not None and wid in self.starting:
                del self.starting[wid]
                logger.error("worker %s exited with %s before registering; see its log", wid.hex()[:8], m["status"])
                self._schedule()

    def register_worker(self, conn, p):
        wid = p["worker_id"]
        self.starting.pop(wid, None)
        w = WorkerInfo(wid, p["pid"], p["address"], conn, "worker")
        self.workers[wid] = w
        conn.state["worker"] = w
        conn.close_callbacks.append(self._worker_gone)
        self.idle.append(w)
        self._schedule()
        return {"node_id": self.node_id, "gcs_address": self.cfg["gcs_address"]}

    def register_driver(self, conn, p):
        wid = p["worker_id"]
        w = WorkerInfo(wid, p["pid"], p["address"], conn, "driver")
        conn.state["worker"] = w
        conn.state["log_to_driver"] = p.get("log_to_driver", True)
        self.drivers[wid] = conn
        conn.close_callbacks.append(self._driver_gone)
        return self.node_info(conn, None)

    def node_info(self, conn, p):
        return {"node_id": self.node_id, "arena_pid": os.getpid(), "arena_fd": self.arena_fd,
                "capacity": self.store.capacity, "resources": self.resources,
                "gcs_address": self.cfg["gcs_address"], "session_dir": self.session_dir,
                "node_ip": self.cfg["node_ip"]}

    def _worker_gone(self, conn):
        w = conn.state.get("worker")
        self._release_pins(conn)
        self._drop_requester(conn)
        if w is None or self.workers.pop(w.worker_id, None) is None:
            return
        try:
            self.idle.remove(w)
        except ValueError:
            pass
        if w.lease is not None:
            self.scheduler.release(w.lease.lease_id)
            w.lease = None
        self.store.delete_owned_by(w.worker_id)
        self._schedule()

    def _driver_gone(self, conn):
        w = conn.state.get("worker")
        self.drivers.pop(w.worker_id, None)
        self._release_pins(conn)
        self._drop_requester(conn)
        self.store.delete_owned_by(w.worker_id)
        if self.cfg.get("exit_with_driver") and not self.drivers:
            self.shutdown("the driver that started this cluster disconnected")
        self._schedule()

    def _requester_gone(self, conn):
        self._release_pins(conn)
        self._drop_requester(conn)
        self._schedule()
        self._report_soon()

    def _drop_requester(self, conn):
        """The owner is gone: forget its lease requests and end the workers it leased."""
        for lease in self.scheduler.drop_requester(conn):
            self.scheduler.release(lease.lease_id)
            w = lease.worker
            w.lease = None
            if w.worker_id in self.workers:
                _kill(w.pid)
        for lid, (fut, req_conn) in list(self.lease_waiters.items()):
            if req_conn is conn:
                del self.lease_waiters[lid]

    def kill_worker(self, conn, p):
        w = self.workers.get(p["worker_id"])
        if w is not None:
            _kill(w.pid)
        return True

    # --- leases ----------------------------------------------------------------------------------
    def request_lease(self, conn, p):
        need = ResourceSet.request(p["resources"])      # floats become exact units once, here
        target = self._choose_node(need, p)
        if target is not None:
            return target
        req = LeaseRequest(p["lease_id"], need, conn, data=p)
        if "worker" not in conn.state and not conn.state.get("lease_watch"):
            # an owner on another node (spillback) or the GCS: its leases end with its connection
            conn.state["lease_watch"] = True
            conn.close_callbacks.append(self._requester_gone)
        if not self.scheduler.feasible(need) and not self.view.feasible_anywhere(need) \
                and not any("_group_" in k for k in need):   # placement-group tasks wait for their group
            missing = self.scheduler.missing(need)
            conn.notify("infeasible", {"lease_id": p["lease_id"], "missing": missing,
                                       "node_resources": self.resources})
        fut = asyncio.get_event_loop().create_future()
        self.lease_waiters[p["lease_id"]] = (fut, conn)
        self.scheduler.submit(req)
        self._schedule()
        return fut

    # --- cluster-wide placement (the rules live in placement.TaskPlacer) ---------------------------
    def _choose_node(self, need, p):
        """Return None to queue here, or a spillback (or error) answer naming a better node."""
        local = NodeView(self.node_id, self.tcp_address or self.address, self.scheduler.total,
                         self.scheduler.available)
        d = self.placer.choose(need, local, self.view, time.monotonic(), strategy=p.get("strategy"),
                               locality=p.get("locality"), no_spill=p.get("no_spill"))
        if isinstance(d, Spill):
            return {"spillback": d.address, "node_id": d.node_id}
        if isinstance(d, Reject):
            return {"error": "infeasible", "message": d.message}
        return None

    def _respill(self):
        """With a fresh view, queued requests that cannot run here now may go where they can:
        a node that joined since (for requests infeasible here) or one with room (for requests
        queued behind our busy resources when the view said every other node was busy too)."""
        for req in list(self.scheduler.queue):
            data = req.data or {}
            if data.get("no_spill") and self.scheduler.feasible(req.resources):
                continue
            if self.scheduler.fits(req.resources):
                continue
            target = self._choose_node(req.resources, data)
            if isinstance(target, dict) and "spillback" in target:
                self.scheduler.cancel(req.lease_id)
                fut, _ = self.lease_waiters.pop(req.lease_id, (None, None))
                if fut is not None and not fut.done():
                    fut.set_result(target)

    # --- placement group bundles (two-phase: prepare on every node, then commit) -------------------
    def prepare_bundle(self, conn, p):
        key = (p["pg_id"], p["index"])
        if key in self.bundles:
            return True
        res = ResourceSet.request(p["resources"])
        if not self.scheduler.reserve(res):
            return False
        self.bundles[key] = {"resources": res, "committed": False, "conn": conn}
        if not conn.state.get("bundle_watch"):
            # a prepared bundle is the preparer's until it commits: released if it goes away
            conn.state["bundle_watch"] = True
            conn.close_callbacks.append(self._preparer_gone)
        return True

    def _preparer_gone(self, conn):
        for (pg_id, index), b in list(self.bundles.items()):
            if not b["committed"] and b.get("conn") is conn:
                logger.info("releasing bundle %d of placement group %s: its preparer disconnected", index,
                            pg_id.hex()[:8])
                self.cancel_bundle(conn, {"pg_id": pg_id, "index": index})

    def commit_bundle(self, conn, p):
        key = (p["pg_id"], p["index"])
        b = self.bundles.get(key)
        if b is None or b["committed"]:
            return b is not None
        b["committed"] = True
        b["conn"] = None
        self.scheduler.add_capacity(group_resources(b["resources"], p["index"], p["pg_id"].hex()))
        self._report_soon()
        self._schedule()
        return True

    def cancel_bundle(self, conn, p):
        key = (p["pg_id"], p["index"])
        b = self.bundles.pop(key, None)
        if b is None:
            return True
        self.scheduler.unreserve(b["resources"])
        if b["committed"]:
            self.scheduler.remove_capacity(group_resources(b["resources"], p["index"], p["pg_id"].hex()))
        self._report_soon()
        return True

    def cancel_lease_request(self, conn, p):
        if self.scheduler.cancel(p["lease_id"]):
            fut, _ = self.lease_waiters.pop(p["lease_id"], (None, None))
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif p.get("release_if_granted") and p["lease_id"] in self.scheduler.leases:
            self.return_lease(conn, {"lease_id": p["lease_id"]})   # granted as we gave up: take it back
        return True

    def return_lease(self, conn, p):
        lease = self.scheduler.release(p["lease_id"])
        if lease is not None:
            w = lease.worker
            w.lease = None
            if w.worker_id in self.workers:
                if p.get("kill"):
                    _kill(w.pid)
                else:
                    w.idle_since = time.monotonic()
                    self.idle.append(w)
        self._schedule()
        self._report_soon()

    def worker_blocked(self, conn, p):
        w = conn.state.get("worker")
        if w is not None and w.lease is not None:
            self.scheduler.block(w.lease.lease_id)
            self._schedule()

    def worker_unblocked(self, conn, p):
        w = conn.state.get("worker")
        if w is not None and w.lease is not None:
            self.scheduler.unblock(w.lease.lease_id)

    def _schedule(self):
        if self.shutting_down:
            return
        grants, need = self.scheduler.schedule(len(self.idle))
        for req in grants:
            fut, _ = self.lease_waiters.pop(req.lease_id, (None, None))
            if fut is None or fut.done():
                continue
            w = self.idle.pop()  # most recently used first: its caches are warm
            lease = self.scheduler.grant(req, w)
            w.lease = lease
            fut.set_result({"worker_id": w.worker_id, "address": w.address, "gpu_ids": lease.gpu_ids,
                            "node_id": self.node_id})
        for _ in range(max(0, need - len(self.starting))):
            self._start_worker()
        if grants:
            self._report_soon()

    async def _reap_idle_loop(self):
        keep = int(self.resources.get("CPU", 1))
        while not self.shutting_down:
            await asyncio.sleep(IDLE_WORKER_TIMEOUT_S / 4)
            now = time.monotonic()
            while len(self.idle) > keep and now - self.idle[0].idle_since > IDLE_WORKER_TIMEOUT_S:
                w = self.idle.popleft()
                _kill(w.pid)

    # --- object store ----------------------------------------------------------------------------
    def store_create(self, conn, p):
        try:
            return self.store.create(p["oid"], p["size"], p["owner"])
        except Exception as e:
            return {"error": f"{type(e).__name__}", "message": str(e)}

    def store_seal(self, conn, p):
        oid = p["oid"]
        self.store.seal(oid)
        for fut, c in self.store_waiters.pop(oid, ()):
            if not fut.done():
                fut.set_result(self._pin(c, oid))

    def store_abort(self, conn, p):
        self.store.abort(p["oid"])

    def _pin(self, conn, oid):
        try:
            loc = self.store.pin(oid)
        except Exception as e:
            return {"error": type(e).__name__, "message": str(e)}
        if loc is None:
            return None
        pins = conn.state.setdefault("pins", collections.Counter())
        pins[oid] += 1
        return list(loc)

    def store_get(self, conn, p):
        oid = p["oid"]
        if oid in self.store.objects:
            loc = self._pin(conn, oid)
            if loc is not None:
                return loc
        if p.get("pull_from"):
            return self._pull_then_pin(conn, oid, p["pull_from"])
        if not p.get("wait"):
            return None
        fut = asyncio.get_event_loop().create_future()
        self.store_waiters[oid].append((fut, conn))
        return fut

    # --- transfers between nodes (pull, in chunks, bounded in flight) ------------------------------
    CHUNK = 4 << 20
    IN_FLIGHT = 4

    async def _peer(self, address):
        conn = self.peers.get(address)
        if conn is None or conn.closed:
            conn = await protocol.connect(address, self.secret, self.handlers.accepting(messages.NODE_MANAGER),
                                          name=f"peer {address}")
            self.peers[address] = conn
        return conn

    async def _pull_then_pin(self, conn, oid, address):
        fut = self.pulls.get(oid)
        if fut is None:
            fut = self.pulls[oid] = asyncio.ensure_future(self._pull(oid, address))
            fut.add_done_callback(lambda f, oid=oid: self.pulls.pop(oid, None))
        err = await asyncio.shield(fut)
        if err:
            return err
        loc = self._pin(conn, oid)
        if loc is None:
            return {"error": "ObjectLostError", "message": f"object {oid.hex()} vanished after its transfer"}
        return loc

    async def _pull(self, oid, address):
        if oid in self.store.objects:
            return None
        try:
            peer = await self._peer(address)
            size = await peer.call("transfer_begin", {"oid": oid})
        except Exception as e:  # noqa: BLE001
            return {"error": "ObjectLostError", "message": f"the node at {address} that held object "
                    f"{oid.hex()} cannot be reached ({type(e).__name__}: {e})"}
        if size is None:
            return {"error": "ObjectLostError", "message": f"object {oid.hex()} is no longer on the node at {address}"}
        try:
            offset = self.store.create(oid, size, b"", primary=False)
        except Exception as e:  # noqa: BLE001
            peer.notify("transfer_end", {"oid": oid})
            return {"error": type(e).__name__, "message": str(e)}
        sem = asyncio.Semaphore(self.IN_FLIGHT)
        mm = self.arena_mm

        dest = memoryview(mm)

        async def chunk(start):
            async with sem:
                n = min(self.CHUNK, size - start)
                fut = asyncio.get_event_loop().create_future()

                def done(ok, res):
                    if not fut.done():
                        fut.set_result(None) if ok else fut.set_exception(
                            res if isinstance(res, BaseException) else RuntimeError(str(res)))
                peer.request_into("fetch_chunk", {"oid": oid, "offset": start, "length": n},
                                  dest[offset + start:offset + start + n], done)
                await fut

        try:
            await asyncio.gather(*(chunk(s) for s in range(0, size, self.CHUNK)))
        except Exception as e:  # noqa: BLE001
            self.store.abort(oid)
            return {"error": "ObjectLostError", "message": f"transfer of object {oid.hex()} from {address} failed: {e}"}
        finally:
            if not peer.closed:
                peer.notify("transfer_end", {"oid": oid})
        self.store.seal(oid)
        for fut, c in self.store_waiters.pop(oid, ()):
            if not fut.done():
                fut.set_result(self._pin(c, oid))
        return None

    def transfer_begin(self, conn, p):
        oid = p["oid"]
        loc = self._pin(conn, oid) if oid in self.store.objects else None
        if not isinstance(loc, list):
            return None
        self.copies.setdefault(oid, set()).add(conn)     # this peer will hold a copy
        return loc[1]

    def fetch_chunk(self, conn, p):
        obj = self.store.objects.get(p["oid"])
        if obj is None or obj.offset < 0:
            raise ValueError("object not here")
        start = obj.offset + p["offset"]
        return protocol.RawReply(memoryview(self.arena_mm)[start:start + p["length"]])

    def transfer_end(self, conn, p):
        self.store_release(conn, {"oids": [p["oid"]]})

    def store_release(self, conn, p):
        pins = conn.state.get("pins")
        for oid in p["oids"]:
            if pins is not None and pins.get(oid):
                pins[oid] -= 1
                if not pins[oid]:
                    del pins[oid]
                self.store.release(oid)

    def _release_pins(self, conn):
        pins = conn.state.pop("pins", None)
        if pins:
            for oid, n in pins.items():
                for _ in range(n):
                    self.store.release(oid)

    def store_delete(self, conn, p):
        """The owner freed these objects: drop them here and tell the nodes that copied them, so
        their memory is reused (warm) instead of waiting for eviction."""
        forward = {}
        for oid in p["oids"]:
            self.store.delete(oid)
            for peer in self.copies.pop(oid, ()):
                forward.setdefault(peer, []).append(oid)
        for peer, oids in forward.items():
            if not peer.closed:
                peer.notify("drop_copies", {"oids": oids})

    def drop_copies(self, conn, p):
        for oid in p["oids"]:
            obj = self.store.objects.get(oid)
            if obj is not None and not obj.primary:
                self.store.delete(oid)

    # --- logs and reports --------------------------------------------------------------------------
    def forward_log(self, conn, p):
        """Worker output goes to the drivers on this node and, through the GCS, on the others."""
        self.log_to_local_drivers(conn, p)
        if len(self.view) > 1 and not self.gcs.closed:
            self.gcs.notify("log", p)

    async def flush_logs(self, conn, p):
        """Answer once every local worker has sent what it printed before now (a driver about to
        exit asks, so output of its last tasks is not lost): a ping to each worker travels behind
        the log lines it already queued on the same connection."""
        loop = asyncio.get_event_loop()
        futs = []
        for w in list(self.workers.values()):
            if w.conn is not None and not w.conn.closed:
                fut = loop.create_future()
                w.conn.request("ping", None, lambda ok, r, f=fut: f.done() or f.set_result(ok))
                futs.append(fut)
        if futs:
            await asyncio.wait(futs, timeout=p.get("timeout", 1.0) if isinstance(p, dict) else 1.0)
        return True

    def log_to_local_drivers(self, conn, p):
        for dconn in self.drivers.values():
            if dconn.state.get("log_to_driver", True):
                dconn.notify("log", p)

    def _report_soon(self):
        if not self._report_scheduled:
            self._report_scheduled = True
            asyncio.get_event_loop().call_later(0.02, self._report)

    def _report(self):
        self._report_scheduled = False
        if self.gcs.closed:
            return
        pending = [r.resources.to_wire() for r in list(self.scheduler.queue)[:20]]
        self.gcs.request("heartbeat", {"node_id": self.node_id, "available": self.scheduler.available.to_wire(),
                                       "total": self.scheduler.total.to_wire(), "pending": pending}, self._on_view)

    def _on_view(self, ok, view):
        if ok and isinstance(view, dict):
            self.view = ClusterView.from_wire(view)
            if self.scheduler.queue:
                self._respill()

    async def _heartbeat_loop(self):
        while not self.shutting_down:
            self._report()
            await asyncio.sleep(HEARTBEAT_S)


class _ZygoteProtocol(asyncio.Protocol):
    def __init__(self, nm):
        self.nm = nm
        self.unpacker = msgpack.Unpacker(raw=False)

    def connection_made(self, transport):
        self.transport = transport

    def write(self, data):
        self.transport.write(data)

    def close(self):
        self.transport.close()

    def data_received(self, data):
        self.unpacker.feed(data)
        for m in self.unpacker:
            self.nm.on_zygote_message(m)

    def connection_lost(self, exc):
        if not self.nm.shutting_down:
            self.nm.shutdown("the zygote died")


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def remove_session_dir(path):
    shutil.rmtree(path, ignore_errors=True)
