"""``luminary.util``: ActorPool, queue, multiprocessing and cluster utilities, as in ``ray.util``."""
from __future__ import annotations

from .._private.worker.actor import list_named_actors  # noqa: F401
from . import scheduling_strategies  # noqa: F401
from .actor_pool import ActorPool  # noqa: F401
from .placement_group import (get_current_placement_group, get_placement_group, placement_group,  # noqa: F401
                              placement_group_table, remove_placement_group)

__all__ = ["ActorPool", "list_named_actors", "placement_group", "remove_placement_group", "get_placement_group",
           "placement_group_table", "get_current_placement_group", "scheduling_strategies"]
