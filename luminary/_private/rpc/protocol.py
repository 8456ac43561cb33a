"""Authenticated msgpack connections over Unix or TCP sockets.

    peer A                                        peer B (listening)
      │ ◀──── MAGIC + server nonce + mode ──────────│   fixed-size bytes only:
      │ ───── MAGIC + client nonce + mode ─────────▶│   nothing is parsed, let alone
      │        + HMAC(secret, "client" + transcript)│   unpickled, before both sides
      │ ◀──── HMAC(secret, "server" + transcript) ──│   proved they hold the secret
      │ ═════ msgpack frames, both directions ═════ │   TCP: inside AES-256-GCM records
                                                        keyed from the secret and the
                                                        transcript (``channel.py``)

On TCP every byte after the handshake travels in records sealed with per-connection,
per-direction keys, so a relayed handshake, an injected, altered, replayed or reordered frame
fails the connection; Unix sockets (in a 0700 directory) carry plain frames.  See channel.py.
After the handshake every message is one msgpack array:
    [0, request_id, method, payload]    request, answered by exactly one response
    [1, request_id, ok, payload]        response (when not ok, the payload is a structured error:
                                        {type, message, fields, tb}; see messages.error_to_wire)
    [2, method, payload]                notification, never answered
    [4, request_id, nbytes] + raw bytes a response carrying bulk data (object chunks): the bytes
                                        follow the header unframed and land directly in the
                                        buffer the requester registered (``request_into``)
Every message is listed in ``messages.TABLE`` (name, kind, senders, handler roles, payload
schema).  A connection dispatches through a ``messages.Handlers`` table (built per role, and
restricted to what the peer's roles may send): a method that is unknown, not handled here, not
accepted from this peer, of the wrong kind, or whose payload fails its schema fails only that
request (an error response naming the message and the field; one log line per method at most),
and a notification of that sort is dropped; the connection carries on.
Writes are batched: every send appends to a buffer flushed once per event-loop iteration, so a
burst of messages costs one system call.  Everything here runs on the owning event loop's thread.
"""
from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import os
import socket
import threading

import msgpack

from . import channel, messages
from .channel import MAGIC, DENY, ChannelError  # noqa: F401 - part of this module's interface
from .messages import BadMessage, RemoteError  # noqa: F401 - part of this module's interface

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

NONCE = channel.NONCE
REQ, RESP, NOTE, RAW = 0, 1, 2, 4
# largest single msgpack message accepted (inline objects are <= 100 KiB, object chunks travel as
# RAW frames); a larger one closes that connection alone
MAX_MESSAGE = int(os.environ.get("LUMINARY_MAX_MESSAGE_BYTES", str(512 << 20)))


class _Deferred:
    """Returned by a handler that will answer later with ``conn.reply(rid, ...)``."""

    def __repr__(self):
        return "DEFERRED"


DEFERRED = _Deferred()


class RawReply:
    """Returned by a handler to answer with bulk bytes (sent without copying into msgpack)."""
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


JOIN_MAX = 1 << 18    # queued messages up to this many bytes in all leave in one write


class ConnectionLost(ConnectionError):
    pass


class AuthenticationError(ConnectionError):
    pass


_LOGGED = set()          # methods whose bad messages were logged once already (bounded)


def _log_once(name, method, why):
    key = method if type(method) is str and len(_LOGGED) < 1024 else None
    if key is None and len(_LOGGED) >= 1024:
        return
    if key in _LOGGED:
        return
    _LOGGED.add(key)
    logger.warning("%s: refused %s (logged once per message): %s", name, method if key else "a message", why)


