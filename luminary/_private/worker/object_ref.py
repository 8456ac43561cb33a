"""ObjectRef and the generator of refs returned by generator tasks.

An ObjectRef is an object id plus the address of its owner.  Creating one (by a call, a put, or
unpickling) adds a local reference in this process's reference table; its finalizer removes it.
Both are posted to the I/O thread in order, so the table itself is only touched by that thread.
Refs unpickled inside ``serialization.collect_deserialized_refs`` (every get and every task's
arguments) skip the per-ref increment: the collector holds them and posts their increments as
one batch when it closes, before any of them can be dropped.
"""
from __future__ import annotations

import asyncio
import concurrent.futures

from .. import serialization
from . import state


class ObjectRef:
    __slots__ = ("id", "owner", "__weakref__")

    def __init__(self, oid: bytes, owner: str, _register=True):
        self.id = oid
        self.owner = owner
        if _register:
            cw = state.core
            if cw is not None:
                cw.io.add_incref((oid, owner))

    def __del__(self):
        cw = state.core
        if cw is not None:
            try:
                io = cw.io                      # IOThread.add_decref, inlined: this runs per ref
                io._queue.append(self.id)
                if not io._wake_pending and not io._decref_timer:
                    io._arm_decrefs()
            except Exception:
                pass

    def __reduce__(self):
        serialization.note_ref(self)
        return (_rebuild_ref, (self.id, self.owner))

    def __copy__(self):
        return ObjectRef(self.id, self.owner)

    def __deepcopy__(self, memo):
        return ObjectRef(self.id, self.owner)

    def __hash__(self):
        return hash(self.id)

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other.id == self.id

    def __repr__(self):
        return f"ObjectRef({self.id.hex()})"

    def hex(self) -> str:
        return self.id.hex()

    def binary(self) -> bytes:
        return self.id

    def task_id(self):
        from ...runtime_context import _HexID
        return _HexID(self.id[:12])

    def is_nil(self):
        return not any(self.id)

    def call_site(self):
        return ""

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future that resolves to the object's value (or its error)."""
        fut = concurrent.futures.Future()
        cw = state.require_core()

        def ready():
            try:
                fut.set_result(cw.get_objects([self], None)[0])
            except BaseException as e:  # noqa: BLE001 - the future carries any error
                fut.set_exception(e)
        cw.notify_when_ready(self, lambda: _run_in_thread(ready))
        return fut

    def as_future(self):
        return asyncio.wrap_future(self.future())

    def __await__(self):
        loop = asyncio.get_event_loop()
        afut = loop.create_future()
        cw = state.require_core()

        def ready():
            def resolve():
                if afut.done():
                    return
                try:
                    afut.set_result(cw.get_objects([self], None)[0])
                except BaseException as e:  # noqa: BLE001
                    afut.set_exception(e)
            loop.call_soon_threadsafe(resolve)
        cw.notify_when_ready(self, ready)
        return afut.__await__()

    def _on_completed(self, callback):
        self.future().add_done_callback(lambda f: callback(f.result()))


_future_pool = None


def _run_in_thread(fn):
    """Resolve futures on one shared helper thread (the I/O thread must never block)."""
    global _future_pool
    if _future_pool is None:
        _future_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="luminary-future")
    _future_pool.submit(fn)


def _rebuild_ref(oid, owner):
    refs = getattr(_tls, "deser", None)
    if refs is None:
        return ObjectRef(oid, owner)
    # inside a collector: its batch increment (on close) counts this ref; nothing per ref here
    ref = _new(ObjectRef)
    ref.id = oid
    ref.owner = owner
    refs.append(ref)
    return ref


def _count_batch(refs):
    """Called when a collector closes: one increment per collected ref, posted as one batch."""
    cw = state.core
    if cw is not None:
        cw.io.add_increfs(refs)


_new = object.__new__
_tls = serialization._local
serialization._count_batch = _count_batch


class ObjectRefGenerator:
    """Returned by a generator task: yields one ObjectRef per value, as soon as it is produced."""

    def __init__(self, task_id: bytes, owner: str):
        self._tid = task_id
        self._owner = owner
        self._next = 1
        self._done = False

    def __iter__(self):
        return self

    def __next__(self):
        ref = self._next_ref(None)
        if ref is None:
            raise StopIteration
        return ref

    def _next_ref(self, timeout):
        if self._done:
            return None
        cw = state.require_core()
        oid = self._tid + self._next.to_bytes(4, "big")
        kind = cw.wait_generator_item(oid, self._owner, timeout)
        if kind == "end":
            self._done = True
            return None
        self._next += 1
        return ObjectRef(oid, self._owner)

    def next_ready(self):
        return self.__next__()

    def __aiter__(self):
        return self

    async def __anext__(self):
        loop = asyncio.get_event_loop()
        ref = await loop.run_in_executor(None, self._next_ref, None)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def completed(self):
        return ObjectRef(self._tid + b"\x00\x00\x00\x00", self._owner, _register=False)

    def is_finished(self):
        return self._done

    def __del__(self):
        cw = state.core
        if cw is not None and not self._done:
            try:
                cw.io.post(cw.submitter.drop_generator, self._tid, self._next)
            except Exception:
                pass

    def __repr__(self):
        return f"ObjectRefGenerator({self._tid.hex()})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: an iterable of ObjectRefs."""

    def __init__(self, refs):
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self):
        return len(self._refs)

    def __repr__(self):
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
