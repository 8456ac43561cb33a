"""``luminary.util``: ActorPool, queue, multiprocessing and cluster utilities, as in ``ray.util``."""
from __future__ import annotations

from .._private.worker.actor import list_named_actors  # noqa: F401
from . import metrics, scheduling_strategies, state  # noqa: F401
from .actor_pool import ActorPool  # noqa: F401
from .performance import report  # noqa: F401
from .placement_group import (get_current_placement_group, get_placement_group, placement_group,  # noqa: F401
                              placement_group_table, remove_placement_group)

__all__ = ["ActorPool", "list_named_actors", "placement_group", "remove_placement_group", "get_placement_group",
           "placement_group_table", "get_current_placement_group", "scheduling_strategies", "state", "metrics", "report",
           "get_node_ip_address", "progress"]


def progress(refs, desc="tasks"):
    """Yield ``refs`` as they become ready while a progress bar of how many are done is drawn
    (redrawn in place on a terminal; a line now and then elsewhere, e.g. in Jupyter)::

        for ref in luminary.util.progress([f.remote(i) for i in range(100)]):
            use(luminary.get(ref))
    """
    from ..experimental.tqdm_ray import tqdm
    from .._private.worker.api import wait
    pending = list(refs)
    with tqdm(total=len(pending), desc=desc) as bar:
        while pending:
            ready, pending = wait(pending, num_returns=1)
            bar.update(len(ready))
            yield from ready


def get_node_ip_address(address="8.8.8.8:53"):
    """The address of this node as the cluster knows it (127.0.0.1 for a local cluster)."""
    from .._private.worker import state as _state
    core = _state.core
    if core is not None:
        return core.cfg.get("node_ip", "127.0.0.1")
    return "127.0.0.1"
