"""Transport security: what a network peer without the cluster secret, or a member sending
garbage, can and cannot do to a cluster's TCP connections (see docs/architecture.md, Security).

Loopback only; every loop is bounded and every test has a timeout."""
import asyncio
import json
import os
import random
import resource
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types

import msgpack
import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = pytest.mark.skipif(IS_RAY, reason="Luminary's transport")

if not IS_RAY:
    from luminary._private.rpc import channel, messages, protocol
    from luminary._private.rpc.loop import new_event_loop
    from luminary.cluster_utils import Cluster


def run(coro, timeout=60):
    loop = new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        loop.close()


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    yield c
    try:
        ray.shutdown()
    finally:
        c.shutdown()


def _hostport(address):
    host, _, port = address[4:].rpartition(":")
    return host, int(port)


async def _read_exactly(reader, n, timeout=10):
    return await asyncio.wait_for(reader.readexactly(n), timeout)


async def _closed_by_peer(reader, timeout=10):
    """True when the peer closes the socket (after whatever it still sends)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            data = await asyncio.wait_for(reader.read(65536), end - time.monotonic())
        except (ConnectionError, asyncio.IncompleteReadError):
            return True
        if not data:
            return True
    return False


# --- 1. a relayed handshake gains nothing --------------------------------------------------------
@pytest.mark.timeout(120)
def test_relayed_handshake_gains_nothing(cluster):
    """An attacker who gets a member to connect to them relays the real GCS's challenge and the
    member's proof; the handshake completes, but the attacker's own request on its socket is
    refused (the GCS closes it) and runs nothing, and the member's frames are unreadable."""
    host, port = _hostport(cluster.gcs_address)
    marker = b"MEMBER-PLAINTEXT-MARKER-" * 4

    async def main():
        seen_from_victim = bytearray()
        outcome = {}

        async def attacker(v_reader, v_writer):
            r_reader, r_writer = await asyncio.open_connection(host, port)
            v_writer.write(await _read_exactly(r_reader, channel.SERVER_HELLO))       # challenge
            r_writer.write(await _read_exactly(v_reader, channel.CLIENT_HELLO))       # member's proof
            v_writer.write(await _read_exactly(r_reader, channel.MAC))                # GCS's proof
            await v_writer.drain()
            # now "authenticated" on its own socket: send its own request, as plain msgpack and
            # as a forged record
            evil = msgpack.packb([0, 1, "kv_put", {"key": b"pwned", "value": b"code"}], use_bin_type=True)
            r_writer.write(evil + len(evil).to_bytes(4, "big") + evil + os.urandom(16))
            outcome["closed"] = await _closed_by_peer(r_reader)
            # what the member sent through us (its kv_put with the marker)
            try:
                while len(seen_from_victim) < len(marker):
                    seen_from_victim.extend(await asyncio.wait_for(v_reader.read(65536), 5))
            except asyncio.TimeoutError:
                pass
            v_writer.close()

        server = await asyncio.start_server(attacker, "127.0.0.1", 0)
        aport = server.sockets[0].getsockname()[1]
        victim = await protocol.connect(f"tcp:127.0.0.1:{aport}", cluster.secret, {}, name="victim")
        victim.request("kv_put", {"key": b"note", "value": marker}, lambda ok, r: None)
        await poll_async(lambda: "closed" in outcome and len(seen_from_victim) >= len(marker), 20)
        server.close()
        assert outcome["closed"], "the GCS kept the relaying attacker's connection open"
        assert marker not in bytes(seen_from_victim), "a member's frame was readable on the wire"
        honest = await protocol.connect(cluster.gcs_address, cluster.secret, {}, name="honest")
        assert await honest.call("kv_get", {"key": b"pwned"}) is None   # the attacker's put never ran
        honest.close()
    run(main())
    cluster.connect()
    assert ray.get(ray.remote(lambda: 7).remote(), timeout=60) == 7


async def poll_async(pred, timeout):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the attacker")
        await asyncio.sleep(0.01)


