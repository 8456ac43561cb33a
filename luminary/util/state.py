"""Cluster state for diagnostics, as in ``ray.util.state``: nodes, actors, placement groups."""
from __future__ import annotations

from .._private.worker import state as _state


def _core():
    return _state.require_core()


def list_nodes(detail: bool = False):
    out = []
    for n in _core().call_sync_gcs("get_nodes"):
        out.append({"node_id": n["NodeID"], "node_ip": n["NodeManagerAddress"],
                    "state": "ALIVE" if n["Alive"] else "DEAD", "is_head_node": bool(n.get("IsHead")),
                    "resources_total": dict(n["Resources"]), **({"available": n.get("Available")} if detail else {})})
    return out


def list_actors(detail: bool = False):
    return _core().call_sync_gcs("list_actors", None)


def list_placement_groups(detail: bool = False):
    return list(_core().call_sync_gcs("pg_table", None).values())


def get_actor(actor_id: str):
    for a in list_actors():
        if a["actor_id"] == actor_id:
            return a
    return None
