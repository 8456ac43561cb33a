"""Task events and metric deltas of one process, batched to the GCS off the hot path.

    owner (I/O thread)  Owner.trace ──drained after each handle──▶ ┐
    executor            claim ─ "R" ; reply ─ "E" ─────────────────▶ Recorder.buf ──every FLUSH_S──▶
    user metrics        Counter.inc / Gauge.set / Histogram.observe ▶ registry      task_events (GCS)

Recording a state change costs one tuple appended to a list (no clock read on the owner's
side beyond one per ``handle``, no encoding); the I/O thread flushes the buffer at most every
FLUSH_S (and at exit) in one ``task_events`` notification, decoding error blobs only then.
``LUMINARY_TASK_EVENTS=0`` turns task events off (metrics still flow).

Event tuples on the wire (lists):
    ["S", tid, ts, name, actor_id, job, parent_tid, resources]   submitted (owner)
    ["T", tid, ts, state, node_id]                               owner state change (Owner.State)
    ["F", tid, ts, error_type, error_message]                    failed, seen by the owner
    ["R", tid, ts]                                               running here (worker)
    ["E", tid, ts, error_type, error_message]                    ended here (worker)
"""
from __future__ import annotations

import os
import pickle
import threading
import time

FLUSH_S = 0.1
MAX_BUFFER = 200_000     # events held between flushes; beyond that they are dropped and counted
ENABLED = os.environ.get("LUMINARY_TASK_EVENTS", "1") not in ("0", "false", "False", "")


def error_fields(blob):
    """(Ray's error_type, message) of a pickled error stored as a task's result."""
    try:
        err = pickle.loads(blob)
    except Exception as e:  # noqa: BLE001 - a class that does not unpickle here
        return "TASK_EXECUTION_EXCEPTION", f"(error not decodable here: {e})"
    return error_type(err), str(err)[:16384]


def error_type(err):
    from ... import exceptions as exc
    for cls, name in ((exc.TaskCancelledError, "TASK_CANCELLED"), (exc.ActorDiedError, "ACTOR_DIED"),
                      (exc.WorkerCrashedError, "WORKER_DIED"), (exc.TaskUnschedulableError, "TASK_UNSCHEDULABLE_ERROR"),
                      (exc.ObjectLostError, "OBJECT_LOST"), (exc.RayTaskError, "TASK_EXECUTION_EXCEPTION")):
        if isinstance(err, cls):
            return name
    return type(err).__name__


