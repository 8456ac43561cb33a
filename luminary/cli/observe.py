"""The ``luminary`` commands that look at a cluster (state API, memory, timeline, logs,
metrics, report); registered by main.py with ``add_parsers``.

    luminary list tasks|actors|objects|nodes|workers|jobs|placement-groups
                  [--filter KEY=VALUE ...] [--limit N] [--detail] [--format table|json|yaml]
    luminary get tasks|actors|nodes|workers|placement-groups ID
    luminary summary tasks|actors|objects      (summary tasks: the slowest functions first)
    luminary list|get|summary tasks|actors --session [SESSION]   the same from a cluster's event
                                        log, also after the cluster ended
    luminary memory                     every live object: size, owner, where, why referenced
    luminary memory --session [SESSION] the largest objects the event log sampled (also after the end)
    luminary timeline [-o FILE]         Chrome trace JSON (chrome://tracing, ui.perfetto.dev)
    luminary logs [FILE] [--actor-id ID | --task-id ID | --pid PID] [--tail N] [--follow]
    luminary metrics                    the Prometheus endpoint's URL
    luminary report [SESSION] [-o report.html]
"""
from __future__ import annotations

import json
import sys
import time

RESOURCES = {"tasks": "tasks", "actors": "actors", "objects": "objects", "nodes": "nodes", "workers": "workers",
             "jobs": "jobs", "placement-groups": "placement_groups", "placement_groups": "placement_groups"}
GETTERS = {"tasks": "get_task", "actors": "get_actor", "nodes": "get_node", "workers": "get_worker",
           "placement_groups": "get_placement_group"}


def _state():
    from ..util import state
    return state


def _fail(cmd, msg):
    sys.exit(f"luminary {cmd}: {msg}")


def _value(v):
    if v in ("true", "True"):
        return True
    if v in ("false", "False"):
        return False
    return v


def _parse_filters(items):
    out = []
    for it in items or ():
        op = "!=" if "!=" in it else "="
        if op not in it:
            _fail("list", f"--filter takes KEY=VALUE or KEY!=VALUE, got {it!r}")
        k, v = it.split(op, 1)
        out.append((k.strip(), op, _value(v.strip())))
    return out


def _yaml(obj, ind=0):
    pad = "  " * ind
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}"
        lines = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{_yaml(v, ind + 1)}")
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
        return "\n".join(lines)
    if isinstance(obj, list):
        if not obj:
            return pad + "[]"
        out = []
        for v in obj:
            body = _yaml(v, ind + 1).lstrip() if isinstance(v, (dict, list)) else _scalar(v)
            out.append(f"{pad}- {body}")
        return "\n".join(out)
    return pad + _scalar(obj)


def _scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return json.dumps(str(v))


def _table(rows, columns=None):
    if not rows:
        return "(none)"
    cols = columns or list(rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    head = "  ".join(c.upper().ljust(w) for c, w in zip(cols, widths))
    return "\n".join([head] + ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells])


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ",".join(f"{k}:{x:g}" if isinstance(x, float) else f"{k}:{x}" for k, x in v.items())
    s = str(v).replace("\n", " ")
    return s if len(s) <= 60 else s[:57] + "..."


def _out(obj, fmt, columns=None):
    if fmt == "json":
        print(json.dumps(obj, indent=2, default=str))
    elif fmt == "yaml":
        print(_yaml(obj))
    elif isinstance(obj, list):
        print(_table(obj, columns))
    else:
        print(_yaml(obj))


BRIEF = {"tasks": ["task_id", "attempt_number", "name", "state", "type", "node_id", "worker_pid", "error_type"],
         "actors": ["actor_id", "class_name", "state", "name", "pid", "node_id", "num_restarts"],
         "objects": ["object_id", "object_size", "reference_type", "type", "pid", "stored_in", "node_id"],
         "workers": ["worker_id", "worker_type", "is_alive", "pid", "node_id", "job_id"]}


def _history(args, cmd, what):
    """A cluster's event log read back (``--session``: the cluster may have ended)."""
    from .._private import report
    from .._private.gcs import history
    if what not in ("tasks", "actors", "objects"):
        _fail(cmd, f"--session reads tasks, actors and objects from a cluster's event log, not {what}")
    try:
        path = history.find(None if args.session == "latest" else args.session)
        h = report.load(path)
    except (OSError, ValueError) as e:
        _fail(cmd, str(e))
    print(f"(from the event log {path})", file=sys.stderr)
    return h


