"""``multiprocessing.Pool`` on Luminary actors (``ray.util.multiprocessing.Pool``'s semantics).

Each pool process is an actor.  Work travels in chunks: one actor call runs ``func`` over a
list of argument tuples and answers with the list of results, where an exception raised by
``func`` is caught and sent back in its item's place, so it re-raises in the caller as the
original exception (with the remote traceback as its ``__cause__``, as the standard library
does).

Chunks wait in a backlog on the caller's side and go to actors as they become free (pull-based,
like the standard library's workers).  One result-handler thread per pool waits on the chunks
in flight (``luminary.wait``), sends the next chunks, fills in the ``AsyncResult``s and runs the
user's ``callback``/``error_callback`` one at a time, as the standard library's does.

Written against Luminary's public API only.
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
import time
import traceback
from multiprocessing import TimeoutError
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback
from typing import Any, Callable, Dict, Iterable, List, Optional

import luminary

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
_UNSET = object()


# ---------------------------------------------------------------------------
# the actor side
# ---------------------------------------------------------------------------

class _RemoteError:
    """An exception raised by ``func`` in a pool actor, with its formatted traceback."""

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException, tb: str):
        self.exc = exc
        self.tb = tb

    def __reduce__(self):
        # An exception that cannot make the trip becomes MaybeEncodingError, as in the
        # standard library, instead of failing the whole chunk.
        import pickle

        import cloudpickle
        exc = self.exc
        try:
            pickle.loads(cloudpickle.dumps(exc))
        except Exception as e:  # noqa: BLE001
            exc = MaybeEncodingError(e, repr(self.exc))
        return (_RemoteError, (exc, self.tb))

    def rebuild(self) -> BaseException:
        self.exc.__cause__ = RemoteTraceback(self.tb)
        return self.exc


class _PoolActor:
    """One pool "process"."""

    def __init__(self, initializer=None, initargs=()):
        if initializer is not None:
            initializer(*(initargs or ()))

    def ping(self):
        return os.getpid()

    def run_batch(self, func, batch):
        out = []
        for args, kwargs in batch:
            try:
                out.append(func(*args, **kwargs))
            except Exception as e:  # noqa: BLE001 - sent back to re-raise in the caller
                tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                out.append(_RemoteError(e, f'\n"""\n{tb}"""'))
        return out


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------

class AsyncResult:
    """The result of ``apply_async``/``map_async``/``starmap_async``.

    ``get(timeout)`` returns the value (or raises the first error, or
    ``multiprocessing.TimeoutError``); ``wait``, ``ready`` and ``successful`` behave as in the
    standard library.
    """

    def __init__(self, num_chunks: int, single: bool, callback=None, error_callback=None):
        self._chunks: List[Optional[list]] = [None] * num_chunks
        self._left = num_chunks
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._lock = threading.RLock()
        self._value: Any = _UNSET
        self._error: Optional[BaseException] = None
        if num_chunks == 0:  # map over nothing
            self._finish_ok()

    # called on the result-handler thread
    def _set_chunk(self, index: int, items: list) -> None:
        with self._lock:
            if self._event.is_set():
                return  # an earlier chunk failed: the result is already final
            for item in items:
                if isinstance(item, _RemoteError):
                    self._finish_error(item.rebuild())
                    return
            self._chunks[index] = items
            self._left -= 1
            if self._left == 0:
                self._finish_ok()

    def _set_chunk_error(self, index: int, error: BaseException) -> None:
        with self._lock:
            if not self._event.is_set():
                self._finish_error(error)

    def _finish_ok(self):
        values = [v for chunk in self._chunks for v in chunk]
        self._value = values[0] if self._single else values
        self._chunks = []
        if self._callback is not None:
            _run_user_callback(self._callback, self._value)
        self._event.set()

    def _finish_error(self, error):
        self._error = error
        self._chunks = []
        if self._error_callback is not None:
            _run_user_callback(self._error_callback, error)
        self._event.set()

    # public
    def ready(self) -> bool:
        """Whether the call has finished."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call finished without raising; ValueError if it has not finished."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None):
        """The result, when it arrives; re-raises the call's exception.  Raises
        ``multiprocessing.TimeoutError`` if it is not ready within ``timeout`` seconds."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


ApplyResult = AsyncResult
MapResult = AsyncResult


def _run_user_callback(fn, arg):
    try:
        fn(arg)
    except Exception:  # noqa: BLE001 - a failing callback must not stop the pool
        traceback.print_exc()


class IMapIterator:
    """The iterator of ``imap`` (ordered) and ``imap_unordered``.

    ``next(timeout=None)`` raises ``multiprocessing.TimeoutError`` when nothing arrives in
    time; an exception raised by ``func`` re-raises for its item, and iteration can go on.
    """

    def __init__(self, pool: "Pool", func, iterable, chunksize: int, ordered: bool,
                 unpack: bool = False):
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        self._pool = pool
        self._func = func
        self._ordered = ordered
        self._unpack = unpack
        self._chunksize = chunksize
        self._source = iter(iterable)
        self._exhausted = False
        # A sized input is submitted at once (the standard library feeds everything); an
        # iterator is read lazily, keeping a bounded number of chunks in flight.
        self._window = (float("inf") if hasattr(iterable, "__len__")
                        else max(32, 8 * pool._processes))
        self._cond = threading.Condition()
        self._submitted = 0     # chunks submitted
        self._consumed = 0      # chunks fully handed to the caller
        self._done = {}         # chunk index -> list of items (or an error)
        self._next_index = 0    # ordered: the chunk whose items come next
        self._buffer = collections.deque()
        self._feed()

    def _feed(self):
        while not self._exhausted and self._submitted - self._consumed < self._window:
            self._pool._check_alive()
            chunk = list(itertools.islice(self._source, self._chunksize))
            if not chunk:
                self._exhausted = True
                break
            if len(chunk) < self._chunksize:
                self._exhausted = True
            index = self._submitted
            self._submitted += 1
            batch = [(tuple(a) if self._unpack else (a,), {}) for a in chunk]
            self._pool._submit(self._func, batch, self, index)

    # called on the result-handler thread
    def _set_chunk(self, index: int, items: list) -> None:
        with self._cond:
            self._done[index] = items
            self._cond.notify_all()

    def _set_chunk_error(self, index: int, error: BaseException) -> None:
        with self._cond:
            self._done[index] = error
            self._cond.notify_all()

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self, timeout: Optional[float] = None):
        while not self._buffer:
            self._feed()
            with self._cond:
                if self._exhausted and self._consumed == self._submitted:
                    raise StopIteration
                if self._ordered:
                    ok = self._cond.wait_for(lambda: self._next_index in self._done, timeout)
                    index = self._next_index
                else:
                    ok = self._cond.wait_for(lambda: bool(self._done), timeout)
                    index = min(self._done) if ok else None
                if not ok:
                    raise TimeoutError
                items = self._done.pop(index)
                self._next_index += 1
                self._consumed += 1
            if isinstance(items, BaseException):
                self._buffer.append(_RemoteError(items, ""))
            else:
                self._buffer.extend(items)
        item = self._buffer.popleft()
        if isinstance(item, _RemoteError):
            raise item.exc if not item.tb else item.rebuild()
        return item


IMapUnorderedIterator = IMapIterator


# ---------------------------------------------------------------------------
# the pool
# ---------------------------------------------------------------------------

class _Slot:
    """An actor of the pool with its counters (guarded by the dispatcher's lock)."""

    __slots__ = ("actor", "batches", "in_flight", "sent", "last_done", "retired")

    def __init__(self, actor):
        self.actor = actor
        self.batches = 0                  # chunks sent to it (for maxtasksperchild)
        self.in_flight = 0                # chunks sent and not yet handled
        self.sent = collections.deque()   # send times of those chunks
        self.last_done = 0.0              # when it last finished a chunk
        self.retired = False              # replaced (maxtasksperchild): killed once idle


# A chunk that takes less than this (seconds) is "short": an actor then gets up to
# _SHORT_DEPTH chunks at once so the round trips overlap.  Longer chunks go one per actor, so
# each free actor pulls the next chunk as in the standard library and a slow chunk never holds
# queued work hostage.
_SHORT_CHUNK_S = 0.002
_SHORT_DEPTH = 3


# How long the result-handler thread waits on the chunks in flight before it looks again for
# chunks sent since (the only latency this adds is for a chunk sent while others run).
_POLL_S = 0.005


class _Dispatcher:
    """The pool's shared state: the actors, the backlog of chunks not yet sent, the chunks in
    flight, and the counters the result-handler thread updates.  Holds no reference to the
    Pool, so an abandoned pool can be collected."""

    def __init__(self, actor_cls, initializer, initargs, processes, maxtasksperchild):
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.actor_cls = actor_cls
        self.initializer = initializer
        self.initargs = initargs
        self.maxtasksperchild = maxtasksperchild
        self.backlog = collections.deque()   # (func, batch, result, index) not sent yet
        self.in_flight = {}                  # ref -> (slot, result, index)
        self.failed = collections.deque()    # (result, index, error) to deliver
        self.outstanding = 0                 # chunks accepted and not yet handled
        self.terminated = False
        self.stopping = False                # the handler thread ends once nothing is left
        self.retired = []                    # replaced slots (maxtasksperchild)
        self.service_s = None                # running average of a chunk's run time
        self.slots = [self.new_slot() for _ in range(processes)]

    def new_slot(self) -> _Slot:
        return _Slot(self.actor_cls.remote(self.initializer, self.initargs))

    # -- any thread ------------------------------------------------------------------------------
    def submit(self, func, batch, result, index) -> None:
        with self.lock:
            if self.terminated:
                raise ValueError("Pool not running")
            self.outstanding += 1
            self.backlog.append((func, batch, result, index))
            self.dispatch()

    def dispatch(self) -> None:
        """Send backlog chunks to actors that have room."""
        with self.cond:
            sent = False
            while self.backlog and not self.terminated:
                slot = self._pick()
                if slot is None:
                    break
                self._send(slot, *self.backlog.popleft())
                sent = True
            if sent:
                self.cond.notify_all()

    def _pick(self):
        short = self.service_s is not None and self.service_s < _SHORT_CHUNK_S
        depth = _SHORT_DEPTH if short else 1
        best = None
        for slot in self.slots:
            if slot.in_flight >= depth:
                continue
            # fewest chunks first; among equals the one that finished last (not a stuck one)
            if best is None or (slot.in_flight, -slot.last_done) < (best.in_flight, -best.last_done):
                best = slot
        return best

    def _send(self, slot, func, batch, result, index):
        ref = slot.actor.run_batch.remote(func, batch)
        slot.in_flight += 1
        slot.batches += 1
        slot.sent.append(time.monotonic())
        self.in_flight[ref] = (slot, result, index)
        if self.maxtasksperchild is not None and slot.batches >= self.maxtasksperchild:
            slot.retired = True
            self.retired.append(slot)
            self.slots[self.slots.index(slot)] = self.new_slot()

    def chunk_done(self, slot) -> bool:
        """Book a finished chunk of ``slot``; True if the slot's actor should be killed now."""
        now = time.monotonic()
        with self.lock:
            slot.in_flight -= 1
            sent = slot.sent.popleft() if slot.sent else now
            took = now - max(sent, slot.last_done)
            slot.last_done = now
            self.service_s = took if self.service_s is None else 0.8 * self.service_s + 0.2 * took
            if slot.retired and slot.in_flight == 0 and not self.terminated:
                self.retired.remove(slot)
                return True
            return False

    def handled(self) -> None:
        with self.cond:
            self.outstanding -= 1
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    # -- caller's thread -------------------------------------------------------------------------
    def terminate(self) -> None:
        with self.cond:
            if self.terminated:
                return
            self.terminated = True
            self.stopping = True
            for _func, _batch, result, index in self.backlog:
                err = RuntimeError("the pool was terminated before this work started")
                self.failed.append((result, index, err))
            self.backlog.clear()
            slots = list(self.slots) + list(self.retired)
            self.cond.notify_all()
        for slot in slots:
            _kill(slot.actor)

    def wait_all(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.outstanding == 0)


def _handle_results(d: _Dispatcher):
    """The result-handler thread: waits for the chunks in flight, books them, keeps the actors
    fed, fills in the results and runs the user's callbacks one at a time.  Ends once stopped
    and nothing is outstanding."""
    while True:
        with d.cond:
            d.cond.wait_for(lambda: d.in_flight or d.failed or (d.stopping and d.outstanding == 0))
            if not d.in_flight and not d.failed:
                return
            refs = list(d.in_flight)
            failed = list(d.failed)
            d.failed.clear()
        for result, index, error in failed:
            _deliver(d, result, index, None, error)
        if not refs:
            continue
        if not luminary.is_initialized():
            return  # the cluster was shut down under a pool that was never terminated
        try:
            ready, _ = luminary.wait(refs, num_returns=1, timeout=_POLL_S)
            if ready and len(refs) > 1:
                ready, _ = luminary.wait(refs, num_returns=len(refs), timeout=0)
        except Exception:  # noqa: BLE001 - the cluster went away
            return
        for ref in ready:
            with d.lock:
                slot, result, index = d.in_flight.pop(ref)
            try:
                items, error = luminary.get(ref), None
            except BaseException as e:  # noqa: BLE001 - the whole chunk failed (actor died, ...)
                items, error = None, e
            if d.chunk_done(slot):
                _kill(slot.actor)
            d.dispatch()
            _deliver(d, result, index, items, error)


def _deliver(d, result, index, items, error):
    try:
        if error is not None:
            result._set_chunk_error(index, error)
        else:
            result._set_chunk(index, items)
    finally:
        d.handled()


def _kill(actor):
    try:
        luminary.kill(actor)
    except Exception:  # noqa: BLE001 - already gone
        pass


class Pool:
    """A pool of Luminary actors with the standard library's ``multiprocessing.Pool`` API.

    Args:
        processes: the number of actors; default: the cluster's CPUs.  Initializes Luminary
            (with ``num_cpus=processes``) if it is not initialized.
        initializer, initargs: ``initializer(*initargs)`` runs in each actor when it starts.
        maxtasksperchild: replace an actor after it has run this many chunks.
        context: accepted for compatibility and ignored.
        ray_address: the cluster to initialize Luminary with, when it is not initialized.
        ray_remote_args: options for the actors (``num_cpus`` defaults to 0, as in Ray:
            a pool process holds no CPU while idle).

    Chunks are handed out as actors become free (long chunks one per actor, short ones a few at
    a time), so a slow item never holds up work another actor could do.
    """

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable] = None,
                 initargs: Iterable = (), maxtasksperchild: Optional[int] = None,
                 context: Any = None, ray_address: Optional[str] = None,
                 ray_remote_args: Optional[Dict[str, Any]] = None):
        self._state = _TERMINATE  # until started
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int)
                                             or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = self._init_luminary(processes, ray_address)
        options = {"num_cpus": 0}
        options.update(ray_remote_args or {})
        actor_cls = luminary.remote(_PoolActor).options(**options)
        self._d = _Dispatcher(actor_cls, initializer, tuple(initargs or ()), self._processes,
                              maxtasksperchild)
        self._handler = threading.Thread(target=_handle_results, args=(self._d,),
                                         name="luminary-pool-results", daemon=True)
        self._handler.start()
        self._state = _RUN
        try:
            # fail here if an initializer raises or an actor cannot start
            luminary.get([s.actor.ping.remote() for s in self._d.slots])
        except BaseException:
            self.terminate()
            raise

    @staticmethod
    def _init_luminary(processes, address):
        if not luminary.is_initialized():
            if address is None:
                luminary.init(num_cpus=processes)
            elif address == "local":
                luminary.init(address="local", num_cpus=processes)
            else:
                luminary.init(address=address)
        cpus = int(luminary.cluster_resources().get("CPU", 0))
        if processes is None:
            processes = max(cpus, 1)
        if cpus < processes:
            raise ValueError(f"Tried to start a pool with {processes} processes on an existing "
                             f"cluster, but there are only {cpus} CPUs in the cluster.")
        return processes

    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _check_alive(self):
        # closed pools still finish the imap iterators started before close()
        if self._state == _TERMINATE:
            raise ValueError("Pool not running")

    def _submit(self, func, batch, result, index) -> None:
        self._d.submit(func, batch, result, index)

    def _chunks(self, func, iterable, chunksize, unpack, callback, error_callback):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            if extra:
                chunksize += 1
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        items = iter(iterable)
        batches = []
        while chunksize:
            chunk = list(itertools.islice(items, chunksize))
            if not chunk:
                break
            batches.append([(tuple(a) if unpack else (a,), {}) for a in chunk])
        result = AsyncResult(len(batches), False, callback, error_callback)
        for i, batch in enumerate(batches):
            self._submit(func, batch, result, i)
        return result

    # ------------------------------------------------------------- apply
    def apply(self, func: Callable, args: tuple = (), kwds: Optional[dict] = None, *,
              kwargs: Optional[dict] = None):
        """``func(*args, **kwds)`` in a pool actor; blocks until the result is ready."""
        return self.apply_async(func, args, kwds, kwargs=kwargs).get()

    def apply_async(self, func: Callable, args: tuple = (), kwds: Optional[dict] = None,
                    callback: Optional[Callable] = None,
                    error_callback: Optional[Callable] = None, *,
                    kwargs: Optional[dict] = None) -> AsyncResult:
        """Start ``func(*args, **kwds)`` in a pool actor; returns an ``AsyncResult``.
        (``kwargs=`` is accepted as an alias of ``kwds=``, as Ray's pool spells it.)"""
        self._check_running()
        kw = dict(kwds or {})
        kw.update(kwargs or {})
        result = AsyncResult(1, True, callback, error_callback)
        self._submit(func, [(tuple(args or ()), kw)], result, 0)
        return result

    # --------------------------------------------------------------- map
    def map(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None) -> list:
        """``list(map(func, iterable))`` computed by the pool, in order."""
        return self._chunks(func, iterable, chunksize, False, None, None).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                  callback: Optional[Callable] = None,
                  error_callback: Optional[Callable] = None) -> AsyncResult:
        """Asynchronous ``map``; returns an ``AsyncResult`` whose value is the list."""
        return self._chunks(func, iterable, chunksize, False, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None) -> list:
        """Like ``map`` but each item is an argument tuple: ``func(*item)``."""
        return self._chunks(func, iterable, chunksize, True, None, None).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                      callback: Optional[Callable] = None,
                      error_callback: Optional[Callable] = None) -> AsyncResult:
        """Asynchronous ``starmap``."""
        return self._chunks(func, iterable, chunksize, True, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """A lazy ``map``: an iterator over the results, in order."""
        self._check_running()
        return IMapIterator(self, func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable,
                       chunksize: int = 1) -> IMapIterator:
        """Like ``imap`` but the results come as they are ready."""
        self._check_running()
        return IMapIterator(self, func, iterable, chunksize, ordered=False)

    # --------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Accept no more work; ``join`` then waits for the submitted work and ends the actors."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self) -> None:
        """Kill the actors now; work not finished fails (its results raise)."""
        self._state = _TERMINATE
        d = getattr(self, "_d", None)
        if d is not None:
            d.terminate()

    def join(self) -> None:
        """Wait for the submitted work to finish and end the actors (after ``close`` or
        ``terminate``)."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        if self._state == _CLOSE:
            self._d.wait_all()
            self.terminate()
        self._handler.join(timeout=30)

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self):
        d = getattr(self, "_d", None)
        if d is not None:
            d.stop()  # let the handler thread end; the actors go with their handles

    def __repr__(self):
        return (f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} "
                f"pool_size={getattr(self, '_processes', '?')}>")
