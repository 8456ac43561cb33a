"""Reports of what a cluster did: a Chrome trace (``luminary timeline``) and one self-contained
HTML file (``luminary report``, ``luminary.util.report``) built from the task table, the actor
and node life cycles and the resource samples, live or read back from the event log.
"""
from __future__ import annotations

import html
import json
import statistics
import time

from .gcs import history
from .gcs.task_table import TaskTable


# --- reading a history ---------------------------------------------------------------------------------
class Snapshot:
    """What a report shows: task rows (Ray's detailed shape), actors, nodes, samples, objects."""

    def __init__(self, tasks=(), actors=(), nodes=(), samples=(), objects=(), procs=None, title="", dropped=0):
        self.tasks, self.actors, self.nodes = list(tasks), list(actors), list(nodes)
        self.samples, self.objects, self.procs = list(samples), list(objects), procs or {}
        self.title, self.dropped = title, dropped


class Loaded:
    """A history directory read back: the task table, {actor id: row}, {node id: row}, the
    resource samples [(ts, payload)], {worker id: process}, the object samples [(ts, payload)]."""

    def __init__(self):
        self.table = TaskTable(cap=10_000_000)
        self.actors, self.nodes, self.samples, self.procs, self.objects = {}, {}, [], {}, []


def load(path, since=None):
    """Everything the history directory ``path`` holds (records at or after ``since`` only)."""
    h = Loaded()
    for kind, ts, p in history.read(path):
        if since is not None and ts < since:
            continue
        if kind == "evb":
            if p.get("blob"):
                h.table.add(p["proc"], p["blob"], 0)
        elif kind == "ev":      # the older form: records decoded in the log itself
            h.table.apply(p["proc"], p.get("events") or ())
        elif kind == "proc":
            h.procs[p["wid"].hex()] = p
        elif kind == "actor":
            h.actors[p["actor_id"]] = p
        elif kind == "node":
            h.nodes[p["node_id"]] = p
        elif kind == "sample":
            h.samples.append((ts, p))
        elif kind == "objects":
            h.objects.append((ts, p))
    return h


def load_tables(path, since=None):
    """(task table, {actor id: row}, {node id: row}, samples, procs) read back from the history
    directory ``path`` (records at or after ``since`` only)."""
    h = load(path, since)
    return h.table, h.actors, h.nodes, h.samples, h.procs


def last_nodes(h):
    """The nodes as last recorded, in the GCS's node-row shape (NodeID, Alive, Resources,
    Available from the last resource sample), to say why pending tasks waited."""
    avail = {}
    for _, p in reversed(h.samples):
        if p.get("avail"):
            avail = p["avail"]
            break
    return [{"NodeID": nid, "Alive": n.get("alive"), "Resources": n.get("resources") or {},
             "Available": avail.get(nid)} for nid, n in h.nodes.items()]


def task_rows(h, rows):
    """``rows`` (detailed) with ``pending_reason`` for tasks still pending when the log ends."""
    from . import stuck
    when = "at the log's last sample"
    for ts, p in reversed(h.samples):
        if p.get("avail"):
            when = f"at {time.strftime('%H:%M:%S', time.localtime(ts))} (the log's last sample)"
            break
    return stuck.fill_reasons(rows, last_nodes(h), free_when=when)


def objects_view(h):
    """(ts, rows, stores) of the last object sample, and the largest objects seen in any sample
    (one row per object, largest first, with ``last_seen``); each row's ``created_by`` names
    the task when the log has it."""
    tasks = h.table
    seen = {}
    for ts, p in h.objects:
        for r in p.get("top") or ():
            seen[r["object_id"]] = dict(r, last_seen=time.strftime("%H:%M:%S", time.localtime(ts)))
    for r in list(seen.values()) + [r for _, p in h.objects[-1:] for r in p.get("top") or ()]:
        if r.get("task_id") and r.get("created_by") == "task return":
            try:
                t = tasks.get(bytes.fromhex(r["task_id"]))
            except ValueError:
                t = None
            if t is not None and t.name:
                r["created_by"] = f"task return of {t.name}"
        if r.get("created_by") == "put" and r.get("pid"):
            r["created_by"] = f"put by pid {r['pid']}"
    largest = sorted(seen.values(), key=lambda r: -(r.get("object_size") or 0))
    if not h.objects:
        return None, [], {}, largest
    ts, p = h.objects[-1]
    return ts, list(p.get("top") or ()), p.get("stores") or {}, largest


def load_history(path, since=None):
    """A Snapshot of the history directory ``path`` (records at or after ``since`` only)."""
    h = load(path, since)
    _, _, _, largest = objects_view(h)
    return Snapshot(task_rows(h, h.table.rows(detail=True)), h.actors.values(), h.nodes.values(), h.samples,
                    largest, procs=h.procs, title=path)


