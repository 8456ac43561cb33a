"""Task submission on the owner's I/O thread: resolve arguments, lease workers, push, retry.

    submit ─▶ WAITING (top-level ObjectRef args not ready) ─▶ QUEUED in its scheduling key
          ─▶ PUSHED to a leased worker ─▶ reply ─▶ values stored, refs released
                    │ connection lost: retry while max_retries lasts, else WorkerCrashedError
                    │ bounced (the worker blocked in get): back to the head of the queue
                    │ cancelled: TaskCancelledError, never retried

Each scheduling key (the resource shape) has a queue and the leases granted for it.  Short tasks
are pipelined (several in flight per lease); long ones get one in flight per lease so new leases
share the work.  A lease idle for LEASE_IDLE_S goes back to the node manager.
"""
from __future__ import annotations

import collections
import logging
import pickle
import time

from ... import exceptions as exc
from .. import ids
from ..config import MAX_PENDING_LEASES, PIPELINE_DEPTH

logger = logging.getLogger(__name__)

WAITING, QUEUED, PUSHED, DONE = "waiting", "queued", "pushed", "done"
_NONE = pickle.dumps(None, 5)
LEASE_IDLE_S = 0.01
FAST_TASK_S = 0.001


class Task:
    __slots__ = ("tid", "spec", "fid", "fn_blob", "key", "resources", "returns", "nret", "retries_left",
                 "retry_exc", "arg_refs", "held", "state", "lease", "cancelled", "name", "deps_left",
                 "gen_seen", "gen_dropped", "pushed_at", "strategy", "locality")

    def __init__(self, tid, spec, fid, fn_blob, resources, returns, nret, max_retries, retry_exc,
                 arg_refs, held, name):
        self.tid = tid
        self.spec = spec
        self.fid = fid
        self.fn_blob = fn_blob
        self.resources = resources
        self.strategy = None
        self.locality = None
        self.key = tuple(sorted(resources.items()))
        self.returns = returns
        self.nret = nret
        self.retries_left = max_retries
        self.retry_exc = retry_exc
        self.arg_refs = arg_refs
        self.held = held
        self.state = WAITING
        self.lease = None
        self.cancelled = False
        self.name = name
        self.deps_left = 0
        self.gen_seen = None
        self.gen_dropped = False
        self.pushed_at = 0.0


class KeyQueue:
    __slots__ = ("key", "resources", "queue", "leases", "requests", "avg_run", "depth", "strategy",
                 "cancel_pending")

    def __init__(self, key, resources):
        self.key = key
        self.resources = resources
        self.queue = collections.deque()
        self.leases = []
        self.requests = set()
        self.avg_run = 0.1
        self.depth = 1
        self.strategy = None
        self.cancel_pending = False


class LeaseConn:
    __slots__ = ("lease_id", "worker_id", "address", "conn", "inflight", "kq", "idle_handle", "dead", "gpu_ids", "nm")

    def __init__(self, lease_id, grant, conn, kq):
        self.lease_id = lease_id
        self.worker_id = grant["worker_id"]
        self.address = grant["address"]
        self.gpu_ids = grant.get("gpu_ids", [])
        self.conn = conn
        self.inflight = {}
        self.kq = kq
        self.idle_handle = None
        self.dead = False


