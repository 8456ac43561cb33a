"""Actors on the caller's side: ActorClass, ActorHandle, ActorMethod and the ActorSubmitter.

    Cls.remote(args) ── register_actor ──▶ GCS ── lease + create_actor ──▶ worker (the actor)
    handle.m.remote(x) ─ post ─▶ ActorSubmitter (I/O thread) ── push_task ──▶ actor's worker
                                  │  one queue per actor, pushed strictly in submission order
                                  │  address from the GCS once (wait_actor), then direct
                                  └─ connection lost: in-flight calls fail (ActorDiedError) or,
                                     with max_task_retries, wait for the restart and go again

Handles are counted like objects: each holds an ObjectRef to a small "handle object" owned by
the creator.  Pickling a handle pickles that ref, so borrowers register as they do for objects;
when no handle is left anywhere, the creator ends the (non-detached) actor after the calls
already queued.
"""
from __future__ import annotations

import inspect
import itertools
import logging
import os
import pickle

import cloudpickle

from ... import exceptions as exc
from .. import ids, pickler
from ..runtime_env import packaging
from ..rpc.messages import RemoteError
from . import options as opt
from . import signatures, state
from .object_ref import ObjectRef, ObjectRefGenerator
from .remote_function import _auto_init, prepare_args
from .submitter import DIRECT_CALLS, Task

logger = logging.getLogger(__name__)

HANDLE_TAG = b"\xac"


def _method_meta(cls):
    methods = {}
    is_async = False
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name not in ("__ray_terminate__", "__call__"):
            continue
        fn = member
        if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
            continue
        opts = dict(getattr(fn, "__luminary_method_options__", {}))
        is_gen = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            is_async = True
        nret = opts.get("num_returns")
        if nret is None:
            nret = "streaming" if is_gen else 1
        static = isinstance(inspect.getattr_static(cls, name, None), staticmethod)
        methods[name] = {"sig": signatures.signature_of(fn, skip_first=not static and not inspect.ismethod(fn)),
                         "num_returns": nret, "concurrency_group": opts.get("concurrency_group"),
                         "max_task_retries": opts.get("max_task_retries"),
                         "retry_exceptions": _encode_retry_exceptions(opts.get("retry_exceptions")),
                         "timeout_s": opts.get("timeout_s")}
    methods["__ray_terminate__"] = {"num_returns": 1, "concurrency_group": None}
    methods["__ray_ready__"] = {"num_returns": 1, "concurrency_group": None, "sig": []}
    methods["__ray_call__"] = {"num_returns": 1, "concurrency_group": None}
    return methods, is_async


def _encode_retry_exceptions(value):
    """Method metadata travels as msgpack (to the GCS, inside handles): a list of exception
    classes is kept pickled there and rebuilt by the caller that submits the call."""
    if isinstance(value, (list, tuple)):
        return cloudpickle.dumps(list(value), protocol=5)
    return value


def _decode_retry_exceptions(value):
    if isinstance(value, (bytes, bytearray)):
        return pickle.loads(value)
    return value


