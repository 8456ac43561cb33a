"""The actor side of a worker: the instance, its concurrency, checkpoints and exit.

    create_actor ─▶ instance = cls(*args)   or, after a restart with a checkpoint,
                    instance = cls.__new__(cls); restore(state)   (no __init__)
    calls:  sync actor      one at a time on the main thread, in arrival order
            threaded actor  a thread pool per concurrency group (max_concurrency threads)
            async actor     an event loop on the main thread; a semaphore per group
                            (default 1000 calls interleaving)
    checkpoint_interval=N   after every N-th successful call the state (``__getstate__`` or
                            ``__dict__``) is sent to the GCS and acknowledged BEFORE that call's
                            reply leaves, so a reply you received is covered by a checkpoint
                            whenever that call was a checkpointing one.
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import gc
import inspect
import queue
import sys
import threading
import time
import traceback
import weakref

import cloudpickle

from .. import procutil

from .actor import ActorHandle, _ActorExit


# How long the shutdown hooks of an exiting actor may take before its process is ended anyway
# (Ray's actor_graceful_shutdown_timeout_ms, 30 s; `_system_config` sets it per cluster).  Long
# enough for a hook that flushes or closes connections, short enough that a hung one frees its
# CPU and GPU within the minute.
SHUTDOWN_TIMEOUT_S = 30.0


def _run_atexit():
    try:
        atexit._run_exitfuncs()
    except Exception:
        traceback.print_exc()


def _hooks_timed_out(timeout_s):
    print(f"The actor's shutdown hooks (__ray_shutdown__, __del__, atexit) ran longer than {timeout_s:g} s; "
          "ending it now (_system_config actor_graceful_shutdown_timeout_ms sets the limit).", file=sys.stderr)
    procutil.flush_and_exit(1)


class CallThreads:
    """The threads of one concurrency group of a threaded actor: at most ``size`` calls run at
    once.  Calls are handed over by the I/O thread as they arrive (no hop through the main
    thread) and taken from one queue; a thread is started only when none is idle, up to
    ``size``.  Lighter than a ThreadPoolExecutor: no Future per call."""

    def __init__(self, size, name, run):
        self.size = max(1, int(size))
        self.name = name
        self.run = run
        self.q = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0
        self.started = 0

    def submit(self, t):
        # ``idle``: threads waiting for a call (or about to) minus calls queued for one
        with self.lock:
            self.idle -= 1
            start = self.idle < 0 and self.started < self.size
            if start:
                self.idle += 1
                self.started += 1
                n = self.started
        self.q.put(t)
        if start:
            threading.Thread(target=self._loop, name=f"{self.name}_{n}", daemon=True).start()

    def _loop(self):
        q, lock, run = self.q, self.lock, self.run
        while True:
            t = q.get()
            try:
                run(t)
            except BaseException:  # noqa: BLE001 - the call's own errors are its reply; keep the thread
                traceback.print_exc()
            with lock:
                self.idle += 1


def _ready():
    return True


class ActorRuntime:
    def __init__(self, executor, spec):
        self.executor = executor
        self.core = executor.core
        self.actor_id = spec["actor_id"]
        self.name = spec.get("name")
        self.class_name = spec.get("class_name", "actor")
        self.incarnation = spec.get("incarnation", 0)
        self.restarted = self.incarnation > 0
        self.meta = spec["meta"]
        self.is_async = spec.get("is_async", False)
        self.max_concurrency = spec.get("max_concurrency", 1)
        self.groups = dict(spec.get("concurrency_groups") or {})
        self.checkpoint_interval = spec.get("checkpoint_interval", 0)
        self.calls = 0
        self.instance = None
        self.pools = {}
        self.sems = {}
        self.loop = None           # set once the async loop runs (calls are scheduled onto it)
        self._loop = None
        self._mode_lock = threading.Lock()
        self._incoming = collections.deque()
        self._wake_pending = False
        ms = (self.core.cfg.get("system") or {}).get("actor_graceful_shutdown_timeout_ms")
        self.shutdown_timeout_s = SHUTDOWN_TIMEOUT_S if ms is None else ms / 1000.0

    def handle(self):
        return ActorHandle(self.actor_id, self.meta, None)

    def _call_with_instance(self, fn, *args, **kwargs):
        """``actor.__ray_call__.remote(fn, *args)``: run ``fn(instance, *args)`` in the actor."""
        return fn(self.instance, *args, **kwargs)

    def repr(self):
        """The instance's repr as Ray shows it in errors and log prefixes."""
        inst = self.instance
        if inst is None:
            return self.meta.get("class_name", "Actor")
        try:
            if type(inst).__repr__ is not object.__repr__:
                return repr(inst)
        except Exception:
            pass
        return f"<{type(inst).__module__}.{type(inst).__qualname__} object at {hex(id(inst))}>"

    @property
    def threaded(self):
        return not self.is_async and (self.max_concurrency > 1 or bool(self.groups))

    def create(self, spec):
        cls = cloudpickle.loads(spec["cls"])
        state = spec.get("checkpoint")
        if state is not None:
            inst = cls.__new__(cls)
            value = cloudpickle.loads(state)
            if hasattr(inst, "__setstate__"):
                inst.__setstate__(value)
            else:
                inst.__dict__.update(value)
        else:
            args, kwargs = self.executor.load_args(spec)
            ref_args = spec.get("ref_args")
            if ref_args:
                from .object_ref import ObjectRef
                refs = [ObjectRef(oid, owner) for _, oid, owner in ref_args]
                self.core.register_borrowed(refs)
                values = self.core.get_objects(refs, None)
                args = list(args)
                for (pos, _, _), v in zip(ref_args, values):
                    if isinstance(pos, int):
                        args[pos] = v
                    else:
                        kwargs[pos] = v
            init = getattr(cls, "__init__", None)
            if inspect.iscoroutinefunction(init):
                # ``async def __init__``: run it on the loop the actor's calls will use
                inst = cls.__new__(cls)
                self._own_loop().run_until_complete(init(inst, *args, **kwargs))
            else:
                inst = cls(*args, **kwargs)
        self.instance = inst

    # --- state ----------------------------------------------------------------------------------
    def after_call(self):
        if not self.checkpoint_interval:
            return
        self.calls += 1
        if self.calls % self.checkpoint_interval == 0:
            self.save_checkpoint()

    def save_checkpoint(self):
        inst = self.instance
        state = inst.__getstate__() if hasattr(type(inst), "__getstate__") and \
            type(inst).__getstate__ is not object.__getstate__ else dict(inst.__dict__)
        blob = cloudpickle.dumps(state, protocol=5)
        self.core.call_sync_gcs("actor_checkpoint", {"actor_id": self.actor_id, "state": blob})

    def _own_loop(self):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def run_shutdown_hooks(self):
        """Ray 2.60's graceful actor shutdown (exit_actor, __ray_terminate__, the last handle
        gone; not ray.kill or shutdown): the user's ``__ray_shutdown__``, then ``__del__`` (the
        instance is dropped) and ``atexit`` handlers, in that order.  A hook that raises is
        reported and the rest still run; a hook that hangs is cut off by the watchdog of exit()."""
        inst, self.instance = self.instance, None
        if inst is None:
            return _run_atexit()
        hook = getattr(inst, "__ray_shutdown__", None)
        if callable(hook):
            try:
                res = hook()
                if inspect.isawaitable(res):
                    # as Ray 2.60: an async __ray_shutdown__ is not awaited
                    getattr(res, "close", lambda: None)()
                    print("Warning: __ray_shutdown__ is a coroutine function; it is not awaited (as in "
                          "Ray). Make it a plain `def` to run cleanup when the actor exits.", file=sys.stderr)
            except Exception as e:
                print("Error during actor __ray_shutdown__ method", file=sys.stderr)
                traceback.print_exception(type(e), e, e.__traceback__.tb_next, chain=False)
        del hook
        finalizer = getattr(type(inst), "__del__", None)
        try:
            alive = weakref.ref(inst)
        except TypeError:
            alive = None
        del inst
        gc.collect()
        inst = alive() if alive is not None else None
        if inst is not None and finalizer is not None:
            # still referenced (the frame that called exit_actor holds it): run its finalizer now;
            # the process ends right after, so it never runs twice
            try:
                finalizer(inst)
            except Exception:
                print(f"Exception ignored in: {finalizer!r}", file=sys.stderr)
                traceback.print_exc()
        del inst
        _run_atexit()

    def exit(self):
        watchdog = threading.Timer(self.shutdown_timeout_s, _hooks_timed_out, (self.shutdown_timeout_s,))
        watchdog.daemon = True
        watchdog.start()
        try:
            self.core.call_sync_gcs("actor_exit", {"actor_id": self.actor_id}, timeout=5)
        except Exception:
            pass
        self.run_shutdown_hooks()
        procutil.flush_and_exit(0)

    # --- threaded actors ----------------------------------------------------------------------------
    def pool_for(self, group):
        key = group if group in self.groups else None
        pool = self.pools.get(key)
        if pool is None:
            with self._mode_lock:
                pool = self.pools.get(key)
                if pool is None:
                    size = self.groups.get(key, self.max_concurrency) if key else self.max_concurrency
                    pool = self.pools[key] = CallThreads(size, f"actor-{key or 'default'}", self.executor._run_threaded)
        return pool

    # --- async actors -------------------------------------------------------------------------------
    def run_async_forever(self, pending_queue):
        """Run the actor's event loop on the main thread; calls are scheduled onto it."""
        loop = self._own_loop()
        asyncio.set_event_loop(loop)
        with self._mode_lock:
            self.loop = loop
            while True:
                try:
                    t = pending_queue.get_nowait()
                except Exception:
                    break
                loop.call_soon(self.start_async, t)
        loop.run_forever()

    def schedule(self, t):
        """From the I/O thread: hand a call to the async loop (False if it is not running yet).
        Calls are queued and the loop is woken once per batch."""
        if self.loop is None:
            with self._mode_lock:
                if self.loop is None:
                    return False
        self._incoming.append(t)
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain_incoming)
        return True

    def _drain_incoming(self):
        self._wake_pending = False
        q = self._incoming
        while q:
            self.start_async(q.popleft())

    def sem_for(self, group):
        key = group if group in self.groups else None
        sem = self.sems.get(key)
        if sem is None:
            sem = asyncio.Semaphore(self.groups.get(key, self.max_concurrency) if key else self.max_concurrency)
            self.sems[key] = sem
        return sem

    def start_async(self, t):
        t.afut = asyncio.ensure_future(self.run_async(t))

    async def run_async(self, t):
        ex = self.executor
        spec = t.spec
        async with self.sem_for(spec.get("group")):
            if not ex.claim(t):
                return
            start = time.perf_counter()
            nret = spec["nret"]
            try:
                method = self.method(spec["method"])
                args, kwargs = ex.load_args(spec)
                self.core.current_task_id = spec["tid"]
                self.core.current_task_name = spec["name"]
                result = method(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                if inspect.isasyncgen(result):
                    reply = await ex.run_async_generator(t, result, nret, start)
                elif nret in ("streaming", "dynamic"):
                    reply = ex._run_generator(t, result, nret, start)
                else:
                    reply = ex._pack(spec, result, nret)
                self.after_call()
                if t.cancel_requested and not t.timed_out:
                    reply = {"cancelled": True}      # it caught the CancelledError: still cancelled (as Ray)
            except _ActorExit:
                self.exit()
                return
            except asyncio.CancelledError as e:
                reply = ex._error_reply(spec, ex._timeout_error(spec, e), nret) if t.timed_out else {"cancelled": True}
            except Exception as e:  # noqa: BLE001
                reply = ex._error_reply(spec, e, nret)
            reply["dur"] = time.perf_counter() - start
            t.finish()
            ex.finish(t, reply)

    def method(self, name):
        if name == "__ray_terminate__":
            raise _ActorExit()
        if name == "__ray_ready__":
            return _ready
        if name == "__ray_call__":
            return self._call_with_instance
        try:
            return getattr(self.instance, name)
        except AttributeError:
            raise AttributeError(f"The actor has no method {name!r}") from None

