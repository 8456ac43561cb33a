"""The wire protocol in one process: handshake, requests, notifications, bulk replies."""
import asyncio
import os

import pytest

from luminary._private.rpc import messages as m
from luminary._private.rpc import protocol

pytestmark = pytest.mark.timeout(20)

# a message table of this test's own (the system's table is messages.TABLE)
TEST_TABLE = m.Table([
    m.Msg("add", m.REQUEST, m.ANY, m.ANY, m.list_(m.int_(), 2)),
    m.Msg("note", m.NOTE, m.ANY, m.ANY, m.str_()),
    m.Msg("bulk", m.REQUEST, m.ANY, m.ANY, m.struct({"start": m.int_(), "n": m.int_()})),
    m.Msg("fail", m.REQUEST, m.ANY, m.ANY, m.NONE),
    m.Msg("x", m.REQUEST, m.ANY, m.ANY, m.ANYV),
    m.Msg("table", m.REQUEST, m.ANY, m.ANY, m.NONE),
    m.Msg("unencodable", m.REQUEST, m.ANY, m.ANY, m.NONE),
    m.Msg("echo", m.REQUEST, m.ANY, m.ANY, m.ANYV),
])


def bind(handlers):
    return TEST_TABLE.bind(handlers)


def run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def _server(tmp_path, secret, handlers):
    addr = f"unix:{tmp_path}/s.sock"
    server, addr = await protocol.serve(addr, secret, bind(handlers))
    return server, addr


def test_requests_notifications_and_bulk_replies(tmp_path):
    secret = os.urandom(32)
    blob = bytes(range(256)) * 40000          # ~10 MB, arrives in many reads
    seen = []

    async def main():
        handlers = {"add": lambda c, p: p[0] + p[1], "note": lambda c, p: seen.append(p),
                    "bulk": lambda c, p: protocol.RawReply(memoryview(blob)[p["start"]:p["start"] + p["n"]]),
                    "fail": lambda c, p: 1 / 0}
        server, addr = await _server(tmp_path, secret, handlers)
        conn = await protocol.connect(addr, secret, bind({}))
        assert await conn.call("add", [2, 3]) == 5
        conn.notify("note", "hello")
        dest = bytearray(len(blob))
        done = asyncio.get_event_loop().create_future()
        conn.request_into("bulk", {"start": 0, "n": len(blob)}, memoryview(dest), lambda ok, n: done.set_result((ok, n)))
        assert await done == (True, len(blob))
        assert dest == blob
        with pytest.raises(protocol.RemoteError, match="ZeroDivisionError"):
            await conn.call("fail", None)
        assert await conn.call("add", [1, 1]) == 2    # still usable after a bulk reply and an error
        conn.close()
        server.close()
    run(main())
    assert seen == ["hello"]


def test_wrong_secret_is_refused_before_any_payload(tmp_path):
    calls = []

    async def main():
        server, addr = await _server(tmp_path, os.urandom(32), {"x": lambda c, p: calls.append(p)})
        with pytest.raises(protocol.AuthenticationError, match="refused"):
            await protocol.connect(addr, os.urandom(32), {})
        server.close()
    run(main())
    assert calls == []


def test_peer_of_another_version_gets_a_clear_error(tmp_path):
    async def main():
        path = f"{tmp_path}/old.sock"

        async def old_peer(reader, writer):
            writer.write(b"LUM0" + os.urandom(32))
            await writer.drain()
            await reader.read(100)
            writer.close()
        server = await asyncio.start_unix_server(old_peer, path)
        with pytest.raises(protocol.AuthenticationError, match="same Luminary version"):
            await protocol.connect(f"unix:{path}", os.urandom(32), {})
        server.close()
    run(main())


def test_bad_payloads_fail_one_request_and_keep_the_connection(tmp_path):
    """Integer map keys decode; a value msgpack cannot encode fails only its own request (both
    ways); a frame of the wrong shape is dropped; the connection keeps serving."""
    secret = os.urandom(32)

    async def main():
        handlers = {"table": lambda c, p: {0: {"CPU": 1.0}, 1: {"CPU": 0.5}},
                    "unencodable": lambda c, p: {"cls": object()},
                    "echo": lambda c, p: p}
        server, addr = await _server(tmp_path, secret, handlers)
        conn = await protocol.connect(addr, secret, bind({}))
        assert await conn.call("table") == {0: {"CPU": 1.0}, 1: {"CPU": 0.5}}
        with pytest.raises(protocol.RemoteError, match="could not be encoded"):
            await conn.call("unencodable")
        with pytest.raises(TypeError, match="could not be encoded"):
            await conn.call("echo", {"x": object()})
        conn.transport.write(__import__("msgpack").packb("not a message"))
        conn.transport.write(__import__("msgpack").packb([0, 99]))
        assert await conn.call("echo", [1, 2]) == [1, 2]
        conn.close()
        server.close()
    run(main())


def test_a_request_from_another_thread_goes_out_when_idle_and_steps_aside_when_not(tmp_path):
    """``request_from_thread``: another thread writes a request straight to an idle socket
    (its ``before`` runs under the write lock first, its answer comes on the loop); with
    output queued on the loop it sends nothing and says so; a ``before`` that raises sends
    nothing; a closed connection refuses."""
    import threading
    secret = os.urandom(32)

    async def main():
        server, addr = await _server(tmp_path, secret, {"add": lambda c, p: p[0] + p[1]})
        conn = await protocol.connect(addr, secret, bind({}))
        loop = asyncio.get_event_loop()
        got = loop.create_future()
        order = []

        def from_thread():
            sent = conn.request_from_thread("add", [20, 22],
                                            lambda ok, r: loop.call_soon(got.set_result, (ok, r, list(order))),
                                            before=lambda: order.append("before"))
            order.append(("sent", sent))
        t = threading.Thread(target=from_thread)
        t.start()
        await loop.run_in_executor(None, t.join)
        ok, r, seen = await got
        assert (ok, r) == (True, 42) and seen[0] == "before"      # before() ran before the bytes left
        assert order == ["before", ("sent", True)]

        conn.request("add", [1, 1], lambda ok, r: None)      # queued on the loop, not flushed yet
        assert conn.request_from_thread("add", [1, 2], lambda ok, r: None) is False

        def refuse():
            raise RuntimeError("changed my mind")
        await _until(lambda: not conn._out and not conn._flush_scheduled)   # the queued one left
        answered = []
        assert conn.request_from_thread("add", [1, 2], lambda ok, r: answered.append(r), before=refuse) is False
        assert await conn.call("add", [5, 5]) == 10        # nothing half-sent: the stream is intact
        assert answered == []
        conn.close()
        await _until(lambda: conn.closed)
        assert conn.request_from_thread("add", [1, 2], lambda ok, r: None) is False
        server.close()
    run(main())


async def _until(predicate, timeout=5.0):
    """Yield to the loop until ``predicate()`` holds (fails after ``timeout`` seconds)."""
    deadline = asyncio.get_event_loop().time() + timeout
    while not predicate():
        assert asyncio.get_event_loop().time() < deadline, "timed out waiting on the loop"
        await asyncio.sleep(0)
