"""The one I/O thread of a process.

User code runs on the main thread; every socket is owned by this thread's event loop.
``post(fn, *args)`` is the only entry point safe from any thread: it appends to a deque and wakes
the loop once per batch (not once per item), because a thread hand-off costs as much as a message
to another process.  Reference counting has two cheaper doors: ``add_incref``/``add_increfs``
(applied before the next batch of posted callbacks) and ``add_decref`` (queued in order with the
posted callbacks; a run of consecutive decrements reaches ``decref_handler`` as one list; they
wake the loop at most once per DECREF_DELAY_S).
"""
from __future__ import annotations

import asyncio
import collections
import threading

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None


# A run of consecutive decrements is handed over in lists of at most this many: one list per run
# saves a call per ref, but a list that keeps growing while the main thread keeps dropping refs
# would be walked by every young-generation garbage collection.
DECREF_RUN_MAX = 4096
# A decrement wakes the loop at most once in this many seconds (a timer drains them): a thread
# that drops one ref per call (``get(a.f.remote())`` in a loop) would otherwise pay a wake-up,
# and give the loop thread one, on every call.  Anything else posted drains them at once.
DECREF_DELAY_S = 0.005


def new_event_loop():
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


class IOThread:
    def __init__(self, name="luminary-io"):
        self.loop = new_event_loop()
        self._queue = collections.deque()
        self._increfs = collections.deque()
        self.incref_handler = None   # fn(items): items are (oid, owner) or lists of ObjectRefs
        self.decref_handler = None   # fn([oid, ...]), in order with the posted callbacks
        self._wake_pending = False
        self._decref_timer = False      # a drain of decrements is due within DECREF_DELAY_S
        self._lock = threading.Lock()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._started.wait()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()
        try:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        except Exception:
            pass
        self.loop.close()

    def in_loop(self) -> bool:
        return threading.current_thread() is self.thread

    def post(self, fn, *args):
        """Run ``fn(*args)`` on the loop thread soon (FIFO).  Safe from any thread."""
        self._queue.append((fn, args))
        if not self._wake_pending:
            self._wake()

    def add_incref(self, item):
        """Queue a reference increment; increments are applied before the next batch of posted
        callbacks (applying an increment early only keeps an object alive longer, never less)."""
        self._increfs.append(item)
        if not self._wake_pending:
            self._wake()

    def add_increfs(self, refs):
        """Queue one increment for each ObjectRef in ``refs`` (a batch: one item, one wake-up)."""
        self._increfs.append(refs)
        if not self._wake_pending:
            self._wake()

    def add_decref(self, oid):
        """Queue a reference decrement, in order with ``post``ed callbacks (a decrement must
        never overtake the callback that takes its own count, such as a task submission)."""
        self._queue.append(oid)         # a bare oid: no tuple allocated per decrement
        if not self._wake_pending and not self._decref_timer:
            self._arm_decrefs()

    def _arm_decrefs(self):
        """Drain within DECREF_DELAY_S: one wake-up of the loop per window, not per decrement."""
        with self._lock:
            if self._wake_pending or self._decref_timer:
                return
            self._decref_timer = True
        try:
            if self.in_loop():
                self.loop.call_later(DECREF_DELAY_S, self._decref_drain)
            else:
                self.loop.call_soon_threadsafe(self.loop.call_later, DECREF_DELAY_S, self._decref_drain)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _decref_drain(self):
        with self._lock:
            self._decref_timer = False
        self._run_items()

    def add_incref_quiet(self, item):
        """``add_incref`` without waking the loop: applied at the next drain or ``apply_increfs``
        (for a caller that makes sure one comes before the count matters)."""
        self._increfs.append(item)

    def apply_increfs(self):
        """(loop thread) Apply the increments queued now (early is always safe: it only keeps
        an object alive longer)."""
        if self._increfs:
            self._apply_increfs()

    def _wake(self):
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _drain(self):
        with self._lock:
            self._wake_pending = False
        self._run_items()

    def _run_items(self):
        if self._increfs:
            self._apply_increfs()
        q = self._queue
        while q:
            item = q.popleft()
            if type(item) is not tuple:     # a bare oid: posted callbacks are (fn, args) tuples
                run = [item]                # the run of consecutive decrements, as one list
                more, popleft = run.append, q.popleft
                while q and type(q[0]) is not tuple and len(run) < DECREF_RUN_MAX:
                    more(popleft())
                fn, args = self.decref_handler, (run,)
                if self._increfs:
                    # the increments of these refs were queued before their decrements, maybe
                    # after this batch began: apply them first, so no count dips to zero early
                    self._apply_increfs()
            else:
                fn, args = item
                if self._increfs:
                    # increments queued while this batch ran come before any later callback: a
                    # callback may rely on a ref created before it was posted (set_contains on a
                    # just-put object, for one) being counted already
                    self._apply_increfs()
            try:
                fn(*args)
            except Exception:
                import logging
                logging.getLogger(__name__).exception("posted callback failed")

    def _apply_increfs(self):
        inc = self._increfs
        items = []
        while inc:
            items.append(inc.popleft())
        try:
            self.incref_handler(items)
        except Exception:
            import logging
            logging.getLogger(__name__).exception("reference increments failed")

    def run_coro(self, coro, timeout=None):
        """Run a coroutine on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout=5.0):
        if self.thread.is_alive():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:
                pass
            if not self.in_loop():
                self.thread.join(timeout)
