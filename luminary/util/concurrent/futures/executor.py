"""LuminaryExecutor: ``submit`` and ``map`` run each call (or chunk of calls) as one task.

A future stays pending until its task's result arrives (there is no separate "running" state:
the task may be queued or running in the cluster).  ``cancel()`` on a pending future cancels the
task with ``luminary.cancel`` (a queued task never runs, a running one is interrupted) and
returns True; on a finished future it returns False.  With ``max_workers`` at most that many
tasks are in the cluster at once, the rest wait in the executor; without it, every call is
submitted at once and the cluster's CPUs bound the parallelism.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import threading
import time

import luminary
from luminary._private.worker.options import Bound
from luminary._private.worker.remote_function import RemoteFunction


def _call(fn, /, *args, **kwargs):
    return fn(*args, **kwargs)


def _call_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


class LuminaryFuture(cf.Future):
    """A ``concurrent.futures.Future`` of one task; ``cancel()`` cancels the task."""

    def __init__(self, executor):
        super().__init__()
        self._executor = executor
        self._ref = None

    def cancel(self):
        if not super().cancel():
            return False
        self.set_running_or_notify_cancel()  # CANCELLED_AND_NOTIFIED: wait() and as_completed() see it
        self._executor._cancelled(self)
        return True


class LuminaryExecutor(cf.Executor):
    """A ``concurrent.futures.Executor`` that runs each submitted call as a Luminary task.

    ``max_workers`` (optional) limits the tasks in flight; other keywords are task options
    (``num_cpus``, ``resources``, ``max_retries``, ...) applied to every call."""

    def __init__(self, max_workers=None, **task_options):
        if max_workers is not None and (not isinstance(max_workers, int) or isinstance(max_workers, bool)
                                        or max_workers <= 0):
            raise ValueError(f"max_workers must be a positive int or None (no limit), got {max_workers!r}.")
        self._max_workers = max_workers
        self._call = luminary.remote(_call)
        self._chunk = luminary.remote(_call_chunk)
        if task_options:  # validated here, so a bad option fails at construction
            self._call = self._call.options(**task_options)
            self._chunk = self._chunk.options(**task_options)
        self._lock = threading.Lock()
        self._waiting = collections.deque()  # (future, submit) beyond max_workers
        self._in_flight = 0
        self._live = set()  # futures not done yet
        self._shutdown = False

    # ----- the Executor API -----------------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` as a task; returns a future of its result.  ``fn`` may
        also be a remote function (its own options apply)."""
        if isinstance(fn, (RemoteFunction, Bound)):
            remote_fn = fn
        elif callable(fn):
            remote_fn = None
        else:
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__}.")

        def launch():
            if remote_fn is not None:
                return remote_fn.remote(*args, **kwargs)
            return self._call.remote(fn, *args, **kwargs)
        return self._enqueue(launch)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Like ``Executor.map``: results in input order, all calls submitted at once; with
        ``chunksize`` > 1 each task runs that many calls.  ``timeout`` (seconds, from this call)
        raises ``TimeoutError`` for a result not ready in time."""
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}.")
        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__}.")
        if chunksize > 1 and isinstance(fn, (RemoteFunction, Bound)):
            raise ValueError("map() with chunksize > 1 runs several calls in one task, so it needs a "
                             "plain function, not a remote function; pass the undecorated function.")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in calls]
        else:
            futures = []
            while True:
                chunk = list(itertools.islice(calls, chunksize))
                if not chunk:
                    break
                futures.append(self._enqueue(lambda chunk=chunk: self._chunk.remote(fn, chunk)))
        return self._results(futures, deadline, chunksize > 1)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No new calls after this; ``cancel_futures`` cancels every pending one; ``wait`` waits
        for the others to finish."""
        with self._lock:
            self._shutdown = True
            live = list(self._live)
        if cancel_futures:
            for f in live:
                f.cancel()
        if wait and live:
            cf.wait(live)

    # ----- internals --------------------------------------------------------------------------
    @staticmethod
    def _results(futures, deadline, chunked):
        futures.reverse()  # pop from the end: results are freed as they are yielded
        try:
            while futures:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
                value = futures[-1].result(remaining)
                futures.pop()
                if chunked:
                    yield from value
                else:
                    yield value
        finally:
            for f in futures:  # the caller stopped early or a call failed: cancel the rest
                f.cancel()

    def _enqueue(self, launch):
        future = LuminaryFuture(self)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._live.add(future)
            start = self._max_workers is None or self._in_flight < self._max_workers
            if start:
                self._in_flight += 1
            else:
                self._waiting.append((future, launch))
        if start:
            self._launch(future, launch)
        return future

    def _launch(self, future, launch):
        try:
            ref = launch()
        except BaseException as e:  # noqa: BLE001 - a submission error belongs to this future
            self._finish(future, exception=e)
            return
        future._ref = ref
        if future.cancelled():  # cancelled between dequeue and submission
            luminary.cancel(ref)
        ref.future().add_done_callback(lambda f: self._finish(future, source=f))

    def _finish(self, future, source=None, exception=None):
        if not future.cancelled() and future.set_running_or_notify_cancel():
            if source is not None:
                exception = source.exception()
            if exception is not None:
                future.set_exception(exception)
            else:
                future.set_result(source.result())
        self._release(future)

    def _cancelled(self, future):
        with self._lock:
            queued = any(f is future for f, _ in self._waiting)
            if queued:
                self._waiting = collections.deque((f, l) for f, l in self._waiting if f is not future)
                self._live.discard(future)
        if not queued and future._ref is not None:
            try:
                luminary.cancel(future._ref)
            except Exception:  # the task already finished: nothing to stop
                pass

    def _release(self, future):
        nxt = None
        with self._lock:
            if future not in self._live:
                return
            self._live.discard(future)
            self._in_flight -= 1
            if self._waiting:
                nxt = self._waiting.popleft()
                self._in_flight += 1
        if nxt is not None:
            self._launch(*nxt)