def _history_actors(h):
    """Actor rows of a log; those still pending creation say why (resources, as last recorded)."""
    from .._private import report, stuck
    nodes = report.last_nodes(h)
    out = []
    for a in h.actors.values():
        a = dict(a)
        if a.get("state") in stuck.STUCK_ACTOR_STATES and not a.get("node_id"):
            a["pending_reason"] = stuck.resource_reason(a.get("required_resources") or {}, nodes,
                                                         "at the log's last sample")
        out.append(a)
    return out


def cmd_list(args):
    st = _state()
    what = RESOURCES.get(args.resource)
    if what is None:
        _fail("list", f"unknown resource {args.resource!r}; one of {sorted(set(RESOURCES))}")
    res = None
    if args.session:
        from .._private import report
        h = _history(args, "list", what)
        try:
            filters = st._check_filters(_parse_filters(args.filter))
            if what == "tasks":
                rows = h.table.select(filters, args.limit, args.detail)
                res = {"rows": report.task_rows(h, rows) if args.detail else rows, "total": h.table.size()}
            elif what == "objects":
                res = {"rows": st.apply_filters(report.objects_view(h)[3], filters, args.limit)}
            else:
                res = {"rows": st.apply_filters(_history_actors(h), filters, args.limit)}
        except ValueError as e:
            _fail("list", str(e))
        _out(res["rows"], args.format, None if args.detail else BRIEF.get(what))
        if not args.filter and len(res["rows"]) < res.get("total", 0):
            print(f"({len(res['rows'])} of {res['total']} tasks shown: use --limit or --filter)", file=sys.stderr)
        return
    try:
        if what == "tasks":      # one query: the rows, and how many the table holds and dropped
            res = st._query("tasks", args.address, _parse_filters(args.filter), args.limit, args.detail)
            rows = res["rows"]
        else:
            rows = getattr(st, f"list_{what}")(address=args.address, filters=_parse_filters(args.filter),
                                                limit=args.limit, detail=args.detail)
    except (ConnectionError, OSError, ValueError) as e:
        _fail("list", str(e))
    cols = None if args.detail else BRIEF.get(what)
    _out([dict(r) for r in rows], args.format, cols)
    if res is not None and args.format == "table":
        if not args.filter and len(rows) < res.get("total", 0):
            print(f"({len(rows)} of {res['total']} tasks shown: use --limit or --filter)", file=sys.stderr)
        if res.get("dropped"):
            print(f"({res['dropped']} older task records were dropped to keep the table bounded)", file=sys.stderr)


def cmd_get(args):
    st = _state()
    what = RESOURCES.get(args.resource)
    fn = GETTERS.get(what)
    if fn is None:
        _fail("get", f"cannot get {args.resource!r}; one of {sorted(GETTERS)}")
    if args.session:
        from .._private import report
        h = _history(args, "get", what)
        key = "task_id" if what == "tasks" else "actor_id"
        rows = report.task_rows(h, h.table.select([(key, "=", args.id)], 1, True)) if what == "tasks" else \
            st.apply_filters(_history_actors(h), [(key, "=", args.id)], 1)
        row = rows[0] if rows else None
    else:
        try:
            row = getattr(st, fn)(args.id, address=args.address)
        except (ConnectionError, OSError, ValueError) as e:
            _fail("get", str(e))
    if row is None:
        _fail("get", f"no {args.resource} with id {args.id}")
    _out(dict(row), args.format)