# --- Chrome trace -----------------------------------------------------------------------------------------
def chrome_trace(tasks):
    """Chrome trace events (chrome://tracing, Perfetto): one complete event per task or actor
    call that ran, one process per node and one thread (row) per worker."""
    events, named = [], set()
    for t in tasks:
        start, end = t.get("start_time_ms"), t.get("end_time_ms")
        if not start or not t.get("worker_pid"):
            continue
        end = end or start
        node = (t.get("node_id") or "?")[:12]
        pid, tid = f"node {node}", t["worker_pid"]
        if (pid, tid) not in named:
            named.add((pid, tid))
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                           "args": {"name": f"worker {tid}"}})
        events.append({"name": t["func_or_class_name"], "cat": t["type"].lower(), "ph": "X", "ts": start * 1000,
                       "dur": max(1, (end - start) * 1000), "pid": pid, "tid": tid,
                       "cname": "bad" if t["state"] == "FAILED" else None,
                       "args": {"task_id": t["task_id"], "state": t["state"], "attempt": t["attempt_number"],
                                "actor_id": t.get("actor_id"), "error_type": t.get("error_type")}})
    for e in events:
        if e.get("cname") is None:
            e.pop("cname", None)
    return events


# --- HTML ----------------------------------------------------------------------------------------------------
_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;
margin-top:28px;border-bottom:1px solid #ddd}table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:
1px solid #eee;text-align:right}th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}pre{background:
#fbf3f3;padding:8px;overflow:auto;max-height:300px}.muted{color:#777}svg{background:#fafafa;border:1px solid #eee}"""
_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]


def _e(x):
    return html.escape(str(x))


def _table(head, rows):
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt_s(x):
    return f"{x * 1000:.2f} ms" if x < 1 else f"{x:.2f} s"


def _task_stream(tasks, width=1100):
    ran = [t for t in tasks if t.get("start_time_ms") and t.get("worker_pid")]
    if not ran:
        return "<p class=muted>No task ran.</p>"
    t0 = min(t["start_time_ms"] for t in ran)
    t1 = max(t.get("end_time_ms") or t["start_time_ms"] for t in ran)
    span = max(1, t1 - t0)
    rows = sorted({(t.get("node_id") or "", t["worker_pid"]) for t in ran})
    row_of = {r: i for i, r in enumerate(rows)}
    colors = {}
    h = 18
    parts = [f'<svg width="{width + 160}" height="{len(rows) * h + 24}">']
    for (node, pid), i in row_of.items():
        parts.append(f'<text x="2" y="{i * h + 13}" font-size="11">{_e(node[:8])} pid {pid}</text>')
    for t in ran:
        name = t["func_or_class_name"]
        c = colors.setdefault(name, _PALETTE[len(colors) % len(_PALETTE)])
        if t["state"] == "FAILED":
            c = "#d62728"
        x = 150 + (t["start_time_ms"] - t0) / span * width
        w = max(1.0, ((t.get("end_time_ms") or t["start_time_ms"]) - t["start_time_ms"]) / span * width)
        y = row_of[(t.get("node_id") or "", t["worker_pid"])] * h
        parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{h - 4}" fill="{c}">'
                     f'<title>{_e(name)} {t["state"]} {t["end_time_ms"] and (t["end_time_ms"] - t["start_time_ms"])} ms</title></rect>')
    parts.append(f'<text x="150" y="{len(rows) * h + 16}" font-size="11">0</text>'
                 f'<text x="{150 + width - 60}" y="{len(rows) * h + 16}" font-size="11">{span / 1000:.3f} s</text></svg>')
    legend = " ".join(f'<span style="color:{c}">■</span> {_e(n)}' for n, c in colors.items())
    return "".join(parts) + f"<p>{legend}</p>"


