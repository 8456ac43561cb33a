"""In-memory connections: the same ``protocol.Connection`` over a transport that is a function call.

    Connection A ── write(bytes) ─▶ MemoryTransport ── loop.call_soon ─▶ Connection B.data_received
                 ◀──────────────────────────────────────────────────────             (and back)

Nothing but the transport is replaced: both ends run the real handshake (plain mode, as on a
Unix socket), frame with msgpack, dispatch through ``messages.Handlers`` (so every payload is
checked against the message table and a bad one fails only its request) and report a closed
peer with ``ConnectionLost`` and their close callbacks.  Bytes are delivered on the next
event-loop iteration, in order, as a socket would; ``close`` delivers what was written first.

    a, b = await pair(secret, handlers_a, handlers_b)          # a connected to b
    net = MemoryNetwork(secret); await net.serve("mem:gcs", handlers)
    conn = await net.connect("mem:gcs", secret, handlers)       # protocol.connect's signature

Used by the logic tests of the GCS, the owner's shell and the node manager (``tests/test_unit_memory_rpc.py``,
``tests/test_unit_gcs_logic.py``, ``tests/test_unit_owner_shell.py``, ``tests/test_unit_node_manager_logic.py``)
where a process or a socket would only add time and noise.
"""
from __future__ import annotations

import asyncio
import itertools

from . import channel, protocol

_ids = itertools.count(1)


class MemoryTransport(asyncio.Transport):
    """One side's transport: writes land in the peer connection's ``data_received``."""

    def __init__(self, conn, name):
        super().__init__()
        self.conn = conn
        self.peer = None            # the other side's MemoryTransport
        self.name = name
        self.loop = conn.loop
        self._closing = False

    def write(self, data):
        if self._closing or self.peer is None or self.peer._closing:
            return
        self.loop.call_soon(self.peer._deliver, bytes(data))

    def writelines(self, bufs):
        for b in bufs:
            self.write(b)

    def _deliver(self, data):
        if not self._closing:
            self.conn.data_received(data)

    def close(self):
        """Close both directions: each side's ``connection_lost`` runs after what was written."""
        if self._closing:
            return
        self._closing = True
        self.loop.call_soon(self.conn.connection_lost, None)
        if self.peer is not None:
            self.loop.call_soon(self.peer.close)

    abort = close

    def is_closing(self):
        return self._closing

    def get_extra_info(self, name, default=None):
        return {"peername": f"memory:{self.name}", "socket": None}.get(name, default)

    def get_write_buffer_size(self):
        return 0


def _wire(client, server, name):
    ct, st = MemoryTransport(client, name), MemoryTransport(server, name)
    ct.peer, st.peer = st, ct
    server.connection_made(st)       # the server speaks first (its hello)
    client.connection_made(ct)


async def pair(secret: bytes, client_handlers, server_handlers, name: str = "", timeout: float = 5.0):
    """Two connected, authenticated ``protocol.Connection`` objects (client, server)."""
    name = name or f"memory-{next(_ids)}"
    client = protocol.Connection(secret, client_handlers, server=False, name=name, mode=channel.PLAIN)
    server = protocol.Connection(secret, server_handlers, server=True, name=name, mode=channel.PLAIN)
    _wire(client, server, name)
    await asyncio.wait_for(asyncio.gather(client.ready, server.ready), timeout)
    return client, server


class MemoryNetwork:
    """Addresses to in-memory listeners: ``serve`` and ``connect`` as in ``protocol``."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self.listeners = {}         # address -> (server secret, handlers, on_connect)
        self.accepted = {}          # address -> [server-side connections]

    async def serve(self, address, handlers, on_connect=None):
        self.listeners[address] = (self.secret, handlers, on_connect)
        self.accepted[address] = []
        return self, address

    def stop(self, address):
        """Stop listening on ``address`` and close every connection it accepted."""
        self.listeners.pop(address, None)
        for conn in self.accepted.pop(address, []):
            conn.close()

    async def connect(self, address, secret, handlers, name="", timeout=10.0):
        if address not in self.listeners:
            raise ConnectionRefusedError(f"nothing listens on {address} (in memory)")
        server_secret, server_handlers, on_connect = self.listeners[address]
        name = name or address
        client = protocol.Connection(secret, handlers, server=False, name=name, mode=channel.PLAIN)
        server = protocol.Connection(server_secret, server_handlers, server=True, name=name, mode=channel.PLAIN)
        _wire(client, server, name)
        await asyncio.wait_for(client.ready, timeout)
        await asyncio.wait_for(server.ready, timeout)
        self.accepted[address].append(server)
        if on_connect is not None:
            on_connect(server)
        return client
