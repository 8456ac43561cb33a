"""Scheduling strategies, as in ``ray.util.scheduling_strategies``."""
from __future__ import annotations


class NodeAffinitySchedulingStrategy:
    """Run on the node with ``node_id`` (hex, from ``get_runtime_context().get_node_id()``).
    ``soft=True`` falls back to other nodes when that one is dead or lacks the resources."""

    def __init__(self, node_id, soft: bool, _spill_on_unavailable=False, _fail_on_unavailable=False):
        self.node_id = node_id
        self.soft = soft

    def to_wire(self):
        nid = self.node_id if isinstance(self.node_id, bytes) else bytes.fromhex(str(self.node_id))
        return {"type": "NODE_AFFINITY", "node_id": nid, "soft": bool(self.soft)}


class PlacementGroupSchedulingStrategy:
    """Run inside a placement group's reserved bundles (``placement_group_bundle_index=-1``: any)."""

    def __init__(self, placement_group, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks=None):
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks


class NodeLabelSchedulingStrategy:
    def __init__(self, hard, soft=None):
        self.hard = hard
        self.soft = soft


def resolve_strategy(options, core):
    """The scheduling strategy a task or actor asked for, or, when it asked for none, the
    placement group of the task or actor submitting it if that one captures its children
    (``placement_group_capture_child_tasks=True``).  Returns (strategy, pg context for the spec)."""
    strategy = options.get("scheduling_strategy")
    if options.get("placement_group") not in (None, "default"):
        strategy = PlacementGroupSchedulingStrategy(
            options["placement_group"], options.get("placement_group_bundle_index", -1),
            options.get("placement_group_capture_child_tasks"))
    elif strategy in (None, "DEFAULT") and options.get("placement_group") is None:
        cur = getattr(core, "current_pg", None)
        if cur and cur[1]:
            from .placement_group import PlacementGroup
            strategy = PlacementGroupSchedulingStrategy(PlacementGroup(cur[0], cur[2]), -1, True)
    pg_ctx = None
    if isinstance(strategy, PlacementGroupSchedulingStrategy) and strategy.placement_group is not None:
        pg = strategy.placement_group
        pg_ctx = [pg.id.binary(), bool(strategy.placement_group_capture_child_tasks), pg.bundle_specs]
    return strategy, pg_ctx


def wire_strategy(strategy, resources):
    """(strategy dict for the wire or None, resources rewritten for placement groups)."""
    if strategy is None or strategy == "DEFAULT":
        return None, resources
    if strategy == "SPREAD":
        return {"type": "SPREAD"}, resources
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return strategy.to_wire(), resources
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        pg = strategy.placement_group
        if pg is None:
            return None, resources
        idx = strategy.placement_group_bundle_index
        pgid = pg.id.hex()
        out = {}
        for k, v in resources.items():
            out[f"{k}_group_{idx}_{pgid}" if idx >= 0 else f"{k}_group_{pgid}"] = v
        out[f"bundle_group_{idx}_{pgid}" if idx >= 0 else f"bundle_group_{pgid}"] = 0.001
        return None, out
    if isinstance(strategy, str):
        raise ValueError(f"Unknown scheduling_strategy {strategy!r}: use 'DEFAULT', 'SPREAD', "
                         "NodeAffinitySchedulingStrategy or PlacementGroupSchedulingStrategy.")
    raise TypeError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a strategy object, got {type(strategy).__name__}.")
