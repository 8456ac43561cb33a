"""The stored objects a process has mapped, so that reading one again costs no node-manager trip.

    get(oid) ── mapped here? ── yes ──▶ the same read-only mmap (no store_get, no thread hop)
                                no  ──▶ caller asks the node manager (store_get pins it), add()

A mapping pins its object in the node's store for as long as the mmap object lives: every view
handed to user code (numpy arrays, memoryviews) keeps it alive, and its finalizer queues one
``store_release``.  Besides the user's views, ``recent`` holds the most recently read objects
for ``RECENT_S`` after their last read, so a loop that gets the same object and drops the
result (or a worker handed the same large argument call after call) maps it once.  What recent
holds is bounded (count, bytes, a share of the store) because a pinned object cannot be spilled;
``drop_recent`` lets go of all of it at once when the store is full.  An object its owner frees
is forgotten at once (``forget``), so it is never served from here afterwards.

Any thread may call get/add/forget; releases are sent from the I/O thread (``send_releases``).
"""
from __future__ import annotations

import collections
import threading
import time
import weakref

RECENT_S = 1.0          # how long a read object stays mapped after its last read
RECENT_MAX = 16         # at most this many objects are kept for reuse
RECENT_SHARE = 16       # and at most 1/RECENT_SHARE of the store in all (each one too)


class MappedObjects:
    def __init__(self, capacity, post, call_later, send_releases):
        self.budget = capacity // RECENT_SHARE
        self._post = post                    # run on the I/O thread, from any thread
        self._call_later = call_later        # (I/O thread) the event loop's call_later
        self._send_releases = send_releases  # (I/O thread) tell the node manager: [oid, ...]
        self._live: dict[bytes, weakref.ref] = {}       # oid -> the mmap while anything holds it
        self._recent = collections.OrderedDict()        # oid -> (mmap, last read, size), oldest first
        self._lock = threading.Lock()
        self._timer = False
        self._releases = collections.deque()
        self._release_posted = False
        self.closed = False

    def get(self, oid):
        """The mmap of ``oid`` if this process has it mapped, else None."""
        wr = self._live.get(oid)
        if wr is None:
            return None
        mm = wr()
        if mm is not None and oid in self._recent:
            with self._lock:
                rec = self._recent.get(oid)
                if rec is not None:
                    self._recent[oid] = (mm, time.monotonic(), rec[2])
                    self._recent.move_to_end(oid)
        return mm

    def add(self, oid, mm, size):
        """A fresh mapping of ``oid`` (pinned once by the node manager for us)."""
        wr = weakref.ref(mm)
        weakref.finalize(mm, self._released, oid, wr)
        self._live[oid] = wr
        if size > self.budget:
            return
        with self._lock:
            recent = self._recent
            recent[oid] = (mm, time.monotonic(), size)
            recent.move_to_end(oid)
            total = sum(v[2] for v in recent.values())
            while len(recent) > RECENT_MAX or total > self.budget:
                total -= recent.popitem(last=False)[1][2]
            start = not self._timer
            self._timer = True
        if start:
            self._post(lambda: self._call_later(RECENT_S, self._expire))

    def forget(self, oid):
        """``oid`` was freed (or let go of): never serve it from here again."""
        with self._lock:
            self._recent.pop(oid, None)
            self._live.pop(oid, None)

    def drop_recent(self):
        """Let go of every mapping kept only for reuse (the store needs the space).  Returns
        whether there was any."""
        with self._lock:
            dropped = list(self._recent.values())
            self._recent.clear()
        return bool(dropped)        # the mmaps die here unless user code still holds views

    def recent_oids(self):
        with self._lock:
            return list(self._recent)

    def _expire(self):
        cutoff = time.monotonic() - RECENT_S
        expired = []
        with self._lock:
            recent = self._recent
            while recent and next(iter(recent.values()))[1] <= cutoff:
                expired.append(recent.popitem(last=False))
            again = bool(recent)
            self._timer = again
        del expired                 # unmapped (and released) outside the lock
        if again and not self.closed:
            self._call_later(RECENT_S, self._expire)

    # --- pin releases -----------------------------------------------------------------------------
    def _released(self, oid, wr):
        """The mmap of ``oid`` was garbage collected (any thread): release its pin."""
        if self.closed:
            return
        if self._live.get(oid) is wr:
            self._live.pop(oid, None)
        self._releases.append(oid)
        if not self._release_posted:
            self._release_posted = True
            self._post(self._flush_releases)

    def _flush_releases(self):
        self._release_posted = False        # before draining: a later append posts again
        q = self._releases
        rel = []
        while q:
            rel.append(q.popleft())
        if rel:
            self._send_releases(rel)
