"""One pushed call's life in the worker that runs it, as a small checked state machine.

    push_task ─▶ QUEUED ──claim (main thread, or the async actor's loop)──▶ RUNNING ──▶ FINISHED
                   │ cancel_task ─▶ CANCELLED (answered at once, never runs)
                   │ the worker blocked in get ─▶ BOUNCED (handed back to its owner)
                 RUNNING + cancel_task ─▶ cancel requested: SIGINT to the main thread, the
                                           coroutine cancelled (async actors), or the worker exits
                                           (force); the call still ends FINISHED with a
                                           "cancelled" reply

The I/O thread (cancel, bounce) and the thread running the call (claim, finish) race for each
call; every move happens under the call's lock and is checked against ``TRANSITIONS``, so
exactly one of "run it" and "answer it without running" ever wins.
"""
from __future__ import annotations

import enum
import threading
import time

from .owner_records import members


# One lock for every call's state: each critical section is a few bytecodes and none nests, so
# sharing it costs nothing measurable and saves a lock allocation per call.
_LOCK = threading.Lock()


class ExecState(enum.IntEnum):
    QUEUED = 0
    RUNNING = 1
    FINISHED = 2
    CANCELLED = 3
    BOUNCED = 4


E = members(ExecState)     # (fast member reads, see owner_records.members)
TRANSITIONS = {
    E.QUEUED: {E.RUNNING, E.CANCELLED, E.BOUNCED},
    E.RUNNING: {E.FINISHED},
    E.FINISHED: set(),
    E.CANCELLED: set(),
    E.BOUNCED: set(),
}


class ExecTask:
    __slots__ = ("spec", "conn", "rid", "lock", "state", "cancel_requested", "answered", "afut", "thread",
                 "timed_out", "started", "told")

    def __init__(self, spec, conn, rid):
        self.spec = spec
        self.conn = conn
        self.rid = rid
        self.answered = False
        self.lock = _LOCK
        self.state = E.QUEUED
        self.cancel_requested = False
        self.afut = None       # the asyncio task running it (async actors)
        self.thread = None     # ident of the thread running it (threaded actors)
        self.timed_out = False # it ran past its timeout_s
        self.started = None    # monotonic time it started running (live stacks say for how long)
        self.told = False      # task events: a flush reported it running (worker/events.py)

    def _move(self, state):
        assert state in TRANSITIONS[self.state], f"call {self.spec.get('name')}: {self.state.name} -> {state.name}"
        self.state = state

    def claim(self) -> bool:
        """The running side takes the call; False if it was cancelled or bounced first."""
        with self.lock:
            if self.state != E.QUEUED:
                return False
            self._move(E.RUNNING)
            self.started = time.monotonic()
            return True

    def finish(self):
        with self.lock:
            self._move(E.FINISHED)

    def take_answer(self) -> bool:
        """True for the one caller (of any thread) that gets to send this call's answer."""
        with self.lock:
            if self.answered:
                return False
            self.answered = True
            return True

    def cancel(self):
        """From the I/O thread.  Returns "answer" (it never ran: reply cancelled now),
        "interrupt" (it runs: stop it), or None (already over)."""
        with self.lock:
            if self.state == E.QUEUED:
                self._move(E.CANCELLED)
                return "answer"
            if self.state != E.RUNNING:
                return None
            self.cancel_requested = True
            return "interrupt"

    def time_out(self) -> bool:
        """From the I/O thread when its timeout_s passed: True if it is still running."""
        with self.lock:
            if self.state != E.RUNNING:
                return False
            self.timed_out = True
            return True

    def bounce(self) -> bool:
        """From the I/O thread while the worker blocks: hand a call that has not started back."""
        with self.lock:
            if self.state != E.QUEUED:
                return False
            self._move(E.BOUNCED)
            return True
