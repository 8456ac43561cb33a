"""Task events and metric deltas of one process, batched to the GCS off the hot path.

    owner (I/O thread)  submitted calls, Owner.trace (unusual changes) ─┐
    executor            started, ended (with the spec's submission) ───┼─▶ Recorder ──every FLUSH_S──▶
    user metrics        Counter.inc / Gauge.set / Histogram.observe ──▶ registry      task_events (GCS)

A call's usual path is told by the worker that ran it: the owner stamps the spec with
``ev`` = submitted at (and ``par`` = the task that submitted it, if any), and the worker's
record carries them.  The owner reports only what the worker cannot know: calls still pending a
flush interval after their submission (traced from then on), failures it decides, retries and
rebuilds (``Owner._to``).  So a short call costs its owner a list append and one look at a
flush.  The buffers hold plain values (ids, times, sizes), never a call or its spec: keeping
those alive until a flush made every call survive a young garbage collection and cost the
older ones, about 3 µs a call.  The I/O thread flushes at most every FLUSH_S (and at exit) in
one ``task_events`` notification (msgpack bytes; the GCS decodes them when asked), decoding
error blobs only then.
``LUMINARY_TASK_EVENTS=0`` turns task events off (metrics still flow).

Records, one per task per batch:
    ["O", tid, info, [state, ts, state, ts, ...], node_id, error_type, error_message]   owner side
        info: [name, actor_id, job, parent_tid, resources, submitted_ts, args_bytes, n_ref_args]
              (the GCS takes the first one); args_bytes: the serialized arguments' size (inline or in the store),
              n_ref_args: how many top-level ObjectRef arguments (their values are not counted)
        state: owner.State (WAITING, QUEUED, PUSHED, FINISHED, FAILED)
    ["W", tid, started_ts, ended_ts, error_type, error_message, info]                  worker side
        info (when it ended): the owner's info fields plus the owner's worker id; parent and
        submitted_ts are None for a call its owner did not stamp
    ["E", [name, actor, job, parent, resources, owner worker id], [tid, started, ended,
          submitted_ts, args, tid, ...], offset]                  worker side, clean ends by group
        five values per call (args: args_bytes << 16 | n_ref_args; started and ended on the
        worker's monotonic clock: offset + them is the wall clock), the group's fields once: a
        batch of a thousand calls of one caller's method is one header and a flat list, about
        half the bytes of "W" records and no container per call for either side to build
An owner record gets an eighth field, why the task waits (e.g. "infeasible: ..."), when the
owner learns it (``note_reason``: rare, off the per-call path).
"""
from __future__ import annotations

import os
import pickle
import threading
import time

import msgpack

