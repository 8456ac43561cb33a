"""The task table: task events from owners and workers merged into one record per task.

Pure (no sockets, no clocks): the GCS feeds it the batches it receives, ``luminary report``
feeds it the batches read back from the event log.  At most ``cap`` tasks are kept; the oldest
is dropped (and counted) to make room, so a million tasks never exhaust the head.

Owners report submission and their state changes in order; the worker that runs a task
reports when it started and ended.  The two streams arrive in any order, so a worker's
RUNNING never overrides a state the owner already reported as final.

Ingest is lazy: ``add`` keeps each batch as the msgpack bytes it arrived in (no per-task
object, nothing for the garbage collector to scan) and the batches are decoded and merged
into ``TaskRecord``s when someone asks (``sync``, called by every query) or when 20,000
records wait, in one pass with the garbage collector paused.
"""
from __future__ import annotations

import collections
import gc
from itertools import repeat
from array import array

import msgpack

# owner.State -> Ray's task states
OWNER_STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "FINISHED", "FAILED")
FINAL = ("FINISHED", "FAILED")
DEFAULT_CAP = 100_000
SYNC_RECORDS = 20_000     # waiting records merged at once when nobody asked (a ~30 ms pause of the GCS loop)
# a record's state changes are kept as one flat array of (code, time) pairs, codes into STATES:
# about 100 bytes a task instead of 500 for a list of tuples
STATES = OWNER_STATES + ("RUNNING",)
_CODE = {s: i for i, s in enumerate(STATES)}
_RUNNING = _CODE["RUNNING"]
_FINISHED = _CODE["FINISHED"]
_FAILED = _CODE["FAILED"]
_NO_RESOURCES = {}        # shared by every record that asked for none (actor calls)
_ARGS = _CODE["PENDING_ARGS_AVAIL"]
# the types a group of clean ends may hold (checked in bulk, see _ended_group)
_TS_SET = frozenset((float, type(None)))     # a time, or none
_BYTES, _INT, _FLOAT = frozenset((bytes,)), frozenset((int,)), frozenset((float,))


def job_hex(job):
    return int(job or 0).to_bytes(4, "little").hex()


def hexid(b):
    return b.hex() if isinstance(b, (bytes, bytearray)) else b


class TaskRecord:
    __slots__ = ("tid", "attempt", "name", "state", "job", "actor", "parent", "node", "worker", "pid",
                 "err_type", "err_msg", "created", "started", "ended", "resources", "events", "owner",
                 "ostate", "ran", "args", "reason")

    def __init__(self, tid):
        self.tid = tid
        self.attempt = 0
        self.name = None
        self.state = "NIL"
        self.job = None
        self.actor = None
        self.parent = None
        self.node = None
        self.worker = None
        self.pid = None
        self.err_type = None
        self.err_msg = None
        self.created = None
        self.started = None
        self.ended = None
        self.resources = None
        self.events = array("d")     # code, time, code, time, ...
        self.owner = None
        self.ostate = -1          # the owner's last reported state (owner.State)
        self.ran = False          # a worker reported this attempt running
        self.args = None          # serialized args' bytes << 16 | number of ObjectRef args, as submitted
        self.reason = None        # why it waits, as its owner learnt it (e.g. infeasible)

    def row(self, detail=False):
        name = self.name or ""
        r = {"task_id": self.tid.hex(), "attempt_number": self.attempt, "name": name, "state": self.state,
             "job_id": job_hex(self.job) if self.job is not None else None,
             "actor_id": hexid(self.actor), "type": "ACTOR_TASK" if self.actor else "NORMAL_TASK",
             "func_or_class_name": name, "parent_task_id": hexid(self.parent),
             "node_id": hexid(self.node), "worker_id": hexid(self.worker), "worker_pid": self.pid,
             "error_type": self.err_type, "language": "PYTHON"}
        if detail:
            r.update({"required_resources": dict(self.resources or {}), "error_message": self.err_msg,
                      "creation_time_ms": _ms(self.created), "start_time_ms": _ms(self.started),
                      "end_time_ms": _ms(self.ended), "owner_worker_id": hexid(self.owner),
                      "args_bytes": None if self.args is None else self.args >> 16,
                      "args_object_refs": None if self.args is None else self.args & 0xFFFF,
                      "pending_reason": self.reason,      # Luminary: why it waits (stuck.fill_reasons)
                      "events": [{"state": STATES[int(c)], "created_ms": _ms(t)} for c, t in self.state_changes()]})
        return r

    def state_changes(self):
        """[(state code, time)], oldest first."""
        ev = self.events
        return sorted(zip(ev[0::2], ev[1::2]), key=lambda e: e[1])


