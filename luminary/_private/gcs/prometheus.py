"""Prometheus text exposition (format 0.0.4) of user metrics and built-in cluster metrics."""
from __future__ import annotations

import math
import re

_BAD = re.compile(r"[^a-zA-Z0-9_:]")


def _name(n):
    n = _BAD.sub("_", n)
    return n if not n[:1].isdigit() else "_" + n


def _esc(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n")


def _labels(tags, extra=()):
    items = list(tags) + list(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{_name(k)}="{_esc(v)}"' for k, v in items) + "}"


def _num(v):
    if v is None:
        return "NaN"
    v = float(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def render(metrics, task_counts, actors, nodes, gcs_nodes, dropped):
    out = []

    def family(name, kind, help_, samples):
        out.append(f"# HELP {name} {_help(help_)}")
        out.append(f"# TYPE {name} {kind}")
        for labels, v in samples:
            out.append(f"{name}{labels} {_num(v)}")

    # user metrics
    by_name = {}
    for (name, tags), v in metrics.values.items():
        by_name.setdefault(name, []).append((tags, v))
    for name, items in sorted(by_name.items()):
        kind, desc, bounds = metrics.defs.get(name, ["counter", "", []])
        pn = _name(name)
        if kind == "histogram":
            out.append(f"# HELP {pn} {_help(desc)}")
            out.append(f"# TYPE {pn} histogram")
            for tags, h in items:
                cum = 0
                for b, c in zip(list(bounds) + [math.inf], h[:len(bounds) + 1]):
                    cum += c
                    le = "+Inf" if math.isinf(b) else repr(float(b))
                    out.append(f"{pn}_bucket{_labels(tags, [('le', le)])} {cum}")
                out.append(f"{pn}_sum{_labels(tags)} {_num(h[-2])}")
                out.append(f"{pn}_count{_labels(tags)} {h[-1]}")
        else:
            ptype = "gauge" if kind == "gauge" else "counter"
            if ptype == "counter" and not pn.endswith("_total"):
                pn += "_total"      # a counter's samples end in _total (the family is the name without)
            out.append(f"# HELP {pn} {_help(desc)}")
            out.append(f"# TYPE {pn} {ptype}")
            for tags, v in items:
                out.append(f"{pn}{_labels(tags)} {_num(v)}")

    # built-ins
    family("luminary_tasks", "gauge", "Tasks and actor calls in the task table, by state.",
           [(_labels([("State", s)]), c) for s, c in sorted(task_counts.items())])
    family("luminary_task_events_dropped", "gauge", "Task records dropped to keep the table bounded.",
           [("", dropped)])
    states = {}
    for a in actors:
        states[a["state"]] = states.get(a["state"], 0) + 1
    family("luminary_actors", "gauge", "Actors, by state.", [(_labels([("State", s)]), c) for s, c in sorted(states.items())])
    used, spilled, restored, cap, cpu, mem, memtot = [], [], [], [], [], [], []
    for n in nodes:
        lab = _labels([("NodeId", n["node_id"])])
        st = n.get("store") or {}
        used.append((lab, st.get("used", 0)))
        cap.append((lab, st.get("capacity", 0)))
        spilled.append((lab, st.get("spilled_bytes", 0)))
        restored.append((lab, st.get("restored_bytes", st.get("restored", 0))))
        if "cpu_percent" in st:
            cpu.append((lab, st["cpu_percent"]))
        if "mem_used" in st:
            mem.append((lab, st["mem_used"]))
            memtot.append((lab, st.get("mem_total", 0)))
    family("luminary_object_store_used_bytes", "gauge", "Object store memory in use.", used)
    family("luminary_object_store_capacity_bytes", "gauge", "Object store capacity.", cap)
    family("luminary_object_store_spilled_bytes", "gauge", "Bytes spilled to disk so far.", spilled)
    family("luminary_object_store_restored", "gauge", "Objects restored from spill so far.", restored)
    family("luminary_node_cpu_percent", "gauge", "Node CPU utilisation (percent of all cores).", cpu)
    family("luminary_node_mem_used_bytes", "gauge", "Node memory in use.", mem)
    family("luminary_node_mem_total_bytes", "gauge", "Node memory in total.", memtot)
    family("luminary_scheduler_pending_leases", "gauge", "Lease requests queued at each node's scheduler.",
           [(_labels([("NodeId", nid.hex())]), len(n.get("pending") or ())) for nid, n in gcs_nodes.items() if n["Alive"]])
    return "\n".join(out) + "\n"
