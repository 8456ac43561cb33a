"""A process's table of object values it owns or has fetched, safe from any thread.

Each entry is PENDING (no value yet) or holds ``(kind, data)``:
    "v"  an inline value: pickle bytes (or [pickle, buffers])
    "e"  an error: a pickled exception, raised by get
    "s"  the value lives in a node's shared-memory store: data is the node id
The main thread blocks in ``wait``; the I/O thread fills values in with ``put``.  Callbacks
registered with ``on_ready`` run on the thread that fills the value in (the I/O thread).
"""
from __future__ import annotations

import threading
import time


class Waiter:
    __slots__ = ("lock", "remaining", "wake_on_error")

    def __init__(self, remaining, wake_on_error=False):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.remaining = remaining
        self.wake_on_error = wake_on_error


class MemoryStore:
    def __init__(self):
        self._lock = threading.Lock()
        self.values: dict[bytes, tuple] = {}
        self._waiters: dict[bytes, list] = {}
        self._callbacks: dict[bytes, list] = {}

    def get(self, oid):
        return self.values.get(oid)

    def put(self, oid, kind, data):
        with self._lock:
            if oid in self.values:
                return False
            self.values[oid] = (kind, data)
            waiters = self._waiters.pop(oid, None)
            callbacks = self._callbacks.pop(oid, None)
            wake = []
            if waiters:
                for w in waiters:
                    w.remaining -= 1
                    if w.remaining == 0 or (kind == "e" and w.wake_on_error and w.remaining > 0):
                        if w.remaining > 0:
                            w.remaining = 0     # get() raises this error at once (as Ray does)
                        wake.append(w)
        for w in wake:
            w.lock.release()
        if callbacks:
            for cb in callbacks:
                cb(oid, kind, data)
        return True

    def replace(self, oid, kind, data):
        """Overwrite a value (a retried generator item or a restored location)."""
        with self._lock:
            self.values[oid] = (kind, data)

    def delete(self, oid):
        with self._lock:
            self.values.pop(oid, None)

    def on_ready(self, oid, cb):
        """Run ``cb(oid, kind, data)`` when the value arrives (at once if it is here)."""
        with self._lock:
            v = self.values.get(oid)
            if v is None:
                self._callbacks.setdefault(oid, []).append(cb)
                return
        cb(oid, v[0], v[1])

    def wait(self, oids, num, timeout, wake_on_error=False):
        """Block until ``num`` of ``oids`` have values or ``timeout`` passes; returns True if met.
        With ``wake_on_error`` an error value among ``oids`` ends the wait at once (True)."""
        with self._lock:
            values = self.values
            missing = [o for o in oids if o not in values]
            have = len(oids) - len(missing)
            if have >= num:
                return True
            if wake_on_error and any(values[o][0] == "e" for o in oids if o in values):
                return True
            w = Waiter(num - have, wake_on_error)
            for o in missing:
                self._waiters.setdefault(o, []).append(w)
        ok = w.lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
        if len(missing) > 1 or not ok:
            # take this waiter off the objects it no longer waits for, so later puts do not
            # walk (and decrement) stale waiters
            with self._lock:
                for o in missing:
                    lst = self._waiters.get(o)
                    if lst:
                        try:
                            lst.remove(w)
                        except ValueError:
                            continue
                        if not lst:
                            del self._waiters[o]
                if not ok and w.remaining <= 0:
                    return True
        return ok

    def wake_waiters(self, oids):
        """End the waits on ``oids`` that have no value yet (a deadlock was found): their ``wait``
        returns True, so the waiter must look at why before it reads a value."""
        wake = []
        with self._lock:
            for o in oids:
                for w in self._waiters.get(o, ()):
                    if w.remaining > 0:
                        w.remaining = 0     # a later put does not release it again
                        wake.append(w)
        for w in wake:
            w.lock.release()

    def wait_all(self, oids, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.wait(oids, len(oids), None if deadline is None else deadline - time.monotonic())