def cmd_summary(args):
    st = _state()
    fn = {"tasks": st.summarize_tasks, "actors": st.summarize_actors, "objects": st.summarize_objects}.get(args.resource)
    if fn is None:
        _fail("summary", "summary of tasks, actors or objects")
    if args.session:
        h = _history(args, "summary", args.resource)
        actors = list(h.actors.values())
        if args.resource == "tasks":
            res = dict(h.table.summary(), dropped=0)
        elif args.resource == "objects":
            _fail("summary", "--session has no object summary: `luminary memory --session` shows the largest objects")
        else:
            counts = {}
            for a in actors:
                c = counts.setdefault(a["class_name"], {"class_name": a["class_name"], "state_counts": {}})
                c["state_counts"][a["state"]] = c["state_counts"].get(a["state"], 0) + 1
            res = {"summary": counts, "total_actors": len(actors), "summary_by": "class"}
    else:
        res = fn(address=args.address)["cluster"]
    if args.format != "table":
        return _out(res, args.format)
    if args.resource == "tasks":
        rows = [{"func_or_class_name": k, "type": v["type"], **{"count": sum(v["state_counts"].values())},
                 "state_counts": v["state_counts"], "total_s": round(v["duration_s_total"], 6),
                 "mean_s": round(v["duration_s_total"] / v["duration_n"], 6) if v["duration_n"] else None}
                for k, v in res["summary"].items()]
        rows.sort(key=lambda r: -(r["mean_s"] or 0))      # the slowest functions first
        print(f"Tasks: {res['total_tasks']} ({res['total_actor_tasks']} actor calls)"
              + (f", {res['dropped']} dropped" if res.get("dropped") else ""))
    elif args.resource == "actors":
        rows = [{"class_name": k, "state_counts": v["state_counts"]} for k, v in res["summary"].items()]
        print(f"Actors: {res['total_actors']}")
    else:
        rows = [dict(v, callsite=k) for k, v in res["summary"].items()]
        print(f"Objects: {res['total_objects']}, {res['total_size_mb']:.3f} MiB")
    print(_table(rows))


def cmd_memory_session(args):
    """The largest objects the event log recorded: at its last object sample, and over the session."""
    from .._private import report
    h = _history(args, "memory", "objects")
    ts, last, stores, largest = report.objects_view(h)
    if args.format != "table":
        return _out({"sampled_at": ts, "objects": last, "stores": stores, "largest_seen": largest}, args.format)
    cols = ["object_id", "object_size", "where", "reference_type", "pid", "type", "node_id", "created_by"]
    if ts is None:
        print("No object samples in this log (objects are sampled every few seconds while a node's store holds any).")
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    print(f"--- Largest objects at the last sample, {when} (in the node stores; each counted once, by its owner) ---")
    print(_table(last, cols))
    print("\n--- Stores at that sample ---")
    print(_table([{"node": n, "objects": v.get("objects"), "used_bytes": v.get("used"),
                   "MiB": round((v.get("used") or 0) / 2**20, 3), "spilled_bytes": v.get("spilled_bytes")}
                  for n, v in stores.items()]))
    ids = {r["object_id"] for r in last}
    gone = [r for r in largest if r["object_id"] not in ids]
    if gone:
        print("\n--- Largest objects seen earlier in the session (freed by that sample) ---")
        print(_table(gone[:20], cols + ["last_seen"]))


def cmd_memory(args):
    if args.session:
        return cmd_memory_session(args)
    st = _state()
    try:
        rows = st.list_objects(address=args.address, limit=None)
    except (ConnectionError, OSError) as e:
        _fail("memory", str(e))
    if args.format != "table":
        return _out([dict(r) for r in rows], args.format)
    owners = {r["object_id"]: r for r in rows if r["is_owner"]}
    print("--- Objects (one line per process that references one) ---")
    print(_table([dict(r) for r in rows], ["object_id", "object_size", "is_owner", "pid", "type", "reference_type",
                                           "stored_in", "node_id", "borrowers"]))
    per_node = {}
    for oid, r in owners.items():   # each object counted once, by its owner
        n = per_node.setdefault(r["node_id"] if r["stored_in"] == "object_store" else f"owner memory ({r['node_id']})",
                                [0, 0])
        n[0] += 1
        n[1] += r["object_size"] or 0
    print("\n--- Totals per node (each object counted once) ---")
    print(_table([{"node": k, "objects": v[0], "bytes": v[1], "MiB": round(v[1] / 2**20, 3)} for k, v in per_node.items()]))


def cmd_timeline(args):
    from .._private import report
    st = _state()
    try:
        tasks = st.list_tasks(address=args.address, limit=None, detail=True)
    except (ConnectionError, OSError) as e:
        _fail("timeline", str(e))
    data = report.trace_json([dict(t) for t in tasks])
    out = args.output or "timeline.json"
    with open(out, "w") as f:
        f.write(data)
    print(f"Wrote {out}: open it in chrome://tracing or https://ui.perfetto.dev")


