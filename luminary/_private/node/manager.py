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

from .. import ids, stacks
from ..config import HEARTBEAT_S, IDLE_WORKER_TIMEOUT_S
from ..placement import ClusterView, NodeView, Reject, ResourceSet, Spill, TaskPlacer, group_resources
from ..rpc import messages, protocol
from . import memory_monitor as mm
from ..runtime_env.agent import EnvAgent
from .scheduler import LeaseRequest, LocalScheduler
from .object_service import ObjectService
from .store import ObjectStore
from .usage import node_usage

logger = logging.getLogger(__name__)


GPU_POOL = "+gpu"


def pool_of(env, need):
    """The pool of workers a lease may take: one per runtime env, and GPU work apart from the rest.
    As in Ray, a worker that ran with GPUs never runs CPU-only work and the reverse: a process
    whose CUDA context was made for one device set keeps it, whatever CUDA_VISIBLE_DEVICES says
    later (and keeps the device memory its libraries cached)."""
    return env + GPU_POOL if need.units("GPU") > 0 else env


def env_of_pool(pool):
    return pool[:-len(GPU_POOL)] if pool.endswith(GPU_POOL) else pool


class WorkerInfo:
    __slots__ = ("worker_id", "pid", "address", "conn", "lease", "idle_since", "kind", "env")

    def __init__(self, worker_id, pid, address, conn, kind, env=""):
        self.worker_id = worker_id
        self.pid = pid
        self.address = address
        self.conn = conn
        self.lease = None
        self.idle_since = time.monotonic()
        self.kind = kind
        self.env = env            # its pool: runtime env key, plus GPU_POOL for GPU work ("" plain)