class ActorClass:
    """What ``@remote`` makes of a class."""

    @classmethod
    def _create(cls, klass, options):
        opt.validate(options, opt.ACTOR_OPTIONS, "actor")
        self = cls.__new__(cls)
        self._cls = klass
        self._default_options = options
        self._blob = None
        self._methods, self._is_async = _method_meta(klass)
        init = klass.__dict__.get("__init__") or getattr(klass, "__init__", None)
        self._init_sig = signatures.signature_of(init, skip_first=True) \
            if inspect.isfunction(init) else None
        self.__name__ = klass.__name__
        self.__qualname__ = getattr(klass, "__qualname__", klass.__name__)
        self.__doc__ = klass.__doc__
        self.__module__ = klass.__module__
        return self

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
                        f"use '{self.__name__}.remote()'.")

    def __getstate__(self):
        return {"cls": self._cls, "options": self._default_options}

    def __setstate__(self, st):
        other = ActorClass._create(st["cls"], st["options"])
        self.__dict__.update(other.__dict__)

    def remote(self, *args, **kwargs):
        return self._remote(args, kwargs, self._default_options)

    def options(self, **options):
        opt.validate(options, opt.ACTOR_OPTIONS, "actor")
        merged = dict(self._default_options, **options)
        return opt.Bound(lambda a, k: self._remote(a, k, merged),
                         lambda more: self.options(**dict(options, **more)), self)

    def bind(self, *args, **kwargs):
        """A lazy actor creation: a node of a task graph; bind its methods with
        ``node.method.bind(...)`` and run the graph with ``.execute()`` (luminary.dag)."""
        from ...dag import bind
        return bind(self, args, kwargs)

    def _export(self):
        if self._blob is None:
            try:
                blob = pickler.dumps(self._cls, protocol=5)
            except Exception as e:
                raise TypeError(f"Could not serialize the actor class {self.__name__}: {type(e).__name__}: {e}") from e
            signatures.check_size(blob, self.__name__, "actor")
            self._blob = blob
        return self._blob

    def _remote(self, args, kwargs, options):
        signatures.check_call(self._init_sig, args, kwargs, self.__name__)
        core = _auto_init()
        blob = self._export()
        lifetime = options.get("lifetime")
        detached = lifetime == "detached"
        name = options.get("name")
        namespace = options.get("namespace")
        if namespace is None:
            namespace = core.namespace
        if detached and not name:
            pass  # allowed: a detached anonymous actor lives until killed
        max_concurrency = options.get("max_concurrency")
        if max_concurrency is None:
            max_concurrency = 1000 if self._is_async else 1
        groups = options.get("concurrency_groups") or {}
        spec_args, arg_refs, held_oids, held_owners = prepare_args(core, args, kwargs)
        actor_id = os.urandom(16)
        resources = opt.resources_of(options, default_cpus=0)
        if options.get("num_cpus") is None:
            resources.pop("CPU", None)
        from ...util.scheduling_strategies import resolve_strategy, wire_strategy
        strategy, pg_ctx = resolve_strategy(options, core)
        strategy, resources = wire_strategy(strategy, resources)
        max_restarts = options.get("max_restarts") or 0
        max_task_retries = options.get("max_task_retries") or 0
        meta = {"class_name": self.__name__, "methods": self._methods, "is_async": self._is_async,
                "max_task_retries": max_task_retries, "max_pending_calls": options.get("max_pending_calls") or -1,
                "detached": detached}
        spec = {"cls": blob, "args": spec_args, "ref_args": [[p, r.id, r.owner] for p, r in arg_refs],
                "class_name": self.__name__, "name": name, "namespace": namespace,
                "max_concurrency": max_concurrency, "is_async": self._is_async, "concurrency_groups": groups,
                "checkpoint_interval": options.get("checkpoint_interval") or 0, "job": core.job_id,
                "owner": core.address, "owner_id": core.worker_id, "path": core.code_path(),
                "meta": meta}
        if pg_ctx is not None:
            spec["pg"] = pg_ctx
        renv = options.get("runtime_env")
        renv = packaging.for_call(core, renv) if renv is not None or packaging.get_default() else None
        if renv is not None:
            spec["renv"] = renv
        if options.get("num_cpus"):
            spec["ncpu"] = options["num_cpus"]
        payload = {"actor_id": actor_id, "spec": spec, "resources": resources, "name": name,
                   "namespace": namespace, "detached": detached, "owner": core.address,
                   "max_restarts": max_restarts, "meta": meta, "get_if_exists": bool(options.get("get_if_exists")),
                   "class_name": self.__name__, "strategy": strategy}
        try:
            res = core.call_sync_gcs("register_actor", payload)
        except RemoteError as e:    # the GCS refused it (a duplicate name, a bad option): the user's error
            if e.type_name == "ValueError":
                raise ValueError(e.remote_message) from None
            raise
        if res.get("existing"):
            return ActorHandle(res["actor_id"], res["meta"], None)
        held = (held_oids, held_owners)
        if detached:  # lives until killed: no handle counting
            core.io.post(core.actor_submitter.created, actor_id, None, held, detached)
            return ActorHandle(actor_id, meta, None)
        handle_oid = HANDLE_TAG + actor_id[:15]
        core.memory.put(handle_oid, "v", pickle.dumps(None))
        ref = ObjectRef(handle_oid, core.address)
        core.io.post(core.actor_submitter.created, actor_id, handle_oid, held, detached)
        return ActorHandle(actor_id, meta, ref)


class ActorHandle:
    def __init__(self, actor_id, meta, ref):
        self._actor_id = actor_id
        self._meta = meta
        self._ref = ref

    def __getattr__(self, name):
        if name.startswith("_") and name not in self.__dict__.get("_meta", {}).get("methods", {}):
            raise AttributeError(name)
        methods = self._meta["methods"]
        if name not in methods:
            raise AttributeError(f"'ActorHandle' object for {self._meta['class_name']} has no method {name!r}. "
                                 f"Its methods are: {', '.join(sorted(m for m in methods if not m.startswith('__')))}.")
        # kept in the instance dict, so the next ``handle.name`` is a plain attribute read (no
        # __getattr__, no new object per call); the method holds a twin of this handle (same
        # id, meta and handle ref, which keeps the actor alive as this one does) rather than
        # this one, so no cycle delays the end of an actor whose last handle goes
        m = self.__dict__[name] = ActorMethod(ActorHandle(self._actor_id, self._meta, self._ref), name, methods[name])
        return m

    def __reduce__(self):
        return (_rebuild_handle, (self._actor_id, self._meta, self._ref))

    def __repr__(self):
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"

    def __hash__(self):
        return hash(self._actor_id)

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    @property
    def _ray_actor_id(self):
        from ...runtime_context import _HexID
        return _HexID(self._actor_id)


