"""The cluster as placement sees it: nodes with exact totals and availability.

The GCS keeps one (``GcsServer.cluster``), updated by registrations, heartbeats and deaths; a node
manager rebuilds one from every view the GCS sends it (``ClusterView.from_wire``).
"""
from __future__ import annotations

from .resources import ResourceSet, fits


class NodeView:
    __slots__ = ("node_id", "address", "total", "available", "alive", "labels")

    def __init__(self, node_id, address, total: ResourceSet, available: ResourceSet | None = None,
                 alive=True, labels=None):
        self.node_id = node_id
        self.address = address
        self.total = total
        self.available = total.copy() if available is None else available
        self.alive = alive
        self.labels = dict(labels or {})

    @property
    def is_head(self):
        return bool(self.labels.get("head"))

    def feasible(self, need: ResourceSet) -> bool:
        """Could this node ever run ``need`` (its totals cover it)?"""
        return fits(need, self.total)

    def fits(self, need: ResourceSet) -> bool:
        """Can this node run ``need`` now?"""
        return fits(need, self.available)

    def with_available(self, available: ResourceSet) -> "NodeView":
        return NodeView(self.node_id, self.address, self.total, available, self.alive, self.labels)

    def __repr__(self):
        return (f"NodeView({self.node_id!r}, total={self.total.to_wire()}, available={self.available.to_wire()}"
                f"{'' if self.alive else ', dead'})")


class ClusterView:
    """Nodes by id, in the order they were first seen (placement ties go to the earlier one)."""

    def __init__(self, nodes=()):
        self.nodes: dict = {n.node_id: n for n in nodes}

    @classmethod
    def from_wire(cls, view) -> "ClusterView":
        """The GCS's ``view`` message: {node_id: {"address", "total", "available"}} of alive nodes."""
        return cls(NodeView(nid, n.get("address"), ResourceSet.from_wire(n.get("total")),
                            ResourceSet.from_wire(n.get("available")), labels=n.get("labels"))
                   for nid, n in (view or {}).items())

    def __len__(self):
        return sum(1 for n in self.nodes.values() if n.alive)

    def __contains__(self, node_id):
        n = self.nodes.get(node_id)
        return n is not None and n.alive

    def get(self, node_id) -> NodeView | None:
        """The node if it is alive, else None."""
        n = self.nodes.get(node_id)
        return n if n is not None and n.alive else None

    def alive(self):
        return [n for n in self.nodes.values() if n.alive]

    def feasible_anywhere(self, need: ResourceSet) -> bool:
        return any(n.feasible(need) for n in self.nodes.values() if n.alive)

    # --- changes (the GCS's copy) ----------------------------------------------------------------
    def upsert(self, node: NodeView):
        self.nodes[node.node_id] = node

    def report(self, node_id, available: ResourceSet, total: ResourceSet | None = None):
        """A node's fresh availability (and totals, when bundles came or went).  Returns what
        changed: "total" (what the node could ever hold), "available" (only its room now), or None."""
        n = self.nodes.get(node_id)
        if n is None or not n.alive:
            return None
        changed = None
        if total is not None and n.total != total:
            n.total = total
            changed = "total"
        if n.available != available:
            n.available = available
            changed = changed or "available"
        return changed

    def mark_dead(self, node_id) -> bool:
        n = self.nodes.get(node_id)
        if n is None or not n.alive:
            return False
        n.alive = False
        return True

    def restricted_to(self, keep) -> "ClusterView":
        """Only the alive nodes for which ``keep(node_id)`` holds (e.g. still connected)."""
        return ClusterView(n for n in self.nodes.values() if n.alive and keep(n.node_id))