class NodeManager(ObjectService):
    def __init__(self, cfg: dict, zygote_sock: socket.socket, arena_fd: int, arena_mm, gcs_supervisor=None):
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
        self.gcs_supervisor = gcs_supervisor     # head node: restarts the GCS when it dies
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
        self._fallback_maps = {}  # oid -> read mapping of a fallback object being sent to peers
        self.placer = TaskPlacer(self.node_id)   # spillback rules (SPREAD round robin, recent spills)
        self.bundles = {}         # (pg_id, index) -> reserved resources
        # runtime envs: workers are pooled per env key; the agent prepares each env once per node
        self.envs = EnvAgent(self._fetch_package)
        self.env_ctx = {}         # env key -> ctx a worker applies after fork (runtime_env/apply.py)
        self.starting_env = {}    # worker id being started -> its pool (see pool_of)
        self.pooled = False       # a lease has asked for a runtime env or a GPU: one pool each
        self.env_setups = {}      # lease id -> True while its env is being prepared (False: cancelled)
        self.jobs = None          # the job API (head node, luminary start --head), built at its first request
        self.job_listener = None  # its listening socket
        self.job_api = None       # HOST:PORT it listens on
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
            "store_stats": lambda c, p: dict(self.store.stats(), **node_usage()),
            "store_top": lambda c, p: self.store.largest(p["n"]),
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
            "node_stacks": lambda c, p: stacks.gather_node(self, p),
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
        from ..gcs.client import GcsClient
        self.gcs = GcsClient(self.cfg["gcs_address"], self.secret, self.handlers.accepting(messages.GCS))
        await self.gcs.connect(wait_s=0 if self.cfg.get("head") else 10.0)   # a join waits out a GCS restart
        self.gcs.lost_callbacks.append(self._gcs_lost)
        self.gcs.reconnect_hooks.append(self._gcs_back)
        self.gcs.close_callbacks.append(lambda c: self._gcs_gone())
        self.view = ClusterView.from_wire(await self.gcs.call("register_node", self._registration()))
        for _ in range(int(self.cfg.get("prestart", self.resources.get("CPU", 1)))):
            self._start_worker()
        if self.cfg.get("head") and self.cfg.get("job_port") is not None:
            await self._start_job_api()
        loop.create_task(self._heartbeat_loop())
        loop.create_task(self._memory_monitor_loop())
        loop.create_task(self._reap_idle_loop())
        if self.cfg.get("watch_stdin", self.cfg.get("exit_with_driver")):
            loop.add_reader(0, self._stdin_readable)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: self.shutdown("signal"))

    async def _start_job_api(self):
        """Listen for the job API and dashboard now; build them (imports, ~50 ms) at the first
        connection, so a head that nobody browses pays only for a listening socket.  With
        ``job_port_retries`` (init()'s default port, as Ray) the next ports are tried."""
        host = self.cfg.get("job_host") or "127.0.0.1"
        port, retries = int(self.cfg["job_port"]), int(self.cfg.get("job_port_retries", 0))

        async def serve(reader, writer):
            if self.jobs is None:
                from ..jobs.http import JobServer
                self.jobs = JobServer(self)
            await self.jobs.serve(reader, writer)
        for i in range(retries + 1):
            try:
                self.job_listener = await asyncio.start_server(serve, host, port + i if port else 0)
                self.job_api = "%s:%d" % self.job_listener.sockets[0].getsockname()[:2]
                return
            except OSError as e:    # the cluster runs without it rather than not at all
                err = e
        logger.warning("the job API and dashboard could not listen on %s:%s%s (%s); jobs cannot be submitted to "
                       "this cluster. Start the head with a free --dashboard-port.", host, port,
                       f"..{port + retries}" if retries else "", err)
        self.job_api = None

    def _stdin_readable(self):
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_event_loop().remove_reader(0)
            self.shutdown("the process that started this node exited")

    # --- the GCS going away and coming back (gcs/client.py reconnects) -----------------------------
    def _registration(self):
        return {"node_id": self.node_id, "address": self.tcp_address or self.address, "ip": self.cfg["node_ip"],
                "resources": self.resources, "head": bool(self.cfg.get("head")), "pid": os.getpid()}

    def _gcs_lost(self, conn):
        """The GCS died: leases it holds (actors' workers) stay; requests it was waiting on are
        forgotten (the restarted GCS asks again).  Tasks, objects and actor calls go on."""
        self.scheduler.drop_requester(conn)
        for lid, (fut, req_conn) in list(self.lease_waiters.items()):
            if req_conn is conn:
                del self.lease_waiters[lid]
                if not fut.done():
                    fut.set_result(None)

    async def _gcs_back(self, conn):
        """Re-register on a new GCS connection, with the leases granted to a GCS and the bundles
        held here, so the GCS keeps those actors (and groups) instead of restarting them."""
        leases = [{"lease_id": l.lease_id, "worker_id": l.worker.worker_id, "address": l.worker.address}
                  for l in self.scheduler.leases.values()
                  if getattr(l.requester, "state", {}).get("gcs") and l.worker.worker_id in self.workers]
        bundles = [{"pg_id": pg, "index": i, "committed": b["committed"]} for (pg, i), b in self.bundles.items()]
        view = await conn.call("register_node", dict(self._registration(), leases=leases, bundles=bundles))
        self.view = ClusterView.from_wire(view)
        self._report_soon()

    def _gcs_gone(self):
        if not self.shutting_down:
            logger.error("%s", self.gcs.failure)
            self.shutdown(f"GCS unreachable: {self.gcs.failure}")

    def request_shutdown(self, conn, p):
        asyncio.get_event_loop().call_soon(self.shutdown, "requested")
        return True

    def shutdown(self, why=""):
        if self.shutting_down:
            return
        self.shutting_down = True
        logger.info("node manager shutting down: %s", why)
        if self.job_listener is not None:
            self.job_listener.close()
        if self.jobs is not None:
            self.jobs.close()
        for w in list(self.workers.values()):
            _kill(w.pid)
        for wid, _ in list(self.starting.items()):
            pass
        try:
            self.zygote.close()
        except Exception:
            pass
        if self.gcs_supervisor is not None:
            self.gcs_supervisor.stop()
        if getattr(self, "gcs", None) is not None:
            self.gcs.close()
        self.server.close()
        if getattr(self, "tcp_server", None):
            self.tcp_server.close()
        if not self.stopped.done():
            self.stopped.set_result(why)

    # --- workers -------------------------------------------------------------------------------
    def _start_worker(self, pool=""):
        wid = ids.random_id()
        self.starting[wid] = time.monotonic()
        if pool:
            self.starting_env[wid] = pool
        env = env_of_pool(pool)
        if env:
            self.zygote.write(msgpack.packb({"worker_id": wid, "renv_ctx": self.env_ctx[env]}))
        else:
            self.zygote.write(msgpack.packb({"worker_id": wid}))

    def on_zygote_message(self, m):
        if "forked" in m:
            self.pid_to_worker[m["pid"]] = m["forked"]
        elif "exit" in m:
            wid = self.pid_to_worker.pop(m["exit"], None)
            if wid is not None and wid in self.starting:
                del self.starting[wid]
                env = env_of_pool(self.starting_env.pop(wid, ""))
                logger.error("worker %s exited with %s before registering; see its log", wid.hex()[:8], m["status"])
                if env:
                    self._env_worker_failed(env, wid, m)
                self._schedule()

    def register_worker(self, conn, p):
        wid = p["worker_id"]
        self.starting.pop(wid, None)
        w = WorkerInfo(wid, p["pid"], p["address"], conn, "worker", self.starting_env.pop(wid, ""))
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
        lid = p["lease_id"]
        if lid in self.lease_waiters or lid in self.scheduler.leases or lid in self.env_setups:
            # a lease id names one request: a second one (a confused or hostile peer) must not
            # orphan the first's resources
            raise ValueError(f"lease id {lid.hex()} is already in use on this node")
        need = ResourceSet.request(p["resources"])      # floats become exact units once, here
        target = self._choose_node(need, p)
        if target is not None:
            return target
        renv = p.get("renv")
        if renv is not None and renv["key"] not in self.env_ctx:
            return self._prepare_env_then_queue(conn, p, need, renv)
        return self._queue_lease(conn, p, need)

    async def _prepare_env_then_queue(self, conn, p, need, renv):
        """Set the runtime env up on this node (once per env) before the request may take a worker."""
        lid = p["lease_id"]
        self.env_setups[lid] = True
        try:
            self.env_ctx[renv["key"]] = await self.envs.ensure(renv)
        except Exception as e:  # noqa: BLE001
            logger.warning("runtime env setup failed: %s", e)
            return {"error": "runtime_env", "type": "RuntimeEnvSetupError",
                    "message": f"Failed to set up the runtime_env on node {self.node_id.hex()[:12]}: {e}"}
        finally:
            live = self.env_setups.pop(lid, False)
        if not live or conn.closed or self.shutting_down:
            return None          # cancelled, or its owner left, while the env was prepared
        return await self._queue_lease(conn, p, need)

    def _env_worker_failed(self, env, wid, m):
        """A worker started in ``env`` died before registering (its pip env's python failed, say):
        the requests waiting for that env fail with the worker's output instead of retrying forever."""
        self.env_ctx.pop(env, None)
        self.envs.forget(env)
        tail = ""
        try:
            path = os.path.join(self.session_dir, "logs", f"worker-{wid.hex()[:12]}-{m['exit']}.log")
            with open(path, errors="replace") as f:
                tail = f.read()[-3000:]
        except OSError:
            pass
        msg = (f"A worker for the runtime_env exited with status {m['status']} before it could start. "
               f"Its output ends with:\n{tail}")
        for req in [r for r in self.scheduler.queue if env_of_pool(r.env) == env]:
            self.scheduler.cancel(req.lease_id)
            fut, _ = self.lease_waiters.pop(req.lease_id, (None, None))
            if fut is not None and not fut.done():
                fut.set_result({"error": "runtime_env", "type": "RuntimeEnvSetupError", "message": msg})

    async def _fetch_package(self, sha):
        return await self.gcs.call("kv_get", {"key": f"pkg:{sha}".encode(), "ns": "runtime_env"})

    def _queue_lease(self, conn, p, need):
        renv = p.get("renv")
        pool = pool_of(renv["key"] if renv else "", need)
        if pool:
            self.pooled = True
        req = LeaseRequest(p["lease_id"], need, conn, data=p, env=pool)
        if "worker" not in conn.state and not conn.state.get("lease_watch") and not conn.state.get("gcs"):
            # (a GCS's leases are actors' workers: they outlive a GCS restart, see _gcs_back)
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
        if p["lease_id"] in self.env_setups:
            self.env_setups[p["lease_id"]] = False      # answered with None once the env is ready
            return True
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
        if not self.pooled and not self.envs.used:   # no runtime env or GPU asked for here yet: one pool
            grants, need = self.scheduler.schedule(len(self.idle))
        else:
            grants, need = self.scheduler.schedule(collections.Counter(w.env for w in self.idle))
        for req in grants:
            fut, _ = self.lease_waiters.pop(req.lease_id, (None, None))
            if fut is None or fut.done():
                continue
            w = self._take_idle(req.env)  # most recently used first: its caches are warm
            lease = self.scheduler.grant(req, w)
            w.lease = lease
            lease.granted_at = time.monotonic()
            fut.set_result({"worker_id": w.worker_id, "address": w.address, "gpu_ids": lease.gpu_ids,
                            "node_id": self.node_id})
        if isinstance(need, int):
            for _ in range(max(0, need - len(self.starting))):
                self._start_worker()
        else:
            starting = collections.Counter(self.starting_env.get(wid, "") for wid in self.starting)
            for pool, n in need.items():
                env = env_of_pool(pool)
                if env and env not in self.env_ctx:
                    continue        # its env failed since: those requests are being answered
                for _ in range(max(0, n - starting[pool])):
                    self._start_worker(pool)
        if grants:
            self._report_soon()

    def _take_idle(self, env):
        if not env and (not self.idle or not self.idle[-1].env):
            return self.idle.pop()
        for i in range(len(self.idle) - 1, -1, -1):
            if self.idle[i].env == env:
                w = self.idle[i]
                del self.idle[i]
                return w
        raise AssertionError(f"no idle worker for env {env!r}")

    async def _reap_idle_loop(self):
        keep = int(self.resources.get("CPU", 1))
        while not self.shutting_down:
            await asyncio.sleep(IDLE_WORKER_TIMEOUT_S / 4)
            now = time.monotonic()
            while len(self.idle) > keep and now - self.idle[0].idle_since > IDLE_WORKER_TIMEOUT_S:
                w = self.idle.popleft()
                _kill(w.pid)

    # --- logs and reports --------------------------------------------------------------------------
    def forward_log(self, conn, p):
        """Worker output goes to the drivers on this node and, through the GCS, on the others."""
        self.log_to_local_drivers(conn, p)
        if len(self.view) > 1 and self.gcs.connected:
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
        if not self.gcs.connected:
            return
        pending = [r.resources.to_wire() for r in list(self.scheduler.queue)[:20]]
        self.gcs.request("heartbeat", {"node_id": self.node_id, "available": self.scheduler.available.to_wire(),
                                       "total": self.scheduler.total.to_wire(), "pending": pending}, self._on_view)

    def _on_view(self, ok, view):
        if ok and isinstance(view, dict):
            self.view = ClusterView.from_wire(view)
            if self.scheduler.queue:
                self._respill()

    # --- memory monitor (memory_monitor.py) ----------------------------------------------------------
    async def _memory_monitor_loop(self):
        system = self.cfg.get("system") or {}
        refresh = system.get("memory_monitor_refresh_ms", mm.DEFAULT_REFRESH_S * 1000) / 1000.0
        threshold = float(system.get("memory_usage_threshold", mm.DEFAULT_THRESHOLD))
        if refresh <= 0:
            return
        ending = set()          # pids being ended: one kill at a time, until it is gone
        while not self.shutting_down:
            await asyncio.sleep(refresh)
            try:
                used, limit = mm.read_memory()
            except (OSError, ValueError):
                continue
            ending &= {w.pid for w in self.workers.values()}
            if limit <= 0 or used <= threshold * limit or ending:
                continue
            now = time.monotonic()
            cands = []
            for w in self.workers.values():
                lease = w.lease
                if lease is None:
                    kind = "idle"
                elif lease.actor:
                    kind = "actor"
                else:
                    kind = "task"
                cands.append({"worker": w, "pid": w.pid, "kind": kind, "rss": mm.rss_of(w.pid),
                              "owner": id(lease.requester) if lease is not None else None,
                              "started": lease.granted_at if lease is not None else now, "what": kind})
            victim = mm.pick_victim(cands)
            if victim is None:
                continue
            w = victim["worker"]
            ending.add(w.pid)
            message = mm.describe_usage(used, limit, cands, self.node_id.hex(), threshold)
            logger.warning("memory monitor: ending worker pid %d (%s): %.0f%% of memory used",
                           w.pid, victim["kind"], 100 * used / limit)
            lease = w.lease
            if victim["kind"] == "task" and lease is not None and not lease.requester.closed:
                # tell the owner why first, so its task fails with OutOfMemoryError (or is retried)
                fut = asyncio.get_event_loop().create_future()
                lease.requester.request("worker_oom", {"lease_id": lease.lease_id, "message": message},
                                        lambda ok, r, f=fut: f.done() or f.set_result(ok))
                try:
                    await asyncio.wait_for(fut, 1.0)
                except asyncio.TimeoutError:
                    pass
            _kill(w.pid)

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