class TaskSubmitter:
    def __init__(self, core):
        self.core = core
        self.tasks: dict[bytes, Task] = {}
        self.keys: dict[tuple, KeyQueue] = {}
        self.fetching = set()
        self.lineage = {}
        self._lease_counter = 0
        self._idle_events = []     # threading.Events set when no submitted task is left

    def wait_idle(self, timeout):
        """From the main thread: wait until every task and actor call submitted here finished."""
        import threading
        ev = threading.Event()

        def check():
            if not self.tasks:
                ev.set()
            else:
                self._idle_events.append(ev)
        self.core.io.post(check)
        return ev.wait(timeout)

    # --- submission -----------------------------------------------------------------------------
    def submit(self, task: Task):
        core = self.core
        core.refs.add_submitted(*task.held) if task.held[0] else None
        self.tasks[task.tid] = task
        if self.watch_deps(task, lambda t=task: self._dep_ready(t)) == 0:
            self._ready(task)

    def watch_deps(self, task, on_ready):
        """Count the top-level ObjectRef arguments not ready yet; ``on_ready()`` runs as each
        arrives (borrowed ones are fetched from their owners).  Shared by tasks and actor calls."""
        core = self.core
        values = core.memory.values
        for pos, ref in task.arg_refs:
            if ref.id not in values:
                task.deps_left += 1
                core.memory.on_ready(ref.id, lambda o, k, d: on_ready())
                if ref.owner != core.address:
                    core._fetch_if_missing(ref.id, ref.owner)
        return task.deps_left

    def resolve_args(self, task):
        """Put the ready argument values into the spec; returns the error blob of an argument
        that holds an error (the task then fails without running), else None."""
        if not task.arg_refs:
            return None
        values = self.core.memory.values
        resolved = []
        locality = None
        for pos, ref in task.arg_refs:
            kind, data = values[ref.id]
            if kind == "e":
                return data
            if kind == "s":
                locality = locality or {}
                locality[data[0]] = locality.get(data[0], 0) + data[1]
            resolved.append([pos, kind, data, ref.id, ref.owner])
        task.spec["refs"] = resolved
        task.locality = locality
        return None

    def _dep_ready(self, task):
        task.deps_left -= 1
        if task.deps_left == 0 and task.state == WAITING:
            self._ready(task)

    def _ready(self, task):
        failed = self.resolve_args(task)
        if failed is not None:
            self._finish_error_blob(task, failed)
            return
        if task.spec["args"][0] == "s":
            a = task.spec["args"]
            task.locality = task.locality or {}
            task.locality[a[2]] = task.locality.get(a[2], 0) + a[3]
        task.state = QUEUED
        kq = self.keys.get(task.key)
        if kq is None:
            kq = self.keys[task.key] = KeyQueue(task.key, task.resources)
            kq.strategy = task.strategy
        kq.queue.append(task)
        self._dispatch(kq)

    def _dispatch(self, kq: KeyQueue):
        queue = kq.queue
        while queue:
            best = None
            for lc in kq.leases:
                n = len(lc.inflight)
                if n < kq.depth and (best is None or n < len(best.inflight)):
                    best = lc
            if best is None:
                break
            self._push(best, queue.popleft())
        if queue:
            want = min(MAX_PENDING_LEASES, len(queue)) - len(kq.requests)
            for _ in range(want):
                self._request_lease(kq)
        elif kq.requests and not kq.cancel_pending:
            # the queue emptied: give up the lease requests only if it stays empty for a moment
            # (submissions arrive one by one; cancelling at every gap loses the leases we asked for)
            kq.cancel_pending = True
            self.core.io.loop.call_later(LEASE_IDLE_S, self._cancel_requests_if_idle, kq)

    def _cancel_requests_if_idle(self, kq):
        kq.cancel_pending = False
        if kq.queue or not kq.requests:
            return
        for lease_id in list(kq.requests):
            self.core.nm.request("cancel_lease_request", {"lease_id": lease_id}, lambda ok, r: None)
            for c in self.core.conns.values():
                if c.state.get("is_nm"):
                    c.request("cancel_lease_request", {"lease_id": lease_id}, lambda ok, r: None)

    def _request_lease(self, kq):
        self._lease_counter += 1
        lease_id = self.core.worker_id + self._lease_counter.to_bytes(8, "big")
        kq.requests.add(lease_id)
        req = {"lease_id": lease_id, "resources": kq.resources}
        if kq.strategy:
            req["strategy"] = kq.strategy
        if kq.queue and kq.queue[0].locality:
            req["locality"] = kq.queue[0].locality
        nm = self.core.nm
        nm.request("request_lease", req, lambda ok, r: self._on_grant(kq, lease_id, ok, r, nm, req))

    def _on_grant(self, kq, lease_id, ok, grant, nm=None, req=None):
        if ok and isinstance(grant, dict) and "spillback" in grant:
            # another node is a better place: ask its node manager (once) instead
            def connected(conn, err):
                if conn is None:
                    kq.requests.discard(lease_id)
                    self._dispatch(kq)
                    return
                conn.state["is_nm"] = True
                again = dict(req, no_spill=True)
                conn.request("request_lease", again, lambda ok2, r2: self._on_grant(kq, lease_id, ok2, r2, conn, again))
            self.core.with_conn(grant["spillback"], connected)
            return
        kq.requests.discard(lease_id)
        if ok and isinstance(grant, dict) and "error" in grant:
            while kq.queue:
                self._finish_error(kq.queue.popleft(), exc.TaskUnschedulableError(grant["message"]))
            return
        nm = nm or self.core.nm
        if not ok or grant is None:
            if not ok and not self.core.shutting_down:
                logger.warning("lease request failed (will retry): %s", grant)
                self.core.io.loop.call_later(0.1, self._dispatch, kq)
            elif kq.queue and not self.core.shutting_down:
                self._dispatch(kq)
            return
        if not kq.queue:
            nm.notify("return_lease", {"lease_id": lease_id})
            return

        def connected(conn, err):
            if conn is None:
                logger.warning("could not reach leased worker %s: %s", grant["address"], err)
                nm.notify("return_lease", {"lease_id": lease_id, "kill": True})
                self._dispatch(kq)
                return
            lc = LeaseConn(lease_id, grant, conn, kq)
            lc.nm = nm
            kq.leases.append(lc)
            self._dispatch(kq)
            self._maybe_idle(lc)
        self.core.with_conn(grant["address"], connected)

    def _push(self, lc: LeaseConn, task: Task):
        if lc.idle_handle is not None:
            lc.idle_handle.cancel()
            lc.idle_handle = None
        task.state = PUSHED
        task.lease = lc
        lc.inflight[task.tid] = task
        spec = task.spec
        fns = lc.conn.state.get("fns")
        if fns is None:
            fns = lc.conn.state["fns"] = set()
        if task.fid not in fns:
            if not fns:
                spec = dict(spec, path=self.core.code_path())
            fns.add(task.fid)
            spec = dict(spec, fn=task.fn_blob)
        if lc.gpu_ids:
            spec = dict(spec, gpus=lc.gpu_ids)
        task.pushed_at = time.perf_counter()
        lc.conn.request("push_task", spec, lambda ok, r: self._on_reply(lc, task, ok, r))

    def _maybe_idle(self, lc):
        if not lc.inflight and not lc.kq.queue and lc.idle_handle is None and not lc.dead:
            lc.idle_handle = self.core.io.loop.call_later(LEASE_IDLE_S, self._return_lease, lc)

    def _return_lease(self, lc):
        lc.idle_handle = None
        if lc.inflight or lc.dead:
            return
        lc.dead = True
        try:
            lc.kq.leases.remove(lc)
        except ValueError:
            pass
        if not lc.nm.closed:
            lc.nm.notify("return_lease", {"lease_id": lc.lease_id})

    # --- replies ---------------------------------------------------------------------------------
    def _on_reply(self, lc, task, ok, reply):
        lc.inflight.pop(task.tid, None)
        kq = lc.kq
        if not ok:
            if not lc.dead:
                lc.dead = True
                try:
                    kq.leases.remove(lc)
                except ValueError:
                    pass
            self._worker_died(task)
        elif reply.get("bounced"):
            task.state = QUEUED
            kq.queue.appendleft(task)
        elif reply.get("cancelled"):
            self._finish_error(task, exc.TaskCancelledError(task.tid.hex()))
        else:
            run = reply.get("dur", 0.0)
            kq.avg_run = 0.8 * kq.avg_run + 0.2 * run
            kq.depth = PIPELINE_DEPTH if kq.avg_run < FAST_TASK_S else 1
            if reply.get("app_error") and self._should_retry_app_error(task, reply):
                task.retries_left -= 1
                task.state = QUEUED
                kq.queue.append(task)
            else:
                self._complete(task, reply)
        if not self.core.shutting_down:
            self._dispatch(kq)
            if not lc.dead:
                self._maybe_idle(lc)

    def _should_retry_app_error(self, task, reply):
        if task.retries_left <= 0 or not task.retry_exc or task.cancelled:
            return False
        if task.retry_exc is True:
            return True
        try:
            err = pickle.loads(reply["rets"][0][1])
        except Exception:
            return False
        cause = getattr(err, "cause", err)
        return isinstance(cause, tuple(task.retry_exc))

    def _worker_died(self, task):
        if task.cancelled:
            self._finish_error(task, exc.TaskCancelledError(task.tid.hex()))
        elif task.retries_left > 0 and not self.core.shutting_down:
            task.retries_left -= 1
            logger.info("worker running %s died; retrying (%d retries left)", task.name, task.retries_left)
            task.state = QUEUED
            kq = self.keys[task.key]
            kq.queue.appendleft(task)
        else:
            self._finish_error(task, exc.WorkerCrashedError(
                f"The worker running task {task.name} died unexpectedly (killed, crashed, "
                f"os._exit or out of memory) and no retries are left (max_retries). "
                f"Check the worker logs in {self.core.session_dir}/logs."))

    def _complete(self, task, reply):
        core = self.core
        entries = core.refs.entries
        rets = reply.get("rets", ())
        if "dynamic" in reply:
            from .object_ref import DynamicObjectRefGenerator, ObjectRef
            n = reply["dynamic"]
            items = [ids.object_id(task.tid, i + 2) for i in range(n)]
            val = DynamicObjectRefGenerator([ObjectRef(o, core.address, _register=False) for o in items])
            rets = [["v", pickle.dumps(val, 5)]]
            if task.returns and task.returns[0] in entries:
                core.refs.set_contains(task.returns[0], [(o, core.address) for o in items])
        for oid, (kind, data) in zip(task.returns, rets):
            if oid in entries:
                if not core.memory.put(oid, kind, data):
                    core.memory.replace(oid, kind, data)      # a reconstructed value
                if kind == "s" and task.retries_left > 0 and "actor" not in task.spec:
                    self.lineage[oid] = task
            elif kind == "s":
                core.delete_stored([(oid, data[0])])
        contained = reply.get("contained")
        if contained:
            by_outer = {}
            for idx, oid, owner in contained:
                by_outer.setdefault(task.returns[idx], []).append((oid, owner))
            for outer, inner in by_outer.items():
                if outer in entries:
                    core.refs.set_contains(outer, inner)
                    for oid, _ in inner:
                        core.refs.mark_registered(oid)
        if "gen_count" in reply:
            self._end_generator(task, reply["gen_count"])
        self._done(task)

    def _end_generator(self, task, count):
        end = ids.object_id(task.tid, count + 1)
        self.core.memory.put(end, "end", None)
        # ObjectRefGenerator.completed(): ready (None) once the generator task has finished
        self.core.memory.put(ids.object_id(task.tid, 0), "v", _NONE)

    def _finish_error(self, task, err):
        from .. import serialization
        self._finish_error_blob(task, serialization.dumps_error(err))

    def _finish_error_blob(self, task, blob):
        if task.nret == "streaming":
            n = len(task.gen_seen or ())
            self.core.memory.put(ids.object_id(task.tid, n + 1), "e", blob)
            self._end_generator(task, n + 1)
        for oid in task.returns:
            if oid in self.core.refs.entries:
                self.core.memory.put(oid, "e", blob)
        self._done(task)

    def _done(self, task):
        task.state = DONE
        self.tasks.pop(task.tid, None)
        if not self.tasks and self._idle_events:
            for ev in self._idle_events:
                ev.set()
            self._idle_events = []
        if task.held[0]:
            actions = []
            self.core.refs.remove_submitted(task.held[0], actions)
            if actions:
                self.core.run_actions(actions)

    # --- generators ------------------------------------------------------------------------------
    def h_gen_item(self, conn, p):
        tid, idx = p["tid"], p["idx"]
        kind, data = p["ret"]
        task = self.tasks.get(tid)
        if task is None or task.gen_dropped:
            if kind == "s":
                self.core.delete_stored([(ids.object_id(tid, idx), data[0])])
            return
        if task.gen_seen is None:
            task.gen_seen = set()
        if idx in task.gen_seen:
            return
        task.gen_seen.add(idx)
        oid = ids.object_id(tid, idx)
        self.core.refs.add_owned(oid)
        if p.get("contained"):
            self.core.refs.set_contains(oid, [tuple(x) for x in p["contained"]])
        self.core.memory.put(oid, kind, data)

    def drop_generator(self, tid, next_idx):
        task = self.tasks.get(tid)
        if task is not None:
            task.gen_dropped = True
        idx = next_idx
        while True:
            oid = ids.object_id(tid, idx)
            v = self.core.memory.values.get(oid)
            if v is None:
                break
            self.core.memory.delete(oid)
            e = self.core.refs.entries.get(oid)
            if e is not None and not e.in_use():
                actions = []
                self.core.refs._release(oid, e, actions)
                self.core.run_actions(actions)
            elif v[0] == "s":
                self.core.delete_stored([(oid, v[1][0])])
            idx += 1

    # --- cancel, blocking, failure -------------------------------------------------------------------
    def cancel(self, oid, force, recursive):
        task = self.tasks.get(ids.task_of(oid))
        if task is None or task.state == DONE:
            return
        if "actor" in task.spec:
            self.core.actor_submitter.cancel(task, force)
            return
        task.cancelled = True
        if task.state == WAITING:
            self._finish_error(task, exc.TaskCancelledError(task.tid.hex()))
        elif task.state == QUEUED:
            kq = self.keys.get(task.key)
            try:
                kq.queue.remove(task)
            except (ValueError, AttributeError):
                pass
            self._finish_error(task, exc.TaskCancelledError(task.tid.hex()))
        elif task.state == PUSHED and task.lease is not None:
            task.lease.conn.notify("cancel_task", {"tid": task.tid, "force": bool(force), "recursive": bool(recursive)})

    def reconstruct(self, oid, node_id, why):
        """A stored return value was lost with its node: run its task again (lineage), or make
        the object an ObjectLostError naming the node."""
        core = self.core
        v = core.memory.values.get(oid)
        if v is None:
            return "pending"
        if v[0] != "s" or (node_id is not None and v[1][0] != node_id):
            return "ok"
        task = self.lineage.get(oid)
        if task is None or task.retries_left <= 0:
            where = node_id.hex() if node_id else "?"
            core.memory.replace(oid, "e", pickle.dumps(exc.ObjectLostError(oid.hex(), core.address, message=(
                f"Object {oid.hex()} was lost: its only copy was on node {where}, which is gone ({why}), "
                + ("and it was made by put(), so it cannot be rebuilt." if task is None else
                   "and the task that made it has no retries left to rebuild it.")))))
            return "lost"
        task.retries_left -= 1
        for r in task.returns:
            self.lineage.pop(r, None)
            core.memory.delete(r)
        t = Task(task.tid, task.spec, task.fid, task.fn_blob, task.resources, task.returns, task.nret,
                 task.retries_left, task.retry_exc, [], ([], []), task.name)
        t.strategy = task.strategy
        logger.info("rebuilding %s from lineage (task %s)", oid.hex(), task.name)
        self.tasks[t.tid] = t
        self._ready(t)
        return "resubmitted"

    def fail_infeasible(self, p):
        """With _system_config={"infeasible_tasks": "fail"}: fail the tasks no node can ever run."""
        for kq in self.keys.values():
            if p["lease_id"] in kq.requests:
                missing = ", ".join(f"{k}: {v:g}" for k, v in p["missing"].items())
                err = exc.TaskUnschedulableError(
                    f"No node in the cluster can run this task: it needs {{{missing}}} more than any node has "
                    f"(resources asked: {kq.resources}). Lower the request or add a node with these resources.")
                self.core.nm.request("cancel_lease_request", {"lease_id": p["lease_id"]}, lambda ok, r: None)
                kq.requests.discard(p["lease_id"])
                while kq.queue:
                    self._finish_error(kq.queue.popleft(), err)
                return True
        return False

    def on_blocked(self):
        core = self.core
        core.nm.notify("blocked", None)
        if getattr(core, "executor", None) is not None:
            core.executor.bounce_queued()

    def on_object_freed(self, oid):
        self.fetching.discard(oid)

    def fail_all(self, err):
        for task in list(self.tasks.values()):
            if task.state != DONE:
                self._finish_error(task, err)