class Connection(asyncio.Protocol):
    """One side of an authenticated connection; created by ``connect`` or ``serve``."""

    def __init__(self, secret: bytes, handlers, server: bool, name: str = "", mode: int = channel.PLAIN,
                 guard=None):
        self.secret = secret
        self.mode = mode          # what this side asks for (channel.PLAIN on Unix sockets)
        self.guard = guard        # the listener's channel.Guard (server side)
        self._tx = self._rx = None   # channel.Sealer / Opener once a TCP handshake is done
        self._deadline = None
        if not isinstance(handlers, messages.Handlers):     # a plain {name: fn} (tools, tests)
            handlers = messages.TABLE.bind(handlers)
        self.handlers = handlers
        self.server = server
        self.name = name
        self.transport = None
        self.loop = asyncio.get_event_loop()
        self.ready = self.loop.create_future()
        self.closed = False
        self.close_callbacks = []
        self.state = {}          # per-connection data owned by whoever handles it
        self._stage = 0
        self._raw = b""
        self._nonce = os.urandom(NONCE)
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE, strict_map_key=False)
        self._next_id = 0
        self._thread_id = 1 << 40     # ids of requests sent by request_from_thread (never met by _next_id)
        self._pending = {}
        self._out = []
        self._flush_scheduled = False
        self._wlock = threading.Lock()   # every write to the socket (the loop's and reply_from_thread's)
        self._wfd = None          # our own dup of the socket, for reply_from_thread (never a reused number)
        self._head = None         # sealed bytes a reply_from_thread could not write: the loop writes them first
        self.peer = None
        self._sinks = {}          # request id -> writable memoryview for a RAW answer
        self._bulk = None         # [dest, received, total, callback] while raw bytes stream in

    # --- asyncio protocol -------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        try:
            self.peer = transport.get_extra_info("peername")
        except Exception:
            self.peer = None
        self._deadline = self.loop.call_later(channel.HANDSHAKE_TIMEOUT, self.abort_handshake,
                                              f"no handshake within {channel.HANDSHAKE_TIMEOUT:g} s")
        if self.server:
            if self.guard is not None:
                self.guard.admit(self)
            transport.write(MAGIC + self._nonce + bytes((self.mode,)))

    def abort_handshake(self, why):
        """Drop a peer that has not finished the handshake (deadline, or the listener is full)."""
        if self._stage >= 3 or self.closed:
            return
        self._refuse(why)
        self._fail_handshake(ConnectionLost(f"{self.name or self.peer}: {why}"))

    def _refuse(self, why):
        if self.guard is not None:
            self.guard.refused(self.peer, why)
        elif not self.server:
            logger.debug("%s: %s", self.name, why)

    def data_received(self, data):
        if self._stage < 3:
            self._handshake(data)
            return
        if self._rx is not None:
            self._records(memoryview(data))
            return
        self._plain_received(data)

    def _records(self, view):
        rx = self._rx
        try:
            while view and not self.closed:
                view, n = rx.take(view)
                if n < 0:
                    continue
                bulk = self._bulk
                if bulk is not None and rx.encrypt and n <= bulk[2] - bulk[1]:
                    have = bulk[1]          # a bulk payload: decrypt straight into its destination
                    rx.open_into(n, bulk[0][have:have + n])
                    bulk[1] = have + n
                    if have + n == bulk[2]:
                        self._finish_raw()
                else:
                    self._plain_received(rx.open(n))
        except ChannelError as e:
            self._violation(str(e))

    def _violation(self, why):
        """The authenticated stream broke a rule: close this connection (only this one)."""
        if self.closed:
            return
        logger.warning("%s: closing the connection to %s: %s", self.name, self.peer, why)
        self.closed = True
        self._out = []
        self.transport.abort()

    def _plain_received(self, data):
        if self._bulk is not None:
            data = self._take_raw(memoryview(data))
            if not data:
                return
            data = bytes(data)
        up = self._unpacker
        try:
            up.feed(data)
        except msgpack.BufferFull:
            self._violation(f"a message larger than {MAX_MESSAGE} bytes")
            return
        while not self.closed:
            try:
                msg = up.unpack()
            except msgpack.OutOfData:
                return
            if type(msg) is not list or len(msg) < 3:
                logger.warning("%s: ignored a malformed message (%s)", self.name, type(msg).__name__)
                continue
            if msg[0] == RAW:
                if len(msg) != 3 or not self._start_raw(msg[1], msg[2]):
                    return
                if self._bulk is not None:   # the rest arrives in later reads
                    return
            else:
                try:
                    self._dispatch(msg)
                except Exception:
                    # a message of the wrong shape fails alone; the connection and its other
                    # requests carry on
                    logger.exception("%s: could not handle a message %r", self.name, msg[:2])

    def _start_raw(self, rid, n):
        """Bulk bytes are accepted only in answer to a request that registered a destination of
        exactly that size (``request_into``); anything else closes the connection."""
        dest = self._sinks.get(rid)
        if dest is None or type(n) is not int or n != len(dest):
            self._violation(f"a bulk frame of {n!r} bytes that no request of that size awaits")
            return False
        del self._sinks[rid]
        cb = self._pending.pop(rid, None)
        self._bulk = [dest, 0, n, cb]
        got = self._unpacker.read_bytes(n)
        if got:
            self._take_raw(memoryview(got))
        elif n == 0:
            self._finish_raw()
        return True

    def _take_raw(self, view):
        dest, have, n, cb = self._bulk
        take = min(n - have, len(view))
        dest[have:have + take] = view[:take]
        self._bulk[1] = have + take
        if have + take == n:
            self._finish_raw()
        return view[take:]

    def _finish_raw(self):
        dest, have, n, cb = self._bulk
        self._bulk = None
        if cb is not None:
            cb(True, n)

    def connection_lost(self, exc):
        with self._wlock:
            self.closed = True
            if self._wfd is not None:
                os.close(self._wfd)
                self._wfd = None
        if self._deadline is not None:
            self._deadline.cancel()
        if self.guard is not None:
            self.guard.done(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionLost(f"connection to {self.name or self.peer} closed during handshake"))
            self.ready.exception()
        pending, self._pending = self._pending, {}
        err = ConnectionLost(f"connection {self.name} lost")
        bulk, self._bulk = self._bulk, None
        if bulk is not None and bulk[3] is not None:
            pending[-1] = bulk[3]
        for cb in pending.values():
            try:
                cb(False, err)
            except Exception:
                logger.exception("response callback failed")
        for cb in self.close_callbacks:
            try:
                cb(self)
            except Exception:
                logger.exception("close callback failed")

    # --- handshake -----------------------------------------------------------------------------
    def _handshake(self, data):
        self._raw += data
        if len(self._raw) >= 4 and self._stage == 0 and self._raw[:4] != MAGIC:
            if self.server:
                self._refuse("not a Luminary peer of this version")
                self.transport.close()
            else:
                self._fail_handshake(AuthenticationError(
                    f"{self.name}: the peer is not a Luminary node of this version "
                    f"(expected {MAGIC!r}, got {bytes(self._raw[:4])!r}); install the same Luminary version "
                    f"everywhere"))
            return
        if self.server:
            if len(self._raw) < channel.CLIENT_HELLO:
                return
            head, self._raw = self._raw[:channel.CLIENT_HELLO], self._raw[channel.CLIENT_HELLO:]
            nc, cmode, got = head[4:4 + NONCE], head[4 + NONCE], head[5 + NONCE:]
            t = channel.transcript(self._nonce, self.mode, nc, cmode)
            if cmode not in channel.MODES or not hmac.compare_digest(got, channel.proof(self.secret, b"client", t)):
                self._refuse("wrong cluster secret")
                self.transport.write(DENY)     # fixed bytes: tells an honest client why, leaks nothing
                self.transport.close()
                return
            self.transport.write(channel.proof(self.secret, b"server", t))
            self._become_ready(t, max(self.mode, cmode))
            return
        if self._stage == 0:
            if len(self._raw) < channel.SERVER_HELLO:
                return
            head, self._raw = self._raw[:channel.SERVER_HELLO], self._raw[channel.SERVER_HELLO:]
            if head[4 + NONCE] not in channel.MODES:
                self._fail_handshake(AuthenticationError(f"{self.name}: the peer asked for an unknown mode"))
                return
            self._t = channel.transcript(head[4:4 + NONCE], head[4 + NONCE], self._nonce, self.mode)
            self.transport.write(MAGIC + self._nonce + bytes((self.mode,)) +
                                 channel.proof(self.secret, b"client", self._t))
            self._stage = 1
        if len(self._raw) < channel.MAC:
            return
        got, self._raw = self._raw[:channel.MAC], self._raw[channel.MAC:]
        if got == DENY:
            self._fail_handshake(AuthenticationError(
                f"{self.name}: the peer refused this cluster secret (wrong secret file?)"))
        elif not hmac.compare_digest(got, channel.proof(self.secret, b"server", self._t)):
            self._fail_handshake(AuthenticationError(f"{self.name}: the peer does not hold this cluster's secret"))
        else:
            self._become_ready(self._t, max(self.mode, self._t[4 + NONCE]))

    def _fail_handshake(self, exc):
        if not self.ready.done():
            self.ready.set_exception(exc)
        self.transport.close()

    def _become_ready(self, t, mode):
        self._stage = 3
        if self._deadline is not None:
            self._deadline.cancel()
        if self.guard is not None:
            self.guard.done(self)
        if mode != channel.PLAIN:
            self._tx, self._rx = channel.derive(self.secret, t, mode, self.server)
        rest, self._raw = self._raw, b""
        if not self.ready.done():
            self.ready.set_result(self)
        if rest:
            self.data_received(rest)

    # --- messages ------------------------------------------------------------------------------
    def _dispatch(self, msg):
        kind = msg[0]
        if kind == RESP:
            self._sinks.pop(msg[1], None)
            cb = self._pending.pop(msg[1], None)
            if cb is not None:
                cb(msg[2], msg[3] if msg[2] else messages.error_from_wire(msg[3]))
            return
        if kind == NOTE:
            method, payload = msg[1], msg[2]
            entry = self.handlers.get(method) if type(method) is str else None
            try:
                if entry is None or entry[2]:
                    raise self.handlers.refusal(method, False)
                entry[1](payload)
            except BadMessage as e:
                _log_once(self.name, method, f"{e} (notification dropped)")
                return
            try:
                res = entry[0](self, payload)
                if inspect.iscoroutine(res):
                    asyncio.ensure_future(res)
            except Exception:
                logger.exception("%s: handler for %s failed", self.name, method)
            return
        rid, method, payload = msg[1], msg[2], msg[3]
        self.current_rid = rid
        entry = self.handlers.get(method) if type(method) is str else None
        try:
            if entry is None or not entry[2]:
                raise self.handlers.refusal(method, True)
            entry[1](payload)
        except BadMessage as e:
            _log_once(self.name, method, str(e))
            self._send([RESP, rid, False, messages.error_to_wire(e, with_traceback=False)])
            return
        try:
            res = entry[0](self, payload)
        except Exception as e:
            logger.debug("%s: handler %s raised", self.name, method, exc_info=True)
            self._send([RESP, rid, False, messages.error_to_wire(e)])
            return
        if res is DEFERRED:
            return
        if type(res) is RawReply:
            self._send_raw(rid, res.data)
            return
        if inspect.isawaitable(res):
            fut = asyncio.ensure_future(res)
            fut.add_done_callback(lambda f, rid=rid: self._reply_from_future(rid, f))
        else:
            self._send([RESP, rid, True, res])

    def _reply_from_future(self, rid, fut):
        if self.closed:
            return
        if fut.cancelled():
            self._send([RESP, rid, False, messages.error_to_wire(RemoteError("cancelled", "CancelledError"))])
        elif fut.exception() is not None:
            self._send([RESP, rid, False, messages.error_to_wire(fut.exception())])
        else:
            self._send([RESP, rid, True, fut.result()])

    def reply(self, rid, ok, value):
        """Answer request ``rid`` whose handler returned DEFERRED (on this loop's thread);
        when not ok, ``value`` is an exception (or a text) sent as a structured error."""
        if not ok:
            value = messages.error_to_wire(value if isinstance(value, BaseException) else RemoteError(str(value)))
        self._send([RESP, rid, ok, value])

    def _send(self, msg):
        if self.closed:
            return
        try:
            data = msgpack.packb(msg, use_bin_type=True)
        except Exception as e:  # a value msgpack cannot encode
            if msg[0] != RESP:
                raise
            logger.error("%s: could not encode the answer to request %s: %s", self.name, msg[1], e)
            data = msgpack.packb([RESP, msg[1], False, messages.error_to_wire(RemoteError(
                f"the answer could not be encoded: {type(e).__name__}: {e}", "EncodeError"), with_traceback=False)])
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _send_raw(self, rid, data):
        if self.closed:
            return
        self._out.append(msgpack.packb([RAW, rid, len(data)]))
        self._out.append(data)                  # written as it is, after its header
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self):
        with self._wlock:
            self._flush_scheduled = False
            out, self._out = self._out, []
            if self._head is not None:
                head, self._head = self._head, None
                if not self.closed:
                    self.transport.write(head)
            if out and not self.closed:
                tx = self._tx
                if tx is not None:
                    out = tx.seal(out)
                if len(out) == 1:
                    self.transport.write(out[0])
                elif sum(b.nbytes if type(b) is memoryview else len(b) for b in out) <= JOIN_MAX:
                    self.transport.write(b"".join(out))     # one syscall, not one per message
                else:
                    for b in out:
                        self.transport.write(b)
                if tx is not None:
                    tx.recycle(self.transport.get_write_buffer_size())

    def reply_from_thread(self, rid, value):
        """Answer request ``rid`` (ok) from a thread other than the loop's, such as a worker's
        main thread finishing a call.  When nothing else waits to be written on this connection
        the answer is written to the socket here and now, which saves the hand-off to the loop
        thread (and its wake-up) on every short call; otherwise the loop writes it after what is
        queued.  Every write to the socket happens under ``_wlock``, and only while the
        transport's own buffer is empty, so records never interleave."""
        try:
            data = msgpack.packb([RESP, rid, True, value], use_bin_type=True)
        except Exception:  # noqa: BLE001 - the loop's path reports what cannot be encoded
            self.loop.call_soon_threadsafe(self.reply, rid, True, value)
            return
        with self._wlock:
            fd = self._idle_fd()
            if fd is not None:
                self._write_now(fd, data)
        if fd is None:
            self.loop.call_soon_threadsafe(self._queue_packed, data)

    def _idle_fd(self):
        """(under ``_wlock``) Our own dup of the socket when nothing waits to be written on this
        connection (so a write from another thread cannot interleave), else None; None too
        when the transport is not a socket (rpc/memory.py)."""
        if (self.closed or self._out or self._flush_scheduled or self._stage < 3 or self._head is not None
                or self.transport.get_write_buffer_size()):
            return None
        fd = self._wfd
        if fd is None:
            sock = self.transport.get_extra_info("socket")
            if sock is None:
                return None
            fd = self._wfd = os.dup(sock.fileno())
        return fd

    def _write_now(self, fd, data):
        """(under ``_wlock``, from any thread) Seal and write one message; what the socket does
        not take now is left for the loop to write first."""
        tx = self._tx
        out = tx.seal([data]) if tx is not None else [data]
        payload = out[0] if len(out) == 1 else b"".join(out)
        try:
            n = os.write(fd, payload)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            n = 0                  # a broken socket: the loop's write finds out and closes
        if n < len(payload):
            self._head = bytes(memoryview(payload)[n:])
            self._flush_scheduled = True
            self.loop.call_soon_threadsafe(self._flush)

    def request_from_thread(self, method, payload, callback, before=None):
        """Send a request from a thread other than the loop's (a driver's main thread calling an
        actor) straight onto the socket, when nothing else waits to be written on this
        connection: no hand-off to the loop thread, no wake-up of it.  ``callback(ok, result)``
        runs on the loop, as for ``request``.  ``before()`` runs under the write lock just before
        the bytes leave, so whatever the answer's callback relies on can be queued first; it
        may raise to send nothing after all (it must then have changed nothing).  Returns False,
        having sent nothing, when the connection is busy or closed: the caller goes the usual way."""
        with self._wlock:
            fd = self._idle_fd()
            if fd is None:
                return False
            self._thread_id += 1
            rid = self._thread_id
            try:
                data = msgpack.packb([REQ, rid, method, payload], use_bin_type=True)
            except Exception:  # noqa: BLE001 - the loop's path reports what cannot be encoded
                return False
            if before is not None:
                try:
                    before()
                except Exception:  # noqa: BLE001 - the caller changed its mind: nothing was sent
                    return False
            self._pending[rid] = callback
            self._write_now(fd, data)
        return True

    def _queue_packed(self, data):
        if self.closed:
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def notify(self, method, payload=None):
        self._send([NOTE, method, payload])

    def request(self, method, payload, callback, _sink=None):
        """Send a request; ``callback(ok, result_or_error)`` runs on this loop when answered."""
        if self.closed:
            callback(False, ConnectionLost(f"connection {self.name} is closed"))
            return
        self._next_id += 1
        rid = self._next_id
        try:
            data = msgpack.packb([REQ, rid, method, payload], use_bin_type=True)
        except Exception as e:  # fail this request alone, never the caller's wait
            callback(False, TypeError(f"request {method!r} could not be encoded: {type(e).__name__}: {e}"))
            return
        self._pending[rid] = callback
        if _sink is not None:
            self._sinks[rid] = _sink
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def request_into(self, method, payload, dest, callback):
        """Like ``request``, for handlers answering with RawReply: the bytes are written into
        ``dest`` (a writable memoryview) and ``callback(True, nbytes)`` runs."""
        self.request(method, payload, callback, _sink=dest)

    def call(self, method, payload=None):
        """Awaitable request; raises RemoteError or ConnectionLost."""
        return call_with(self.request, self.loop, method, payload)

    def close(self):
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()


