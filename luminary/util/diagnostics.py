"""What a cluster is doing when it seems stuck: live stacks and pending work.

    stack(address=None, timeout=3.0) -> str     every thread of every worker, actor and driver
    stacks(address=None, timeout=3.0) -> dict   the same, structured (nodes -> processes -> threads)
    stuck(pending_after=None, address=None)      tasks and actors pending longer than the threshold,
                                                 each with why (``luminary status`` prints these)

From a driver (``init()`` was called) or from any process of this user on a machine of the
cluster (``address``: "auto", HOST:PORT; the CLI uses this).
"""
from __future__ import annotations

import math

from .._private import stacks as _stacks
from .._private import stuck as _stuck


def _check_timeout(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or not 0.1 <= timeout <= 600:
        raise ValueError(f"timeout must be a number of seconds in [0.1, 600], got {timeout!r}")
    return float(timeout)


def stacks(address=None, timeout=_stacks.DEFAULT_TIMEOUT_S) -> dict:
    """The current Python stack of every thread of every worker, actor and driver, asked over
    Luminary's connections (no ptrace).  A process that does not answer within ``timeout``
    seconds is listed with ``error`` instead of stacks."""
    payload = {"timeout": _check_timeout(timeout)}
    from .._private.worker import state as _state
    core = _state.core
    if core is not None and address is None:
        return core.call_sync_gcs("cluster_stacks", payload, timeout=timeout + 30)
    from .._private.node import launch
    from .._private.worker.connect import query_gcs, resolve_address
    gcs = resolve_address(address or "auto")
    return query_gcs(gcs, launch.read_secret(gcs), "cluster_stacks", payload, timeout=timeout + 30)


def stack(address=None, timeout=_stacks.DEFAULT_TIMEOUT_S) -> str:
    """``stacks()`` as text, one section per node and process, as ``luminary stack`` prints it."""
    return _stacks.format_report(stacks(address, timeout))


def stuck(pending_after=None, address=None) -> list:
    """Tasks and actors not finished after ``pending_after`` seconds (default
    $LUMINARY_WAIT_WARN_S, 60), oldest first, each with a ``reason`` as the wait diagnostics
    give it: waiting for arguments, for resources (or infeasible), queued, running for how long."""
    from . import state
    if pending_after is None:
        pending_after = _stuck.default_threshold()
    if isinstance(pending_after, bool) or not isinstance(pending_after, (int, float)) \
            or not math.isfinite(pending_after) or pending_after < 0:
        raise ValueError(f"pending_after must be a number of seconds >= 0, got {pending_after!r}")
    tasks = state.list_tasks(address=address, filters=[("state", "!=", "FINISHED"), ("state", "!=", "FAILED")],
                             limit=100_000, detail=True)
    actors = state.list_actors(address=address, filters=[("state", "!=", "ALIVE"), ("state", "!=", "DEAD")],
                               limit=100_000, detail=True)
    nodes = state._call("get_nodes", None, address)
    return [state.StateRow(r) for r in _stuck.find(tasks, actors, nodes, float(pending_after))]
