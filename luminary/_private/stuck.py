"""Which tasks and actors have been pending too long, and why (``luminary status``).

Pure: it reads the GCS's task table rows (owners' and workers' task events), actor rows and
node rows, and gives each task or actor older than the threshold a reason in the words of the
wait diagnostics (``Owner.describe``): waiting for its arguments, waiting for resources (or
infeasible: no node has them), queued, running on node N pid P for T s.
"""
from __future__ import annotations

import os
import time

STUCK_TASK_STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING")
STUCK_ACTOR_STATES = ("PENDING_CREATION", "RESTARTING")


def default_threshold() -> float:
    """$LUMINARY_WAIT_WARN_S (60 s by default), the wait diagnostics' threshold; 0 lists everything pending."""
    try:
        return max(0.0, float(os.environ.get("LUMINARY_WAIT_WARN_S", "60") or 0))
    except ValueError:
        return 60.0


def _fmt(res):
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"


def resource_reason(need: dict, nodes: list, free_when: str = "now") -> str:
    """'waiting for resources {...}' or, when no alive node could ever hold them, 'infeasible'.
    ``free_when`` says when the nodes' free resources were read; a node row without
    ``Available`` (not recorded) leaves them out."""
    need = {k: v for k, v in (need or {}).items() if v}
    alive = [n for n in nodes if n.get("Alive")]
    if alive and not any(all(n["Resources"].get(k, 0) >= v for k, v in need.items()) for n in alive):
        best = max(alive, key=lambda n: sum(n["Resources"].get(k, 0) >= v for k, v in need.items()))
        missing = {k: v for k, v in need.items() if best["Resources"].get(k, 0) < v}
        totals = "; ".join(f"node {n['NodeID'][:12]} has "
                           + _fmt({k: v for k, v in n["Resources"].items() if not k.startswith("node:")
                                   and k not in ("memory", "object_store_memory")}) for n in alive[:4])
        return f"infeasible: it needs {_fmt(need)} and no node has {_fmt(missing)} ({totals})"
    if any(n.get("Available") is None for n in alive):
        return f"waiting for resources {_fmt(need)}"
    free = {}
    for n in alive:
        for k in need:
            free[k] = free.get(k, 0) + n["Available"].get(k, 0)
    return f"waiting for resources {_fmt(need)} (free {free_when} across the cluster: {_fmt(free)})"


def infeasible_reason(missing: dict, node_resources: dict) -> str:
    """The reason an owner records when a node manager says no node can hold a task's request."""
    have = {k: v for k, v in (node_resources or {}).items() if not k.startswith("node:")
            and k not in ("memory", "object_store_memory")}
    return (f"infeasible: no node has {_fmt(missing or {})} (the node asked has {_fmt(have)}); "
            "it waits until a node with these resources joins")


PENDING_STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER")


def fill_reasons(rows, nodes, now=None, free_when="now"):
    """Give each pending task row (detailed) a ``pending_reason``: the one its owner recorded
    (e.g. infeasible, from the node manager) or one read from its state, its resource request
    and ``nodes`` (GCS node rows; after the cluster ended, as last recorded: ``free_when`` says
    when their free resources were read)."""
    now = time.time() if now is None else now
    for t in rows:
        if t.get("state") in PENDING_STATES:
            if not t.get("pending_reason"):
                t["pending_reason"] = _task_reason(t, nodes, now, free_when)
        elif "pending_reason" in t:
            t["pending_reason"] = None
    return rows


def _task_reason(t, nodes, now, free_when="now"):
    state = t["state"]
    node = (t.get("node_id") or "")[:12]
    if state == "PENDING_ARGS_AVAIL":
        return "waiting for its arguments (ObjectRefs it was passed are not ready yet)"
    if state == "PENDING_NODE_ASSIGNMENT":
        if t.get("actor_id"):
            return f"queued for actor {t['actor_id'][:12]} (behind earlier calls, or while the actor starts)"
        if t.get("pending_reason"):
            return t["pending_reason"]
        return resource_reason(t.get("required_resources") or {}, nodes, free_when)
    if state == "SUBMITTED_TO_WORKER":
        if t.get("actor_id"):
            return f"queued in actor {t['actor_id'][:12]}" + (f" on node {node}" if node else "") + \
                " behind the calls it is running"
        return "queued on node " + (node or "?") + " behind a task its worker is running"
    started = t.get("start_time_ms")
    ran = f" for {now - started / 1000:.0f} s" if started else ""
    return f"running on node {node or '?'} pid {t.get('worker_pid')}{ran}"


def find(tasks, actors, nodes, threshold, now=None):
    """Rows {kind, id, name, state, pending_s, reason} of what has been pending > ``threshold`` s."""
    now = time.time() if now is None else now
    out = []
    for t in tasks:
        created = t.get("creation_time_ms")
        if t.get("state") not in STUCK_TASK_STATES or created is None:
            continue
        age = now - created / 1000
        if age < threshold:
            continue
        out.append({"kind": "actor task" if t.get("actor_id") else "task", "id": t["task_id"],
                    "name": t.get("name") or "", "state": t["state"], "pending_s": round(age, 1),
                    "reason": _task_reason(t, nodes, now)})
    for a in actors:
        since = a.get("pending_since_ms")
        if a.get("state") not in STUCK_ACTOR_STATES or not since:
            continue
        age = now - since / 1000
        if age < threshold:
            continue
        if a.get("node_id"):
            reason = f"being created on node {a['node_id'][:12]} (its constructor runs" + \
                (f" in pid {a['pid']})" if a.get("pid") else ")")
        else:
            reason = resource_reason(a.get("required_resources") or {}, nodes)
        out.append({"kind": "actor", "id": a["actor_id"], "name": a.get("class_name") or "", "state": a["state"],
                    "pending_s": round(age, 1), "reason": reason})
    out.sort(key=lambda r: -r["pending_s"])
    return out


def format_rows(rows, threshold) -> str:
    if not rows:
        return f"Stuck: nothing pending for more than {threshold:g} s\n"
    lines = [f"Stuck: {len(rows)} task(s)/actor(s) pending for more than {threshold:g} s:"]
    for r in rows[:50]:
        lines.append(f"  {r['kind']} {r['name']} ({r['id'][:16]}) {r['state']} for {r['pending_s']:.1f} s: {r['reason']}")
    if len(rows) > 50:
        lines.append(f"  ... and {len(rows) - 50} more (luminary.util.diagnostics.stuck() lists them all)")
    return "\n".join(lines) + "\n"
