"""Placement, in one place, pure (no sockets, no asyncio, no clocks, no threads).

    resources.py  exact resource quantities (integer units of 1/10000), fits / add / subtract,
                  conversion from and to the wire's floats at the edge
    cluster.py    the cluster view: nodes with totals, availability, alive, labels
    policy.py     decisions: task spillback at a node manager (TaskPlacer), actor placement
                  at the GCS (place_actor), placement-group bundle plans (plan_bundles)

Used by the node manager (``node/manager.py``), its local scheduler (``node/scheduler.py``) and
the GCS (``gcs/actors.py``, ``gcs/placement_groups.py``, ``gcs/server.py``).
"""
from .cluster import ClusterView, NodeView
from .policy import (LOCAL, STRATEGIES, Reject, Spill, TaskPlacer, actor_load, group_resources, node_load,
                     place_actor, plan_bundles)
from .resources import UNIT, ResourceSet, ceil_whole, fits, from_units, missing, to_units, utilization

__all__ = ["ClusterView", "NodeView", "LOCAL", "STRATEGIES", "Reject", "Spill", "TaskPlacer", "actor_load",
           "group_resources", "node_load", "place_actor", "plan_bundles", "UNIT", "ResourceSet", "ceil_whole",
           "fits", "from_units", "missing", "to_units", "utilization"]