class Registry:
    """This process's metric deltas since the last flush (any thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.defs = {}          # name -> [kind, description, boundaries]
        self.sent_defs = set()
        self.values = {}        # (name, tags tuple) -> counter delta | gauge value | [buckets..., sum, count]

    def define(self, name, kind, description, boundaries=None):
        with self.lock:
            self.defs[name] = [kind, description, list(boundaries or ())]
            self.sent_defs.discard(name)

    def add(self, name, tags, value):
        key = (name, tags)
        with self.lock:
            self.values[key] = self.values.get(key, 0.0) + value

    def set(self, name, tags, value):
        with self.lock:
            self.values[(name, tags)] = value

    def observe(self, name, tags, value, boundaries):
        key = (name, tags)
        with self.lock:
            h = self.values.get(key)
            if h is None:
                h = self.values[key] = [0] * (len(boundaries) + 1) + [0.0, 0]
            i = 0
            while i < len(boundaries) and value > boundaries[i]:
                i += 1
            h[i] += 1
            h[-2] += value
            h[-1] += 1

    def take(self):
        """[["def", name, kind, description, boundaries], [name, tags, value], ...] or []."""
        with self.lock:
            if not self.values and len(self.sent_defs) == len(self.defs):
                return []
            out = [["def", n, *d] for n, d in self.defs.items() if n not in self.sent_defs]
            self.sent_defs.update(self.defs)
            values, self.values = self.values, {}
        out.extend([n, [list(t) for t in tags], v] for (n, tags), v in values.items())
        return out


REGISTRY = Registry()


class Recorder:
    """One per core worker; ``core.events``."""

    def __init__(self, core, kind):
        self.core = core
        self.kind = kind
        self.buf = []
        self.dropped = 0
        self.armed = False
        self.closed = False
        self.enabled = ENABLED

    def start(self):
        """After the core connected: say hello (so the GCS lists this process) and tie the
        owner's trace to this buffer."""
        if self.enabled:
            self.core.submitter.owner.trace = []
        self.core.io.post(self._flush)

    def proc(self):
        c = self.core
        return {"wid": c.worker_id, "pid": os.getpid(), "node": c.node_id, "kind": self.kind,
                "addr": c.address, "job": c.job_id, "start": self._start_ts()}

    def _start_ts(self):
        ts = getattr(self, "_started", None)
        if ts is None:
            ts = self._started = time.time()
        return ts

    # --- recording (any thread) ----------------------------------------------------------------
    def _arm(self):
        self.armed = True
        io = self.core.io
        if io.in_loop():
            io.loop.call_later(FLUSH_S, self._flush)
        else:
            io.post(lambda: io.loop.call_later(FLUSH_S, self._flush))

    def add(self, ev):
        buf = self.buf
        if len(buf) >= MAX_BUFFER:
            self.dropped += 1
            return
        buf.append(ev)
        if not self.armed:
            self._arm()

    def submitted(self, call):
        if self.enabled:
            spec = call.spec
            self.add(("S", call.tid, time.time(), call.name, call.actor, spec.get("job"), call.parent,
                      call.resources))

    def owner_trace(self, trace):
        """The owner's state changes of one ``handle`` (I/O thread)."""
        ts = time.time()
        add = self.add
        for call, x in trace:
            if x.__class__ is bytes:
                add(("F", call.tid, ts, x))
            elif x == 2 and call.lease is not None:          # PUSHED: on a leased worker of node N
                add(("T", call.tid, ts, 2, call.lease.grant.get("node_id")))
            else:
                add(("T", call.tid, ts, int(x), None))
        trace.clear()

    def running(self, tid):
        if self.enabled:
            self.add(("R", tid, time.time()))

    def ended(self, tid, reply):
        if self.enabled:
            err = reply["rets"][0][1] if reply.get("app_error") and reply.get("rets") else None
            self.add(("E", tid, time.time(), err))

    # --- flushing (I/O thread) -----------------------------------------------------------------
    def _encode(self, events):
        out = []
        for ev in events:
            k = ev[0]
            if k == "F" or (k == "E" and ev[3] is not None):
                out.append([k, ev[1], ev[2], *error_fields(ev[3])])
            elif k == "E":
                out.append(["E", ev[1], ev[2], None, None])
            else:
                out.append(list(ev))
        return out

    def _flush(self):
        self.armed = False
        core = self.core
        gcs = getattr(core, "gcs", None)
        if gcs is None or gcs.closed:
            return
        events, self.buf = self.buf, []
        payload = {"proc": self.proc(), "events": self._encode(events)}
        metrics = REGISTRY.take()
        if metrics:
            payload["metrics"] = metrics
        if self.dropped:
            payload["dropped"], self.dropped = self.dropped, 0
        gcs.notify("task_events", payload)
        if REGISTRY.values and not self.armed:
            self._arm()

    def flush_now(self):
        """At exit, from any thread: send what is buffered (waits up to a second)."""
        if self.closed:
            return
        self.closed = True
        io = self.core.io
        if io.in_loop():
            self._flush()
            return
        done = threading.Event()

        def go():
            try:
                self._flush()
                gcs = getattr(self.core, "gcs", None)
                if gcs is not None and not gcs.closed:
                    gcs._flush()
            finally:
                done.set()
        try:
            io.post(go)
            done.wait(1.0)
        except Exception:  # noqa: BLE001 - the loop is already gone
            pass


# --- handlers on every core worker -------------------------------------------------------------------
def list_objects(core):
    """This process's view of the objects it references (for list_objects / ``luminary memory``)."""
    values = core.memory.values
    out = []
    for oid, e in list(core.refs.entries.items()):
        v = values.get(oid)
        size, where, kind = None, None, None
        if v is not None:
            kind = v[0]
            if kind == "s":
                where, size = v[1][0], v[1][1]
            elif kind in ("v", "e") and isinstance(v[1], (bytes, bytearray)):
                size, where = len(v[1]), core.node_id
        if e.local:
            ref = "LOCAL_REFERENCE"
        elif e.submitted:
            ref = "USED_BY_PENDING_TASK"
        elif e.contained:
            ref = "CAPTURED_IN_OBJECT"
        elif e.borrowers:
            ref = "BORROWED"
        else:
            ref = "PINNED_IN_MEMORY"
        out.append({"oid": oid, "owned": bool(e.owned), "owner": e.owner, "size": size,
                    "node": where, "kind": kind, "ref": ref, "local": e.local, "submitted": e.submitted,
                    "contained": e.contained, "borrowers": len(e.borrowers or ())})
    return {"wid": core.worker_id, "pid": os.getpid(), "node": core.node_id, "addr": core.address, "kind": core.events.kind,
            "objects": out}
