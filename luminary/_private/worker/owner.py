"""The owner's state machine: every task and actor call a process submitted, as pure state.

No sockets, no timers, no threads: ``handle(event) -> actions``.  The shell in submitter.py
runs on the I/O thread, turns socket replies and timers into events, and carries out the
actions (lease requests, pushes, stored values, timers).  One call record with one state enum
covers tasks and actor calls alike:

        submit ─▶ WAITING ──(all top-level ObjectRef args ready)──▶ QUEUED ──push──▶ PUSHED
                    │                                                 ▲   │            │
                    │ an argument holds an error, cancelled           │   │ cancelled, │ reply ─▶ FINISHED
                    ▼                                                 │   ▼ no lease,  │ error, no retry ─▶ FAILED
                  FAILED ◀──────────────────────────────────────────── ─ FAILED        │
                                                                      └── retry / bounce / restart ◀┘
        FINISHED ──(a stored return value was lost: lineage)──▶ QUEUED

Tasks queue per scheduling key (resource shape + strategy) and run on leased workers: the
owner asks its node manager for leases (following spillbacks), pipelines short tasks (up to
PIPELINE_DEPTH in flight per lease) and returns a lease idle for LEASE_IDLE_S.  Actor calls
queue per actor, are pushed strictly in submission order once the actor's address is known,
and survive a restart when ``max_task_retries`` allows.

Two read-only views of the process's data are given at construction: ``values`` (object id ->
(kind, data) of values known here, for resolving arguments) and ``live`` (object ids someone
here still references, so unreferenced return values are dropped instead of kept).
"""
from __future__ import annotations

import pickle

from ... import exceptions as exc
from .. import ids
from ..config import MAX_PENDING_LEASES, PIPELINE_DEPTH
from .owner_actors import ActorCalls
from .owner_records import (  # noqa: F401 - the names callers import from here
    LIVE, OOM_RETRIES, S, TRANSITIONS, Actor, Call, KeyQueue, Lease, State, Task)

LEASE_IDLE_S = 0.01      # a lease with nothing to run goes back after this long
FAST_TASK_S = 0.001      # tasks shorter than this (moving average) are pipelined
RETRY_LEASE_S = 0.1      # a failed lease request is retried after this long
_NONE = pickle.dumps(None, 5)


def _upstream_error(call, blob):
    """The error a call fails with when an argument holds a task's error: as Ray, its own
    ``ray::name()`` error saying an input could not be computed, then the upstream error's text;
    still an instance of the original exception's class.  Other errors (lost objects,
    cancellations) pass on as they are."""
    try:
        err = pickle.loads(blob)
    except Exception:  # noqa: BLE001 - a class that does not unpickle here: pass it on
        return blob
    if not isinstance(err, exc.RayTaskError):
        return blob
    from .. import serialization
    text = "  At least one of the input arguments for this task could not be computed:\n" + str(err)
    wrapped = exc.RayTaskError(call.name, text, err.cause, pid=err.pid, ip=err.ip)
    return serialization.dumps_error(wrapped.as_instanceof_cause())


def _dead_worker_error(call, where):
    return exc.WorkerCrashedError(
        f"The worker running task {call.name} died unexpectedly (killed, crashed, os._exit or out of "
        f"memory) and no retries are left (max_retries). Check the worker logs in {where}/logs.")


