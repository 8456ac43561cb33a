"""Luminary: a distributed execution framework with Ray Core's API.

``import luminary as ray`` runs Ray Core programs: tasks (``@remote`` functions), objects
(``put``/``get``/``wait`` over a shared-memory store) and the cluster around them.
"""
from __future__ import annotations

import logging as _logging

from . import exceptions
from ._private.worker.actor import get_actor, kill
from ._private.worker.api import (available_resources, cancel, cluster_resources, get, get_gpu_ids,
                                  init, is_initialized, nodes, put, shutdown, wait)
from ._private.worker.object_ref import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator
from ._private.worker.remote_function import RemoteFunction
from .runtime_context import get_runtime_context
from . import actor, job_config, runtime_context, runtime_env, util  # noqa: E402  (public submodules, as in Ray)
from . import cloudpickle  # noqa: E402  (ray.cloudpickle)
from ._private.id_types import (ActorClassID, ActorID, ClusterID, FunctionID, JobID, NodeID,  # noqa: E402
                                PlacementGroupID, TaskID, UniqueID, WorkerID)

ObjectID = ObjectRef          # the older name Ray still exports
SCRIPT_MODE, WORKER_MODE, LOCAL_MODE, SPILL_WORKER_MODE, RESTORE_WORKER_MODE = 0, 1, 2, 3, 4

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__version__ = "0.1.0"


def remote(*args, **kwargs):
    """Make a function a remote function: ``@remote`` or ``@remote(num_cpus=..., ...)``."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not kwargs:
        from ._private.worker.options import DecoratorError
        raise DecoratorError("The @remote decorator must be applied either with no arguments and no parentheses, "
                             "for example '@remote', or with keyword options, for example '@remote(num_cpus=2)'.")

    def decorator(fn):
        return _make_remote(fn, kwargs)
    return decorator


def _make_remote(obj, options):
    import inspect
    if inspect.isclass(obj):
        from ._private.worker.actor import ActorClass  # noqa: F401  (actors arrive with issue 3)
        return ActorClass._create(obj, options)
    if not callable(obj):
        raise TypeError(f"@remote can only decorate functions and classes, not {type(obj).__name__}.")
    return RemoteFunction(obj, options)


_METHOD_OPTIONS = {"num_returns", "concurrency_group", "max_task_retries", "retry_exceptions", "timeout_s",
                   "_generator_backpressure_num_objects", "_num_objects_per_yield", "enable_task_events",
                   "tensor_transport"}


def method(*args, **kwargs):
    """Options for an actor method: ``@method(num_returns=2)``."""
    bad = sorted(set(kwargs) - _METHOD_OPTIONS)
    if bad:
        from ._private.worker.options import DecoratorError
        raise DecoratorError(f"Unexpected keyword argument to @method: {bad[0]!r}. The supported keyword "
                             f"arguments are {sorted(_METHOD_OPTIONS)}.")

    def decorator(fn):
        fn.__luminary_method_options__ = kwargs
        return fn
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorator(args[0])
    return decorator


__all__ = [
    "ObjectRef", "ObjectRefGenerator", "DynamicObjectRefGenerator", "available_resources", "cancel",
    "cluster_resources", "exceptions", "get", "get_gpu_ids", "get_runtime_context", "init",
    "is_initialized", "method", "nodes", "put", "remote", "shutdown", "wait", "get_actor", "kill",
    "actor", "util", "runtime_context", "cloudpickle", "ObjectID", "ActorClassID", "ActorID", "ClusterID",
    "FunctionID", "JobID", "NodeID", "PlacementGroupID", "TaskID", "UniqueID", "WorkerID",
]
