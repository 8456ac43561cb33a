"""Cluster state for diagnostics, as in ``ray.util.state``: tasks, actors, objects, nodes,
workers, jobs, placement groups, summaries and logs.

Every function works from a driver (``init()`` was called) or from any process of this user on
a machine of the cluster (``address``: "auto", HOST:PORT; the CLI uses this).  Rows are dicts
with Ray's state-schema field names that also allow attribute access (``t.state``).
``filters`` is a list of ``(key, "=" | "!=", value)``.
"""
from __future__ import annotations

import os

from .._private import logfiles
from .._private.gcs.task_table import apply_filters

DEFAULT_LIMIT = 100
DEFAULT_TIMEOUT = 30


class StateRow(dict):
    """A dict with attribute access, as Ray's state dataclasses allow both styles of use."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


def _rows(rows):
    return [StateRow(r) for r in rows]


# --- talking to the GCS --------------------------------------------------------------------------------
def _call(method, payload=None, address=None, timeout=DEFAULT_TIMEOUT):
    from .._private.worker import state as _state
    core = _state.core
    if core is not None and address is None:
        return core.call_sync_gcs(method, payload, timeout=timeout)
    from .._private.node import launch
    from .._private.worker.connect import query_gcs, resolve_address
    gcs = resolve_address(address or "auto")
    return query_gcs(gcs, launch.read_secret(gcs), method, payload, timeout=timeout)


def _query(what, address=None, filters=None, limit=None, detail=False, timeout=DEFAULT_TIMEOUT):
    payload = {"what": what, "detail": bool(detail)}
    if filters:
        payload["filters"] = [list(f) for f in _check_filters(filters)]
    if limit is not None:
        payload["limit"] = int(limit)
    return _call("state_query", payload, address, timeout)


def _check_filters(filters):
    out = []
    for f in filters or ():
        if len(f) != 3 or f[1] not in ("=", "!=", "=="):
            raise ValueError(f"a filter is (key, '=' or '!=', value), got {f!r}")
        out.append((str(f[0]), f[1], f[2]))
    return out


def _local(rows, filters, limit, detail, brief):
    rows = apply_filters(rows, _check_filters(filters), limit)
    if not detail and brief:
        rows = [{k: v for k, v in r.items() if k in brief} for r in rows]
    return _rows(rows)


# --- lists -----------------------------------------------------------------------------------------------
def list_tasks(address=None, filters=None, limit=DEFAULT_LIMIT, timeout=DEFAULT_TIMEOUT, detail=False,
               raise_on_missing_output=True, _explain=False):
    """Tasks and actor calls, newest last (one row per task, its latest attempt)."""
    return _rows(_query("tasks", address, filters, limit, detail, timeout)["rows"])


def get_task(id, address=None, timeout=DEFAULT_TIMEOUT, **_):
    rows = list_tasks(address, [("task_id", "=", id)], 1, timeout, detail=True)
    return rows[0] if rows else None


def list_actors(address=None, filters=None, limit=DEFAULT_LIMIT, timeout=DEFAULT_TIMEOUT, detail=False,
                raise_on_missing_output=True, _explain=False):
    return _rows(_query("actors", address, filters, limit, detail, timeout)["rows"])


def get_actor(id, address=None, timeout=DEFAULT_TIMEOUT, **_):
    rows = list_actors(address, [("actor_id", "=", id)], 1, timeout, detail=True)
    return rows[0] if rows else None


_NODE_BRIEF = ("node_id", "node_ip", "is_head_node", "state", "state_message", "node_name", "resources_total", "labels")


def list_nodes(address=None, filters=None, limit=DEFAULT_LIMIT, timeout=DEFAULT_TIMEOUT, detail=False,
               raise_on_missing_output=True, _explain=False):
    rows = []
    for n in _call("get_nodes", None, address, timeout):
        rows.append({"node_id": n["NodeID"], "node_ip": n["NodeManagerAddress"], "is_head_node": bool(n.get("IsHead")),
                     "state": "ALIVE" if n["Alive"] else "DEAD", "state_message": n.get("death_reason"),
                     "node_name": n.get("NodeName", n["NodeManagerAddress"]), "resources_total": dict(n["Resources"]),
                     "labels": dict(n.get("Labels") or {}), "resources_available": dict(n.get("Available") or {}),
                     "pending_lease_requests": len(n.get("pending") or ())})
    return _local(rows, filters, limit, detail, _NODE_BRIEF)


def get_node(id, address=None, timeout=DEFAULT_TIMEOUT, **_):
    rows = list_nodes(address, [("node_id", "=", id)], 1, timeout, detail=True)
    return rows[0] if rows else None


def list_workers(address=None, filters=None, limit=DEFAULT_LIMIT, timeout=DEFAULT_TIMEOUT, detail=False,
                 raise_on_missing_output=True, _explain=False):
    return _rows(_query("workers", address, filters, limit, detail, timeout)["rows"])


def get_worker(id, address=None, timeout=DEFAULT_TIMEOUT, **_):
    rows = list_workers(address, [("worker_id", "=", id)], 1, timeout)
    return rows[0] if rows else None


def list_jobs(address=None, filters=None, limit=DEFAULT_LIMIT, timeout=DEFAULT_TIMEOUT, detail=False,
              raise_on_missing_output=True, _explain=False):
    return _rows(_query("jobs", address, filters, limit, detail, timeout)["rows"])


def list_placement_groups(address=None, filters=None, limit=DEFAULT_LIMIT, timeout=DEFAULT_TIMEOUT, detail=False,
                          raise_on_missing_output=True, _explain=False):
    rows = []
    for pg in _call("pg_table", None, address, timeout).values():
        nodes = pg.get("bundles_to_node_id") or {}
        bundles = [{"bundle_id": f"{pg['placement_group_id']}:{i}", "node_id": nodes.get(i, nodes.get(str(i))),
                    "unit_resources": dict(b)} for i, b in sorted((int(k), v) for k, v in pg["bundles"].items())]
        rows.append({"placement_group_id": pg["placement_group_id"], "name": pg.get("name") or "",
                     "creator_job_id": None, "state": pg["state"], "strategy": pg.get("strategy"),
                     "bundles": bundles, "is_detached": False, "stats": None})
    return _local(rows, filters, limit, detail, None)


def get_placement_group(id, address=None, timeout=DEFAULT_TIMEOUT, **_):
    rows = list_placement_groups(address, [("placement_group_id", "=", id)], 1, timeout, detail=True)
    return rows[0] if rows else None


def _object_rows(address, timeout):
    return _object_rows_of(_query("objects", address, timeout=timeout)["rows"])


def _object_rows_of(procs):
    """Rows of the GCS's "objects" answer (one list per process); the dashboard uses this too."""
    rows = []
    for proc in procs:
        for o in proc["objects"]:
            rows.append({"object_id": o["oid"].hex(), "object_size": o["size"], "task_status": "FINISHED" if o["kind"] else "PENDING",
                         "reference_type": o["ref"], "call_site": "disabled",
                         "type": "DRIVER" if proc.get("kind") == "DRIVER" else "WORKER",
                         "pid": proc["pid"], "ip": "127.0.0.1" if proc["addr"].startswith("unix:") else proc["addr"][4:].rsplit(":", 1)[0],
                         "node_id": o["node"].hex() if isinstance(o["node"], bytes) else None,
                         "worker_id": proc["wid"].hex(), "is_owner": o["owned"], "owner_address": o["owner"],
                         "stored_in": {"s": "object_store", "v": "owner_memory", "e": "owner_memory"}.get(o["kind"]),
                         "local_refs": o["local"], "submitted_task_refs": o["submitted"],
                         "contained_in_owned": o["contained"], "borrowers": o["borrowers"]})
    return rows


