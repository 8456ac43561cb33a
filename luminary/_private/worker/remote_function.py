"""``@remote`` on a function: a RemoteFunction whose ``.remote()`` submits a task."""
from __future__ import annotations

import functools
import hashlib
import inspect

from .. import ids, serialization
from ..runtime_env import packaging
from ..config import DEFAULT_MAX_RETRIES
from . import options as opt
from . import signatures, state
from .object_ref import ObjectRef, ObjectRefGenerator
from .submitter import DIRECT_CALLS, Task


class RemoteFunction:
    def __init__(self, function, options):
        opt.validate(options, opt.TASK_OPTIONS)
        if options.get("max_calls") is None and (options.get("num_gpus") or 0) > 0:
            # as Ray: a GPU function's worker runs one call and exits, so the GPU memory its
            # libraries keep is freed and the next call starts clean
            options = dict(options, max_calls=1)
        self._function = function
        self._default_options = options
        self._blob = None
        self._fid = None
        self._is_generator = inspect.isgeneratorfunction(function)
        self._sig = signatures.signature_of(function)
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
        functools.update_wrapper(self, function)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Remote functions cannot be called directly. Instead of running "
                        f"'{self._name}()', try '{self._name}.remote()'.")

    def __getstate__(self):
        return {"_function": self._function, "_default_options": self._default_options}

    def __setstate__(self, st):
        self.__init__(st["_function"], st["_default_options"])

    def remote(self, *args, **kwargs):
        return submit_task(self, args, kwargs, self._default_options)

    def options(self, **options):
        opt.validate(options, opt.TASK_OPTIONS)
        if "max_calls" in options:
            raise ValueError("Setting 'max_calls' is not supported in '.options()'.")
        merged = dict(self._default_options, **options)
        return opt.Bound(lambda a, k: submit_task(self, a, k, merged),
                         lambda more: self.options(**dict(options, **more)), self)

    def bind(self, *args, **kwargs):
        """A lazy call of this function: a node of a task graph, run by ``.execute()`` (luminary.dag)."""
        from ...dag import bind
        return bind(self, args, kwargs)

    def _export(self):
        if self._blob is None:
            try:
                blob = serialization.dumps_function(self._function)
            except Exception as e:
                raise TypeError(f"Could not serialize the function {self._name}: {type(e).__name__}: {e}. "
                                "A remote function and everything it references must be picklable "
                                "(cloudpickle); create locks, sockets, clients inside the function.") from e
            signatures.check_size(blob, self._name, "remote function")
            self._fid = hashlib.sha1(blob).digest()[:16]
            self._blob = blob
        return self._fid, self._blob


def _auto_init():
    if state.core is None:
        from .api import init
        init()
    return state.core


def split_refs(args, kwargs):
    """Take top-level ObjectRefs out of the arguments: they are resolved before the task runs."""
    arg_refs = []
    if any(type(a) is ObjectRef for a in args):
        args = list(args)
        for i, a in enumerate(args):
            if type(a) is ObjectRef:
                arg_refs.append((i, a))
                args[i] = None
    if kwargs and any(type(v) is ObjectRef for v in kwargs.values()):
        kwargs = dict(kwargs)
        for k, v in kwargs.items():
            if type(v) is ObjectRef:
                arg_refs.append((k, v))
                kwargs[k] = None
    return args, kwargs, arg_refs


_NO_ARGS = ["v", serialization.pickle.dumps(((), {}), 5)]


def prepare_args(core, args, kwargs):
    """Serialize arguments; returns (spec_args, arg_refs, held_oids, held_owners)."""
    args, kwargs, arg_refs = split_refs(args, kwargs)
    if not args and not kwargs:
        return _NO_ARGS, arg_refs, [], []
    sobj = serialization.serialize_args(args, kwargs)
    held_oids = [r.id for _, r in arg_refs]
    held_owners = [r.owner for _, r in arg_refs]
    for r in sobj.contained:
        held_oids.append(r.id)
        held_owners.append(r.owner)
    if sobj.inline:
        spec_args = ["v", sobj.to_inline()]
    else:
        oid = ids.put_object_id()
        size = core.write_to_store(oid, sobj, core.worker_id)
        core.memory.put(oid, "s", [core.node_id, size])
        held_oids.append(oid)
        held_owners.append(core.address)
        spec_args = ["s", oid, core.node_id, size]
    return spec_args, arg_refs, held_oids, held_owners


