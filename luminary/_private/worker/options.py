"""Validation of ``@remote(...)`` / ``.options(...)`` keywords, with Ray's names and defaults."""
from __future__ import annotations

import numbers

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "object_store_memory", "num_returns", "max_retries",
    "retry_exceptions", "name", "scheduling_strategy", "runtime_env", "accelerator_type", "max_calls",
    "placement_group", "placement_group_bundle_index", "placement_group_capture_child_tasks",
    "_metadata", "label_selector", "fallback_strategy", "enable_task_events", "_labels",
    "_generator_backpressure_num_objects",
}
ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "object_store_memory", "name", "namespace", "lifetime",
    "get_if_exists", "max_restarts", "max_task_retries", "max_concurrency", "max_pending_calls",
    "concurrency_groups", "scheduling_strategy", "runtime_env", "accelerator_type", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks", "_metadata",
    "label_selector", "enable_task_events", "checkpoint_interval", "allow_out_of_order_execution",
    "_labels",
}


def validate(options: dict, allowed: set, what="task"):
    for k, v in options.items():
        if k not in allowed:
            raise ValueError(f"Invalid option keyword {k!r} for {what}s. Valid ones are: {', '.join(sorted(allowed))}.")
        if k in ("num_cpus", "num_gpus", "memory", "object_store_memory"):
            if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool) or v < 0):
                raise ValueError(f"The option {k!r} must be a non-negative number, got {v!r}.")
        elif k == "resources":
            if v is None:
                continue
            if not isinstance(v, dict):
                raise TypeError(f"The option 'resources' must be a dict of resource name to amount, got {type(v).__name__}.")
            for rk, rv in v.items():
                if rk in ("CPU", "GPU"):
                    raise ValueError(f"Use the 'num_cpus' and 'num_gpus' options instead of {rk!r} in 'resources'.")
                if not isinstance(rv, numbers.Real) or rv < 0:
                    raise ValueError(f"Resource {rk!r} must be a non-negative number, got {rv!r}.")
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
