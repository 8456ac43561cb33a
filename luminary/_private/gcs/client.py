"""A connection to the GCS that outlives the GCS process: node managers, drivers and workers hold
one of these instead of a bare ``protocol.Connection``.

    connected ──connection lost──▶ reconnecting (backoff 50 ms .. 1 s) ──new connection──▶ hooks ▶ connected
                                        │                                     (re-register, re-own)
                                        └─ window (LUMINARY_GCS_RECONNECT_S, default 60 s) passed ─▶ failed

While reconnecting, requests wait in order and are sent on the new connection once the hooks
ran; requests that were in flight when the connection dropped are sent again (every GCS request
is idempotent: registrations carry their own ids).  Notifications are dropped (logs, nothing a
caller waits for).  When the window ends, every waiting request fails with
``GcsUnavailableError`` naming the GCS and the outage, and so does every later one.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from ...exceptions import RaySystemError
from ..rpc import protocol

logger = logging.getLogger(__name__)


def reconnect_window() -> float:
    return float(os.environ.get("LUMINARY_GCS_RECONNECT_S", "60"))


class GcsUnavailableError(RaySystemError):
    """The GCS (the head node's cluster state service) could not be reached within the reconnect
    window (``LUMINARY_GCS_RECONNECT_S``)."""


class GcsClient:
    def __init__(self, address, secret, handlers, name="gcs", window=None):
        self.address = address
        self.secret = secret
        self.handlers = handlers
        self.name = name
        self.window = reconnect_window() if window is None else window
        self.conn: protocol.Connection | None = None
        self.closed = False            # given up (window passed) or closed by its holder
        self.failure: Exception | None = None
        self.outage_since: float | None = None
        self.reconnect_hooks = []      # async fn(conn): run on each new connection before queued requests
        self.lost_callbacks = []       # fn(old_conn): the connection dropped (reconnecting now)
        self.close_callbacks = []      # fn(self): gave up for good
        self._queue = []               # (method, payload, callback) waiting for a connection
        self.reconnects = 0
        self._task = None

    async def connect(self, wait_s=0.0):
        """The first connection; refused ones are tried again for ``wait_s`` (a node joining while
        the GCS restarts).  A wrong secret is never retried."""
        deadline = time.monotonic() + wait_s
        delay = 0.05
        while True:
            try:
                conn = await protocol.connect(self.address, self.secret, self.handlers, name=self.name)
                break
            except (OSError, asyncio.TimeoutError, protocol.ConnectionLost) as e:
                if isinstance(e, protocol.AuthenticationError) or time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._attach(conn)
        return self

    @property
    def connected(self):
        return self.conn is not None and not self.conn.closed

    def _attach(self, conn):
        conn.state["gcs"] = True
        conn.close_callbacks.append(self._lost)
        self.conn = conn

    def _lost(self, conn):
        if self.closed or conn is not self.conn:
            return     # closed by us, or a connection whose re-registration failed (the loop goes on)
        self.conn = None
        self.outage_since = time.monotonic()
        logger.warning("lost the connection to the GCS at %s; reconnecting for up to %.0fs", self.address, self.window)
        for cb in list(self.lost_callbacks):
            try:
                cb(conn)
            except Exception:   # noqa: BLE001
                logger.exception("GCS lost callback failed")
        self._task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self):
        delay = 0.05
        deadline = self.outage_since + self.window
        last = None
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                conn = await protocol.connect(self.address, self.secret, self.handlers, name=self.name,
                                              timeout=min(5.0, max(left, 0.1)))
            except Exception as e:   # noqa: BLE001 - refused, timed out, closed during handshake
                last = e
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, 1.0)
                continue
            conn.state["gcs"] = True
            try:
                for hook in list(self.reconnect_hooks):
                    await hook(conn)     # requests meanwhile still queue: self.conn is None
            except Exception as e:   # noqa: BLE001 - the new GCS died again, or refused us
                last = e
                logger.warning("re-registering with the GCS failed: %s", e)
                if not conn.closed:
                    conn.close()
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                continue
            if conn.closed:
                continue
            self._attach(conn)
            took = time.monotonic() - self.outage_since
            self.outage_since = None
            self.reconnects += 1
            logger.warning("reconnected to the GCS at %s after %.2fs", self.address, took)
            queued, self._queue = self._queue, []
            for method, payload, cb in queued:
                self.request(method, payload, cb)
            return
        if self.closed:
            return
        self._give_up(GcsUnavailableError(
            f"The GCS at {self.address} has been unreachable for {self.window:g}s (the head node's GCS died "
            f"and did not come back; last error: {type(last).__name__ if last else 'none'}: {last}). Calls that "
            "need the GCS (actor creation, get_actor, KV, placement groups) fail; restart the cluster, or raise "
            "LUMINARY_GCS_RECONNECT_S to wait longer."))

    def _give_up(self, err):
        self.closed = True
        self.failure = err
        logger.error("%s", err)
        queued, self._queue = self._queue, []
        for _, _, cb in queued:
            _safe(cb, False, err)
        for cb in list(self.close_callbacks):
            try:
                cb(self)
            except Exception:   # noqa: BLE001
                logger.exception("GCS close callback failed")

    # --- the Connection interface its holders use ------------------------------------------------
    def request(self, method, payload, callback):
        if self.closed:
            callback(False, self.failure or GcsUnavailableError(f"the connection to the GCS at {self.address} is closed"))
            return
        conn = self.conn
        if conn is None or conn.closed:
            self._queue.append((method, payload, callback))
            return

        def done(ok, res):
            if not ok and isinstance(res, protocol.ConnectionLost) and not self.closed:
                # in flight when the GCS went away: send it again once it is back
                if self.conn is conn or self.conn is None:
                    self._queue.append((method, payload, callback))
                else:
                    self.request(method, payload, callback)
                return
            callback(ok, res)
        conn.request(method, payload, done)

    def notify(self, method, payload=None):
        if self.connected:
            self.conn.notify(method, payload)

    def call(self, method, payload=None):
        return protocol.call_with(self.request, asyncio.get_event_loop(), method, payload)

    def close(self):
        self.closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.conn is not None:
            self.conn.close()


def _safe(cb, ok, value):
    try:
        cb(ok, value)
    except Exception:   # noqa: BLE001
        logger.exception("GCS response callback failed")