_packb = msgpack.Packer(use_bin_type=True).pack
_time = time.time
_mono = time.monotonic

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
    """One per core worker; ``core.events``.

    The owner's changes of one ``handle`` are folded into one record per task with one clock
    read (``owner_trace``); a call that ends appends one tuple of plain values, and the calls
    running at a flush are read from the executor's table.  Records are packed once per flush, and the GCS keeps the packed bytes
    until someone asks (gcs/task_table.py)."""

    def __init__(self, core, kind):
        self.core = core
        self.kind = kind
        self.recs = {}          # tid -> owner-side record (I/O thread)
        # ids of the calls submitted since the last flush, and in the interval before (looked at
        # by the next flush, a flush interval or more after their submission): plain values, not
        # the calls, so a call's objects die when it ends, never promoted to an older
        # garbage-collector generation by this buffer
        self.new = []
        self.prev = []
        # the worker records of answered calls (any thread adds, under ``lock``): clean ends
        # by group (``ended``), failures one record each
        self.lock = threading.Lock()
        self.groups = {}
        self.failed = []
        self.nends = 0
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

    # --- recording -----------------------------------------------------------------------------
    def _arm(self):
        self.armed = True
        io = self.core.io
        if io.in_loop():
            io.loop.call_later(FLUSH_S, self._flush)
        else:
            io.post(lambda: io.loop.call_later(FLUSH_S, self._flush))

    def submitted(self, call):
        """A new task or actor call (I/O thread, before the owner handles it).  Its submission
        travels in its spec (``ev``: the time, ``par``: the parent task) to the worker that runs it (any thread: a
        direct call is stamped by its caller's thread), whose record tells
        the usual path; the flush reports it from here only while it is still pending."""
        spec = call.spec
        spec["ev"] = _time()
        if call.parent is not None:
            spec["par"] = call.parent         # (a field of its own: no list to make and decode)
        self.new.append(call.tid)
        if not self.armed:
            self._arm()

    def owner_trace(self, trace):
        """The owner's state changes of one ``handle`` (I/O thread), folded into one record per
        task with this handle's timestamp; returns the (emptied) list the owner traces into."""
        ts = time.time()
        recs = self.recs
        get = recs.get
        for call, x in trace:
            r = get(call.tid)
            if r is None:
                if len(recs) >= MAX_BUFFER:
                    self.dropped += 1
                    continue
                # (rare: a failure, a retry, a rebuild or a call reported pending) with its
                # submission, which the GCS takes once
                r = recs[call.tid] = ["O", call.tid, _info(call), [], None, None, None]
            if x.__class__ is bytes:
                r[5] = x                                  # the error it failed with (decoded at flush)
            else:
                r[3] += (x, ts)                           # an owner.State (an int on the wire)
                if x == 2 and call.lease is not None:     # PUSHED: on a leased worker of node N
                    r[4] = call.lease.grant.get("node_id")
        trace.clear()
        if not self.armed:
            self._arm()
        return trace

    def note_reason(self, calls, reason):
        """Why ``calls`` wait (I/O thread; e.g. a node manager said no node has the resources):
        sent as the eighth field of their owner records."""
        if not self.enabled or not calls:
            return
        recs = self.recs
        for call in calls:
            r = recs.get(call.tid)
            if r is None:
                if len(recs) >= MAX_BUFFER:
                    self.dropped += 1
                    continue
                r = recs[call.tid] = ["O", call.tid, _info(call), [], None, None, None]
            if len(r) == 7:
                r.append(reason)
            else:
                r[7] = reason
        if not self.armed:
            self._arm()

    def running(self):
        """The executor starts running a call (any thread): the next flush reports the calls
        running then (from the executor's table, see ``_worker_records``), so nothing is kept
        per call here."""
        if self.enabled and not self.armed:
            self._arm()

    def ended(self, t, reply):
        """The executor answers the call ``t`` (an ExecTask; any thread).  A clean end goes into
        its group (same name, owner, parent, actor and resource shape): five plain values
        appended to the group's flat list, the group's fields sent once per batch."""
        if not self.enabled:
            return
        if self.nends >= MAX_BUFFER:
            self.dropped += 1
            return
        spec = t.spec
        # monotonic times (claim() notes one when the call starts); a flush sends them with the
        # offset to the wall clock (one clock read a call)
        now = _mono()
        started = None if t.told else t.started     # (told at a flush while it ran: None)
        g = spec.get
        sub = g("ev")
        parent = g("par")
        a = spec["args"]
        refs = g("refs")
        if "app_error" in reply and reply.get("rets"):
            # (rare) a failure: one record of its own, the error's blob in the error-type slot
            # until the flush decodes it
            off = _time() - now
            with self.lock:
                self.nends += 1
                self.failed.append(("W", spec["tid"], None if started is None else started + off, now + off,
                                    reply["rets"][0][1], None,
                                    (spec["name"], g("actor"), spec["job"], parent, g("res"), sub,
                                     a[3] if a[0] == "s" else len(a[1]), len(refs) if refs else 0,
                                     spec["owner_id"])))
        else:
            res = g("res")
            key = (spec["name"], spec["owner_id"], parent, g("actor"), tuple(res.items()) if res else None)
            vals = (spec["tid"], started, now, sub,
                    ((a[3] if a[0] == "s" else len(a[1])) << 16) | (min(len(refs), 0xFFFF) if refs else 0))
            lock = self.lock
            lock.acquire()          # (cheaper than ``with``; nothing below raises but MemoryError)
            try:
                self.nends += 1
                grp = self.groups.get(key)
                if grp is None:
                    self.groups[key] = [key[0], key[3], spec["job"], key[2], res, key[1], list(vals)]
                else:
                    grp[6] += vals
            finally:
                lock.release()
        if not self.armed:
            self._arm()

    # --- flushing (I/O thread) -----------------------------------------------------------------
    def _owner_records(self):
        """["O", tid, info, [state, ts, ...], node, error type, error message] per task.  A call
        still pending a flush interval after its submission is reported (with its state) and
        traced from then on; one that ended by then is left to its worker's record, unless the
        owner noted something about it (``owner_trace``)."""
        recs, self.recs = self.recs, {}
        old, self.prev, self.new = self.prev, self.new, []
        now = time.time()
        calls = self.core.submitter.owner.calls
        for tid in old:
            call = calls.get(tid)
            if call is None or call.traced:
                continue                 # ended: its worker tells it (or it failed: traced)
            state = call.state
            if state > 2:
                continue
            r = recs.get(tid)
            if r is None:
                r = recs[tid] = ["O", tid, _info(call), [], None, None, None]
            elif r[2] is None:
                r[2] = _info(call)
            call.traced = True           # pending: every later change is noted (Owner._to)
            r[3] += (state, _submitted_at(call.spec) if state < 2 else now)
            if state == 2 and call.lease is not None:
                r[4] = call.lease.grant.get("node_id")
        out = list(recs.values())
        for r in out:
            if r[5] is not None:
                r[5], r[6] = error_fields(r[5])
        return out

    def _worker_records(self):
        """One "E" record per group of clean ends, a "W" record per failure (its error decoded
        now) and per call running now that was not told yet (started, no end, no info)."""
        with self.lock:
            groups, failed = self.groups, self.failed
            self.groups, self.failed, self.nends = {}, [], 0
        off = _time() - _mono()
        out = [("E", g[:6], g[6], off) for g in groups.values()]
        for r in failed:                   # an error's blob: its type and message now
            et, em = error_fields(r[4])
            out.append(("W", r[1], r[2], r[3], et, em, r[6]))
        ex = getattr(self.core, "executor", None)
        if ex is not None and ex.pending:
            now, mono = time.time(), time.monotonic()
            for t in list(ex.pending.values()):
                if t.state == 1 and not t.told and t.started is not None:     # ExecState.RUNNING
                    t.told = True
                    out.append(["W", t.spec["tid"], now - (mono - t.started), None, None, None, None])
        return out

    def _flush(self):
        self.armed = False
        core = self.core
        gcs = getattr(core, "gcs", None)
        if gcs is None or gcs.closed:
            return
        events = self._owner_records() if self.recs or self.new or self.prev else []
        if self.nends or getattr(self.core, "executor", None) is not None:
            events += self._worker_records()
        payload = {"proc": self.proc()}
        if events:
            payload["blob"] = _packb(events)
            payload["n"] = len(events)
        metrics = REGISTRY.take()
        if metrics:
            payload["metrics"] = metrics
        if self.dropped:
            payload["dropped"], self.dropped = self.dropped, 0
        gcs.notify("task_events", payload)
        if (REGISTRY.values or self.new or self.prev) and not self.armed:
            self._arm()

    def flush_wait(self, timeout=2.0):
        """Send what is buffered now (from the main thread) and wait until it left."""
        done = threading.Event()

        def go():
            self._flush()
            done.set()
        self.core.io.post(go)
        done.wait(timeout)

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
                conn = getattr(gcs, "conn", gcs)     # the reconnecting client's current connection
                if conn is not None and not conn.closed:
                    conn._flush()
            finally:
                done.set()
        try:
            io.post(go)
            done.wait(1.0)
        except Exception:  # noqa: BLE001 - the loop is already gone
            pass


# --- handlers on every core worker -------------------------------------------------------------------
def list_objects(core, oids=None):
    """This process's view of the objects it references (for list_objects / ``luminary memory``);
    of ``oids`` only when given (the GCS's object samples ask owners about the largest objects)."""
    values = core.memory.values
    out = []
    entries = core.refs.entries
    items = list(entries.items()) if oids is None else [(o, entries[o]) for o in oids if o in entries]
    for oid, e in items:
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


def _info(call):
    """[name, actor, job, parent, resources, submitted at, args bytes, ref args] of an owner's call."""
    spec = call.spec
    return [call.name, call.actor, spec.get("job"), call.parent, call.resources, _submitted_at(spec),
            _args_bytes(spec), len(call.arg_refs or ())]


def _submitted_at(spec):
    """When the owner stamped the call (``ev``), or None."""
    return spec.get("ev")


def _args_bytes(spec):
    """The serialized arguments' size, inline or in the store."""
    a = spec.get("args") or ("v", b"")
    return a[3] if a[0] == "s" else len(a[1])
