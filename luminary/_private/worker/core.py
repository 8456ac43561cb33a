"""The core worker: one per driver and per worker process.

    main thread (user code)                 │ I/O thread (event loop, owns every socket)
    ─────────────────────────────────────────┼──────────────────────────────────────────────
    f.remote() ─ serialize ─ post(submit) ──▶│ TaskSubmitter: resolve args, lease, push ─────▶ worker
    get() ─ MemoryStore.wait ◀── put value ──│◀── task replies, owners' answers
    ObjectRef() / del ─ post(incref/decref) ▶│ ReferenceTable ─▶ free / unborrow actions
    read large object ─ mmap(memfd) ◀─ pin ──│◀─▶ node manager (store_get / store_release)

The process owns what it creates: return values of the tasks it submits and objects it puts.
It answers other processes' questions about them (``get_object``, ``add_borrower``) from the
I/O thread, so an owner busy in user code still serves its objects.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import mmap
import operator
import os
import pickle
import sys
import threading
import time

from ... import exceptions as exc
from .. import ids, serialization, stacks, stuck
from ..rpc import messages, protocol
from ..rpc.loop import IOThread
from . import deadlock, events
from .mapped import MappedObjects
from .memory_store import MemoryStore
from .object_ref import ObjectRef
from .refs import ReferenceTable

logger = logging.getLogger(__name__)
_owner_of = operator.attrgetter("owner")
_Pending = collections.namedtuple("_Pending", "id owner")     # a ref to describe, without counting it

DRIVER, WORKER = "driver", "worker"
WAIT_WARN_S = float(os.environ.get("LUMINARY_WAIT_WARN_S", "60") or 0)   # see _wait_diagnosed
START_TIMEOUT_S = 30.0    # registering with the node manager and connecting to the GCS


def _map_file(path, size, writable):
    """Map a fallback object's file (it lives in the node's 0700 session directory)."""
    fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | getattr(os, "O_NOFOLLOW", 0))
    try:
        return mmap.mmap(fd, max(size, 1), mmap.MAP_SHARED,
                         mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
    finally:
        os.close(fd)


class SyncCall:
    """A result the main thread waits for, filled in by the I/O thread."""
    __slots__ = ("lock", "ok", "value")

    def __init__(self):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.ok = None
        self.value = None

    def __call__(self, ok, value):
        self.ok, self.value = ok, value
        self.lock.release()

    def wait(self, timeout=None, what="this process's I/O thread"):
        """The answer.  ``what`` names who answers, for the error when ``timeout`` passes and, with
        no timeout, for a warning after $LUMINARY_WAIT_WARN_S then at doubling intervals."""
        if timeout is None and WAIT_WARN_S:
            waited, step = 0.0, WAIT_WARN_S
            while not self.lock.acquire(timeout=step):
                waited += step
                _warn(f"Warning: still waiting after {waited:.0f} s for {what}; it may be stopped "
                      "(SIGSTOP), overloaded or stuck: `luminary stack` shows its threads. "
                      "(LUMINARY_WAIT_WARN_S=0 silences this)\n")
                step *= 2
        elif not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            raise exc.GetTimeoutError(f"{what} did not answer within {timeout:g} s; it may be stopped "
                                      "(SIGSTOP), overloaded or stuck: `luminary stack` shows its threads.")
        if not self.ok:
            v = self.value
            if isinstance(v, protocol.ConnectionLost):    # internal: users see the RayError tree only
                raise exc.RaySystemError(f"lost the connection to a Luminary process: {v}") from v
            raise v if isinstance(v, BaseException) else exc.RaySystemError(str(v))
        return self.value


def _warn(text):
    """A wait diagnostic: to the log and to stderr (where a user watching a stuck program looks)."""
    logger.warning("%s", text.rstrip("\n"))
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - diagnostics must never break the wait
        pass


_NM_DEAD = "The local node manager died or the cluster was shut down; call luminary.init() again."


class ObjectLocationLost(Exception):
    def __init__(self, oid, node_id, why):
        super().__init__(why)
        self.oid = oid
        self.node_id = node_id
        self.why = why


class CoreWorker:
    def __init__(self, mode, cfg):
        self.mode = mode
        self.cfg = cfg
        self.secret = cfg["secret"]
        self.worker_id = cfg["worker_id"]
        self.job_id = cfg.get("job_id", 0)
        self.session_dir = cfg["session_dir"]
        sock_dir = os.path.join(self.session_dir, "sockets")
        os.makedirs(sock_dir, mode=0o700, exist_ok=True)
        if cfg.get("tcp"):
            self.address = f"tcp:{cfg['node_ip']}:0"
        else:
            self.address = f"unix:{os.path.join(sock_dir, self.worker_id.hex()[:16])}"
        self.io = IOThread()
        self.io.incref_handler = self.on_increfs
        self.io.decref_handler = self.on_decrefs
        self.memory = MemoryStore()
        self.connect = protocol.connect      # how peers are reached (tests: rpc.memory.MemoryNetwork.connect)
        self.conns: dict[str, protocol.Connection] = {}
        self._connecting: dict[str, list] = {}
        self.functions: dict[bytes, object] = {}
        self.mapped = None      # MappedObjects: stored objects mapped here (start() makes it)
        self._arena_rw = None
        self.current_task_id = None
        self.current_task_name = None
        self.current_actor = None
        self.gpu_ids = []
        self.in_actor_init = False  # an actor's constructor runs (a get there lends its CPU out too)
        self.current_pg = None      # [pg_id, capture_child_tasks, bundles] of the running task or actor
        self.node_id = None
        self.shutting_down = False
        self.nm_dead = None          # set once the local node manager is gone: every call fails with it
        self._store_deletes = []
        self.infeasible_warned = set()
        self.log_output = None       # a driver's printer of worker output (log_output.py), made on first use
        from .submitter import TaskSubmitter
        from .actor import ActorSubmitter
        self.submitter = TaskSubmitter(self)
        self.actor_submitter = ActorSubmitter(self)
        self.namespace = cfg.get("namespace")
        self.events = events.Recorder(self, "WORKER" if mode == WORKER else "DRIVER")   # task events, metrics
        self.actor_pending = {}
        self.node_addrs = {}

    def code_path(self):
        """Where this process finds code: workers add it so functions pickled by reference
        (defined in the driver's modules) import there too."""
        cwd = os.getcwd()
        return [cwd] + [p for p in sys.path if p and p != cwd]

    # --- start / stop -------------------------------------------------------------------------
    def start(self, register_as):
        self.refs = None
        try:
            info = self.io.run_coro(self._start(register_as), timeout=START_TIMEOUT_S)
        except (TimeoutError, concurrent.futures.TimeoutError):
            raise TimeoutError(f"the node manager at {self.cfg['nm_address']} (or the GCS) did not answer "
                               f"within {START_TIMEOUT_S:g} s; it may be stopped (SIGSTOP) or overloaded") from None
        self.events.start()
        return info

    def build_handlers(self):
        """This process's handler table, checked against the message table (one place)."""
        role = messages.DRIVER if self.mode != WORKER else messages.WORKER
        impl = {"get_object": self.h_get_object, "reconstruct": self.h_reconstruct,
                "add_borrower": self.h_add_borrower, "remove_borrower": self.h_remove_borrower,
                "infeasible": self.h_infeasible, "ping": lambda c, p: "pong",
                "gen_item": self.submitter.h_gen_item, "worker_oom": self.submitter.h_worker_oom,
                "list_objects": lambda c, p: events.list_objects(self, p.get("oids") if p else None),
                "dump_stacks": lambda c, p: stacks.dump_process(self)}
        if role == messages.DRIVER:
            impl["log"] = self.h_log
        executor = getattr(self, "executor", None)
        if executor is not None:
            impl.update(executor.handlers())
        self.handlers = messages.handlers(role, impl)
        return self.handlers

    async def _start(self, register_as):
        h = self.build_handlers()
        self.server, self.address = await protocol.serve(self.address, self.secret, h.accepting(
            messages.DRIVER, messages.WORKER, messages.GCS), on_connect=self._on_peer, name="core-worker")
        self.refs = ReferenceTable(self.address)
        self.nm = await protocol.connect(self.cfg["nm_address"], self.secret, h.accepting(messages.NODE_MANAGER),
                                         name="node-manager")
        self.nm.close_callbacks.append(self._nm_lost)
        payload = {"worker_id": self.worker_id, "pid": os.getpid(), "address": self.address,
                   "log_to_driver": self.cfg.get("log_to_driver", True)}
        info = await self.nm.call(register_as, payload)
        self.node_id = info["node_id"]
        self.nm_pid = info.get("arena_pid")
        if "arena_fd" not in self.cfg:   # a driver: open the node's memfd through /proc
            self.cfg["arena_fd"] = os.open(f"/proc/{info['arena_pid']}/fd/{info['arena_fd']}", os.O_RDWR)
            self.cfg["capacity"] = info["capacity"]
            self._owns_arena_fd = True
        self.mapped = MappedObjects(self.cfg["capacity"], self.io.post, self.io.loop.call_later,
                                    self._send_releases)
        from ..gcs.client import GcsClient
        self.gcs = await GcsClient(info["gcs_address"], self.secret, h.accepting(messages.GCS)).connect()
        self.gcs.reconnect_hooks.append(self._gcs_back)
        # the GCS knows this process as an owner: its non-detached actors and groups die with it
        self.gcs.request("register_owner", {"address": self.address}, lambda ok, r: None)
        return info

    async def _gcs_back(self, conn):
        """A restarted GCS: say again that this process is alive and owns what it created."""
        await conn.call("register_owner", {"address": self.address})

    def _on_peer(self, conn):
        conn.close_callbacks.append(self._peer_gone)

    def _nm_lost(self, conn):
        if not self.shutting_down:
            if self.mode == WORKER:
                os._exit(0)  # the node is gone: a worker has nothing left to do
            logger.error("lost the connection to the local node manager")
            self.nm_dead = _NM_DEAD
            self.submitter.fail_all(self.local_raylet_died())

    @staticmethod
    def local_raylet_died():
        return exc.LocalRayletDiedError(_NM_DEAD)

    def _peer_gone(self, conn):
        borrowed = conn.state.get("borrowed")
        addr = conn.state.get("borrower_addr")
        if borrowed and addr:
            actions = []
            for oid in borrowed:
                self.refs.remove_borrower(oid, addr, actions)
            self.run_actions(actions)

    def stop(self):
        self.events.flush_now()
        self.shutting_down = True
        if self.mapped is not None:
            self.mapped.closed = True
        from . import state
        if state.core is self:
            state.core = None

        async def close():
            for c in list(self.conns.values()):
                c.close()
            for c in (getattr(self, "nm", None), getattr(self, "gcs", None)):
                if c is not None:
                    c.close()
            if getattr(self, "server", None) is not None:
                self.server.close()
        try:
            self.io.run_coro(close(), timeout=5)
        except Exception:
            pass
        self.io.stop()
        if getattr(self, "_owns_arena_fd", False):
            try:
                os.close(self.cfg["arena_fd"])
            except OSError:
                pass
        if self.address.startswith("unix:"):
            try:
                os.unlink(self.address[5:])
            except OSError:
                pass

    # --- connections to peers (I/O thread) ------------------------------------------------------
    def with_conn(self, address, cb):
        """Call ``cb(conn_or_None, error)`` with a connection to another core worker."""
        conn = self.conns.get(address)
        if conn is not None and not conn.closed:
            cb(conn, None)
            return
        waiting = self._connecting.get(address)
        if waiting is not None:
            waiting.append(cb)
            return
        self._connecting[address] = [cb]
        asyncio.ensure_future(self._connect(address))

    async def _connect(self, address):
        try:
            conn = await self.connect(address, self.secret, self.handlers.accepting(
                messages.DRIVER, messages.WORKER, messages.NODE_MANAGER), name=address)
            conn.close_callbacks.append(lambda c, a=address: self._conn_closed(a, c))
            self.conns[address] = conn
            err = None
        except Exception as e:  # noqa: BLE001
            conn, err = None, e
        for cb in self._connecting.pop(address, []):
            try:
                cb(conn, err)
            except Exception:
                logger.exception("connection callback failed")

    def _conn_closed(self, address, conn):
        if self.conns.get(address) is conn:
            del self.conns[address]

    def call_sync_gcs(self, method, payload=None, timeout=30):
        """A GCS request from the main thread.  While the GCS is away (restarting) the request waits
        for it past ``timeout``, until the client's reconnect window ends (GcsUnavailableError)."""
        res = SyncCall()
        gcs = self.gcs
        seen = gcs.reconnects
        self.io.post(lambda: gcs.request(method, payload, res))
        what = f"the GCS at {gcs.address} (request {method!r})"
        try:
            return res.wait(timeout, what)
        except exc.GetTimeoutError:
            if gcs.outage_since is None and gcs.reconnects == seen:
                raise
        return res.wait(gcs.window + 10, what + " while it restarts")

    def call_sync(self, target, method, payload, timeout=None):
        """From the main thread: send a request on the I/O thread and wait for the answer."""
        if target == "nm" and self.nm_dead is not None:
            raise self.local_raylet_died()
        res = SyncCall()

        def send():
            if target == "nm":
                self.nm.request(method, payload, res)
            else:
                self.with_conn(target, lambda c, e: res(False, e) if c is None else c.request(method, payload, res))
        self.io.post(send)
        if target != "nm":
            return res.wait(timeout, f"the process at {target} (request {method!r})")
        try:
            return res.wait(timeout, f"the local node manager (pid {self.nm_pid}, request {method!r})")
        except exc.RaySystemError as e:
            if isinstance(e.__cause__, protocol.ConnectionLost):
                raise self.local_raylet_died() from None
            raise

    # --- references (I/O thread) ------------------------------------------------------------------
    def on_increfs(self, items):
        refs = self.refs
        add = refs.add_local
        for item in items:
            if type(item) is tuple:
                add(*item)
            else:               # a batch of deserialized ObjectRefs
                refs.add_local_refs(item)

    def on_decref(self, oid):
        self.on_decrefs((oid,))

    def on_decrefs(self, oids):
        actions = []
        self.refs.remove_locals(oids, actions)
        if actions:
            self.run_actions(actions)

    def run_actions(self, actions):
        unborrow = {}
        for a in actions:
            if a[0] == "free":
                oid = a[1]
                v = self.memory.values.get(oid)
                self.memory.delete(oid)
                self.mapped.forget(oid)
                self.submitter.lineage.pop(oid, None)
                if v is not None and v[0] == "s":
                    self._store_deletes.append((oid, v[1][0]))
                self.submitter.on_object_freed(oid)
                if oid[:1] == b"\xac":
                    self.actor_submitter.on_handle_freed(oid)
            else:               # "unborrow" (tell the owner) or "forget" (never registered)
                oid = a[1]
                self.memory.delete(oid)
                self.mapped.forget(oid)
                self.submitter.fetching.discard(oid)
                if a[0] == "unborrow":
                    unborrow.setdefault(a[2], []).append(oid)
        if self._store_deletes:
            dels, self._store_deletes = self._store_deletes, []
            self.delete_stored(dels)
        for owner, oids in unborrow.items():
            self.with_conn(owner, lambda c, e, oids=oids: c is not None and c.notify(
                "remove_borrower", {"oids": oids, "addr": self.address}))

    def register_borrowed(self, refs):
        """From the main thread: make sure the owners know we hold ``refs`` before we use them."""
        if all(map(self.address.__eq__, map(_owner_of, refs))):
            return              # all ours: nobody to tell
        res = SyncCall()
        self.io.post(self._register_borrowed, refs, res)
        res.wait(30, "the owners of the objects just received (add_borrower)")

    def _register_borrowed(self, refs, done):
        by_owner = self.refs.take_unregistered(refs)
        if not by_owner:
            done(True, None)
            return
        remaining = [len(by_owner)]

        def acked(ok, res):
            remaining[0] -= 1
            if remaining[0] == 0:
                done(True, None)
        for owner, oids in by_owner.items():
            def send(conn, err, oids=oids):
                if conn is None:
                    for oid in oids:
                        self.memory.put(oid, "e", pickle.dumps(exc.OwnerDiedError(oid.hex(), owner)))
                    acked(False, err)
                else:
                    conn.request("add_borrower", {"oids": oids, "addr": self.address}, acked)
            self.with_conn(owner, send)

    def register_borrowed_async(self, refs):
        self.io.post(self._register_borrowed, refs, lambda ok, res: None)

    # --- owner-side handlers ----------------------------------------------------------------------------
    def h_get_object(self, conn, p):
        oid = p["oid"]
        v = self.memory.values.get(oid)
        if v is not None:
            return list(v)
        e = self.refs.entries.get(oid)
        if e is None or not e.owned:
            return ["e", pickle.dumps(exc.ObjectLostError(oid.hex(), self.address, message=(
                f"Object {oid.hex()} is not known to its owner {self.address}: it was freed "
                "because no reference to it was held, or it was never created.")))]
        fut = asyncio.get_event_loop().create_future()
        self.memory.on_ready(oid, lambda o, k, d: fut.done() or fut.set_result([k, d]))
        return fut

    def h_add_borrower(self, conn, p):
        addr = p["addr"]
        conn.state["borrower_addr"] = addr
        borrowed = conn.state.setdefault("borrowed", set())
        for oid in p["oids"]:
            if self.refs.add_borrower(oid, addr):
                borrowed.add(oid)
        return True

    def h_remove_borrower(self, conn, p):
        actions = []
        borrowed = conn.state.get("borrowed")
        for oid in p["oids"]:
            if borrowed is not None:
                borrowed.discard(oid)
            self.refs.remove_borrower(oid, p["addr"], actions)
        if actions:
            self.run_actions(actions)

    def h_log(self, conn, p):
        out = self.log_output
        if out is None:
            from .. import logdedup
            from .log_output import DriverLogOutput
            settings = self.cfg.get("log_settings") or logdedup.settings_from_env({})
            out = self.log_output = DriverLogOutput(self.io.loop, self.cfg.get("node_ip"), settings)
        out.handle(p)

    def h_infeasible(self, conn, p):
        if self.cfg.get("infeasible_tasks") == "fail" and self.submitter.fail_infeasible(p):
            return
        # why they wait goes into the task events (and the event log): `luminary get task ID
        # --session` shows it after the cluster ended
        self.events.note_reason(self.submitter.owner.queued_for_lease_request(p["lease_id"]),
                                stuck.infeasible_reason(p["missing"], p["node_resources"]))
        key = tuple(sorted(p["missing"].items()))
        if key not in self.infeasible_warned:
            self.infeasible_warned.add(key)
            missing = ", ".join(f"{k}: {v}" for k, v in p["missing"].items())
            msg = (f"Warning: a task or actor cannot be scheduled: it needs {{{missing}}}, which no node has "
                   f"(this node has {p['node_resources']}). It will wait until a node with these resources joins. "
                   "Lower its resource request or add a node that has them.\n")
            try:
                sys.stderr.write(msg)
                sys.stderr.flush()
            except Exception:
                pass

    # --- objects (main thread) ------------------------------------------------------------------
    def put_object(self, value, _owner_id=None) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("Calling put() on an ObjectRef is not allowed: put the value itself, "
                            "or pass the ObjectRef directly (it can be nested inside a list or dict).")
        if self.nm_dead is not None:
            raise self.local_raylet_died()
        sobj = serialization.serialize(value)
        oid = ids.put_object_id()
        self.store_value(oid, sobj, self.worker_id)
        ref = ObjectRef(oid, self.address)
        if sobj.contained:
            inner = [(r.id, r.owner) for r in sobj.contained]
            self.io.post(self.refs.set_contains, oid, inner)
        return ref

    def store_value(self, oid, sobj, owner_id):
        """Keep an owned value: inline in memory, or written to the node's store."""
        kind, data = self.store_value_for(oid, sobj, owner_id)
        self.memory.put(oid, kind, data)
        return kind, data

    def store_value_for(self, oid, sobj, owner_id):
        """Keep a value: inline (returned), or in this node's store (its location is returned)."""
        if sobj.inline:
            return "v", sobj.to_inline()
        size = self.write_to_store(oid, sobj, owner_id)
        return "s", [self.node_id, size]

    def write_to_store(self, oid, sobj, owner_id):
        layout = sobj.layout()
        size = layout[3]
        req = {"oid": oid, "size": size, "owner": owner_id}
        res = self.call_sync("nm", "store_create", req)
        if isinstance(res, dict) and res.get("error") == "ObjectStoreFullError" and self.mapped.drop_recent():
            # objects kept mapped only for reuse are pinned: let go of them (their releases
            # travel before this request on the same connection) and try once more
            res = self.call_sync("nm", "store_create", req)
        if isinstance(res, dict):
            raise getattr(exc, res["error"], exc.ObjectStoreFullError)(res["message"]) \
                if res["error"] == "ObjectStoreFullError" else exc.RaySystemError(res["message"])
        offset = res
        try:
            if isinstance(offset, str):     # larger than the store can hold: a disk-backed file
                with _map_file(offset, size, writable=True) as fmm:
                    sobj.write_into(memoryview(fmm)[:size], layout)
            else:
                arena = self._arena()
                sobj.write_into(memoryview(arena)[offset:offset + size], layout)
        except BaseException:
            self.io.post(self.nm.notify, "store_abort", {"oid": oid})
            raise
        self.io.post(self.nm.notify, "store_seal", {"oid": oid})
        return size

    def _arena(self):
        if self._arena_rw is None:
            fd = self.arena_fd()
            self._arena_rw = mmap.mmap(fd, self.cfg["capacity"], mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        return self._arena_rw

    def arena_fd(self):
        return self.cfg["arena_fd"]

    def read_store_object(self, oid, where=None):
        """Map a stored object (pulling it to this node first when it lives on another one).
        An object this process has mapped already is read again without asking anyone."""
        mm = self.mapped.get(oid)
        if mm is None:
            req = {"oid": oid, "wait": True}
            if where is not None and where[0] != self.node_id:
                req["pull_from"] = self.node_address(where[0])
                if req["pull_from"] is None:
                    raise ObjectLocationLost(oid, where[0], "the node holding it is dead")
            loc = self.call_sync("nm", "store_get", req)
            if isinstance(loc, dict) and loc.get("error") == "ObjectStoreFullError":
                raise exc.ObjectStoreFullError(loc["message"])
            if loc is None or isinstance(loc, dict):
                msg = loc.get("message") if isinstance(loc, dict) else "it is not in the object store"
                raise ObjectLocationLost(oid, where[0] if where else self.node_id, msg)
            offset, size = loc
            if isinstance(offset, str):     # a fallback object: its own file
                mm = _map_file(offset, size, writable=False)
            else:
                mm = mmap.mmap(self.arena_fd(), size, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset)
            self.mapped.add(oid, mm, size)
        with serialization.collect_deserialized_refs() as refs:
            value = serialization.loads_store(memoryview(mm))
        if refs:
            self.register_borrowed(refs)
        return value

    def _send_releases(self, oids):
        if not self.shutting_down and not self.nm.closed:
            self.nm.notify("store_release", {"oids": oids})

    def notify_when_ready(self, ref, cb):
        """Run ``cb()`` (on the I/O thread) once the object's value is known here."""
        def setup():
            self.memory.on_ready(ref.id, lambda o, k, d: cb())
            if ref.owner != self.address and ref.id not in self.memory.values:
                self._fetch(ref.id, ref.owner)
        self.io.post(setup)

    def _fetch(self, oid, owner):
        """Ask the owner for a borrowed object's value (I/O thread)."""
        def got(ok, res):
            self.submitter.fetching.discard(oid)
            if ok:
                self.memory.put(oid, res[0], res[1])
            else:
                self.memory.put(oid, "e", pickle.dumps(exc.OwnerDiedError(oid.hex(), owner)))

        def send(conn, err):
            if conn is None:
                got(False, err)
            else:
                conn.request("get_object", {"oid": oid}, got)
        self.with_conn(owner, send)

    def get_objects(self, refs, timeout):
        oids = []
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"get() expects an ObjectRef or a list of ObjectRefs, got {type(r).__name__}: {r!r:.80}. "
                                "Pass the refs returned by .remote() or put().")
            oids.append(r.id)
        values = self.memory.values
        missing = [r for r in refs if r.id not in values]
        if missing:
            for r in missing:
                if r.owner != self.address:
                    self.io.post(self._fetch_if_missing, r.id, r.owner)
            blocked = self.mode == WORKER and (self.current_task_id is not None or self.in_actor_init)
            if blocked:
                self.io.post(self.submitter.on_blocked)
            self.deadlock_watch = watch = deadlock.begin(self, [r.id for r in missing]) if blocked else None
            try:
                ok = self._wait_diagnosed(missing, oids, len(oids), timeout, len(oids) > 1, "get")
            finally:
                if blocked:
                    self.io.post(self.nm.notify, "unblocked", None)
                if watch is not None:
                    self.deadlock_watch = None
                    deadlock.end(self, watch)
            if watch is not None and watch.cycle is not None and any(o not in values for o in oids):
                raise deadlock.error(watch)
            if len(oids) > 1:
                # an object that failed is raised at once, even while others are still pending
                for r in refs:
                    v = values.get(r.id)
                    if v is not None and v[0] == "e":
                        self.deserialize(r.id, *v)
            if not ok:
                raise exc.GetTimeoutError(f"get() timed out after {timeout} seconds; "
                                          f"{sum(1 for o in oids if o not in values)} of {len(oids)} objects not ready.")
        out = []
        for r in refs:
            for attempt in range(4):
                try:
                    out.append(self.deserialize(r.id, *values[r.id]))
                    break
                except ObjectLocationLost as lost:
                    self.recover(r, lost)
        return out

    def _wait_diagnosed(self, pending, oids, num, timeout, wake_on_error, what):
        """memory.wait, and when it lasts longer than $LUMINARY_WAIT_WARN_S (default 60 s; 0: never)
        say once, then at doubling intervals, what it waits on and why (never a silent hang)."""
        warn = WAIT_WARN_S
        if not warn or (timeout is not None and timeout <= warn):
            return self.memory.wait(oids, num, timeout, wake_on_error=wake_on_error)
        deadline = None if timeout is None else time.monotonic() + timeout
        waited, step = 0.0, warn
        while True:
            chunk = step if deadline is None else min(step, deadline - time.monotonic())
            if self.memory.wait(oids, num, max(0.0, chunk), wake_on_error=wake_on_error):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            waited += chunk
            self._report_wait(pending, what, waited)
            step *= 2

    def _report_wait(self, refs, what, waited):
        values = self.memory.values
        refs = [r for r in refs if r.id not in values]
        res = SyncCall()
        self.io.post(lambda: res(True, self.submitter.describe(refs[:20])))
        try:
            lines = res.wait(10)
        except Exception as e:  # noqa: BLE001 - diagnostics must never break the wait
            lines = [f"(could not ask the owner: {e})"]
        more = f" (and {len(refs) - 20} more)" if len(refs) > 20 else ""
        watch = getattr(self, "deadlock_watch", None)
        if watch is not None and watch.cycle is not None:
            lines.insert(0, watch.cycle.get("text", "deadlock"))
        text = (f"Warning: {what}() has waited {waited:.0f} s for {len(refs)} object(s){more}:\n  "
                + "\n  ".join(lines) + "\n(set LUMINARY_WAIT_WARN_S=0 to silence this, or a number of seconds)\n")
        _warn(text)

    def recover(self, ref, lost):
        """A stored copy is gone: ask the owner to rebuild it from lineage, then wait again."""
        if ref.owner == self.address:
            res = SyncCall()
            self.io.post(lambda: res(True, self.submitter.reconstruct(ref.id, lost.node_id, lost.why)))
            res.wait(30)
        else:
            self.memory.delete(ref.id)
            self.submitter.fetching.discard(ref.id)
            try:
                self.call_sync(ref.owner, "reconstruct", {"oid": ref.id, "node_id": lost.node_id, "why": lost.why}, timeout=30)
            except Exception:
                self.memory.put(ref.id, "e", pickle.dumps(exc.OwnerDiedError(ref.id.hex(), ref.owner)))
                return
            self.io.post(self._fetch_if_missing, ref.id, ref.owner)
        self._wait_diagnosed([ref], [ref.id], 1, None, False, "get")

    def h_reconstruct(self, conn, p):
        return self.submitter.reconstruct(p["oid"], p.get("node_id"), p.get("why", ""))

    # --- node addresses ---------------------------------------------------------------------------
    def node_address(self, node_id):
        addr = self.node_addrs.get(node_id)
        if addr is None:
            for n in self.call_sync_gcs("get_nodes"):
                if n["Alive"]:
                    self.node_addrs[bytes.fromhex(n["NodeID"])] = n["Address"]
            addr = self.node_addrs.get(node_id)
        return addr

    def delete_stored(self, items):
        """Free stored objects [(oid, node_id)] on the nodes that hold them (I/O thread)."""
        by_node = {}
        for oid, nid in items:
            by_node.setdefault(nid, []).append(oid)
        for nid, oids in by_node.items():
            if nid == self.node_id or nid is None:
                self.nm.notify("store_delete", {"oids": oids})
                continue
            addr = self.node_addrs.get(nid)
            if addr is None:
                def refresh(ok, nodes, nid=nid, oids=oids):
                    if ok:
                        for n in nodes:
                            if n["Alive"]:
                                self.node_addrs[bytes.fromhex(n["NodeID"])] = n["Address"]
                    a = self.node_addrs.get(nid)
                    if a:
                        self.with_conn(a, lambda c, e: c is not None and c.notify("store_delete", {"oids": oids}))
                self.gcs.request("get_nodes", None, refresh)
            else:
                self.with_conn(addr, lambda c, e, oids=oids: c is not None and c.notify("store_delete", {"oids": oids}))

    def _fetch_if_missing(self, oid, owner):
        if oid not in self.memory.values and oid not in self.submitter.fetching:
            self.submitter.fetching.add(oid)
            self._fetch(oid, owner)

    def deserialize(self, oid, kind, data):
        if kind == "v":
            with serialization.collect_deserialized_refs() as refs:
                value = serialization.loads_inline(data)
            if refs:
                self.register_borrowed(refs)
            return value
        if kind == "s":
            return self.read_store_object(oid, data)
        if kind == "e":
            try:
                err = pickle.loads(data)
            except Exception as e:  # e.g. the error's class cannot be imported here
                raise exc.RaySystemError(f"A remote error could not be deserialized in this process "
                                         f"({type(e).__name__}: {e}).") from None
            raise err
        if kind == "end":
            raise exc.ObjectLostError(oid.hex(), message="this generator ended before producing this item")
        raise exc.RaySystemError(f"unknown object kind {kind!r}")

    def wait_objects(self, refs, num_returns, timeout, fetch_local=True):
        values = self.memory.values
        ready = []
        for i, r in enumerate(refs):
            if r.id in values:
                ready.append(r)
                if len(ready) == num_returns:
                    if num_returns == 1:
                        return ready, refs[:i] + refs[i + 1:]
                    chosen = set(map(id, ready))
                    return ready, [r for r in refs if id(r) not in chosen]
        if timeout == 0:
            chosen = set(map(id, ready))
            return ready, [r for r in refs if id(r) not in chosen]
        for r in refs:
            if r.id not in values and r.owner != self.address:
                self.io.post(self._fetch_if_missing, r.id, r.owner)
        oids = list(dict.fromkeys(r.id for r in refs))
        blocked = self.mode == WORKER and (self.current_task_id is not None or self.in_actor_init) and timeout != 0
        if blocked:
            self.io.post(self.submitter.on_blocked)
        try:
            self._wait_diagnosed([r for r in refs if r.id not in values], oids, min(num_returns, len(oids)),
                                 timeout, False, "wait")
        finally:
            if blocked:
                self.io.post(self.nm.notify, "unblocked", None)
        ready, not_ready = [], []
        for r in refs:
            if r.id in values and len(ready) < num_returns:
                ready.append(r)
            else:
                not_ready.append(r)
        return ready, not_ready

    def wait_generator_item(self, oid, owner, timeout):
        values = self.memory.values
        if oid not in values:
            blocked = self.mode == WORKER and (self.current_task_id is not None or self.in_actor_init)
            if blocked:
                self.io.post(self.submitter.on_blocked)
            try:
                ok = self._wait_diagnosed([_Pending(oid, owner)], [oid], 1, timeout, False,
                                          "generator next")
            finally:
                if blocked:
                    self.io.post(self.nm.notify, "unblocked", None)
            if not ok:
                raise exc.GetTimeoutError("timed out waiting for the next generator item")
        return values[oid][0]