_strategies = None


def _load_strategies():
    """luminary.util.scheduling_strategies (imported at the first task: it imports this module)."""
    global _strategies
    from ...util import scheduling_strategies
    _strategies = scheduling_strategies
    return _strategies


def submit_task(rf: RemoteFunction, args, kwargs, options):
    if rf._sig is not None:
        signatures.check_call(rf._sig, args, kwargs, rf._name)
    core = _auto_init()
    fid, blob = rf._export()
    spec_args, arg_refs, held_oids, held_owners = prepare_args(core, args, kwargs)
    nret = options.get("num_returns")
    if nret is None:
        nret = "streaming" if rf._is_generator else 1
    elif nret == "dynamic" and not rf._is_generator:
        pass
    tid = ids.new_task_id()
    if isinstance(nret, int):
        returns = [ids.object_id(tid, i + 1) for i in range(nret)]
    elif nret == "dynamic":
        returns = [ids.object_id(tid, 1)]
    else:
        returns = []
    name = options.get("name") or rf._name
    spec = {"tid": tid, "fid": fid, "name": name, "args": spec_args, "nret": nret,
            "owner": core.address, "owner_id": core.worker_id, "job": core.job_id,
            "ns": core.namespace}
    # a plain task (one return value, no ObjectRef inside its arguments) may go straight from
    # this thread to an idle lease (TaskSubmitter.try_direct_task); its return ref is counted
    # then without waking the I/O thread
    direct = DIRECT_CALLS and nret == 1 and not held_oids and not arg_refs
    refs = [ObjectRef(oid, core.address, _register=not direct) for oid in returns]
    max_retries = options.get("max_retries")
    if max_retries is None:
        max_retries = DEFAULT_MAX_RETRIES
    elif max_retries == -1:
        max_retries = 1 << 30
    retry_exc = options.get("retry_exceptions", False)
    if isinstance(retry_exc, (list, tuple)):
        retry_exc = list(retry_exc)
    strategies = _strategies or _load_strategies()
    strategy, pg_ctx = strategies.resolve_strategy(options, core)
    strategy, resources = strategies.wire_strategy(strategy, opt.resources_of(options))
    spec["res"] = resources
    if options.get("timeout_s"):
        spec["timeout_s"] = float(options["timeout_s"])
    if options.get("max_calls"):
        spec["max_calls"] = options["max_calls"]     # (the worker exits after that many calls of it)
    ncpu = options.get("num_cpus")
    if ncpu is not None and ncpu != 1:
        spec["ncpu"] = ncpu
    if pg_ctx is not None:
        spec["pg"] = pg_ctx
    task = Task(tid, spec, fid, blob, resources, returns, nret, max_retries, retry_exc,
                arg_refs, (held_oids, held_owners), name)
    if strategy is not None:
        task.strategy = strategy
        task.key = task.key + (repr(sorted(strategy.items())),)
    renv = options.get("runtime_env")
    renv = packaging.for_call(core, renv) if renv is not None or packaging.get_default() else None
    if renv is not None:
        task.renv = renv
        task.key = task.key + (renv["key"],)
    if "max_calls" in spec:       # a queue of its own, one call in flight per worker (never pipelined)
        task.key = task.key + (("max_calls", spec["max_calls"]),)
    task.parent = core.current_task_id        # cancel(recursive=True) of the caller reaches this task
    if direct:
        if (strategy is None and renv is None and "max_calls" not in spec
                and core.submitter.try_direct_task(task)):
            return refs[0]
        core.io.add_incref((returns[0], core.address))
    core.io.post(core.submitter.submit, task)
    if nret == "streaming":
        return ObjectRefGenerator(tid, core.address)
    if isinstance(nret, int) and nret == 1:
        return refs[0]
    if nret == 0:
        return None
    if nret == "dynamic":
        return refs[0]
    return refs