# --- 2. injected, altered, replayed, dropped frames fail that connection alone ---------------------
class _Tamper:
    """A man in the middle without the secret: forwards the handshake, then changes the client's
    second record (index 1) according to ``mode``."""

    def __init__(self, target_port, mode):
        self.port, self.mode = target_port, mode

    async def handle(self, c_reader, c_writer):
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def down():      # server -> client, untouched
            try:
                while data := await s_reader.read(65536):
                    c_writer.write(data)
            except ConnectionError:
                pass
            c_writer.close()

        task = asyncio.ensure_future(down())
        try:
            s_writer.write(await c_reader.readexactly(channel.CLIENT_HELLO))
            records = []
            while True:
                hdr = await c_reader.readexactly(4)
                body = await c_reader.readexactly(int.from_bytes(hdr, "big") + channel.TAG)
                rec = hdr + body
                i = len(records)
                records.append(rec)
                if i == 1:
                    if self.mode == "flip":
                        b = bytearray(rec)
                        b[6] ^= 1
                        rec = bytes(b)
                    elif self.mode == "replay":
                        rec = records[0] + rec
                    elif self.mode == "inject":
                        fake = os.urandom(40)
                        rec = len(fake).to_bytes(4, "big") + fake + os.urandom(16) + rec
                    elif self.mode == "plain":
                        rec = msgpack.packb([0, 99, "kv_put", {"key": b"evil", "value": b""}]) + rec
                    elif self.mode == "drop":
                        continue
                s_writer.write(rec)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        s_writer.close()
        await task


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["flip", "replay", "inject", "plain", "drop"])
def test_tampered_frames_fail_that_connection_alone(mode):
    secret = os.urandom(32)
    handled = []

    async def main():
        handlers = {"kv_put": lambda c, p: handled.append(p["key"]) or True, "ping": lambda c, p: "pong"}
        server, address = await protocol.serve("tcp:127.0.0.1:0", secret, messages.TABLE.bind(handlers))
        mitm = _Tamper(_hostport(address)[1], mode)
        proxy = await asyncio.start_server(mitm.handle, "127.0.0.1", 0)
        bystander = await protocol.connect(address, secret, {}, name="bystander")
        victim = await protocol.connect(f"tcp:127.0.0.1:{proxy.sockets[0].getsockname()[1]}", secret, {})
        assert await victim.call("kv_put", {"key": b"k1", "value": b""}) is True
        second = victim.call("kv_put", {"key": b"k2", "value": b""})
        if mode == "drop":          # the gap shows when the next record arrives
            await asyncio.sleep(0)
            third = victim.call("kv_put", {"key": b"k3", "value": b""})
            with pytest.raises(protocol.ConnectionLost):
                await asyncio.wait_for(third, 10)
        with pytest.raises(protocol.ConnectionLost):
            await asyncio.wait_for(second, 10)
        assert handled == [b"k1"], handled          # nothing altered, replayed or injected ran
        assert await bystander.call("ping") == "pong"   # the server and other peers carry on
        bystander.close()
        proxy.close()
        server.close()
    run(main())


# --- 3. bounded after authentication ----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_bulk_frame_nobody_asked_for_allocates_nothing():
    """A member answering with a bulk header that claims 1 GiB: the requester closes that
    connection without allocating it; its request fails; RSS stays small."""
    psutil = pytest.importorskip("psutil")
    secret = os.urandom(32)
    me = psutil.Process()

    async def main():
        def liar(conn, p):
            conn._out.append(msgpack.packb([protocol.RAW, conn.current_rid, 1 << 30]))
            conn._flush()
            return protocol.DEFERRED
        server, address = await protocol.serve("tcp:127.0.0.1:0", secret, messages.TABLE.bind(
            {"ping": liar, "node_info": lambda c, p: {"ok": 1}}))
        conn = await protocol.connect(address, secret, {})
        before = me.memory_info().rss
        with pytest.raises(protocol.ConnectionLost):
            await conn.call("ping")
        assert me.memory_info().rss - before < 64 << 20
        # a requester that registered a destination still refuses a size it did not ask for
        conn2 = await protocol.connect(address, secret, {})
        fut = asyncio.get_running_loop().create_future()
        conn2.request_into("ping", None, memoryview(bytearray(10)), lambda ok, r: fut.set_result(ok))
        assert await asyncio.wait_for(fut, 10) is False
        assert me.memory_info().rss - before < 64 << 20
        server.close()
    run(main())