def cmd_logs(args):
    st = _state()
    try:
        if not (args.filename or args.actor_id or args.task_id or args.pid):
            for cat, files in st.list_logs(address=args.address, node_id=args.node_id).items():
                print(f"{cat}:")
                for f in files:
                    print(f"  {f}")
            return
        for line in st.get_log(address=args.address, node_id=args.node_id, filename=args.filename,
                               actor_id=args.actor_id, task_id=args.task_id, pid=args.pid, tail=args.tail,
                               follow=args.follow):
            sys.stdout.write(line)
            sys.stdout.flush()
    except (ConnectionError, OSError, ValueError) as e:
        _fail("logs", str(e))
    except KeyboardInterrupt:
        pass


def cmd_metrics(args):
    try:
        url = _state().cluster_info(address=args.address).get("metrics_url")
    except (ConnectionError, OSError) as e:
        _fail("metrics", str(e))
    print(url or "the metrics endpoint is not listening (see the head's logs/node.log)")


def metrics_line(gcs_address, secret):
    """The line ``luminary start --head`` prints about the metrics endpoint."""
    from .._private.worker.connect import query_gcs
    try:
        url = query_gcs(gcs_address, secret, "state_query", {"what": "info"}).get("metrics_url")
    except (ConnectionError, OSError):
        url = None
    return f"  Metrics (Prometheus): {url}  (bearer token: `luminary job token`)" if url else "  Metrics: the endpoint is not listening (see logs/node.log)"


def cmd_report(args):
    from .._private import report
    from .._private.gcs import history
    try:
        path = history.find(args.session)
    except (OSError, ValueError) as e:
        _fail("report", str(e))
    snap = report.load_history(path)
    out = args.output or "report.html"
    report.write_report(out, snap)
    print(f"Wrote {out} ({len(snap.tasks)} tasks) from {path}")


def add_parsers(sub):
    """Add the subcommands to ``sub``; returns {name: handler}."""
    def common(p, fmt=True):
        p.add_argument("--address", help="the cluster (HOST:PORT; default: the one on this machine or in this process)")
        if fmt:
            p.add_argument("--format", choices=("table", "json", "yaml"), default="table")
    def session(p):
        p.add_argument("--session", nargs="?", const="latest", metavar="SESSION",
                       help="tasks and actors from a cluster's event log, also after it ended "
                            "(default: the most recent cluster; as for `luminary report`)")
    p = sub.add_parser("list", help="list tasks, actors, objects, nodes, workers, jobs or placement groups")
    p.add_argument("resource")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--detail", action="store_true")
    common(p)
    session(p)
    p = sub.add_parser("get", help="one task, actor, node, worker or placement group")
    p.add_argument("resource")
    p.add_argument("id")
    common(p)
    session(p)
    p.set_defaults(format="yaml")
    p = sub.add_parser("summary", help="summarize tasks, actors or objects")
    p.add_argument("resource")
    common(p)
    session(p)
    p = sub.add_parser("memory", help="every live object: size, owner, where it lives, why referenced")
    common(p)
    p.add_argument("--session", nargs="?", const="latest", metavar="SESSION",
                   help="the largest objects a cluster's event log recorded, also after it ended "
                        "(default: the most recent cluster)")
    p = sub.add_parser("timeline", help="write a Chrome trace of task execution")
    p.add_argument("-o", "--output")
    common(p, fmt=False)
    p = sub.add_parser("logs", help="list logs, or print one (a file, an actor's, a task's, a worker's)")
    p.add_argument("filename", nargs="?")
    p.add_argument("--actor-id")
    p.add_argument("--task-id")
    p.add_argument("--pid", type=int)
    p.add_argument("--node-id")
    p.add_argument("--tail", type=int, default=1000)
    p.add_argument("--follow", "-f", action="store_true")
    common(p, fmt=False)
    p = sub.add_parser("metrics", help="print the URL of the Prometheus metrics endpoint")
    common(p, fmt=False)
    p = sub.add_parser("report", help="write one HTML report of a running or finished cluster")
    p.add_argument("session", nargs="?", help="a session directory or history directory (default: the last)")
    p.add_argument("-o", "--output")
    return {"list": cmd_list, "get": cmd_get, "summary": cmd_summary, "memory": cmd_memory,
            "timeline": cmd_timeline, "logs": cmd_logs, "metrics": cmd_metrics, "report": cmd_report}
