"""The in-memory connection pair behaves as the socket one: requests, replies, notifications,
schema checks that fail one request only, authentication, and ConnectionLost on close."""
import asyncio

import pytest

from luminary._private.rpc import memory, protocol
from luminary._private.rpc.messages import BadMessage

pytestmark = pytest.mark.timeout(30)
SECRET = b"k" * 32


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_requests_replies_and_notifications_travel_through_the_message_table():
    got = []

    async def main():
        server = {"kv_get": lambda c, p: b"value-of-" + p["key"], "log": lambda c, p: got.append(p["lines"])}
        a, b = await memory.pair(SECRET, {}, server)
        assert await a.call("kv_get", {"key": b"k"}) == b"value-of-k"
        a.notify("log", {"lines": ["bad"], "bogus": 1})    # not in the schema: dropped, logged once
        a.notify("log", {"lines": ["hello"]})
        # a payload that breaks its schema fails that request alone, naming the field
        with pytest.raises(BadMessage, match="kv_get.*'key'"):
            await a.call("kv_get", {"key": 5})
        with pytest.raises(BadMessage, match="unknown method"):
            await a.call("no_such_method", {})
        assert await a.call("kv_get", {"key": b"again"}) == b"value-of-again"     # the connection carries on
        a.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert a.closed and b.closed
    run(main())
    assert got == [["hello"]]


def test_close_fails_pending_requests_with_connection_lost_and_runs_close_callbacks():
    async def main():
        never = asyncio.get_event_loop().create_future()
        a, b = await memory.pair(SECRET, {}, {"kv_get": lambda c, p: never})
        closed = []
        a.close_callbacks.append(lambda c: closed.append("a"))
        b.close_callbacks.append(lambda c: closed.append("b"))
        call = a.call("kv_get", {"key": b"k"})
        await asyncio.sleep(0.01)
        b.transport.abort()           # the peer vanishes
        with pytest.raises(protocol.ConnectionLost):
            await asyncio.wait_for(call, 2)
        await asyncio.sleep(0.01)
        assert sorted(closed) == ["a", "b"]
        with pytest.raises(protocol.ConnectionLost):
            await a.call("kv_get", {"key": b"k"})          # a closed connection fails at once
        never.cancel()
    run(main())


def test_network_refuses_a_wrong_secret_and_unknown_addresses():
    async def main():
        net = memory.MemoryNetwork(SECRET)
        await net.serve("mem:gcs", {"ping": lambda c, p: "pong"})
        conn = await net.connect("mem:gcs", SECRET, {})
        assert await conn.call("ping") == "pong"
        with pytest.raises(protocol.AuthenticationError, match="refused this cluster secret"):
            await net.connect("mem:gcs", b"x" * 32, {})
        with pytest.raises(ConnectionRefusedError, match="nothing listens on mem:nowhere"):
            await net.connect("mem:nowhere", SECRET, {})
        net.stop("mem:gcs")
        await asyncio.sleep(0.01)
        assert conn.closed
    run(main())
