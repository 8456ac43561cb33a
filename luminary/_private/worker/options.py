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


class DecoratorError(TypeError, AssertionError):
    """A decorator used the wrong way (``@remote(1, 2)``, ``@method(bogus=1)``): Ray raises an
    AssertionError there; this is also a TypeError, which is what the mistake is."""


_NONE = type(None)
_NUMBER = (float, int, _NONE)
# Ray 2.60's type constraint of each option (a TypeError in its words when a value breaks it)
RAY_OPTION_TYPES = {
    "accelerator_type": (str, _NONE), "memory": _NUMBER, "num_cpus": _NUMBER, "num_gpus": _NUMBER,
    "name": (str, _NONE), "object_store_memory": (int, _NONE), "placement_group_bundle_index": int,
    "placement_group_capture_child_tasks": (bool, _NONE), "resources": (dict, _NONE),
    "runtime_env": (dict, _NONE), "enable_task_events": bool, "_labels": (dict, _NONE),
    "label_selector": (dict, _NONE), "fallback_strategy": (list, _NONE), "max_calls": (int, _NONE),
    "max_retries": (int, _NONE), "num_returns": (int, str, _NONE), "retry_exceptions": (bool, list, tuple),
    "_generator_backpressure_num_objects": (int, _NONE), "concurrency_groups": (list, dict, _NONE),
    "lifetime": (str, _NONE), "max_concurrency": (int, _NONE), "max_restarts": (int, _NONE),
    "max_task_retries": (int, _NONE), "max_pending_calls": (int, _NONE), "namespace": (str, _NONE),
    "get_if_exists": bool, "allow_out_of_order_execution": (bool, _NONE),
}
_NUM_RETURNS_HELP = ("The keyword 'num_returns' only accepts None, a non-negative integer, 'streaming' (for "
                     "generators), or 'dynamic'. When None is passed, the default is 1 for a task and actor task, "
                     "and 'streaming' for generator tasks and generator actor tasks.")


def validate(options: dict, allowed: set, what="task"):
    """Check ``@remote``/``.options()`` keywords as Ray 2.60 does: the same exception types and
    Ray's wording (a wrong type is a TypeError, a wrong value a ValueError), with the value shown."""
    for k, v in options.items():
        if k not in allowed:
            raise ValueError(f"Invalid option keyword {k} for {'remote functions' if what == 'task' else what + 's'}. "
                             f"Valid ones are: {', '.join(sorted(allowed))}.")
        types = RAY_OPTION_TYPES.get(k)
        if types is not None and not isinstance(v, types):
            raise TypeError(f"The type of keyword '{k}' must be {types}, but received type {type(v)}")
        if k in ("num_cpus", "num_gpus", "memory", "object_store_memory"):
            if v is not None:
                if v < 0:
                    raise ValueError(f"The quantity of resource {k} cannot be negative (got {v!r})")
                check_quantity(f"The option {k!r}", v)
        elif k == "resources":
            if v and ("CPU" in v or "GPU" in v):
                raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' in "
                                 "'resources' keyword")
            for name, amount in (v or {}).items():
                if isinstance(amount, numbers.Real) and amount < 0:
                    raise ValueError(f"The quantity of resource {name} cannot be negative (got {amount!r})")
            check_resources("resources", v, cpu_gpu_hint="the 'num_cpus' and 'num_gpus' options")
        elif k == "num_returns":
            if v is None:
                continue
            if isinstance(v, str):
                if v not in ("dynamic", "streaming"):
                    raise TypeError(f"{_NUM_RETURNS_HELP} Got {v!r}.")
            elif isinstance(v, bool) or v < 0:
                raise ValueError(f"{_NUM_RETURNS_HELP} Got {v!r}.")
        elif k in ("max_retries", "max_restarts", "max_task_retries", "max_pending_calls"):
            if v is not None and v < -1:
                raise ValueError(f"The keyword '{k}' only accepts None, 0, -1 or a positive integer, where -1 "
                                 f"represents infinity (got {v!r}).")
        elif k == "get_if_exists":
            if v and not options.get("name"):
                raise ValueError("The actor name must be specified to use `get_if_exists`.")
        elif k == "max_calls":
            if v is not None and v < 0:
                raise ValueError(f"The keyword 'max_calls' only accepts None, 0 or a positive integer (got {v!r}).")
        elif k == "timeout_s":
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0
                                  or v == float("inf")):
                raise ValueError(f"timeout_s must be a positive, finite number of seconds (or None), got {v!r}.")
        elif k == "retry_exceptions":
            if not isinstance(v, bool):
                if not all(isinstance(t, type) and issubclass(t, BaseException) for t in v):
                    raise ValueError(f"retry_exceptions must be either a boolean or a list of exceptions (got {v!r})")
        elif k == "max_concurrency":
            if v is not None and v < 1:
                raise ValueError(f"The keyword 'max_concurrency' only accepts None or a positive integer (got {v!r}).")
        elif k == "lifetime":
            if v not in (None, "detached", "non_detached"):
                raise ValueError(f"actor `lifetime` argument must be one of 'detached', 'non_detached' and 'None' "
                                 f"(got {v!r}).")


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
