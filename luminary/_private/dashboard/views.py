"""What each dashboard page shows, gathered on the head node manager from the GCS's state
queries (``nm.gcs.call``) and the node's own files.  ``server.py`` pushes these to the page over
one server-sent-events stream; nothing here is kept between calls except in ``LogTail``.
"""
from __future__ import annotations

import os
import time

FINAL = ("FINISHED", "FAILED")
LOG_FIRST_BYTES = 64 << 10        # a log opened in the page shows its last 64 KiB first
LOG_CHUNK_BYTES = 256 << 10       # then at most this much new output per push
STACK_TIMEOUT_S = 2.0


def _hex(b):
    return b.hex() if isinstance(b, (bytes, bytearray)) else b


def _round(v, step):
    """Coarser readings change less often, so fewer pushes to the page."""
    return None if v is None else round(v / step) * step


async def _q(nm, payload):
    return await nm.gcs.call("state_query", payload)


async def overview(nm):
    gcs = nm.gcs
    nodes, stats, counts = await gcs.call("get_nodes"), await _q(nm, {"what": "nodes"}), \
        await _q(nm, {"what": "task_counts"})
    by_id = {s["node_id"]: s.get("store") or {} for s in stats["rows"]}
    out_nodes = []
    for n in nodes:
        nid = _hex(n["NodeID"])
        st = by_id.get(nid, {})
        out_nodes.append({"node_id": nid, "ip": n["NodeManagerAddress"], "head": bool(n.get("IsHead")),
                          "alive": bool(n["Alive"]), "resources": dict(n["Resources"]),
                          "available": dict(n.get("Available") or {}),
                          "cpu_percent": _round(st.get("cpu_percent"), 1), "mem_used": _round(st.get("mem_used"), 1 << 20),
                          "mem_total": st.get("mem_total"), "store_used": st.get("used"),
                          "store_capacity": st.get("capacity"), "objects": st.get("objects")})
    actors = {}
    for a in (await _q(nm, {"what": "actors"}))["rows"]:
        actors[a["state"]] = actors.get(a["state"], 0) + 1
    jobs = await nm.jobs.jobs.list() if getattr(nm, "jobs", None) else []
    drivers = (await _q(nm, {"what": "jobs"}))["rows"]
    return {"nodes": out_nodes, "tasks": counts, "actors": actors, "jobs": jobs, "drivers": drivers}


async def tasks(nm, query):
    filters = [[k, "=", query[k]] for k in ("state", "name", "job_id") if query.get(k)]
    try:
        limit = max(1, min(int(query.get("limit", 200) or 200), 1000))
    except ValueError:
        limit = 200
    res = await _q(nm, {"what": "tasks", "filters": filters, "limit": limit, "recent": True})
    return {"rows": res["rows"], "total": res["total"]}


async def task(nm, tid):
    rows = (await _q(nm, {"what": "task", "id": tid[:256]}))["rows"]
    return rows[0] if rows else {"task_id": tid, "missing": True}


async def actors(nm):
    return {"rows": (await _q(nm, {"what": "actors"}))["rows"]}


async def actor(nm, aid):
    """One actor's row and its calls not yet finished (running, queued or waiting for arguments),
    oldest first."""
    rows = (await _q(nm, {"what": "actors", "filters": [["actor_id", "=", aid[:256]]]}))["rows"]
    if not rows:
        return {"actor_id": aid, "missing": True}
    calls = (await _q(nm, {"what": "tasks", "filters": [["actor_id", "=", aid[:256]]], "limit": 2000,
                           "recent": True, "detail": True}))["rows"]
    for c in calls:
        c.pop("events", None)
    pending = [c for c in calls if c["state"] not in FINAL]
    done = len(calls) - len(pending)
    pending.reverse()
    return dict(rows[0], pending_calls=pending[:200], pending_total=len(pending), calls_done=done)


async def metrics_history(nm, since=0.0, points=None):
    """The head's metric ring (``gcs/metrics_history.py``) after ``since``, as columns: at most
    ``points`` samples (evenly thinned), all of them without."""
    q = {"what": "metrics_history", "since": max(0.0, since)}
    if points:
        q["limit"] = int(points)
    return await _q(nm, q)


async def stream(nm, since):
    return await _q(nm, {"what": "stream", "since": max(0.0, since), "limit": 5000})


async def objects(nm):
    """As ``luminary memory``: one row per (process, object it references), and per node the
    objects' bytes with each object counted once (by its owner), not once per reference."""
    from ...util.state import _object_rows_of
    rows = _object_rows_of((await _q(nm, {"what": "objects"}))["rows"])
    per_node = {}
    for r in rows:
        if not r["is_owner"]:
            continue
        where = r["node_id"] if r["stored_in"] == "object_store" else "owner memory"
        key = (r["node_id"] or "?", where == "owner memory")
        n = per_node.setdefault(key, {"node_id": r["node_id"], "in": "owner memory" if key[1] else "object store",
                                      "objects": 0, "bytes": 0})
        n["objects"] += 1
        n["bytes"] += r["object_size"] or 0
    rows.sort(key=lambda r: -(r["object_size"] or 0))
    return {"rows": rows[:500], "total_rows": len(rows), "per_node": sorted(per_node.values(), key=lambda n: n["in"])}


