"""``ActorPool``: spread work over a fixed set of actors (``ray.util.ActorPool``'s semantics).

The pool hands each value to an idle actor through ``fn(actor, value)``, which must start the
work and return an ``ObjectRef`` (or a list of them).  An actor counts as busy until the result
of its call has been collected with ``get_next``/``get_next_unordered``; values submitted while
every actor is busy wait in a queue and start, in submission order, as actors come back.

Written against Luminary's public API only.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Iterable, Optional

import luminary

__all__ = ["ActorPool"]

_TIMEOUT_MSG = "Timed out waiting for result"


def _refs_of(future) -> list:
    """The ObjectRefs behind what ``fn`` returned (one ref, or a list/tuple of refs)."""
    if isinstance(future, (list, tuple)):
        return list(future)
    return [future]


def _key_of(future):
    return tuple(future) if isinstance(future, list) else future


class ActorPool:
    """Utility class to operate on a fixed pool of actors.

    Args:
        actors: the actor handles to use.

    Example:
        >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])
        >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))
        [2, 4, 6, 8]
    """

    def __init__(self, actors: Iterable):
        # Idle actors are handed out last-in first-out, as Ray does.
        self._idle_actors = list(actors)
        # submission index -> (future, actor) for work started on an actor and not yet collected
        self._in_flight: dict = {}
        # values waiting for an actor: (fn, value)
        self._pending_submits: deque = deque()
        self._next_task_index = 0      # index the next started task gets
        self._next_return_index = 0    # index get_next() returns next

    # ------------------------------------------------------------------ map
    def map(self, fn: Callable[[Any, Any], Any], values: Iterable):
        """Apply ``fn(actor, value)`` over ``values`` in parallel; return an iterator over the
        results in the order of ``values``.  Results still pending from earlier calls are
        dropped first.  Iterate the returned generator to drive the computation."""
        self._discard_pending()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next()
        return results()

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable):
        """Like ``map`` but yields each result as soon as it is ready."""
        self._discard_pending()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next_unordered()
        return results()

    def _discard_pending(self):
        # As Ray's map(): results that earlier submits left behind are thrown away, without
        # waiting for unfinished ones (their actors go back to the idle set at once, and take
        # queued values, which are thrown away the same way).
        while self._in_flight:
            index = min(self._in_flight)
            future, actor = self._in_flight.pop(index)
            self._next_return_index = max(self._next_return_index, index + 1)
            refs = _refs_of(future)
            ready, _ = luminary.wait(refs, num_returns=len(refs), timeout=0)
            if len(ready) < len(refs):
                self._return_actor(actor)
                continue
            try:
                self._get_result(future, actor)  # returns the actor, or drops a dead one
            except Exception:  # noqa: BLE001 - a failed result we are discarding anyway
                pass

    # --------------------------------------------------------------- submit
    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Schedule ``fn(actor, value)`` on an idle actor, or queue it until one is free.
        Collect the result with ``get_next()`` or ``get_next_unordered()``."""
        if self._idle_actors:
            actor = self._idle_actors.pop()
            future = fn(actor, value)
            self._in_flight[self._next_task_index] = (future, actor)
            self._next_task_index += 1
        else:
            self._pending_submits.append((fn, value))

    # ---------------------------------------------------------------- state
    def has_next(self) -> bool:
        """Whether any result is pending (submitted and not yet returned)."""
        return bool(self._in_flight)

    def has_free(self) -> bool:
        """Whether an actor is idle and nothing waits for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self):
        """Remove an idle actor from the pool and return it, or None if none is free."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor) -> None:
        """Add ``actor`` to the pool's idle set (it starts queued work at once, if any)."""
        busy = [a for _, a in self._in_flight.values()]
        if any(actor == a for a in self._idle_actors) or any(actor == a for a in busy):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    # ------------------------------------------------------------- results
    def get_next(self, timeout: Optional[float] = None, ignore_if_timedout: bool = False):
        """Return the next result in submission order, waiting up to ``timeout`` seconds
        (``None``: no limit).

        Raises:
            StopIteration: no result is pending.
            TimeoutError: the next result is not ready in time.  With ``ignore_if_timedout``
                that task is dropped (its actor goes back to the pool) before raising.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index or \
                self._next_return_index not in self._in_flight:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        index = self._next_return_index
        future, actor = self._in_flight[index]
        timed_out = False
        if timeout is not None:
            refs = _refs_of(future)
            ready, _ = luminary.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMEOUT_MSG)
                timed_out = True
        del self._in_flight[index]
        self._next_return_index += 1
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(self, timeout: Optional[float] = None, ignore_if_timedout: bool = False):
        """Return any pending result that is ready (the first to finish), waiting up to
        ``timeout`` seconds.  After this, ``get_next()`` can no longer be used for the results
        submitted so far.

        Raises:
            StopIteration: no result is pending.
            TimeoutError: nothing finished in time.  With ``ignore_if_timedout`` the oldest
                pending task is dropped (its actor goes back to the pool) before raising.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        index = self._first_finished(timeout)
        if index is None:
            if not ignore_if_timedout:
                raise TimeoutError(_TIMEOUT_MSG)
            index = min(self._in_flight)
            future, actor = self._in_flight.pop(index)
            self._next_return_index = max(self._next_return_index, index + 1)
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        future, actor = self._in_flight.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        return self._get_result(future, actor)

    # ------------------------------------------------------------ internals
    def _first_finished(self, timeout):
        """Index of the earliest-submitted task whose refs are all ready, waiting up to
        ``timeout`` seconds for one; None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            owner_of = {}
            for index, (future, _) in self._in_flight.items():
                for ref in _refs_of(future):
                    owner_of[ref] = index
            refs = list(owner_of)
            ready, not_ready = luminary.wait(refs, num_returns=len(refs), timeout=0)
            unfinished = {owner_of[r] for r in not_ready}
            finished = sorted({owner_of[r] for r in ready} - unfinished)
            if finished:
                return finished[0]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            ready, _ = luminary.wait(not_ready, num_returns=1, timeout=remaining)
            if not ready and deadline is not None:
                return None

    def _get_result(self, future, actor):
        alive = True
        try:
            if isinstance(future, (list, tuple)):
                return luminary.get(list(future))
            return luminary.get(future)
        except luminary.exceptions.ActorDiedError:
            alive = False  # a dead actor leaves the pool
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor, alive: bool = True):
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.popleft())
