"""The Dask scheduler: each task of a Dask graph becomes one Luminary task.

The graph is culled to what the requested keys need and walked in dependency order; every Dask
task is submitted at once with the ObjectRefs of the tasks it depends on as top-level arguments,
so intermediate results stay in the object store (in the worker that made them or in shared
memory) and the cluster runs each task as soon as its inputs exist.  Only the requested keys are
fetched back to the caller.  Literal values in the graph stay with the caller, large ones are
put in the store once.  Aliases cost no task.
"""
from __future__ import annotations

from collections.abc import Mapping

import dask
from dask._task_spec import Alias, DataNode, convert_legacy_graph

import luminary

_INLINE_LIMIT = 100 * 1024  # literals larger than this are put in the store once


def _run_dask_task(node, dep_keys, *dep_values):
    """In a worker: run one Dask task given its dependencies' values."""
    return node(dict(zip(dep_keys, dep_values)))


_task = None


def _remote_task():
    global _task
    if _task is None:
        _task = luminary.remote(_run_dask_task)
    return _task


def ray_dask_get(dsk, keys, **kwargs):
    """Compute ``keys`` of the Dask graph ``dsk`` on the Luminary cluster (a Dask ``get``).

    Use it as ``dask.compute(x, scheduler=ray_dask_get)`` or ``dask.config.set(scheduler=...)``.
    ``ray_remote_args`` (a dict of task options, e.g. ``{"num_cpus": 2}``) applies to every task;
    ``num_workers`` and ``pool`` are accepted and ignored (the cluster decides parallelism)."""
    return _get(dsk, keys, kwargs, sync=False)


def ray_dask_get_sync(dsk, keys, **kwargs):
    """Like ``ray_dask_get`` but one task at a time, each waited for (for debugging)."""
    return _get(dsk, keys, kwargs, sync=True)


luminary_dask_get = ray_dask_get


def enable_dask_on_ray(shuffle="tasks", use_shuffle_optimization=True):
    """Make ``ray_dask_get`` Dask's scheduler (and the task-based shuffle its shuffle method).

    Returns the ``dask.config.set`` object: used as a context manager, the setting lasts only
    for the ``with`` block.  ``use_shuffle_optimization`` is accepted for Ray compatibility;
    Luminary has no DataFrame shuffle optimization, so Dask's own is used."""
    return dask.config.set({"scheduler": ray_dask_get, "dataframe.shuffle.method": shuffle})


def disable_dask_on_ray():
    """Unset the scheduler, the shuffle method and the DataFrame optimizer in Dask's config."""
    return dask.config.set({"scheduler": None, "dataframe.shuffle.method": None, "dataframe_optimize": None})


def _get(dsk, keys, kwargs, sync):
    options = kwargs.pop("ray_remote_args", None) or {}
    if not isinstance(options, dict):
        raise TypeError(f"ray_remote_args must be a dict of task options such as {{'num_cpus': 2}}, "
                        f"got {type(options).__name__}.")
    if "resources" in kwargs:
        raise ValueError("Give task resources as ray_remote_args={'resources': {...}}, not resources=...")
    kwargs.pop("num_workers", None)
    kwargs.pop("pool", None)
    kwargs.pop("ray_callbacks", None)
    if kwargs.pop("ray_persist", False):
        raise NotImplementedError("dask.persist on Luminary (ray_persist) is not supported; use "
                                  "dask.compute, or luminary.put the computed values.")
    if kwargs:
        raise TypeError(f"ray_dask_get got unexpected keyword arguments {sorted(kwargs)}; it accepts "
                        "ray_remote_args (task options), num_workers and pool.")
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    graph = convert_legacy_graph(dsk)
    wanted = list(_flatten(keys))
    task = _remote_task()
    if options:
        task = task.options(**options)

    results = {}  # key -> ObjectRef (a task's result) or a literal value
    for key in _needed_in_order(graph, wanted):
        node = graph[key]
        if isinstance(node, DataNode):
            value = node.value
            results[key] = luminary.put(value) if _is_large(value) else value
        elif isinstance(node, Alias):
            results[key] = results[node.target]
        else:
            deps = list(node.dependencies)
            ref = task.remote(node, deps, *[results[d] for d in deps])
            if sync:
                luminary.wait([ref], num_returns=1)
            results[key] = ref

    refs = [results[k] for k in wanted if isinstance(results[k], luminary.ObjectRef)]
    fetched = dict(zip((r for r in refs), luminary.get(refs))) if refs else {}
    values = {k: fetched.get(results[k], results[k]) if isinstance(results[k], luminary.ObjectRef)
              else results[k] for k in wanted}
    return _nested(keys, values)


def _needed_in_order(graph, wanted):
    """The keys the ``wanted`` keys depend on (and themselves), each after its dependencies."""
    order, state = [], {}
    for root in wanted:
        if root in state:
            continue
        _check_key(graph, root, None)
        state[root] = 1
        stack = [(root, iter(graph[root].dependencies))]
        while stack:
            key, deps = stack[-1]
            for dep in deps:
                if dep not in state:
                    _check_key(graph, dep, key)
                    state[dep] = 1
                    stack.append((dep, iter(graph[dep].dependencies)))
                    break
                if state[dep] == 1:
                    raise ValueError(f"The Dask graph has a cycle through key {dep!r}.")
            else:
                stack.pop()
                state[key] = 2
                order.append(key)
    return order


def _check_key(graph, key, needed_by):
    if key not in graph:
        who = f" (needed by {needed_by!r})" if needed_by is not None else ""
        raise KeyError(f"Key {key!r}{who} is not in the Dask graph.")


def _is_large(value):
    size = getattr(value, "nbytes", None)
    if size is None and isinstance(value, (bytes, bytearray, str)):
        size = len(value)
    return isinstance(size, int) and size > _INLINE_LIMIT


def _flatten(keys):
    if isinstance(keys, list):
        for k in keys:
            yield from _flatten(k)
    else:
        yield keys


def _nested(keys, values):
    if isinstance(keys, list):
        return [_nested(k, values) for k in keys]
    return values[keys]
