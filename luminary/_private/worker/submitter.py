"""The shell around the owner state machine (owner.py), on the I/O thread.

    main thread ─ post(submit) ─▶ shell.submit ─▶ Owner.on_submit ─▶ actions
    main thread ─ a plain call written to an idle connection itself (try_direct_*) ─┐
                  └─ (handler, args) into ``written``, taken before any other event ◀┘
    socket replies, timers, values arriving ─▶ events ─▶ Owner ─▶ actions ─▶ executed here:
        request_lease / connect_lease / push ──▶ node managers, leased workers
        locate_actor / connect_actor / push_actor ──▶ GCS, actors' workers
        put / store / own / set_contains / release ──▶ MemoryStore, ReferenceTable

Everything socket- or timer-shaped lives here; every decision lives in the Owner.  With
``LUMINARY_CHECK_THREADS=1`` (on in the test suite) every entry asserts it runs on the I/O thread.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import threading
import time

from ... import exceptions as exc
from .. import ids
from ..rpc import messages
from .owner import LIVE, Call, Owner, State

logger = logging.getLogger(__name__)

Task = Call
WAITING, QUEUED, PUSHED, DONE = State.WAITING, State.QUEUED, State.PUSHED, State.FINISHED
CHECK_THREADS = os.environ.get("LUMINARY_CHECK_THREADS", "") not in ("", "0")
# a caller's thread writes a plain actor call or task to an idle connection itself when nothing
# of its own is ahead of it or in flight there (try_direct_actor_call, try_direct_task);
# LUMINARY_DIRECT_CALLS=0 sends every call through the I/O thread
DIRECT_CALLS = os.environ.get("LUMINARY_DIRECT_CALLS", "1") not in ("0", "false", "False", "")
_LOG = {"info": logger.info, "warning": logger.warning, "error": logger.error}


class _NotNow(Exception):
    """Raised by a ``before`` of ``request_from_thread``: do not send after all."""


class _Live:
    """``oid in live``: someone in this process still references the object."""
    __slots__ = ("core",)

    def __init__(self, core):
        self.core = core

    def __contains__(self, oid):
        return oid in self.core.refs.entries


class TaskSubmitter:
    def __init__(self, core):
        self.core = core
        self.owner = Owner(core.worker_id, core.memory.values, _Live(core), core.session_dir)
        self.fetching = set()          # borrowed objects whose value was asked of their owner
        self.lease_conns = {}          # lease id -> connection to the leased worker
        self.actor_conns = {}          # actor id -> (incarnation, connection)
        self._idle_events = []
        self.written = collections.deque()   # (Owner handler, args) of calls written by other threads
        self.direct_busy = set()       # actors and leases with a call written by another thread, not answered
        self.lanes = {}                # actor id -> [posted, taken] (see lane)
        self.lanes_lock = threading.Lock()
        self._actions = {
            "timer": self._a_timer, "request_lease": self._a_request_lease,
            "cancel_lease_request": self._a_cancel_lease_request, "connect_lease": self._a_connect_lease,
            "forget_lease": self._a_forget_lease, "return_lease": self._a_return_lease,
            "push": self._a_push, "cancel_task": self._a_cancel_task, "put": self._a_put,
            "store": self._a_store, "replace": self._a_replace, "forget": self._a_forget,
            "delete_stored": self._a_delete_stored, "set_contains": self._a_set_contains,
            "own": self._a_own, "release": self._a_release, "idle": self._a_idle, "log": self._a_log,
            "dynamic_returns": self._a_dynamic_returns, "locate_actor": self._a_locate_actor,
            "connect_actor": self._a_connect_actor, "push_actor": self._a_push_actor,
            "cancel_actor_call": self._a_cancel_actor_call, "kill_actor": self._a_kill_actor,
            "end_actor": self._a_end_actor,
        }

    # --- views the rest of the process reads ---------------------------------------------------
    @property
    def tasks(self):
        return self.owner.calls

    @property
    def lineage(self):
        return self.owner.lineage

    # --- events in ---------------------------------------------------------------------------------
    def feed(self, event):
        self._check_thread()
        self.owner.closing = self.core.shutting_down
        if self.written:
            self._take_written()
        self._run(self.owner.handle(event))

    def _do(self, method, *args):
        """``feed`` for the hot paths: call the owner's handler directly (no event tuple)."""
        if CHECK_THREADS:
            self._check_thread()
        owner = self.owner
        owner.closing = self.core.shutting_down
        if self.written:
            self._take_written()
        method(*args)
        out = owner.out
        if out or owner.trace:
            owner.out = []
            self._run(out)

    def _take_written(self):
        """(I/O thread) The owner takes the calls other threads wrote to a connection themselves
        (``try_direct_*``), before any other event: whatever happens next (an answer, a lost
        connection, a lease's idle timer, a query) finds them in flight.  Their return refs'
        increments come first, so a value or an error stored for them is kept."""
        self.core.io.apply_increfs()
        written = self.written
        while written:
            fn, args = written.popleft()
            fn(*args)            # an Owner handler: it only appends actions to owner.out

    def _check_thread(self):
        if CHECK_THREADS and not self.core.io.in_loop():
            raise AssertionError(f"owner state touched from thread {threading.current_thread().name}, "
                                 "not the I/O thread that owns it")

    def _run(self, actions):
        owner = self.owner
        if owner.trace:
            owner.trace = self.core.events.owner_trace(owner.trace)
        table = self._actions
        for a in actions:
            table[a[0]](*a[1:])

    def submit(self, task, actor_id=None):
        """A new task (or, with ``actor_id``, actor call) from the main thread, via post."""
        self._check_thread()
        core = self.core
        if task.held[0]:
            core.refs.add_submitted(*task.held)
        task.actor = actor_id
        values = core.memory.values
        missing = [ref for _, ref in task.arg_refs if ref.id not in values]
        self.owner.closing = core.shutting_down
        if self.owner.trace is not None:
            core.events.submitted(task)       # task events (worker/events.py)
        self._do(self.owner.on_submit, task, missing)
        if core.nm_dead is not None:     # no node manager: nothing can run, fail it at once
            self.feed(("fail_all", core.local_raylet_died()))
            return
        tid = task.tid
        for ref in missing:
            core.memory.on_ready(ref.id, lambda o, k, d, tid=tid: self._dep_ready(tid))
            if ref.owner != core.address:
                core._fetch_if_missing(ref.id, ref.owner)

    def _dep_ready(self, tid):
        if self.core.io.in_loop():
            self._do(self.owner.on_dep_ready, tid)
        else:   # a value put by the main thread: hand the event to the owning thread
            self.core.io.post(self.feed, ("dep_ready", tid))

    def submit_actor_call(self, actor_id, task):
        lane = self.lanes.get(actor_id)
        if lane is not None:
            lane[1] += 1
        self.submit(task, actor_id)

    # --- the caller's thread writes an actor call itself ------------------------------------------
    def lane(self, actor_id):
        """(any thread) [calls posted to the I/O thread, calls it took] for one actor: while they
        differ, a call of this process is on its way to the actor through the I/O thread and a
        later one must not overtake it."""
        lane = self.lanes.get(actor_id)
        if lane is None:
            with self.lanes_lock:
                lane = self.lanes.setdefault(actor_id, [0, 0])
        return lane

    def note_posted(self, lane):
        with self.lanes_lock:
            lane[0] += 1

    def try_direct_actor_call(self, actor_id, call, lane):
        """(the caller's thread) Write a ready actor call straight to the actor's connection when
        nothing of this process is ahead of it or in flight to it: the actor is ALIVE with its
        connection open and idle, and no call of this process waits for it in the I/O thread, in
        the owner's queue or in the actor.  That saves the hand-off to the I/O thread (a wake-up,
        about 20 us here) on every synchronous call; a burst of calls goes the usual way after its
        first, so the I/O thread writes them several to a system call.  The owner takes the call
        (``actor_call_written``) from ``written`` before any other event.  These reads of the
        owner's state from another thread are the one exception to its thread ownership: each
        is re-checked by the owner when it takes the call.  Returns False when it did not send."""
        if lane[0] != lane[1] or actor_id in self.direct_busy:
            return False
        a = self.owner.actors.get(actor_id)
        if a is None or a.state != "alive" or a.queue or a.inflight:
            return False
        ic = self.actor_conns.get(actor_id)
        if ic is None or ic[0] != a.incarnation:
            return False
        incarnation, conn = ic
        core = self.core
        if not conn.state.get("pathsent") or core.nm_dead is not None or core.shutting_down:
            return False
        call.actor = actor_id
        owner, tid = self.owner, call.tid
        return self._write_direct(conn, call, actor_id, (owner.on_actor_call_written, (call, incarnation)),
                                  lambda ok, reply: self._do(owner.on_actor_reply, actor_id, tid, ok, reply))

    def try_direct_task(self, call):
        """(the caller's thread) Write a ready task straight to an idle lease of its scheduling
        key (its function already sent on that connection, nothing queued for the key, nothing
        in flight on the lease): no hand-off to the I/O thread on a synchronous task.  As for
        actor calls, the owner takes it (``task_written``) before any other event.  A lease the
        owner is returning at that very moment still answers: the call is followed on it, and a
        worker that went away fails it as any lost worker does (retries).  Returns False when it
        did not send."""
        owner = self.owner
        kq = owner.keys.get(call.key)
        if kq is None or kq.queue:
            return False
        core = self.core
        if core.nm_dead is not None or core.shutting_down:
            return False
        for lease in kq.leases:
            if lease.inflight or lease.dead or lease.grant.get("gpu_ids"):
                continue
            lease_id = lease.lease_id
            conn = self.lease_conns.get(lease_id)
            if conn is None or conn.state.get("lease") != lease_id or lease_id in self.direct_busy:
                continue
            fns = conn.state.get("fns")
            if not fns or call.fid not in fns:
                continue
            break
        else:
            return False
        tid = call.tid
        return self._write_direct(conn, call, lease_id, (owner.on_task_written, (call, lease)),
                                  lambda ok, reply: self._do(owner.on_push_reply, lease_id, tid, ok, reply),
                                  still=lambda: conn.state.get("lease") == lease_id)

    def _write_direct(self, conn, call, busy_key, taken, answer, still=None):
        """(the caller's thread) Push ``call`` on ``conn`` from this thread.  Under the
        connection's write lock, before the bytes leave: ``still()`` (when given) must hold, the
        return refs' increments are queued (without waking the I/O thread), ``taken`` (the
        owner's handler and its arguments) joins ``written`` and ``busy_key`` (the actor or the
        lease) is marked as having a direct call in flight until ``answer`` runs."""
        core = self.core
        if self.owner.trace is not None:
            core.events.submitted(call)       # stamps the spec before it is packed
        call.pushed_at = time.monotonic()
        io, me, returns = core.io, core.address, call.returns
        written, busy = self.written, self.direct_busy

        def before():
            if still is not None and not still():
                raise _NotNow()
            for oid in returns:
                io.add_incref_quiet((oid, me))
            written.append(taken)
            busy.add(busy_key)

        def answered(ok, reply):
            busy.discard(busy_key)
            answer(ok, reply)
        return conn.request_from_thread(*wire_payload(conn, call, call.spec, False), answered, before)

    def actor_created(self, actor_id, handle_oid, held, detached):
        if held[0]:
            self.core.refs.add_submitted(*held)
        self.feed(("actor_created", actor_id, handle_oid, held, detached))

    def on_handle_freed(self, oid):
        core = self.core
        tid = ids.new_task_id()
        spec = {"tid": tid, "fid": b"", "name": "__ray_terminate__", "args": ["v", pickle.dumps(((), {}), 5)],
                "nret": 0, "owner": core.address, "owner_id": core.worker_id, "job": core.job_id,
                "actor": None, "method": "__ray_terminate__"}
        call = Call(tid, spec, b"", b"", {}, [], 0, 0, False, [], ([], []), "__ray_terminate__")
        actor_id = self.owner.by_handle.get(oid)
        if actor_id is not None:
            spec["actor"] = actor_id
        self.feed(("handle_freed", oid, call))

    def cancel(self, oid, force, recursive):
        self.feed(("cancel", ids.task_of(oid), force, recursive))

    def is_actor_call(self, oid):
        self._sync_written()
        call = self.owner.calls.get(ids.task_of(oid))
        return call is not None and call.actor is not None

    def h_worker_oom(self, conn, p):
        """The node manager is about to end a leased worker for memory: its calls fail with
        OutOfMemoryError (or are retried) instead of WorkerCrashedError.  Answering lets it kill."""
        self.feed(("lease_oom", p["lease_id"], p["message"]))
        return True

    def h_gen_item(self, conn, p):
        kind, data = p["ret"]
        self.feed(("gen_item", p["tid"], p["idx"], kind, data, p.get("contained")))

    def drop_generator(self, tid, next_idx):
        """The caller dropped an ObjectRefGenerator: free the items it never took."""
        self.feed(("gen_dropped", tid))
        core = self.core
        idx = next_idx
        while True:
            oid = ids.object_id(tid, idx)
            v = core.memory.values.get(oid)
            if v is None:
                break
            core.memory.delete(oid)
            e = core.refs.entries.get(oid)
            if e is not None and not e.in_use():
                actions = []
                core.refs._release(oid, e, actions)
                core.run_actions(actions)
            elif v[0] == "s":
                core.delete_stored([(oid, v[1][0])])
            idx += 1

    def _sync_written(self):
        """(I/O thread) Before reading the owner's state outside an event: take written calls."""
        if self.written:
            self._take_written()
            out = self.owner.take()
            if out:
                self._run(out)

    def reconstruct(self, oid, node_id, why):
        self._check_thread()
        self._sync_written()
        result = self.owner.reconstruct(oid, node_id, why)
        self._run(self.owner.take())
        return result

    def fail_infeasible(self, p):
        self._check_thread()
        self._sync_written()
        done = self.owner.on_infeasible(p["lease_id"], p["missing"])
        self._run(self.owner.take())
        return done

    def fail_all(self, err):
        self.feed(("fail_all", err))

    def on_object_freed(self, oid):
        self.fetching.discard(oid)
        self.owner.lineage.pop(oid, None)      # Owner.on_object_freed, without an event (hot path)

    def on_blocked(self):
        core = self.core
        core.nm.notify("blocked", None)
        if getattr(core, "executor", None) is not None:
            core.executor.bounce_queued()

    def describe(self, refs):
        """(I/O thread) One line per pending ref: where its call is, or who owns it."""
        self._sync_written()
        now = time.monotonic()
        me = self.core.address
        out = []
        for r in refs:
            if r.owner == me:
                out.append(f"{r.id.hex()}: {self.owner.describe(r.id, now)}")
            else:
                out.append(f"{r.id.hex()}: owned by {r.owner}, which has not sent it yet")
        return out

    def undispatched(self):
        """From the main thread: how many submitted calls have not reached a worker yet."""
        from .core import SyncCall
        res = SyncCall()
        self.core.io.post(lambda: res(True, sum(1 for c in self.owner.calls.values()
                                                if c.state in (State.WAITING, State.QUEUED))))
        try:
            return res.wait(5)
        except Exception:  # noqa: BLE001 - the I/O thread is gone: nothing more will be dispatched
            return 0

    def wait_idle(self, timeout):
        """From the main thread: wait until every task and actor call submitted here finished."""
        ev = threading.Event()

        def check():
            self._sync_written()
            if not any(c.state in LIVE for c in self.owner.calls.values()):
                ev.set()
            else:
                self._idle_events.append(ev)
        self.core.io.post(check)
        return ev.wait(timeout)

    # --- actions out -------------------------------------------------------------------------------
    def _a_timer(self, delay, event):
        self.core.io.loop.call_later(delay, self.feed, event)

    def _a_request_lease(self, key, lease_id, req, target):
        core = self.core
        if target is None:
            nm = core.nm
            nm.request("request_lease", req,
                       lambda ok, r: self._do(self.owner.on_lease_reply, key, lease_id, ok, r, None, req))
            return

        def connected(conn, err):
            if conn is None:
                self.feed(("spill_unreachable", key, lease_id))
                return
            conn.state["is_nm"] = True
            conn.request("request_lease", req,
                         lambda ok, r: self.feed(("lease_reply", key, lease_id, ok, r, conn, req)))
        core.with_conn(target, connected)

    def _a_cancel_lease_request(self, lease_id):
        core = self.core
        payload = {"lease_id": lease_id}
        core.nm.request("cancel_lease_request", payload, lambda ok, r: None)
        for c in core.conns.values():
            if c.state.get("is_nm"):
                c.request("cancel_lease_request", payload, lambda ok, r: None)

    def _a_connect_lease(self, lease_id, address):
        def connected(conn, err):
            if conn is not None:
                self.lease_conns[lease_id] = conn
                with conn._wlock:
                    conn.state["lease"] = lease_id     # what try_direct_task checks under the lock
                conn.close_callbacks.append(lambda c: self.feed(("lease_lost", lease_id)))
            self.feed(("lease_connected", lease_id, conn is not None, err))
        self.core.with_conn(address, connected)

    def _unlease(self, lease_id):
        conn = self.lease_conns.pop(lease_id, None)
        if conn is not None:
            with conn._wlock:
                if conn.state.get("lease") == lease_id:
                    conn.state["lease"] = None

    def _a_forget_lease(self, lease_id):
        self._unlease(lease_id)

    def _a_return_lease(self, lease_id, nm, kill):
        self._unlease(lease_id)
        nm = nm or self.core.nm
        if not nm.closed:
            nm.notify("return_lease", {"lease_id": lease_id, "kill": True} if kill else {"lease_id": lease_id})

    def _a_push(self, lease_id, call):
        conn = self.lease_conns.get(lease_id)
        tid = call.tid
        if conn is None:
            self.feed(("push_reply", lease_id, tid, False, exc.RaySystemError("lease connection missing")))
            return
        spec = call.spec
        fns = conn.state.get("fns")
        if fns is None:
            fns = conn.state["fns"] = set()
        if call.fid not in fns:
            if not fns:
                spec = dict(spec, path=self.core.code_path())
            fns.add(call.fid)
            spec = dict(spec, fn=call.fn_blob)
        lease = self.owner.leases.get(lease_id)
        gpus = lease.grant.get("gpu_ids") if lease is not None else None
        if gpus:
            spec = dict(spec, gpus=gpus)
        call.pushed_at = time.monotonic()
        conn.request("push_task", spec, lambda ok, r: self._do(self.owner.on_push_reply, lease_id, tid, ok, r))

    def _a_cancel_task(self, lease_id, tid, force, recursive):
        conn = self.lease_conns.get(lease_id)
        if conn is not None:
            conn.notify("cancel_task", {"tid": tid, "force": force, "recursive": recursive})

    def _a_put(self, oid, kind, data):
        self.core.memory.put(oid, kind, data)

    def _a_store(self, oid, kind, data):
        memory = self.core.memory
        if not memory.put(oid, kind, data):
            memory.replace(oid, kind, data)      # a value rebuilt from lineage

    def _a_replace(self, oid, kind, data):
        self.core.memory.replace(oid, kind, data)

    def _a_forget(self, oid):
        self.core.memory.delete(oid)

    def _a_delete_stored(self, oid, node_id):
        self.core.delete_stored([(oid, node_id)])

    def _a_set_contains(self, outer, inner, registered):
        refs = self.core.refs
        refs.set_contains(outer, inner)
        if registered:   # the executor registered the caller as a borrower before replying
            for oid, _ in inner:
                refs.mark_registered(oid)

    def _a_own(self, oid):
        self.core.refs.add_owned(oid)

    def _a_release(self, oids):
        actions = []
        self.core.refs.remove_submitted(oids, actions)
        if actions:
            self.core.run_actions(actions)

    def _a_idle(self):
        events, self._idle_events = self._idle_events, []
        for ev in events:
            ev.set()

    def _a_log(self, level, msg):
        _LOG[level]("%s", msg)

    def _a_dynamic_returns(self, ret_oid, tid, n):
        from .object_ref import DynamicObjectRefGenerator, ObjectRef
        core = self.core
        items = [ids.object_id(tid, i + 2) for i in range(n)]
        if ret_oid is None or ret_oid not in core.refs.entries:
            return
        value = DynamicObjectRefGenerator([ObjectRef(o, core.address, _register=False) for o in items])
        self._a_store(ret_oid, "v", pickle.dumps(value, 5))
        core.refs.set_contains(ret_oid, [(o, core.address) for o in items])

    def _a_locate_actor(self, actor_id, min_incarnation):
        self.core.gcs.request("wait_actor", {"actor_id": actor_id, "min_incarnation": min_incarnation},
                              lambda ok, info: self.feed(("actor_located", actor_id, ok, info)))

    def _a_connect_actor(self, actor_id, address, incarnation):
        def connected(conn, err):
            if conn is not None:
                self.actor_conns[actor_id] = (incarnation, conn)
                conn.close_callbacks.append(lambda c: self.feed(("actor_lost", actor_id, incarnation)))
            self.feed(("actor_connected", actor_id, incarnation, conn is not None))
        self.core.with_conn(address, connected)

    def _a_push_actor(self, actor_id, incarnation, call):
        inc, conn = self.actor_conns.get(actor_id, (None, None))
        tid = call.tid
        if conn is None or inc != incarnation:
            # the connection of this incarnation is gone; its close event re-locates the actor
            self.feed(("actor_lost", actor_id, incarnation))
            return
        spec = call.spec
        if conn.state.get("pathsent") is None:
            conn.state["pathsent"] = True
            spec = dict(spec, path=self.core.code_path())
        call.pushed_at = time.monotonic()
        conn.request(*wire_payload(conn, call, spec, True),
                     lambda ok, r: self._do(self.owner.on_actor_reply, actor_id, tid, ok, r))

    def _a_cancel_actor_call(self, actor_id, incarnation, tid):
        inc, conn = self.actor_conns.get(actor_id, (None, None))
        if conn is not None and inc == incarnation:
            conn.notify("cancel_task", {"tid": tid, "force": False})

    def _a_kill_actor(self, actor_id):
        self.core.gcs.request("kill_actor", {"actor_id": actor_id, "no_restart": True}, lambda ok, r: None)

    def _a_end_actor(self, actor_id, terminate_call):
        """No handle is left to an actor this process never called: a running one ends
        gracefully (its shutdown hooks run, as in Ray), one still pending is removed at once."""
        def answered(ok, info):
            if ok and isinstance(info, dict) and info.get("state") == "ALIVE":
                self.feed(("terminate_actor", actor_id, terminate_call))
            else:
                self._a_kill_actor(actor_id)
        self.core.gcs.request("wait_actor", {"actor_id": actor_id, "wait": False}, answered)


def wire_payload(conn, call, spec, may_define):
    """(message, payload) that pushes ``call`` on ``conn``: its own fields and the id of its
    template (``push_call``) once the connection has the template, else the whole ``spec``
    (``push_task``).  The I/O thread (``may_define``) sends a template the first time;
    other threads only use those sent: a template is marked sent once its definition is
    queued, and a thread writes only to an idle connection, so the definition is ahead."""
    tpl = call.tpl
    if tpl is None or spec is not call.spec:        # (a spec with extra fields for this connection)
        return "push_task", spec
    state = conn.state
    sent = state.get("tpls")
    if sent is None:
        sent = state["tpls"] = set()
    tpl_id = tpl[0]
    if tpl_id not in sent:
        if not may_define or len(sent) >= messages.MAX_TEMPLATES:
            return "push_task", spec
        conn.notify("call_template", {"id": tpl_id, "spec": tpl[1]})
        sent.add(tpl_id)
    p = {"tpl": tpl_id, "tid": spec["tid"], "args": spec["args"]}
    if "ev" in spec:
        p["ev"] = spec["ev"]
        if "par" in spec:
            p["par"] = spec["par"]
    if "refs" in spec:
        p["refs"] = spec["refs"]
    return "push_call", p