def parse_address(address: str):
    if address.startswith("unix:"):
        return "unix", address[5:]
    if address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        return "tcp", (host, int(port))
    raise ValueError(f"bad address {address!r}: expected 'unix:/path' or 'tcp:host:port'")


async def connect(address: str, secret: bytes, handlers, name: str = "", timeout: float = 10.0) -> Connection:
    loop = asyncio.get_event_loop()
    kind, where = parse_address(address)
    mode = channel.tcp_mode() if kind == "tcp" else channel.PLAIN
    factory = lambda: Connection(secret, handlers, server=False, name=name or address, mode=mode)  # noqa: E731
    if kind == "unix":
        _, conn = await asyncio.wait_for(loop.create_unix_connection(factory, where), timeout)
    else:
        _, conn = await asyncio.wait_for(loop.create_connection(factory, where[0], where[1]), timeout)
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.wait_for(conn.ready, timeout)
    return conn


async def serve(address: str, secret: bytes, handlers, on_connect=None, name: str = ""):
    """Listen on ``address``; returns (server, bound_address).  ``on_connect(conn)`` runs after auth."""
    loop = asyncio.get_event_loop()
    kind, where = parse_address(address)
    mode = channel.tcp_mode() if kind == "tcp" else channel.PLAIN
    guard = channel.Guard(name or address, loop)

    def factory():
        conn = Connection(secret, handlers, server=True, name=name, mode=mode, guard=guard)
        if on_connect is not None:
            conn.ready.add_done_callback(lambda f: (not f.exception()) and on_connect(conn))
        return conn
    if kind == "unix":
        server = await loop.create_unix_server(factory, where)
        os.chmod(where, 0o600)
        return server, address
    server = await loop.create_server(factory, where[0], where[1], reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    return server, f"tcp:{where[0]}:{port}"


def call_with(request, loop, method, payload):
    """An awaitable over a callback-style ``request(method, payload, callback)``: the result, or
    the error rebuilt from the wire (shared by connections and the reconnecting GCS client)."""
    fut = loop.create_future()

    def done(ok, res):
        if fut.done():
            return
        if ok:
            fut.set_result(res)
        else:
            fut.set_exception(res if isinstance(res, BaseException) else messages.error_from_wire(res))
    request(method, payload, done)
    return fut