def _rebuild_handle(actor_id, meta, ref):
    return ActorHandle(actor_id, meta, ref)


class ActorMethod:
    def __init__(self, handle, name, meta, options=None):
        self._handle = handle
        self._name = name
        self._meta = meta
        self._options = options or {}
        self._fixed = None       # what every call of it carries (see _call_constants), made once

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly. Instead of running "
                        f"'object.{self._name}()', try 'object.{self._name}.remote()'.")

    def __reduce__(self):
        raise TypeError(f"An actor method ({self._name}) cannot be passed as a value. Pass the actor handle "
                        "itself and call the method on it in the receiving task or actor.")

    def options(self, **options):
        allowed = {"num_returns", "name", "concurrency_group", "max_task_retries", "retry_exceptions", "timeout_s",
                   "_generator_backpressure_num_objects", "enable_task_events"}
        for k in options:
            if k not in allowed:
                raise ValueError(f"Invalid option keyword {k!r} for actor methods. Valid ones are: {', '.join(sorted(allowed))}.")
        opt.validate({k: v for k, v in options.items() if k in ("num_returns", "timeout_s")}, opt.TASK_OPTIONS)
        return ActorMethod(self._handle, self._name, self._meta, dict(self._options, **options))

    def remote(self, *args, **kwargs):
        fixed = self._fixed
        if fixed is None:
            handle = self._handle
            if self._options:
                fixed = self._fixed = _call_constants(handle, self._name, self._meta, self._options)
            else:
                # ``handle.m`` makes a new ActorMethod each time: the plain method's constants are
                # kept on the handle (a dict of tuples: no reference back to the handle, whose
                # refcount ends the actor when the last one goes)
                cache = handle.__dict__.get("_fixed")
                if cache is None:
                    cache = handle.__dict__["_fixed"] = {}
                fixed = cache.get(self._name)
                if fixed is None:
                    fixed = cache[self._name] = _call_constants(handle, self._name, self._meta, {})
                self._fixed = fixed
        return submit_actor_call(self._handle, self._name, fixed, args, kwargs)

    def bind(self, *args, **kwargs):
        """A lazy call of this method on this actor: a node of a task graph (luminary.dag)."""
        from ...dag import bind
        return bind(self, args, kwargs)


def _call_constants(handle, method, meta, options):
    """What every call of one method (with one set of options) carries, worked out once:
    (signature, max pending calls, num_returns, name, concurrency group, timeout_s, max task
    retries, retry_exceptions)."""
    hmeta = handle._meta
    nret = options.get("num_returns", meta.get("num_returns", 1))
    name = options.get("name") or f"{hmeta['class_name']}.{method}"
    group = options.get("concurrency_group") or meta.get("concurrency_group")
    timeout_s = options.get("timeout_s", meta.get("timeout_s"))
    retries = options.get("max_task_retries")
    if retries is None:
        retries = meta.get("max_task_retries")
    if retries is None:
        retries = hmeta.get("max_task_retries", 0)
    if retries == -1:
        retries = 1 << 30
    retry_exc = options.get("retry_exceptions")
    if retry_exc is None:
        retry_exc = _decode_retry_exceptions(meta.get("retry_exceptions"))
    return (meta.get("sig"), hmeta.get("max_pending_calls", -1), nret, name, group,
            float(timeout_s) if timeout_s else None, retries, retry_exc or False, [None])


