"""Placement groups, as in ``ray.util.placement_group``: bundles of resources reserved
atomically across nodes (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD)."""
from __future__ import annotations

import os

from .._private.worker import state

VALID_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroupID:
    def __init__(self, b):
        self._b = b

    def hex(self):
        return self._b.hex()

    def binary(self):
        return self._b

    def __eq__(self, other):
        return isinstance(other, PlacementGroupID) and other._b == self._b

    def __hash__(self):
        return hash(self._b)


class PlacementGroup:
    def __init__(self, pg_id: bytes, bundles, strategy="PACK"):
        self.id = PlacementGroupID(pg_id)
        self.bundle_specs = [dict(b) for b in bundles]
        self.strategy = strategy

    @property
    def bundle_count(self):
        return len(self.bundle_specs)

    def ready(self):
        """An ObjectRef that resolves (to True) once every bundle is reserved."""
        from .scheduling_strategies import PlacementGroupSchedulingStrategy

        return _ready_task.options(
            num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(self)).remote()

    def wait(self, timeout_seconds=30) -> bool:
        core = state.require_core()
        res = core.call_sync_gcs("wait_pg", {"pg_id": self.id.binary(), "timeout": timeout_seconds},
                                 timeout=(timeout_seconds or 0) + 30)
        return res == "CREATED"

    def __reduce__(self):
        return (PlacementGroup, (self.id.binary(), self.bundle_specs, self.strategy))

    def __eq__(self, other):
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


def _ready():
    return True


_ready_task = None


def placement_group(bundles, strategy="PACK", name="", lifetime=None, _max_cpu_fraction_per_node=None,
                    _soft_target_node_id=None, bundle_label_selector=None) -> PlacementGroup:
    global _ready_task
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("placement_group() needs a non-empty list of bundles, e.g. [{'CPU': 1}, {'CPU': 1}].")
    from .._private.worker.options import check_resources
    for i, b in enumerate(bundles):
        if not isinstance(b, dict) or not b:
            raise ValueError(f"Each bundle must be a non-empty dict of resource amounts, got {b!r}.")
        check_resources(f"bundle {i}", b)
        if all(v == 0 for v in b.values()):
            raise ValueError(f"Bundle {b!r} reserves nothing: every amount is 0.")
    if strategy not in VALID_STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}; use one of {', '.join(VALID_STRATEGIES)}.")
    if lifetime not in (None, "detached"):
        raise ValueError("lifetime must be None or 'detached'")
    from .._private.worker.remote_function import _auto_init
    core = _auto_init()
    if _ready_task is None:
        import luminary
        _ready_task = luminary.remote(_ready)
    pg_id = os.urandom(16)
    bundles = [{k: float(v) for k, v in b.items()} for b in bundles]
    core.call_sync_gcs("create_pg", {"pg_id": pg_id, "bundles": bundles, "strategy": strategy, "name": name,
                                     "lifetime": lifetime})
    return PlacementGroup(pg_id, bundles, strategy)


def remove_placement_group(placement_group: PlacementGroup):
    core = state.require_core()
    core.call_sync_gcs("remove_pg", {"pg_id": placement_group.id.binary()})


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    core = state.require_core()
    info = core.call_sync_gcs("get_pg", {"name": placement_group_name})
    if info is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return PlacementGroup(info["pg_id"], info["bundles"], info["strategy"])


def placement_group_table(placement_group: PlacementGroup | None = None):
    core = state.require_core()
    table = core.call_sync_gcs("pg_table", None)
    if placement_group is not None:
        return table.get(placement_group.id.hex(), {})
    return table


def get_current_placement_group():
    """The placement group the current task or actor runs in, or None (also in a driver)."""
    core = state.core
    pg = getattr(core, "current_pg", None) if core is not None else None
    if not pg:
        return None
    return PlacementGroup(pg[0], pg[2])