def list_objects(address=None, filters=None, limit=DEFAULT_LIMIT, timeout=DEFAULT_TIMEOUT, detail=False,
                 raise_on_missing_output=True, _explain=False):
    """One row per (process, object it references), as Ray lists references."""
    return _local(_object_rows(address, timeout), filters, limit, True, None)


# --- summaries ---------------------------------------------------------------------------------------------
def summarize_tasks(address=None, timeout=DEFAULT_TIMEOUT, raise_on_missing_output=True, _explain=False):
    """Tasks per function: type, counts by state, total and count of run times (the GCS sums
    its table: the answer stays small however many tasks it holds)."""
    res = _query("task_summary", address, timeout=timeout)
    return {"cluster": {"summary": res["summary"], "total_tasks": res["total_tasks"],
                        "total_actor_tasks": res["total_actor_tasks"], "total_actor_scheduled": 0,
                        "summary_by": "func_name", "dropped": res.get("dropped", 0)}}


def summarize_actors(address=None, timeout=DEFAULT_TIMEOUT, raise_on_missing_output=True, _explain=False):
    summary = {}
    rows = _query("actors", address, timeout=timeout)["rows"]
    for a in rows:
        s = summary.setdefault(a["class_name"], {"class_name": a["class_name"], "state_counts": {}})
        s["state_counts"][a["state"]] = s["state_counts"].get(a["state"], 0) + 1
    return {"cluster": {"summary": summary, "total_actors": len(rows), "summary_by": "class"}}