def submit_actor_call(handle, method, fixed, args, kwargs):
    sig, limit, nret, name, group, timeout_s, retries, retry_exc, template = fixed
    if sig is not None:
        signatures.check_call(sig, args, kwargs, f"{handle._meta['class_name']}.{method}")
    core = state.require_core()
    actor_id = handle._actor_id
    pending = None
    if limit and limit > 0:
        pending = core.actor_pending.setdefault(actor_id, [])
        values = core.memory.values
        pending[:] = [o for o in pending if o not in values]
        if len(pending) >= limit:
            raise exc.PendingCallsLimitExceeded(
                f"The actor {handle._meta['class_name']} already has {limit} calls pending from this caller "
                "(max_pending_calls). Wait for some results before submitting more.")
    spec_args, arg_refs, held_oids, held_owners = prepare_args(core, args, kwargs)
    tid = ids.new_task_id()
    if nret == 1:
        returns = [tid + _FIRST_RETURN]
    elif isinstance(nret, int):
        returns = [ids.object_id(tid, i + 1) for i in range(nret)]
    elif nret == "dynamic":
        returns = [ids.object_id(tid, 1)]
    else:
        returns = []
    spec = {"tid": tid, "fid": b"", "name": name, "args": spec_args, "nret": nret, "owner": core.address,
            "owner_id": core.worker_id, "job": core.job_id, "actor": actor_id, "method": method,
            "group": group}
    if timeout_s:
        spec["timeout_s"] = timeout_s
    # a plain call (one return value, no ObjectRef inside its arguments) may go straight from
    # this thread to the actor (TaskSubmitter.try_direct_actor_call); its return ref is counted
    # then without waking the I/O thread
    direct = DIRECT_CALLS and nret == 1 and not held_oids and not arg_refs
    refs = [ObjectRef(oid, core.address, _register=not direct) for oid in returns]
    if pending is not None and returns:
        pending.append(returns[0])
    task = Task(tid, spec, b"", b"", _NO_RESOURCES, returns, nret, retries, retry_exc,
                arg_refs, (held_oids, held_owners), name)
    task.parent = core.current_task_id
    # the fields every call of this method shares, sent once per connection (wire_payload)
    tpl = template[0]
    if tpl is None or tpl[1]["owner"] is not core.address:
        tpl = template[0] = (next(_TEMPLATE_IDS), {k: v for k, v in spec.items() if k != "tid" and k != "args"})
    task.tpl = tpl
    sub = core.submitter
    lane = sub.lane(actor_id)
    if direct:
        if sub.try_direct_actor_call(actor_id, task, lane):
            return refs[0]
        core.io.add_incref((returns[0], core.address))
    sub.note_posted(lane)
    core.io.post(core.actor_submitter.submit, actor_id, task, handle._ref)
    if nret == "streaming":
        return ObjectRefGenerator(tid, core.address)
    if nret == 1 or nret == "dynamic":
        return refs[0]
    if nret == 0:
        return None
    return refs


_NO_RESOURCES = {}       # an actor call asks for none (shared: nothing writes to it)
_TEMPLATE_IDS = itertools.count()
_FIRST_RETURN = ids.object_id(b"\0" * 12, 1)[12:]


class ActorSubmitter:
    """The caller's side of actor calls: a view over the owner state machine (owner.py), whose
    shell (submitter.py) queues calls per actor, locates actors and pushes calls in order."""

    def __init__(self, core):
        self.core = core

    def created(self, actor_id, handle_oid, held, detached):
        self.core.submitter.actor_created(actor_id, handle_oid, held, detached)

    def submit(self, actor_id, task, handle_ref):
        self.core.submitter.submit_actor_call(actor_id, task)

    def on_handle_freed(self, oid):
        self.core.submitter.on_handle_freed(oid)


# --- module-level API ---------------------------------------------------------------------------

def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs the actor's name as a non-empty string.")
    core = _auto_init()
    ns = core.namespace if namespace is None else namespace
    info = core.call_sync_gcs("get_named_actor", {"name": name, "namespace": ns})
    if info is None:
        raise ValueError(f"Failed to look up actor with name '{name}' in namespace '{ns}'. "
                         "Check the name and namespace, and that the actor was created with name=... "
                         "and is still alive.")
    return ActorHandle(info["actor_id"], info["meta"], None)


def kill(actor, *, no_restart=True):
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"kill() expects an actor handle, got {type(actor).__name__}. "
                         "To stop a task, use cancel() on its ObjectRef.")
    core = state.require_core()
    core.call_sync_gcs("kill_actor", {"actor_id": actor._actor_id, "no_restart": bool(no_restart)})


def list_named_actors(all_namespaces: bool = False):
    core = _auto_init()
    res = core.call_sync_gcs("list_named_actors", {"all_namespaces": all_namespaces, "namespace": core.namespace})
    if all_namespaces:
        return res
    return [r["name"] for r in res]


class _ActorExit(BaseException):
    """Raised by exit_actor() to unwind the current call before the actor's process ends."""


def exit_actor():
    """End the current actor after this call: it is not restarted and later calls fail with
    ActorDiedError."""
    core = state.core
    if core is None or (core.current_actor is None and not core.in_actor_init):
        raise TypeError("exit_actor() can only be called inside an actor.")
    raise _ActorExit()