_BRIEF_KEYS = frozenset(TaskRecord(b"").row())


def _ms(t):
    return None if t is None else int(t * 1000)


class TaskTable:
    def __init__(self, cap=DEFAULT_CAP):
        self.cap = max(1, int(cap))
        self._tasks: dict[bytes, TaskRecord] = {}
        self.dropped = 0
        self.dropped_at_source = 0
        self._shared = {}      # one object per distinct name, id and resource shape (they repeat)
        self.bad_batches = 0
        self._n = {}                           # state -> tasks, kept as records change (counts())
        self._order = collections.deque()      # tids in insertion order (the table's eviction order)
        self.pending = collections.deque()     # (proc, msgpack bytes, records) not merged yet
        self.pending_records = 0
        self.pending_cap = min(SYNC_RECORDS, 3 * self.cap)

    # --- ingest ---------------------------------------------------------------------------------------
    def add(self, proc, blob, records):
        """One batch from the process ``proc`` as the bytes it arrived in (``records`` records).
        Costs a deque append; merged at the next query."""
        self.pending.append((proc, blob, records))
        self.pending_records += records
        if self.pending_records >= self.pending_cap:
            self.sync()

    @property
    def tasks(self):
        """tid -> TaskRecord, every batch received merged in (every record built)."""
        if self.pending:
            self.sync()
        tasks = self._tasks
        for tid, r in tasks.items():
            if r.__class__ is not TaskRecord:
                self._build(tid, r)
        return tasks

    def size(self):
        """How many tasks are kept (every batch received merged in)."""
        if self.pending:
            self.sync()
        return len(self._tasks)

    def get(self, tid):
        """The TaskRecord of ``tid``, or None (to read: see ``_view``)."""
        if self.pending:
            self.sync()
        r = self._tasks.get(tid)
        if r is not None and r.__class__ is not TaskRecord:
            r = self._view(tid, r)
        return r

    def _records(self, reverse=False):
        """Every TaskRecord, oldest first (newest first with ``reverse``), each built as reached
        and, for a task kept as its worker's record, not kept (``_view``)."""
        if self.pending:
            self.sync()
        view = self._view
        for tid, r in (reversed(self._tasks.items()) if reverse else self._tasks.items()):
            yield r if r.__class__ is TaskRecord else view(tid, r)

    def _view(self, tid, v):
        """A TaskRecord to read of a task kept as its worker's record alone, built for the reader
        and left out of the table: a query over 100,000 finished tasks does not turn the table's
        compact records into full ones (about 0.4 KiB a task instead of 0.7)."""
        r = TaskRecord(tid)
        if v.__class__ is tuple:
            self._worker(r, _w_record(*v), v[0][0])
        else:
            self._worker(r, v, v[0])      # (the record as it came, its process in the kind's place)
        return r

    def _build(self, tid, lst):
        """The TaskRecord of a task kept as the worker's record alone (see ``apply`` and
        ``_ended_group``)."""
        if lst.__class__ is tuple:
            proc = lst[0][0]
            lst = _w_record(*lst)
        else:
            proc = lst[0]
            lst[0] = "W"
        r = TaskRecord(tid)
        self._worker(r, lst, proc)
        self._tasks[tid] = r       # the same key: its place in the order is kept
        return r

    def sync(self):
        pending = self.pending
        enabled = gc.isenabled()
        gc.disable()          # decoding makes many small containers and none of them are cycles
        try:
            while pending:
                proc, blob, n = pending.popleft()
                self.pending_records -= n
                try:
                    events = msgpack.unpackb(blob, raw=False, strict_map_key=False)
                    if not isinstance(events, list):
                        raise ValueError("not a list")
                    self.apply(proc, events)
                except Exception:  # noqa: BLE001 - a malformed batch loses only itself
                    self.bad_batches += 1
        finally:
            if enabled:
                gc.enable()

    def _intern(self, v):
        """``v`` or an equal object already held: names, node and worker ids and resource dicts
        repeat across tasks, and each batch decodes fresh copies."""
        if v is None:
            return None
        if type(v) is dict:
            if not v:
                return _NO_RESOURCES
            key = tuple(sorted(v.items()))
        else:
            key = v
        try:
            got = self._shared.get(key)
        except TypeError:
            return v
        if got is None:
            if len(self._shared) >= 4 * self.cap:      # many distinct values: start over
                self._shared.clear()
            got = self._shared[key] = v
        return got

    def _evict(self, k=1):
        """Drop the ``k`` oldest tasks, in one pass (from a queue: next(iter(dict)) walks every
        slot deleted before it, and the table churning at its cap cost 50 us a task and growing)."""
        popleft, pop = self._order.popleft, self._tasks.pop
        gone = [pop(popleft()) for _ in range(k)]
        n = self._n
        finished = 0
        for v in gone:
            if v.__class__ is tuple:       # (a clean end kept in its group: FINISHED)
                finished += 1
            else:
                state = _state_of(v)
                n[state] -= 1
        if finished:
            n["FINISHED"] -= finished
        self.dropped += k

    def _get(self, tid):
        r = self._tasks.get(tid)
        if r is None:
            tasks = self._tasks
            if len(tasks) >= self.cap:
                self._evict()
            r = tasks[tid] = TaskRecord(tid)
            self._order.append(tid)
            self._n["NIL"] = self._n.get("NIL", 0) + 1
        return r

    def apply(self, proc, events, dropped=0):
        """One batch from the process ``proc`` ({wid, pid, node, ...})."""
        self.dropped_at_source += dropped
        intern = self._intern
        proc = {"wid": intern(proc.get("wid")), "node": intern(proc.get("node")), "pid": proc.get("pid")}
        tasks = self._tasks
        shared = self._shared
        order = self._order
        cap = self.cap
        n = self._n
        for ev in events:
            if ev[0] == "E":
                self._ended_group(proc, ev)
                continue
            tid = ev[1]
            r = tasks.get(tid)
            if r is None:
                kind = ev[0]
                if kind == "W" and len(ev) > 6 and ev[6] is not None and ev[3] is not None:
                    # the common case, a call that ran and ended within its owner's batch: the
                    # worker's record is kept as it came (with its process in place of "W") and
                    # built into a TaskRecord only when someone looks (``_build``)
                    info = ev[6]
                    if len(info) < 9:
                        continue            # malformed: a W info carries nine fields
                    if len(tasks) >= cap:
                        self._evict()
                    name, owner = info[0], info[8]
                    info[0] = shared.get(name) or self._intern(name)
                    info[8] = shared.get(owner) or self._intern(owner)
                    ev[0] = proc
                    tasks[tid] = ev
                    order.append(tid)
                    state = "FINISHED" if ev[4] is None else "FAILED"
                    n[state] = n.get(state, 0) + 1
                    continue
                if len(tasks) >= cap and (ev[2] is None if kind == "O" else len(ev) < 7 or ev[6] is None):
                    continue    # a late report on a task already dropped: keep the kept ones
                r = self._get(tid)
            elif r.__class__ is not TaskRecord:
                r = self._build(tid, r)
            before = r.state
            if ev[0] == "O":
                self._owner(r, ev, proc)
            else:
                self._worker(r, ev, proc)
            if r.state != before:
                n[before] -= 1
                n[r.state] = n.get(r.state, 0) + 1

    def _ended_group(self, proc, ev):
        """A worker's clean ends of one group (``["E", info, flat]``, worker/events.py): each
        task not in the table yet is kept as (group, index) into the batch's flat list, so a
        call costs the table one small tuple; one already there (its owner reported it, or it
        was told running) is merged as a "W" record."""
        info, flat, off = ev[1], ev[2], ev[3]
        if len(info) != 6 or flat.__class__ is not list or len(flat) % 5 or off.__class__ is not float:
            raise ValueError("malformed E record")
        intern, shared = self._intern, self._shared
        name, owner = info[0], info[5]
        info[0] = shared.get(name) or intern(name)
        info[5] = shared.get(owner) or intern(owner)
        info[4] = intern(info[4])
        grp = (proc, info, flat, off)
        tasks, n = self._tasks, self._n
        tids = flat[0::5]
        # checked and kept in bulk (each step a loop in C): 0.1 us a call instead of 0.35
        if not (set(map(type, tids)) <= _BYTES and set(map(type, flat[4::5])) <= _INT
                and set(map(type, flat[2::5])) <= _FLOAT and set(map(type, flat[1::5])) <= _TS_SET
                and set(map(type, flat[3::5])) <= _TS_SET):
            raise ValueError("malformed E record")
        if not (tasks.keys() & tids) and len(set(tids)) == len(tids):
            # none of them known yet (the usual case)
            tasks.update(zip(tids, zip(repeat(grp), range(0, len(flat), 5))))
            self._order.extend(tids)
            n["FINISHED"] = n.get("FINISHED", 0) + len(tids)
            over = len(tasks) - self.cap
            if over > 0:
                self._evict(over)
            return
        for i in range(0, len(flat), 5):
            tid = flat[i]
            r = tasks.get(tid)
            if r is None:
                if len(tasks) >= self.cap:
                    self._evict()
                tasks[tid] = (grp, i)
                self._order.append(tid)
                n["FINISHED"] = n.get("FINISHED", 0) + 1
                continue
            if r.__class__ is not TaskRecord:
                r = self._build(tid, r)
            before = r.state
            self._worker(r, _w_record(grp, i), proc)
            if r.state != before:
                n[before] -= 1
                n[r.state] = n.get(r.state, 0) + 1

    def _owner(self, r, ev, proc):
        info = ev[2]
        if info is not None:
            name, r.actor, r.job, r.parent, resources, ts = info[:6]
            r.name, r.resources = self._intern(name), self._intern(resources)
            if len(info) >= 8:
                r.args = (int(info[6]) << 16) | min(int(info[7]), 0xFFFF)      # one int: small per task
            r.owner = proc.get("wid")
            if r.state == "NIL":
                r.state = "PENDING_ARGS_AVAIL"
            if r.created is None:       # (an owner sends a call's submission with each of its records)
                r.created = ts
                r.events.extend((_ARGS, ts))
        trans = ev[3]
        if ev[4] is not None:
            r.node = self._intern(ev[4])
        if ev[5] is not None:
            r.err_type, r.err_msg = ev[5], ev[6]
        for i in range(0, len(trans), 2):
            code, ts = trans[i], trans[i + 1]
            state = OWNER_STATES[code]
            if code == 1 and r.ostate in (2, 3):
                r.attempt += 1            # retried (or rebuilt from lineage)
                r.started = r.ended = None
                r.ran = False
                if ev[5] is None:
                    r.err_type = r.err_msg = None
            r.ostate = code
            if code == 2:
                r.reason = None           # it reached a worker: no longer waiting
            if state in FINAL:
                r.ended = r.ended or ts
                if state == "FAILED" and r.err_type is None:
                    r.err_type = "TASK_EXECUTION_EXCEPTION"
                if r.state == state:
                    continue          # the worker's record already ended it
                r.state = state
            elif not r.ran:
                r.state = state
            r.events.extend((code, ts))
        if len(ev) > 7 and ev[7] and r.ostate < 2:
            r.reason = ev[7]

    def _worker(self, r, ev, proc):
        info = ev[6] if len(ev) > 6 else None
        started, ended, err = ev[2], ev[3], ev[4]
        if info is not None and r.name is None:
            # a call its owner did not report (it ran and finished within one of the owner's
            # batches): the worker's record carries the submission too
            name, r.actor, r.job, r.parent, resources, ts = info[:6]
            shared = self._shared
            r.name = shared.get(name) or self._intern(name)
            r.resources = self._intern(resources)
            r.args = (int(info[6]) << 16) | min(int(info[7]), 0xFFFF)
            r.owner = shared.get(info[8]) or self._intern(info[8])
            if ts is not None:
                r.created = ts
                r.events.extend((_ARGS, ts))
            if r.state == "NIL":
                r.state = "PENDING_ARGS_AVAIL"
        if started is not None or (ended is not None and r.worker is None):
            r.node, r.worker, r.pid = proc["node"], proc["wid"], proc["pid"]
        if started is not None and not r.ran:      # (a worker may tell a start twice: once is kept)
            r.started = started
            r.ran = True
            if r.state not in FINAL:
                r.state = "RUNNING"
            r.events.extend((_RUNNING, started))
        if ended is not None:
            r.ended = ended
        if err is not None:
            r.err_type, r.err_msg = err, ev[5]
        if info is not None and ended is not None and r.ostate < 3:
            # the owner reports a clean call's end only if it spans batches: the answer sent ends it
            # (a failure the owner retries comes with the owner's record, which moves it on)
            state, code = ("FAILED", _FAILED) if err is not None else ("FINISHED", _FINISHED)
            r.ostate = code            # a retry after it is a new attempt
            if r.state != state:
                r.state = state
                r.events.extend((code, ended))

    def rows(self, detail=False):
        return [r.row(detail) for r in self._records()]

    def select(self, filters=(), limit=None, detail=False):
        """The rows that pass ``filters``, oldest first, at most ``limit``: rows are built only
        until the limit is reached, and filters on the brief fields test brief rows."""
        out = []
        brief = not detail or all(k in _BRIEF_KEYS for k, _, _ in filters)
        # a task kept as its worker's clean end is FINISHED: a filter that wants another state
        # passes over it without building it
        skip_ended = any(k == "state" and op in ("=", "==") and str(v).upper() != "FINISHED" for k, op, v in filters)
        if skip_ended and self.pending:
            self.sync()
        view = self._view
        for tid, r in (self._tasks.items() if skip_ended else ()):
            if r.__class__ is not TaskRecord:
                if r.__class__ is tuple:
                    continue
                r = view(tid, r)
            row = r.row(not brief)
            if not apply_filters([row], filters):
                continue
            out.append(r.row(True) if detail and brief else row)
            if limit is not None and len(out) >= limit:
                break
        for r in (() if skip_ended else self._records()):
            if filters:
                row = r.row(not brief)
                if not apply_filters([row], filters):
                    continue
                if detail and brief:
                    row = r.row(True)
            else:
                row = r.row(detail)
            out.append(row)
            if limit is not None and len(out) >= limit:
                break
        return out

    def summary(self):
        """Ray's ``summarize_tasks`` figures, per function: type, counts by state, run time."""
        by = {}
        actor_tasks = 0
        if self.pending:
            self.sync()
        groups = {}            # the clean ends kept by group, summed per group first
        records = []
        for tid, v in self._tasks.items():
            if v.__class__ is tuple:
                g = groups.get(id(v[0]))
                if g is None:
                    g = groups[id(v[0])] = [v[0], []]
                g[1].append(v[1])
            else:
                records.append(v if v.__class__ is TaskRecord else self._view(tid, v))
        for grp, idx in groups.values():
            name, actor = grp[1][0] or "", grp[1][1]
            s = by.get(name)
            if s is None:
                s = by[name] = {"func_or_class_name": name, "type": "ACTOR_TASK" if actor else "NORMAL_TASK",
                                "state_counts": {}, "duration_s_total": 0.0, "duration_n": 0}
            counts = s["state_counts"]
            counts["FINISHED"] = counts.get("FINISHED", 0) + len(idx)
            flat = grp[2]
            timed = [flat[i + 2] - flat[i + 1] for i in idx if flat[i + 1] is not None]
            s["duration_s_total"] += sum(timed)
            s["duration_n"] += len(timed)
            if actor is not None:
                actor_tasks += len(idx)
        for r in records:
            name = r.name or ""
            s = by.get(name)
            if s is None:
                s = by[name] = {"func_or_class_name": name, "type": "ACTOR_TASK" if r.actor else "NORMAL_TASK",
                                "state_counts": {}, "duration_s_total": 0.0, "duration_n": 0}
            counts = s["state_counts"]
            counts[r.state] = counts.get(r.state, 0) + 1
            if r.started is not None and r.ended is not None:
                s["duration_s_total"] += r.ended - r.started
                s["duration_n"] += 1
            actor_tasks += r.actor is not None
        return {"summary": by, "total_tasks": len(self._tasks), "total_actor_tasks": actor_tasks}

    def recent(self, detail=False, filters=(), limit=100):
        """The newest ``limit`` rows that pass ``filters``, newest first (without building the rest)."""
        out = []
        for r in self._records(reverse=True):
            row = r.row(detail)
            if not filters or apply_filters([row], filters):
                out.append(row)
                if len(out) >= limit:
                    break
        return out

    def stream(self, since, limit=5000, scan=20000):
        """Tasks that ran at or after ``since`` (seconds), for the dashboard's task stream:
        [worker, pid, node, started, ended or None, name, failed, task_id], newest first.  Only
        the newest ``scan`` tasks are looked at, so a poll costs the same with 100,000 kept."""
        out = []
        for i, r in enumerate(self._records(reverse=True)):
            if i >= scan or len(out) >= limit:
                break
            if r.started is None or (r.ended is not None and r.ended < since):
                continue
            out.append([hexid(r.worker), r.pid, hexid(r.node), r.started, r.ended, r.name or "",
                        r.state == "FAILED" or r.err_type is not None, r.tid.hex()])
        return out

    def counts(self):
        """{state: tasks}, kept up to date as records change (the samplers ask every second)."""
        if self.pending:
            self.sync()
        return {state: k for state, k in self._n.items() if k > 0}