def summarize_objects(address=None, timeout=DEFAULT_TIMEOUT, raise_on_missing_output=True, _explain=False):
    rows = _object_rows(address, timeout)
    ids, size, nodes, workers, refs = set(), 0, set(), set(), {}
    for r in rows:
        workers.add(r["worker_id"])
        refs[r["reference_type"]] = refs.get(r["reference_type"], 0) + 1
        if r["is_owner"] and r["object_id"] not in ids:
            ids.add(r["object_id"])
            size += r["object_size"] or 0
            if r["node_id"]:
                nodes.add(r["node_id"])
    entry = {"total_objects": len(ids), "total_size_mb": size / 2**20, "total_num_workers": len(workers),
             "total_num_nodes": len(nodes), "task_state_counts": {}, "ref_type_counts": refs}
    return {"cluster": {"summary": {"disabled": entry}, "total_objects": len(ids), "total_size_mb": size / 2**20,
                        "callsite_enabled": False, "summary_by": "callsite"}}


# --- logs -----------------------------------------------------------------------------------------------------
def _node_dirs(address, timeout):
    return {n["node_id"]: n.get("session_dir") for n in _query("nodes", address, timeout=timeout)["rows"]}


def _category(name):
    if name.startswith("worker-"):
        return "worker_out"
    if name.startswith("node"):
        return "raylet"
    if name.startswith("driver"):
        return "driver"
    return "misc"


def list_logs(address=None, node_id=None, node_ip=None, glob_filter=None, timeout=DEFAULT_TIMEOUT, **_):
    """{category: [file names]} of a node's logs (the head's, or ``node_id``'s); the files of
    nodes on other machines are not reachable from here."""
    import fnmatch
    dirs = _node_dirs(address, timeout)
    if node_id is None:
        heads = [n["node_id"] for n in list_nodes(address, detail=True) if n["is_head_node"]]
        node_id = heads[0] if heads else next(iter(dirs), None)
    d = dirs.get(node_id)
    out = {}
    if not d or not os.path.isdir(os.path.join(d, "logs")):
        return out
    for name in sorted(os.listdir(os.path.join(d, "logs"))):
        if glob_filter and not fnmatch.fnmatch(name, glob_filter):
            continue
        out.setdefault(_category(name), []).append(name)
    return out


def _find_log(dirs, filename=None, pid=None):
    for d in dirs.values():
        logs = os.path.join(d or "", "logs")
        if not os.path.isdir(logs):
            continue
        for name in os.listdir(logs):
            if (filename and name == filename) or (pid and name.startswith("worker-") and name.endswith(f"-{pid}.log")):
                return os.path.join(logs, name)
    return None


def get_log(address=None, node_id=None, node_ip=None, filename=None, actor_id=None, task_id=None, pid=None,
            follow=False, tail=1000, timeout=DEFAULT_TIMEOUT, suffix="out", **_):
    """Yield the lines of a log: a file by name, or the log of a worker (``pid``), an actor or a
    task's worker; ``tail`` lines from the end (-1: all), then new lines while ``follow``."""
    dirs = _node_dirs(address, timeout)
    if node_id is not None:
        dirs = {node_id: dirs.get(node_id)}
    if actor_id is not None:
        a = get_actor(actor_id, address)
        if a is None:
            raise ValueError(f"no actor {actor_id}")
        pid = a["pid"]
    if task_id is not None:
        t = get_task(task_id, address)
        if t is None:
            raise ValueError(f"no task {task_id}")
        pid = t["worker_pid"]
    path = _find_log(dirs, filename, pid)
    if path is None:
        raise FileNotFoundError(f"no log for {filename or actor_id or task_id or pid} on this machine")
    # the tail reads back through rotated files (name.1, name.2, ...); follow goes on across rotations
    f = open(path, "r", errors="replace")
    try:
        yield from logfiles.read_tail(path, tail, f)
        if follow:
            yield from logfiles.follow(path, f)
    finally:
        f.close()


# --- cluster info ------------------------------------------------------------------------------------------------
def cluster_info(address=None, timeout=DEFAULT_TIMEOUT):
    """Luminary only: {metrics_url, history_dir, task_cap}."""
    return _query("info", address, timeout=timeout)
