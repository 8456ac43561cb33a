"""``Queue``: a first-in first-out queue shared by tasks, actors and the driver
(``ray.util.queue.Queue``'s semantics).

The items live in an async actor that holds an ``asyncio.Queue``: a blocked ``put`` or ``get``
is a coroutine parked in that actor, so any number of callers can block at once.  A ``Queue``
object pickles as its actor handle, so it can be passed to tasks and actors, which then use the
same queue.

Written against Luminary's public API only.
"""
from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any, Dict, List, Optional

import luminary

__all__ = ["Empty", "Full", "Queue"]


class Empty(_stdlib_queue.Empty):
    """Raised by a non-blocking or timed-out ``get`` on an empty queue."""


class Full(_stdlib_queue.Full):
    """Raised by a non-blocking or timed-out ``put`` on a full queue."""


# What the actor answers: (status, payload).  Statuses travel instead of exceptions so the
# caller raises a plain Empty/Full with its own traceback.
_OK, _EMPTY, _FULL = 0, 1, 2


class _QueueActor:
    """The actor behind a Queue: an asyncio.Queue, served by coroutines."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout=None):
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return (_FULL, None)
        return (_OK, None)

    async def get(self, timeout=None):
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return (_EMPTY, None)
        return (_OK, item)

    async def put_nowait(self, item):
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return (_FULL, None)
        return (_OK, None)

    async def put_nowait_batch(self, items):
        items = list(items)
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return (_FULL, f"Cannot add {len(items)} items to queue of size "
                           f"{self.queue.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)
        return (_OK, None)

    async def get_nowait(self):
        try:
            return (_OK, self.queue.get_nowait())
        except asyncio.QueueEmpty:
            return (_EMPTY, None)

    async def get_nowait_batch(self, num_items):
        if num_items > self.queue.qsize():
            return (_EMPTY, f"Cannot get {num_items} items from queue of size "
                            f"{self.queue.qsize()}.")
        return (_OK, [self.queue.get_nowait() for _ in range(num_items)])


def _unwrap(reply):
    status, payload = reply
    if status == _EMPTY:
        raise Empty(payload) if payload else Empty
    if status == _FULL:
        raise Full(payload) if payload else Full
    return payload


def _check_timeout(timeout):
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A first-in, first-out queue implemented on an async actor.

    Args:
        maxsize: the most items the queue holds; 0 (or less) means no limit.
        actor_options: options for the actor, as for ``.options()`` (e.g. ``num_cpus``,
            ``name``, ``namespace``, ``lifetime``).

    Example:
        >>> q = Queue()
        >>> q.put(1); q.get()
        1
    """

    def __init__(self, maxsize: int = 0, actor_options: Optional[Dict] = None) -> None:
        actor_options = dict(actor_options or {})
        self.maxsize = maxsize
        actor_cls = luminary.remote(_QueueActor)
        if actor_options:
            actor_cls = actor_cls.options(**actor_options)
        self.actor = actor_cls.remote(maxsize)

    # pickling: the state is (maxsize, actor handle); the default __reduce__ does just that.

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue (it may change at once)."""
        return luminary.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue (it may change at once)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue is empty (it may change at once)."""
        return luminary.get(self.actor.empty.remote())

    def full(self) -> bool:
        """Whether the queue is full (it may change at once)."""
        return luminary.get(self.actor.full.remote())

    # ------------------------------------------------------------------ put
    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Add ``item`` to the queue.

        With ``block`` (the default) wait until there is room: forever with ``timeout=None``,
        else at most ``timeout`` seconds and then raise ``Full``.  Without ``block`` raise
        ``Full`` at once when there is no room (``timeout`` is ignored).
        """
        if not block:
            _unwrap(luminary.get(self.actor.put_nowait.remote(item)))
            return
        _check_timeout(timeout)
        _unwrap(luminary.get(self.actor.put.remote(item, timeout)))

    async def put_async(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """``put`` for asyncio code: awaits instead of blocking the event loop."""
        if not block:
            _unwrap(await self.actor.put_nowait.remote(item))
            return
        _check_timeout(timeout)
        _unwrap(await self.actor.put.remote(item, timeout))

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        return self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all of ``items`` at once, or none of them (``Full``) if they do not fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _unwrap(luminary.get(self.actor.put_nowait_batch.remote(list(items))))

    # ------------------------------------------------------------------ get
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the oldest item.

        With ``block`` (the default) wait until an item is there: forever with
        ``timeout=None``, else at most ``timeout`` seconds and then raise ``Empty``.  Without
        ``block`` raise ``Empty`` at once when the queue is empty (``timeout`` is ignored).
        """
        if not block:
            return _unwrap(luminary.get(self.actor.get_nowait.remote()))
        _check_timeout(timeout)
        return _unwrap(luminary.get(self.actor.get.remote(timeout)))

    async def get_async(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """``get`` for asyncio code: awaits instead of blocking the event loop."""
        if not block:
            return _unwrap(await self.actor.get_nowait.remote())
        _check_timeout(timeout)
        return _unwrap(await self.actor.get.remote(timeout))

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> List[Any]:
        """Remove and return ``num_items`` items at once, or none (``Empty``) if there are
        fewer."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _unwrap(luminary.get(self.actor.get_nowait_batch.remote(num_items)))

    # ------------------------------------------------------------- shutdown
    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor; the queue cannot be used afterwards.

        With ``force`` kill it at once.  Otherwise ask it to exit after the calls already sent
        to it, and kill it if it has not exited within ``grace_period_s`` seconds.  Calls still
        blocked in ``get``/``put`` then fail with an actor error.
        """
        actor = self.actor
        if actor is None:
            return
        self.actor = None
        if not force:
            try:
                done = actor.__ray_terminate__.remote()
                ready, _ = luminary.wait([done], timeout=grace_period_s)
                if ready:
                    return
            except Exception:  # noqa: BLE001 - the actor is going away either way
                pass
        try:
            luminary.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