def _durations(tasks):
    by = {}
    for t in tasks:
        by.setdefault(t["func_or_class_name"], []).append(t)
    rows = []
    for name, ts in sorted(by.items(), key=lambda kv: -len(kv[1])):
        d = [(t["end_time_ms"] - t["start_time_ms"]) / 1000 for t in ts if t.get("start_time_ms") and t.get("end_time_ms")]
        failed = sum(t["state"] == "FAILED" for t in ts)
        if d:
            d.sort()
            rows.append([name, len(ts), failed, _fmt_s(statistics.mean(d)), _fmt_s(d[len(d) // 2]),
                         _fmt_s(d[min(len(d) - 1, int(len(d) * 0.95))]), _fmt_s(d[-1]), _fmt_s(sum(d))])
        else:
            rows.append([name, len(ts), failed, "-", "-", "-", "-", "-"])
    return _table(["function", "calls", "failed", "mean", "p50", "p95", "max", "total"], rows)


def _utilisation(tasks):
    by = {}
    for t in tasks:
        if t.get("start_time_ms") and t.get("end_time_ms") and t.get("worker_pid"):
            by.setdefault((t.get("node_id") or "", t["worker_pid"]), []).append(t)
    if not by:
        return "<p class=muted>No task ran.</p>"
    t0 = min(t["start_time_ms"] for ts in by.values() for t in ts)
    t1 = max(t["end_time_ms"] for ts in by.values() for t in ts)
    span = max(1, t1 - t0)
    rows = []
    for (node, pid), ts in sorted(by.items()):
        busy = sum(t["end_time_ms"] - t["start_time_ms"] for t in ts)
        rows.append([f"{node[:12]} pid {pid}", len(ts), _fmt_s(busy / 1000), f"{100 * busy / span:.1f}%"])
    return _table(["worker", "tasks", "busy", "utilisation"], rows)


def _memory(samples, width=1100, height=140):
    pts = []
    for ts, s in samples:
        used = sum((n.get("store") or {}).get("used", 0) for n in s.get("nodes", ()))
        mem = sum((n.get("store") or {}).get("mem_used", 0) for n in s.get("nodes", ()))
        pts.append((ts, used, mem))
    if len(pts) < 2:
        return "<p class=muted>Fewer than two samples (one per second while the cluster ran).</p>"
    t0, t1 = pts[0][0], pts[-1][0]
    out = [f'<svg width="{width + 60}" height="{height * 2 + 40}">']
    for k, (label, color) in enumerate((("object store used", "#4e79a7"), ("node memory used", "#f28e2b"))):
        vals = [p[k + 1] for p in pts]
        top = max(vals) or 1
        y0 = k * (height + 20) + 10
        line = " ".join(f"{50 + (p[0] - t0) / max(1e-9, t1 - t0) * width:.1f},{y0 + height - v / top * height:.1f}"
                        for p, v in zip(pts, vals))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}"/>'
                   f'<text x="52" y="{y0 + 12}" font-size="11">{label} (max {top / 2**20:.1f} MiB)</text>')
    out.append("</svg>")
    return "".join(out)


def _failures(tasks, limit=50):
    failed = [t for t in tasks if t["state"] == "FAILED"]
    if not failed:
        return "<p class=muted>No task failed.</p>"
    out = []
    for t in failed[:limit]:
        out.append(f"<p><b>{_e(t['func_or_class_name'])}</b> {_e(t['task_id'])} "
                   f"<span class=muted>{_e(t.get('error_type'))}, attempt {t['attempt_number']}</span></p>"
                   f"<pre>{_e(t.get('error_message') or '')}</pre>")
    if len(failed) > limit:
        out.append(f"<p class=muted>... and {len(failed) - limit} more.</p>")
    return "".join(out)


def render_html(snap: Snapshot):
    tasks = snap.tasks
    states = {}
    for t in tasks:
        states[t["state"]] = states.get(t["state"], 0) + 1
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>Luminary report</title><style>{_CSS}</style>"
             "</head><body>", f"<h1>Luminary report</h1><p class=muted>{_e(snap.title)} · written "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
             "<p>" + ", ".join(f"{_e(s)}: {c}" for s, c in sorted(states.items())) + f" · {len(tasks)} tasks"
             + (f" · {snap.dropped} dropped from the bounded table" if snap.dropped else "") + "</p>",
             "<h2>Task stream</h2>", _task_stream(tasks),
             "<h2>Durations per function</h2>", _durations(tasks),
             "<h2>Worker utilisation</h2>", _utilisation(tasks),
             "<h2>Memory over time</h2>", _memory(snap.samples),
             "<h2>Failures</h2>", _failures(tasks)]
    pending = [t for t in tasks if t.get("pending_reason")]
    if pending:
        parts += ["<h2>Pending (stuck) tasks</h2>", _table(["task", "function", "state", "why it waits"], [
            [t["task_id"][:16], t.get("func_or_class_name"), t["state"], t["pending_reason"]] for t in pending[:50]])]
    if snap.actors:
        parts += ["<h2>Actors</h2>", _table(["actor", "class", "state", "restarts", "pid", "death cause"], [
            [a["actor_id"][:12], a.get("class_name"), a["state"], a.get("num_restarts", 0), a.get("pid"),
             (a.get("death_cause") or "")[:200]] for a in snap.actors])]
    if snap.objects:
        top = sorted(snap.objects, key=lambda o: -(o.get("object_size") or 0))[:20]
        parts += ["<h2>Top objects</h2>", _table(["object", "size", "owner pid", "where", "reference", "created by",
                                                  "last seen"], [
            [o["object_id"][:16], o.get("object_size"), o.get("pid"), o.get("where") or o.get("stored_in"),
             o.get("reference_type"), o.get("created_by") or "", o.get("last_seen") or ""] for o in top])]
    if snap.nodes:
        parts += ["<h2>Nodes</h2>", _table(["node", "ip", "alive", "death reason"], [
            [n["node_id"][:12], n.get("ip"), n.get("alive"), n.get("death_reason") or ""] for n in snap.nodes])]
    parts.append("</body></html>")
    return "".join(parts)


def write_report(path, snap):
    with open(path, "w") as f:
        f.write(render_html(snap))
    return path


def trace_json(tasks):
    return json.dumps(chrome_trace(tasks))
