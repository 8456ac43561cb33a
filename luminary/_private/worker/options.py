"""Validation of ``@remote(...)`` / ``.options(...)`` keywords, with Ray's names and defaults."""
from __future__ import annotations

import math
import numbers

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "object_store_memory", "num_returns", "max_retries",
    "retry_exceptions", "name", "scheduling_strategy", "runtime_env", "accelerator_type", "max_calls",
    "placement_group", "placement_group_bundle_index", "placement_group_capture_child_tasks",
    "_metadata", "label_selector", "fallback_strategy", "enable_task_events", "_labels",
    "_generator_backpressure_num_objects", "timeout_s",
}
ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "object_store_memory", "name", "namespace", "lifetime",
    "get_if_exists", "max_restarts", "max_task_retries", "max_concurrency", "max_pending_calls",
    "concurrency_groups", "scheduling_strategy", "runtime_env", "accelerator_type", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks", "_metadata",
    "label_selector", "enable_task_events", "checkpoint_interval", "allow_out_of_order_execution",
    "_labels",
}


def check_quantity(name, value):
    """The one check of a resource amount, used by every edge (init, ``@remote``, ``.options()``,
    placement-group bundles, ``luminary start``, cluster_utils): a finite, non-negative number.

    NaN passes ``value < 0`` and would make a node's free CPU NaN, so that every later task
    waits forever; infinity never fits anywhere."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite, non-negative number, got {value!r}.")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise ValueError(f"{name} must be a finite, non-negative number, got {value!r}: "
                         "NaN and infinity are not resource amounts.")
    if value < 0:
        raise ValueError(f"{name} must be a finite, non-negative number, got {value!r}.")


def check_resources(name, resources, cpu_gpu_hint=None):
    """A dict of custom resource name to amount, each checked by ``check_quantity``.

    ``cpu_gpu_hint`` (e.g. "the 'num_cpus' and 'num_gpus' options") refuses CPU and GPU keys."""
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise TypeError(f"{name} must be a dict of resource name to amount, got {type(resources).__name__}.")
    for key, amount in resources.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{name} must map resource names (non-empty strings) to amounts, got the key {key!r}.")
        if cpu_gpu_hint and key in ("CPU", "GPU"):
            raise ValueError(f"Use {cpu_gpu_hint} instead of {key!r} in {name}.")
        check_quantity(f"{name}[{key!r}]", amount)


def check_node_resources(num_cpus=None, num_gpus=None, resources=None, memory=None, object_store_memory=None,
                         names=None):
    """The amounts a node offers (init, ``luminary start``, cluster_utils); ``names`` maps each
    keyword to the name the user typed (``--num-cpus``), for the error."""
    names = names or {}
    for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("memory", memory),
                       ("object_store_memory", object_store_memory)):
        if value is not None:
            check_quantity(names.get(key, key), value)
    check_resources(names.get("resources", "resources"), resources,
                    cpu_gpu_hint=names.get("cpu_gpu_hint", "the 'num_cpus' and 'num_gpus' keywords"))


def validate(options: dict, allowed: set, what="task"):
    for k, v in options.items():
        if k not in allowed:
            raise ValueError(f"Invalid option keyword {k!r} for {what}s. Valid ones are: {', '.join(sorted(allowed))}.")
        if k in ("num_cpus", "num_gpus", "memory", "object_store_memory"):
            if v is not None:
                check_quantity(f"The option {k!r}", v)
        elif k == "resources":
            check_resources("resources", v, cpu_gpu_hint="the 'num_cpus' and 'num_gpus' options")
        elif k == "num_returns":
            if v is None:
                continue
            if isinstance(v, str):
                if v not in ("dynamic", "streaming"):
                    raise TypeError(f"num_returns must be a non-negative int, 'dynamic' or 'streaming', got {v!r}.")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"num_returns must be a non-negative int, 'dynamic' or 'streaming', got {v!r}.")
        elif k in ("max_retries", "max_restarts", "max_task_retries"):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise TypeError(f"The option {k!r} must be an int (-1 means retry forever), got {v!r}.")
            if v is not None and v < -1:
                raise ValueError(f"The option {k!r} must be an int >= -1 (-1 means retry forever), got {v!r}.")
        elif k == "timeout_s":
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0
                                  or v == float("inf")):
                raise ValueError(f"timeout_s must be a positive, finite number of seconds (or None), got {v!r}.")
        elif k == "retry_exceptions":
            if not isinstance(v, bool):
                if not isinstance(v, (list, tuple)) or not all(isinstance(t, type) and issubclass(t, BaseException) for t in v):
                    raise TypeError("retry_exceptions must be True, False, or a list of exception classes, "
                                    f"got {v!r}.")
        elif k in ("max_concurrency", "max_pending_calls"):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or (v < 1 and k == "max_concurrency")):
                raise ValueError(f"The option {k!r} must be a positive int, got {v!r}.")
        elif k == "name":
            if v is not None and not isinstance(v, str):
                raise TypeError(f"The option 'name' must be a string, got {type(v).__name__}.")
        elif k == "lifetime":
            if v not in (None, "detached", "non_detached"):
                raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', got {v!r}.")


def resources_of(opts: dict, default_cpus=1.0) -> dict:
    res = {}
    cpus = opts.get("num_cpus")
    res["CPU"] = float(default_cpus if cpus is None else cpus)
    if opts.get("num_gpus"):
        res["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        res["memory"] = float(opts["memory"])
    for k, v in (opts.get("resources") or {}).items():
        if v:
            res[k] = float(v)
    if opts.get("accelerator_type"):     # a node whose GPUs are of this model (as Ray does)
        res[f"accelerator_type:{opts['accelerator_type']}"] = 0.001
    return {k: v for k, v in res.items() if v}


class Bound:
    """What ``.options(...)`` returns for a remote function or actor class: ``.remote()`` with
    the merged options, ``.options()`` to add more; calling it directly gives the target's error."""

    def __init__(self, submit, rebind, target):
        self._submit = submit
        self._rebind = rebind
        self._target = target

    def remote(self, *args, **kwargs):
        return self._submit(args, kwargs)

    def options(self, **more):
        return self._rebind(more)

    def bind(self, *args, **kwargs):
        """A node of a task graph that runs with these options (luminary.dag)."""
        from ...dag import bind
        return bind(self._target, args, kwargs, submitter=self)

    def __call__(self, *args, **kwargs):
        return self._target(*args, **kwargs)