async def placement_groups(nm):
    out = []
    for pg in (await nm.gcs.call("pg_table")).values():
        placed = pg.get("bundles_to_node_id") or {}
        bundles = [{"index": i, "resources": dict(b), "node_id": _hex(placed.get(i, placed.get(str(i))))}
                   for i, b in sorted((int(k), v) for k, v in pg["bundles"].items())]
        out.append({"placement_group_id": pg["placement_group_id"], "name": pg.get("name") or "",
                    "state": pg["state"], "strategy": pg.get("strategy"), "bundles": bundles})
    return {"rows": out}


async def workers(nm):
    """Alive workers, actors and drivers (the stacks page's list)."""
    rows = [w for w in (await _q(nm, {"what": "workers"}))["rows"] if w["is_alive"]]
    by_pid = {a["pid"]: a for a in (await _q(nm, {"what": "actors"}))["rows"] if a["state"] == "ALIVE"}
    for w in rows:
        a = by_pid.get(w["pid"])
        w["actor"] = f"{a['class_name']} {a['actor_id'][:12]}" if a else None
    rows.sort(key=lambda w: (w["worker_type"] != "DRIVER", w["node_id"] or "", w["pid"] or 0))
    return {"rows": rows}


async def stacks(nm, worker_id):
    """The live stacks of one worker (``luminary stack``'s machinery, answered within 2 s)."""
    from .. import stacks as _stacks
    report = await nm.gcs.call("cluster_stacks", {"timeout": STACK_TIMEOUT_S})
    for node in report.get("nodes", []):
        for proc in node.get("processes", []):
            if proc.get("worker_id") == worker_id:
                return {"worker_id": worker_id, "node_id": node["node_id"], "time": time.time(),
                        "text": "\n".join(_stacks._format_process(proc)) + "\n"}
    return {"worker_id": worker_id, "missing": True, "time": time.time(),
            "text": "(this worker did not answer: it exited, or its node is not answering)\n"}


# --- logs ------------------------------------------------------------------------------------------------
async def node_log_dirs(nm):
    rows = (await _q(nm, {"what": "nodes"}))["rows"]
    return {r["node_id"]: os.path.join(r["session_dir"], "logs") for r in rows if r.get("session_dir")}


async def log_files(nm):
    """Every node's log files (those on this machine; the head reads files, not other hosts), and
    the submitted jobs' output."""
    out = []
    for nid, d in (await node_log_dirs(nm)).items():
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            try:
                size = os.path.getsize(os.path.join(d, name))
            except OSError:
                continue
            out.append({"key": f"node:{nid}:{name}", "node_id": nid, "name": name, "size": size})
    for j in (await nm.jobs.jobs.list() if getattr(nm, "jobs", None) else []):
        out.append({"key": f"job:{j['submission_id']}", "node_id": None, "name": f"job {j['submission_id']}",
                    "size": None})
    return {"rows": out}


async def log_path(nm, key):
    """The file behind a log key (``node:<node_id>:<file name>``, ``job:<submission id>`` or
    ``pid:<pid>``), or None: only files in a node's logs directory or a job's log are served."""
    kind, _, rest = (key or "").partition(":")
    if kind == "job" and getattr(nm, "jobs", None):
        if await nm.jobs.jobs.get(rest) is None:
            return None
        return nm.jobs.jobs.log_path(rest)
    dirs = await node_log_dirs(nm)
    if kind == "node":
        nid, _, name = rest.partition(":")
        if not name or os.path.basename(name) != name or name.startswith(".") or nid not in dirs:
            return None
        path = os.path.join(dirs[nid], name)
        return path if os.path.isfile(path) else None
    if kind == "pid" and rest.isdigit():
        suffix = f"-{int(rest)}.log"
        for d in dirs.values():
            try:
                for name in os.listdir(d):
                    if name.startswith("worker-") and name.endswith(suffix):
                        return os.path.join(d, name)
            except OSError:
                continue
    return None


class LogTail:
    """Follows one file for one page: its last 64 KiB first, then what is appended (from the
    start again when the file is replaced or truncated)."""

    def __init__(self, path):
        self.path = path
        self.offset = None
        self.ino = None

    def read(self):
        """{"data", "reset"} when there is something new, else None."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        reset = False
        if self.offset is None or st.st_ino != self.ino or st.st_size < self.offset:
            self.offset, self.ino, reset = max(0, st.st_size - LOG_FIRST_BYTES), st.st_ino, True
        if st.st_size == self.offset and not reset:
            return None
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(LOG_CHUNK_BYTES)
        except OSError:
            return None
        self.offset += len(data)
        return {"data": data.decode(errors="replace"), "reset": reset}