class Owner(ActorCalls):
    def __init__(self, worker_id, values, live, where=""):
        self.worker_id = worker_id
        self.values = values
        self.live = live
        self.where = where
        self.calls: dict[bytes, Call] = {}
        self.keys: dict[tuple, KeyQueue] = {}
        self.leases: dict[bytes, Lease] = {}
        self.oom_early: dict[bytes, str] = {}   # lease id -> why its worker was ended before its grant came
        self.actors: dict[bytes, Actor] = {}
        self.by_handle: dict[bytes, bytes] = {}
        self.lineage: dict[bytes, Call] = {}
        self.closing = False
        self._handlers = {}
        self._lease_counter = 0
        self.out = []
        self.trace = None       # a list: every state change is noted as (call, state) (task events)

    # --- the one entry point -----------------------------------------------------------------
    def handle(self, event):
        """Apply one event ``(name, *args)``; returns the actions to carry out, in order."""
        fn = self._handlers.get(event[0])
        if fn is None:
            fn = self._handlers[event[0]] = getattr(self, "on_" + event[0])
        fn(*event[1:])
        return self.take()

    def take(self):
        out, self.out = self.out, []
        return out

    def _to(self, call, state):
        assert state in TRANSITIONS[call.state], f"{call!r}: {call.state.name} -> {state.name} is not allowed"
        trace = self.trace
        if trace is not None and (call.traced or state == S.FAILED or (state == S.QUEUED and call.state >= S.PUSHED)):
            # task events: a call's usual path (queued, pushed, finished) is told by the worker that
            # ran it; the owner notes failures, retries and rebuilds, and every change of a call it
            # has reported as pending (``traced``, set by the recorder's flush)
            trace.append((call, state))
        call.state = state

    # --- submission ------------------------------------------------------------------------------
    def on_submit(self, call, missing):
        """A new task or actor call; ``missing``: its argument object ids not ready yet (the
        shell sends ``dep_ready`` for each as it arrives)."""
        self.calls[call.tid] = call
        call.deps_left = len(missing)
        if call.actor is not None:
            a = self._actor(call.actor)
            a.queue.append(call)
            if a.state == "dead":
                self._fail_actor_queue(a)
            elif a.state == "unknown":
                self._locate(a, 0)
            else:
                self._pump(a)
        elif call.deps_left == 0:
            self._ready(call)

    def on_task_written(self, call, lease):
        """A task another thread of this process wrote to the idle ``lease`` itself
        (TaskSubmitter.try_direct_task): in flight on it as if pushed here.  A lease dropped in
        the meantime still answers on its connection (and a lost connection fails the call as
        any lost worker does), so the call is followed on it all the same."""
        self.calls[call.tid] = call
        call.deps_left = 0
        self._to(call, S.QUEUED)
        lease.idle_timer = False
        self._to(call, S.PUSHED)
        call.lease = lease
        lease.inflight[call.tid] = call

    def on_dep_ready(self, tid):
        call = self.calls.get(tid)
        if call is None or call.deps_left <= 0:
            return
        call.deps_left -= 1
        if call.deps_left:
            return
        if call.actor is not None:
            a = self.actors.get(call.actor)
            if a is not None and a.state == "alive":
                self._pump(a)
        elif call.state == S.WAITING:
            self._ready(call)

    def _resolve_args(self, call):
        """Put the ready argument values into the spec; returns the error blob of an argument
        that holds an error (the call then fails without running), else None."""
        if not call.arg_refs:
            return None
        values = self.values
        resolved = []
        locality = None
        for pos, ref in call.arg_refs:
            kind, data = values[ref.id]
            if kind == "e":
                return _upstream_error(call, data)
            if kind == "s":
                locality = locality or {}
                locality[data[0]] = locality.get(data[0], 0) + data[1]
            resolved.append([pos, kind, data, ref.id, ref.owner])
        call.spec["refs"] = resolved
        call.locality = locality
        return None

    def _ready(self, call):
        failed = self._resolve_args(call)
        if failed is not None:
            self._fail_blob(call, failed)
            return
        self._enqueue(call)

    def _enqueue(self, call):
        a = call.spec["args"]
        if a[0] == "s":
            call.locality = call.locality or {}
            call.locality[a[2]] = call.locality.get(a[2], 0) + a[3]
        self._to(call, S.QUEUED)
        kq = self.keys.get(call.key)
        if kq is None:
            kq = self.keys[call.key] = KeyQueue(call.key, call.resources, call.strategy)
            kq.renv = call.renv
        kq.queue.append(call)
        self._dispatch(kq)

    # --- leases ----------------------------------------------------------------------------------
    def _dispatch(self, kq):
        queue = kq.queue
        while queue:
            best = None
            for lease in kq.leases:
                n = len(lease.inflight)
                if n < kq.depth and (best is None or n < len(best.inflight)):
                    best = lease
            if best is None:
                break
            self._push(best, queue.popleft())
        if queue:
            for _ in range(min(MAX_PENDING_LEASES, len(queue)) - len(kq.requests)):
                self._request_lease(kq)
        elif kq.requests and not kq.cancel_pending:
            # the queue emptied: give the requests up only if it stays empty for a moment
            # (submissions arrive one by one; cancelling at every gap loses the leases asked for)
            kq.cancel_pending = True
            self.out.append(("timer", LEASE_IDLE_S, ("requests_idle", kq.key)))

    def on_requests_idle(self, key):
        kq = self.keys.get(key)
        if kq is None:
            return
        kq.cancel_pending = False
        if kq.queue or not kq.requests:
            return
        for lease_id in list(kq.requests):
            self.out.append(("cancel_lease_request", lease_id))

    def _request_lease(self, kq):
        self._lease_counter += 1
        lease_id = self.worker_id + self._lease_counter.to_bytes(8, "big")
        kq.requests.add(lease_id)
        req = {"lease_id": lease_id, "resources": kq.resources}
        if kq.strategy:
            req["strategy"] = kq.strategy
        if kq.renv:
            req["renv"] = kq.renv
        if kq.queue and kq.queue[0].locality:
            req["locality"] = kq.queue[0].locality
        self.out.append(("request_lease", kq.key, lease_id, req, None))

    def on_lease_reply(self, key, lease_id, ok, grant, nm, req):
        """The answer to ``request_lease`` from node manager ``nm`` (None: the local one)."""
        kq = self.keys[key]
        if ok and isinstance(grant, dict) and "spillback" in grant:
            # another node is the better place: ask its node manager (once) instead
            self.out.append(("request_lease", key, lease_id, dict(req, no_spill=True), grant["spillback"]))
            return
        kq.requests.discard(lease_id)
        oom = self.oom_early.pop(lease_id, None) if self.oom_early else None   # (whatever the answer)
        if ok and isinstance(grant, dict) and "error" in grant:
            err = exc.RuntimeEnvSetupError(grant["message"]) if grant.get("type") == "RuntimeEnvSetupError" \
                else exc.TaskUnschedulableError(grant["message"])
            while kq.queue:
                self._fail(kq.queue.popleft(), err)
            return
        if not ok or grant is None:
            if self.closing:
                return
            if not ok:
                self.out.append(("log", "warning", f"lease request failed (will retry): {grant}"))
                self.out.append(("timer", RETRY_LEASE_S, ("redispatch", key)))
            elif kq.queue:
                self._dispatch(kq)
            return
        if oom is not None:
            # its worker was ended for memory before this grant arrived: nothing ran there yet
            self.out.append(("return_lease", lease_id, nm, True))
            self._oom_before_push(kq, oom)
            return
        if not kq.queue:
            self.out.append(("return_lease", lease_id, nm, False))
            return
        lease = Lease(lease_id, grant, nm, kq)
        self.leases[lease_id] = lease
        self.out.append(("connect_lease", lease_id, grant["address"]))

    def on_spill_unreachable(self, key, lease_id):
        """The node a spillback named could not be reached."""
        kq = self.keys[key]
        kq.requests.discard(lease_id)
        self.oom_early.pop(lease_id, None)
        self._dispatch(kq)

    def on_redispatch(self, key):
        kq = self.keys.get(key)
        if kq is not None and not self.closing:
            self._dispatch(kq)

    def on_lease_connected(self, lease_id, ok, err=None):
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        kq = lease.kq
        if not ok:
            del self.leases[lease_id]
            self.out.append(("forget_lease", lease_id))
            self.out.append(("log", "warning", f"could not reach leased worker {lease.grant['address']}: {err}"))
            self.out.append(("return_lease", lease_id, lease.nm, True))
            self._dispatch(kq)
            return
        kq.leases.append(lease)
        self._dispatch(kq)
        self._maybe_idle(lease)

    def on_lease_lost(self, lease_id):
        """The connection to a leased worker closed (it died, even while idle): push nothing more
        to it.  Calls in flight on it fail through their own replies (worker death, retries)."""
        lease = self.leases.get(lease_id)
        if lease is not None and not lease.dead:
            self._drop_lease(lease)
            if lease.kq.queue and not self.closing:
                self._dispatch(lease.kq)

    def _push(self, lease, call):
        lease.idle_timer = False
        self._to(call, S.PUSHED)
        call.lease = lease
        lease.inflight[call.tid] = call
        self.out.append(("push", lease.lease_id, call))

    def _maybe_idle(self, lease):
        if not lease.inflight and not lease.kq.queue and not lease.idle_timer and not lease.dead:
            lease.idle_timer = True
            self.out.append(("timer", LEASE_IDLE_S, ("lease_idle", lease.lease_id)))

    def on_lease_idle(self, lease_id):
        lease = self.leases.get(lease_id)
        if lease is None or not lease.idle_timer:
            return
        lease.idle_timer = False
        if lease.inflight or lease.dead:
            return
        self._drop_lease(lease)
        self.out.append(("return_lease", lease_id, lease.nm, False))

    def _drop_lease(self, lease):
        lease.dead = True
        self.leases.pop(lease.lease_id, None)
        self.out.append(("forget_lease", lease.lease_id))
        try:
            lease.kq.leases.remove(lease)
        except ValueError:
            pass

    # --- replies ---------------------------------------------------------------------------------
    def on_push_reply(self, lease_id, tid, ok, reply):
        call = self.calls.get(tid)
        if call is None or call.state != S.PUSHED or call.lease is None or call.lease.lease_id != lease_id:
            return
        lease = call.lease
        lease.inflight.pop(tid, None)
        kq = self.keys[call.key]
        if ok and reply.get("exiting") and not lease.dead:
            self._drop_lease(lease)       # the worker ends after this reply: push it nothing more
        if not ok:
            if not lease.dead:
                self._drop_lease(lease)
            self._worker_died(call, kq, lease)
        elif reply.get("bounced"):
            self._to(call, S.QUEUED)
            kq.queue.appendleft(call)
        elif reply.get("cancelled"):
            self._fail(call, exc.TaskCancelledError(call.tid.hex()))
        else:
            kq.avg_run = 0.8 * kq.avg_run + 0.2 * reply.get("dur", 0.0)
            kq.depth = PIPELINE_DEPTH if kq.avg_run < FAST_TASK_S and "max_calls" not in call.spec else 1
            if reply.get("app_error") and self._should_retry(call, reply):
                call.retries_left -= 1
                self._to(call, S.QUEUED)
                kq.queue.append(call)
            else:
                self._complete(call, reply)
        if not self.closing:
            self._dispatch(kq)
            if not lease.dead:
                self._maybe_idle(lease)

    def _should_retry(self, call, reply):
        if call.retries_left <= 0 or not call.retry_exc or call.cancelled:
            return False
        if call.retry_exc is True:
            return True
        try:
            err = pickle.loads(reply["rets"][0][1])
        except Exception:
            return False
        return isinstance(getattr(err, "cause", err), tuple(call.retry_exc))

    def on_lease_oom(self, lease_id, message):
        """The node manager is ending a leased worker for memory.  Calls in flight there fail
        with OutOfMemoryError (or are retried) when their replies fail; a lease that had run
        nothing yet (still connecting, idle, or its grant not here yet) costs the first queued
        call of its key the same, and the queue asks for another lease: never a call left
        waiting on a lease that is gone."""
        lease = self.leases.get(lease_id)
        if lease is None:
            if len(self.oom_early) < 1024 and any(lease_id in kq.requests for kq in self.keys.values()):
                self.oom_early[lease_id] = message     # granted, the grant still on its way
            return
        lease.oom = message
        self._drop_lease(lease)       # it is about to die: push it nothing more
        if not lease.inflight:
            self._oom_before_push(lease.kq, message)

    def _oom_before_push(self, kq, message):
        if kq.queue and not self.closing:
            self._ended_for_memory(kq.queue.popleft(), kq, message)
        if kq.queue and not self.closing:
            self._dispatch(kq)

    def _ended_for_memory(self, call, kq, message):
        """The memory monitor ended the worker ``call`` ran on (or was to run on): a retriable
        call runs again, first in line, on its own budget of memory retries (its max_retries are
        for crashes); the others fail with OutOfMemoryError."""
        if call.retries_left > 0 and call.oom_retries_left > 0 and not self.closing:
            call.oom_retries_left -= 1
            self.out.append(("log", "warning", f"{call.name} was ended for memory; retrying "
                                               f"({call.oom_retries_left} memory retries left)"))
            if call.state != S.QUEUED:
                self._to(call, S.QUEUED)
            kq.queue.appendleft(call)
        else:
            self._fail(call, exc.OutOfMemoryError(message))

    def _worker_died(self, call, kq, lease=None):
        if lease is not None and lease.oom and not call.cancelled:
            self._ended_for_memory(call, kq, lease.oom)
            return
        if call.cancelled:
            self._fail(call, exc.TaskCancelledError(call.tid.hex()))
        elif call.retries_left > 0 and not self.closing:
            call.retries_left -= 1
            self._retry_first(call, kq, "info", f"worker running {call.name} died; retrying "
                                                f"({call.retries_left} retries left)")
        else:
            self._fail(call, _dead_worker_error(call, self.where))

    def _retry_first(self, call, kq, level, why):
        """Queue a call that lost its worker again, ahead of the rest (it was first in line)."""
        self.out.append(("log", level, why))
        self._to(call, S.QUEUED)
        kq.queue.appendleft(call)

    def _complete(self, call, reply):
        rets = reply.get("rets", ())
        if "dynamic" in reply:
            self.out.append(("dynamic_returns", call.returns[0] if call.returns else None, call.tid, reply["dynamic"]))
            rets = ()
        live = self.live
        for oid, (kind, data) in zip(call.returns, rets):
            if oid in live:
                self.out.append(("store", oid, kind, data))
                if kind == "s" and call.retries_left > 0 and call.actor is None:
                    self.lineage[oid] = call
            elif kind == "s":
                self.out.append(("delete_stored", oid, data[0]))
        contained = reply.get("contained")
        if contained:
            by_outer = {}
            for idx, oid, owner in contained:
                by_outer.setdefault(call.returns[idx], []).append((oid, owner))
            for outer, inner in by_outer.items():
                if outer in live:
                    self.out.append(("set_contains", outer, inner, True))
        if "gen_count" in reply:
            self._end_generator(call, reply["gen_count"])
        self._to(call, S.FAILED if reply.get("app_error") else S.FINISHED)
        self._end(call)

    def _end_generator(self, call, count):
        self.out.append(("put", ids.object_id(call.tid, count + 1), "end", None))
        # ObjectRefGenerator.completed(): ready once the generator task has finished
        self.out.append(("put", ids.object_id(call.tid, 0), "v", _NONE))

    def _fail(self, call, err):
        from .. import serialization
        self._fail_blob(call, serialization.dumps_error(err))

    def _fail_blob(self, call, blob):
        if call.nret == "streaming":
            n = len(call.gen_seen or ())
            self.out.append(("put", ids.object_id(call.tid, n + 1), "e", blob))
            self._end_generator(call, n + 1)
        for oid in call.returns:
            if oid in self.live:
                self.out.append(("put", oid, "e", blob))
        if self.trace is not None:
            self.trace.append((call, blob))       # why it failed (the error as stored)
        self._to(call, S.FAILED)
        self._end(call)

    def _end(self, call):
        self.calls.pop(call.tid, None)
        call.lease = None
        if call.held[0]:
            self.out.append(("release", call.held[0]))
        if not self.calls:
            self.out.append(("idle",))

    # --- generators ------------------------------------------------------------------------------
    def on_gen_item(self, tid, idx, kind, data, contained):
        call = self.calls.get(tid)
        oid = ids.object_id(tid, idx)
        if call is None or call.gen_dropped:
            if kind == "s":
                self.out.append(("delete_stored", oid, data[0]))
            return
        if call.gen_seen is None:
            call.gen_seen = set()
        if idx in call.gen_seen:
            return
        call.gen_seen.add(idx)
        self.out.append(("own", oid))
        if contained:
            self.out.append(("set_contains", oid, [tuple(x) for x in contained], False))
        self.out.append(("put", oid, kind, data))

    def on_gen_dropped(self, tid):
        call = self.calls.get(tid)
        if call is not None:
            call.gen_dropped = True

    # --- cancellation, failures, lineage ---------------------------------------------------------
    def on_cancel(self, tid, force, recursive):
        call = self.calls.get(tid)
        if call is None:
            return
        if call.actor is not None:
            a = self.actors.get(call.actor)
            if a is None:
                return
            if call in a.queue:
                a.queue.remove(call)
                self._fail(call, exc.TaskCancelledError(call.tid.hex()))
            elif call.tid in a.inflight:
                call.cancelled = True
                self.out.append(("cancel_actor_call", call.actor, a.incarnation, call.tid))
            return
        call.cancelled = True
        if call.state == S.WAITING:
            self._fail(call, exc.TaskCancelledError(call.tid.hex()))
        elif call.state == S.QUEUED:
            kq = self.keys.get(call.key)
            try:
                kq.queue.remove(call)
            except (ValueError, AttributeError):
                pass
            self._fail(call, exc.TaskCancelledError(call.tid.hex()))
        elif call.state == S.PUSHED and call.lease is not None:
            self.out.append(("cancel_task", call.lease.lease_id, call.tid, bool(force), bool(recursive)))

    def on_cancel_children(self, parent_tid, force):
        """The task ``parent_tid`` running here was cancelled recursively: cancel what it submitted."""
        for call in [c for c in self.calls.values() if c.parent == parent_tid]:
            self.on_cancel(call.tid, force and call.actor is None, True)

    def on_infeasible(self, lease_id, missing):
        """Fail the tasks whose lease request no node can ever satisfy (the fail-fast option)."""
        for kq in self.keys.values():
            if lease_id in kq.requests:
                what = ", ".join(f"{k}: {v:g}" for k, v in missing.items())
                err = exc.TaskUnschedulableError(
                    f"No node in the cluster can run this task: it needs {{{what}}} more than any node has "
                    f"(resources asked: {kq.resources}). Lower the request or add a node with these resources.")
                self.out.append(("cancel_lease_request", lease_id))
                kq.requests.discard(lease_id)
                self.oom_early.pop(lease_id, None)
                while kq.queue:
                    self._fail(kq.queue.popleft(), err)
                return True
        return False

    def queued_for_lease_request(self, lease_id):
        """The calls waiting in the queue that lease request ``lease_id`` serves (read only: the
        shell notes why they wait, e.g. infeasible, in the task events)."""
        for kq in self.keys.values():
            if lease_id in kq.requests:
                return list(kq.queue)
        return []

    def on_fail_all(self, err):
        for call in list(self.calls.values()):
            if call.state in LIVE:
                self._detach(call)
                self._fail(call, err)

    def _detach(self, call):
        """Take a live call out of whatever queue or lease holds it."""
        if call.actor is not None:
            a = self.actors.get(call.actor)
            if a is not None:
                if call in a.queue:
                    a.queue.remove(call)
                a.inflight.pop(call.tid, None)
        elif call.state == S.QUEUED:
            kq = self.keys.get(call.key)
            if kq is not None and call in kq.queue:
                kq.queue.remove(call)
        elif call.state == S.PUSHED and call.lease is not None:
            call.lease.inflight.pop(call.tid, None)

    def on_object_freed(self, oid):
        self.lineage.pop(oid, None)

    def reconstruct(self, oid, node_id, why):
        """A stored return value was lost with its node: run its task again (lineage), or make
        the object an ObjectLostError naming the node.  Returns what happened."""
        v = self.values.get(oid)
        if v is None:
            return "pending"
        if v[0] != "s" or (node_id is not None and v[1][0] != node_id):
            return "ok"
        call = self.lineage.get(oid)
        if call is None or call.retries_left <= 0:
            where = node_id.hex() if node_id else "?"
            blob = pickle.dumps(exc.ObjectLostError(oid.hex(), "", message=(
                f"Object {oid.hex()} was lost: its only copy was on node {where}, which is gone ({why}), "
                + ("and it was made by put(), so it cannot be rebuilt." if call is None else
                   "and the task that made it has no retries left to rebuild it."))))
            self.out.append(("replace", oid, "e", blob))
            return "lost"
        call.retries_left -= 1
        for r in call.returns:
            self.lineage.pop(r, None)
            self.out.append(("forget", r))
        call.arg_refs = []
        call.held = ([], [])
        call.deps_left = 0
        self.out.append(("log", "info", f"rebuilding {oid.hex()} from lineage (task {call.name})"))
        self.calls[call.tid] = call
        self._enqueue(call)           # its arguments were resolved the first time (spec["refs"])
        return "resubmitted"

    def on_reconstruct(self, oid, node_id, why):
        self.reconstruct(oid, node_id, why)

    # --- diagnostics -----------------------------------------------------------------------------
    def describe(self, oid, now):
        """Why object ``oid`` (a return value of a call of ours) is not ready yet, in words."""
        call = self.calls.get(ids.task_of(oid))
        if call is None:
            return "not made by a pending task of this process (a put object, or its task already ended)"
        what = f"{call.name} (task {call.tid.hex()})"
        if call.state == S.WAITING:
            missing = [ref for _, ref in call.arg_refs if ref.id not in self.values]
            args = ", ".join(f"{ref.id.hex()} (owner {ref.owner})" for ref in missing[:5])
            return f"{what} is waiting for {len(missing)} argument(s): {args}"
        if call.actor is not None:
            a = self.actors.get(call.actor)
            where = f"actor {call.actor.hex()[:12]}"
            if call.state == S.PUSHED:
                ran = f" for {now - call.pushed_at:.1f} s" if call.pushed_at else ""
                return f"{what} is running in {where}{ran}"
            state = a.state if a is not None else "unknown"
            doing = {"unknown": "whose address is being asked of the GCS (it may be starting or "
                                "restarting, or waiting for resources)", "alive": "behind earlier calls",
                     "dead": "which is dead"}.get(state, state)
            return f"{what} is queued for {where}, {doing}"
        if call.state == S.QUEUED:
            kq = self.keys.get(call.key)
            n = len(kq.requests) if kq else 0
            return (f"{what} is waiting for resources {dict(call.resources)}: {n} lease request(s) pending "
                    f"at the node managers (no node has had room for it yet)")
        if call.state == S.PUSHED:
            ran = f" for {now - call.pushed_at:.1f} s" if call.pushed_at else ""
            addr = call.lease.grant.get("address") if call.lease is not None else "?"
            return f"{what} is running on worker {addr}{ran}"
        return f"{what} is {call.state.name.lower()}"

    # --- checks ----------------------------------------------------------------------------------
    def validate_state(self):
        """Check the invariants that tie calls, queues, leases and actors together."""
        placed = {}

        def place(call, where):
            assert call.tid not in placed, f"{call!r} is both in {placed[call.tid]} and {where}"
            placed[call.tid] = where
        for lease_id in self.oom_early:         # (noted only for a lease asked for and not granted yet)
            assert any(lease_id in kq.requests for kq in self.keys.values()), lease_id.hex()
        for kq in self.keys.values():
            assert len(kq.requests) <= MAX_PENDING_LEASES + 1, (kq.key, len(kq.requests))
            for call in kq.queue:
                assert call.state == S.QUEUED and call.actor is None, call
                place(call, f"queue {kq.key}")
            for lease in kq.leases:
                assert not lease.dead and self.leases.get(lease.lease_id) is lease, lease.lease_id
                assert len(lease.inflight) <= PIPELINE_DEPTH, lease.lease_id
                for call in lease.inflight.values():
                    assert call.state == S.PUSHED and call.lease is lease, call
                    place(call, f"lease {lease.lease_id.hex()}")
        for a in self.actors.values():
            for call in a.queue:
                assert call.state in (S.WAITING, S.QUEUED) and call.actor == a.actor_id, call
                place(call, f"actor {a.actor_id.hex()} queue")
            for call in a.inflight.values():
                assert call.state == S.PUSHED and call.actor == a.actor_id, call
                place(call, f"actor {a.actor_id.hex()} in flight")
            if a.state == "dead":
                assert not a.queue and not a.inflight, a.actor_id
        for tid, call in self.calls.items():
            assert call.state in LIVE, call
            assert call.retries_left >= 0, call
            assert call.deps_left >= 0, call
            if call.actor is None:
                if call.state == S.WAITING:
                    assert call.deps_left > 0 and tid not in placed, call
                elif call.state == S.PUSHED and call.lease is not None and call.lease.dead:
                    # in flight on a lease dropped (its worker lost or ended for memory): its
                    # reply, or the failed request, ends it
                    assert call.lease.inflight.get(tid) is call and tid not in placed, call
                else:
                    assert call.deps_left == 0 and tid in placed, call
            else:
                assert tid in placed, call
        for tid in placed:
            assert tid in self.calls, f"{tid.hex()} is queued or in flight but not a live call"