def _state_of(v):
    """The state of a kept task: a TaskRecord's, or that of a worker's record kept as it came
    (it ended: see ``TaskTable.apply``), or a clean end kept in its group (``_ended_group``)."""
    if v.__class__ is list:
        return "FINISHED" if v[4] is None else "FAILED"
    if v.__class__ is tuple:
        return "FINISHED"
    return v.state


def _w_record(grp, i):
    """The "W" record of the call at ``i`` in a group of clean ends."""
    _, (name, actor, job, parent, resources, owner), flat, off = grp
    args, started = flat[i + 4], flat[i + 1]
    return ["W", flat[i], None if started is None else started + off, flat[i + 2] + off, None, None,
            [name, actor, job, parent, resources, flat[i + 3], args >> 16, args & 0xFFFF, owner]]


# --- filters, shared by the GCS and the client -----------------------------------------------------
def _match(value, op, want):
    if op in ("=", "=="):
        return _eq(value, want)
    if op == "!=":
        return not _eq(value, want)
    raise ValueError(f"unsupported filter predicate {op!r}: use '=' or '!='")


def _eq(value, want):
    if isinstance(value, bool) or isinstance(want, bool):
        return str(value).lower() == str(want).lower()
    if isinstance(value, str) and isinstance(want, str):
        return value.upper() == want.upper() if value.isupper() or want.isupper() else value == want
    if isinstance(value, (int, float)) and not isinstance(want, (int, float)):
        try:
            return value == type(value)(want)
        except (TypeError, ValueError):
            return False
    return value == want or str(value) == str(want)


def apply_filters(rows, filters=None, limit=None):
    """``rows`` that satisfy every (key, op, value) in ``filters``, at most ``limit``."""
    out = []
    for row in rows:
        if filters and not all(_match(row.get(k), op, v) for k, op, v in filters):
            continue
        out.append(row)
        if limit is not None and len(out) >= limit:
            break
    return out