@pytest.mark.timeout(120)
def test_huge_bulk_header_to_a_node_manager(cluster):
    psutil = pytest.importorskip("psutil")
    nm = psutil.Process(cluster.head_node.process.pid)
    before = nm.memory_info().rss

    async def main():
        conn = await protocol.connect(cluster.head_node.address, cluster.secret, {})
        conn._out.append(msgpack.packb([protocol.RAW, 1, 1 << 30]) + os.urandom(1 << 20))
        conn._flush()
        await poll_async(lambda: conn.closed, 10)
    run(main())
    assert nm.memory_info().rss - before < 64 << 20
    cluster.connect()
    assert ray.get(ray.remote(lambda: 1).remote(), timeout=60) == 1


@pytest.mark.timeout(60)
def test_oversized_frame_and_bad_address_spare_bystanders(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_MESSAGE", 1 << 20)
    secret = os.urandom(32)
    views = []

    async def main():
        handlers = {"kv_put": lambda c, p: True, "ping": lambda c, p: "pong", "view": lambda c, p: views.append(p)}
        server, address = await protocol.serve("tcp:127.0.0.1:0", secret, messages.TABLE.bind(handlers))
        bystander = await protocol.connect(address, secret, {})
        big = await protocol.connect(address, secret, {})
        with pytest.raises(protocol.ConnectionLost):
            await big.call("kv_put", {"key": b"k", "value": os.urandom(2 << 20)})
        # a view with a malformed address is dropped at the edge; the connection keeps serving
        nid = os.urandom(16)
        for bad in ("tcp:host:notaport", "tcp::1", "http://x", "unix:", "tcp:a b:1", "tcp:h:70000"):
            bystander.notify("view", {nid: {"address": bad, "total": {}, "available": {}}})
        bystander.notify("view", {nid: {"address": "tcp:10.0.0.1:6380", "total": {}, "available": {}}})
        assert await bystander.call("ping") == "pong"
        await poll_async(lambda: views, 5)
        assert [v[nid]["address"] for v in views] == ["tcp:10.0.0.1:6380"]
        bystander.close()
        server.close()
    run(main())


# --- 2. floods from peers without the secret -----------------------------------------------------
_FLOOD_CLUSTER = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    import luminary as ray
    from luminary.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    print(json.dumps({"gcs": c.gcs_address, "nm": c.head_node.address,
                      "log": c.head_node.session_dir + "/logs/node.log"}), flush=True)
    sys.stdin.readline()
    try:
        c.connect()
        f = ray.remote(lambda i: i * 2)
        print("ok", sum(ray.get([f.remote(i) for i in range(20)], timeout=60)), flush=True)
    finally:
        ray.shutdown()
        c.shutdown()
""")


@pytest.mark.timeout(180)
def test_connection_flood_under_a_low_file_limit():
    """1,024 open files for the cluster; thousands of idle and garbage connections from a peer
    without the secret; a member still connects and runs tasks, and refusals are logged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 6000)
    if want < 3000:
        pytest.skip("needs 3,000 open files for the flood")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    proc = subprocess.Popen([sys.executable, "-c", _FLOOD_CLUSTER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    stop = threading.Event()
    held = []
    try:
        info = json.loads(proc.stdout.readline())
        targets = [_hostport(info["gcs"]), _hostport(info["nm"])]

        def idle_flood():
            deadline = time.monotonic() + 90
            while not stop.is_set() and time.monotonic() < deadline:
                for t in targets:
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(t)
                    held.append(s)
                while len(held) > 2400:
                    held.pop(0).close()
                time.sleep(0.001)

        def garbage_flood():
            deadline = time.monotonic() + 90
            while not stop.is_set() and time.monotonic() < deadline:
                for t in targets:
                    try:
                        with socket.create_connection(t, timeout=2) as s:
                            s.sendall(channel.MAGIC + os.urandom(random.randrange(1, 300)))
                    except OSError:
                        pass
        threads = [threading.Thread(target=idle_flood), threading.Thread(target=garbage_flood)]
        for t in threads:
            t.start()
        poll_for(lambda: len(held) > 2000, timeout=30, desc="the flood to build up")
        poll_for(lambda: "refused" in open(info["log"]).read(), timeout=10, desc="refusals logged")
        proc.stdin.write("go\n")        # a member connects and runs tasks while the flood goes on
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line.strip() == "ok 380", line
    finally:
        stop.set()
        for s in held:
            s.close()
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert proc.returncode == 0


@pytest.mark.timeout(60)
def test_handshake_deadline_and_cap(monkeypatch):
    """A peer that never finishes the handshake is closed after the deadline; beyond the cap
    the oldest pending handshakes are closed, and an honest client still gets in."""
    monkeypatch.setattr(channel, "HANDSHAKE_TIMEOUT", 0.5)
    monkeypatch.setattr(channel, "MAX_UNAUTHENTICATED", 8)
    secret = os.urandom(32)

    async def main():
        server, address = await protocol.serve("tcp:127.0.0.1:0", secret, messages.TABLE.bind(
            {"ping": lambda c, p: "pong"}))
        host, port = _hostport(address)
        idle = [await asyncio.open_connection(host, port) for _ in range(20)]
        honest = await protocol.connect(address, secret, {})
        assert await honest.call("ping") == "pong"
        t0 = time.monotonic()
        for r, _ in idle:
            assert await _closed_by_peer(r, 5)
        assert time.monotonic() - t0 < 4
        server.close()
    run(main())


# --- a fuzzer of authenticated frames against a node manager -------------------------------------
_SEEDS = [
    [0, 1, "request_lease", {"lease_id": b"L" * 8, "resources": {"CPU": 1.0}}],
    [0, 2, "store_get", {"oid": b"o" * 16, "wait": False}],
    [0, 3, "node_info", None],
    [0, 4, "fetch_chunk", {"oid": b"o" * 16, "offset": 0, "length": 10}],
    [0, 5, "transfer_begin", {"oid": b"o" * 16}],
    [0, 6, "store_create", {"oid": b"p" * 16, "size": 100, "owner": b"w" * 16}],
    [2, "view", {b"n" * 16: {"address": "tcp:127.0.0.1:1", "total": {"CPU": 1e9}, "available": {}}}],
    [2, "return_lease", {"lease_id": b"L" * 8}],
    [2, "store_release", {"oids": [b"o" * 16]}],
    [0, 7, "ping", None],
    [0, 8, "cancel_lease_request", {"lease_id": b"L" * 8, "release_if_granted": True}],
    [1, 3, True, {"x": 1}],
    [4, 9, 12],
]
_ODD = [None, True, -1, 2 ** 63, -2 ** 63, 1e308, float("nan"), "", "x" * 300, b"\0" * 17, [], {}, [[[]]],
        {"": None}, 1 << 40]


def _as_text(x):
    """The same message with every bytes value (and key) turned into text: wrong types everywhere."""
    if isinstance(x, bytes):
        return x.hex()
    if isinstance(x, list):
        return [_as_text(v) for v in x]
    if isinstance(x, dict):
        return {_as_text(k): _as_text(v) for k, v in x.items()}
    return x


def _mutate(rng, msg):
    msg = _as_text(msg) if rng.random() < 0.2 else list(msg)
    for _ in range(rng.randrange(1, 4)):
        r = rng.random()
        if r < 0.4 and msg:
            msg[rng.randrange(len(msg))] = rng.choice(_ODD)
        elif r < 0.6 and msg and isinstance(msg[-1], dict) and msg[-1]:
            k = rng.choice(list(msg[-1]))
            msg[-1] = dict(msg[-1])
            msg[-1][k] = rng.choice(_ODD)
        elif r < 0.8:
            msg = msg[:rng.randrange(len(msg) + 1)]
        else:
            msg.append(rng.choice(_ODD))
    return msg


@pytest.mark.timeout(120)
def test_fuzzed_authenticated_frames_leave_the_node_working(cluster):
    rng = random.Random(1234)
    sent = {"frames": 0, "reconnects": 0}

    async def main():
        end = time.monotonic() + 5
        conn = None
        while time.monotonic() < end:
            if conn is None or conn.closed:
                conn = await protocol.connect(cluster.head_node.address, cluster.secret, {})
                sent["reconnects"] += 1
            msg = _mutate(rng, rng.choice(_SEEDS))
            if msg[2:3] == ["shutdown"] or msg[1:2] == ["shutdown"]:
                continue
            try:
                data = msgpack.packb(msg, use_bin_type=True)
            except Exception:
                continue
            if rng.random() < 0.2:           # byte-level damage inside an authenticated record
                b = bytearray(data)
                for _ in range(rng.randrange(1, 4)):
                    b[rng.randrange(len(b))] = rng.randrange(256)
                data = bytes(b)
            conn._out.append(data)
            conn._flush()
            sent["frames"] += 1
            await asyncio.sleep(0)
        if conn is not None:
            conn.close()
    run(main(), timeout=60)
    assert sent["frames"] > 100
    cluster.connect()
    f = ray.remote(lambda i: i + 1)
    assert ray.get([f.remote(i) for i in range(10)], timeout=60) == list(range(1, 11))
    total = ray.cluster_resources()
    assert total["CPU"] == 2
    poll_for(lambda: ray.available_resources().get("CPU") == 2, timeout=30, desc="all CPUs free again")


# --- 4. resources reserved by a peer come back when it disconnects ---------------------------------
@pytest.mark.timeout(30)
def test_bundle_prepared_by_a_disconnected_peer_is_released():
    from luminary._private.node.manager import NodeManager
    from luminary._private.node.scheduler import LocalScheduler
    nm = types.SimpleNamespace(bundles={}, scheduler=LocalScheduler({"CPU": 4.0}), _report_soon=lambda: None,
                               _schedule=lambda: None)
    for name in ("prepare_bundle", "commit_bundle", "cancel_bundle", "_preparer_gone"):
        setattr(nm, name, getattr(NodeManager, name).__get__(nm))
    gcs = types.SimpleNamespace(state={}, close_callbacks=[])
    pg = os.urandom(16)
    assert nm.prepare_bundle(gcs, {"pg_id": pg, "index": 0, "resources": {"CPU": 2.0}})
    assert nm.prepare_bundle(gcs, {"pg_id": pg, "index": 1, "resources": {"CPU": 1.0}})
    assert nm.commit_bundle(gcs, {"pg_id": pg, "index": 1})
    assert nm.scheduler.available.to_wire()["CPU"] == 1.0
    for cb in gcs.close_callbacks:     # the preparer's connection drops
        cb(gcs)
    assert list(nm.bundles) == [(pg, 1)]     # the committed bundle belongs to the group now
    assert nm.scheduler.available.to_wire()["CPU"] == 3.0


# --- 5. the local node manager dies ---------------------------------------------------------------
_DRIVER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import luminary as ray
    from luminary.exceptions import LocalRayletDiedError
    ray.init(address=sys.argv[1])
    slow = ray.remote(lambda: time.sleep(120))
    pending = slow.remote()
    assert ray.get(ray.remote(lambda: 1).remote(), timeout=60) == 1
    print("ready", flush=True)
    sys.stdin.readline()          # the node manager is killed now
    out = {}
    def timed(name, fn):
        t = time.monotonic()
        try:
            fn()
            out[name] = "no error"
        except LocalRayletDiedError:
            out[name] = "LocalRayletDiedError"
        except BaseException as e:
            out[name] = type(e).__name__ + ": " + str(e)[:200]
        out[name + "_s"] = time.monotonic() - t
    timed("pending_get", lambda: ray.get(pending, timeout=30))
    timed("new_task", lambda: ray.get(ray.remote(lambda: 2).remote(), timeout=30))
    timed("small_put", lambda: ray.put(1))
    timed("big_put", lambda: ray.put(np.zeros(1 << 20)))
    timed("wait", lambda: ray.get(ray.wait([ray.remote(lambda: 3).remote()], timeout=30)[0][0]))
    print(json.dumps(out), flush=True)
""")


@pytest.mark.timeout(180)
def test_local_node_manager_death_fails_every_call_at_once():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, c.gcs_address[4:]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        node = c.head_node.process
        node.kill()
        node.wait(30)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(30)
        c.shutdown()
    for name in ("pending_get", "new_task", "small_put", "big_put", "wait"):
        assert out[name] == "LocalRayletDiedError", (name, out)
        assert out[name + "_s"] < 5, (name, out)
