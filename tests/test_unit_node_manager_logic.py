"""A real NodeManager's handlers (node/manager.py and its LocalScheduler) over in-memory
connections (``rpc.memory``: real handshake, message table and schema checks) from fake owners,
fake workers and a fake GCS.  No process, no socket, no timer waited on: worker start-up is faked
(the zygote only records which workers were asked for; the test registers them) and so is
``kill`` (it closes the worker's connection, as its death would).  The event loop is driven
explicitly: ``settle`` runs it until nothing is left to deliver.

    fake owner ──request_lease / return_lease──▶ NodeManager ◀──register_worker, blocked── fake worker
    fake GCS ──prepare/commit/cancel_bundle, view──▶     │ ──register_node, heartbeat──▶ fake GCS
                                                         └──zygote.write(fork)──▶ FakeZygote (records)
"""
import asyncio
import os

import msgpack
import pytest

from luminary._private.gcs.client import GcsClient
from luminary._private.node import manager
from luminary._private.node.manager import NodeManager
from luminary._private.placement import ClusterView
from luminary._private.rpc import memory, messages

pytestmark = pytest.mark.timeout(60)
SECRET = b"n" * 32
GCS = "unix:/mem/gcs"


async def settle(rounds=200):
    """Run the loop until the in-memory traffic is delivered (each hop takes an iteration or two)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeZygote:
    """Records the workers the node manager asks to fork; the test decides when they register."""

    def __init__(self):
        self.asked = []

    def write(self, data):
        self.asked.append(msgpack.unpackb(data)["worker_id"])

    def close(self):
        pass


class FakeGcs:
    """Registers node managers, answers heartbeats with the cluster view, and drives bundles."""

    def __init__(self, net):
        self.net = net
        self.nodes = {}               # node id -> {"address", "total", "available"}
        self.conns = {}               # node id -> the server side of its connection
        self.heartbeats = []

    def handlers(self):
        return messages.TABLE.bind({"register_node": self.register_node, "heartbeat": self.heartbeat,
                                    "log": lambda c, p: None, "kv_get": lambda c, p: None})

    def register_node(self, conn, p):
        self.nodes[p["node_id"]] = {"address": p["address"], "total": dict(p["resources"]),
                                    "available": dict(p["resources"])}
        self.conns[p["node_id"]] = conn
        return self.nodes

    def heartbeat(self, conn, p):
        self.heartbeats.append(p)
        self.nodes[p["node_id"]].update(available=p["available"], total=p.get("total", p["available"]))
        return self.nodes

    def push_view(self):
        for conn in self.conns.values():
            conn.notify("view", self.nodes)


class Worker:
    """A worker process as its node manager sees it: a connection that registered."""

    def __init__(self, nm, wid, pid):
        self.nm, self.wid, self.pid = nm, wid, pid
        self.address = f"{nm.address}-w{pid}"
        self.conn = None

    async def register(self, net):
        self.conn = await net.connect(self.nm.address, SECRET, messages.TABLE.bind({"ping": lambda c, p: "pong"}),
                                      name=self.address)
        await self.conn.call("register_worker", {"worker_id": self.wid, "pid": self.pid, "address": self.address})
        return self


class Owner:
    """A driver asking for leases; notes ``infeasible`` warnings."""

    def __init__(self, net, name):
        self.net, self.name = net, name
        self.infeasible = []
        self.conn = None
        self.n = 0

    async def connect(self, nm):
        h = messages.TABLE.bind({"infeasible": lambda c, p: self.infeasible.append(p),
                                 "worker_oom": lambda c, p: True})
        self.conn = await self.net.connect(nm.address, SECRET, h, name=self.name)
        return self

    def lease(self, resources, **extra):
        """Ask for a lease: (lease id, future of the answer) -- it stays pending while queued."""
        self.n += 1
        lid = self.name.encode().ljust(16, b".") + self.n.to_bytes(8, "big")
        payload = dict({"lease_id": lid, "resources": resources}, **extra)
        return lid, asyncio.ensure_future(self.conn.call("request_lease", payload))


class Node:
    """A real NodeManager on the in-memory network, with faked worker start-up and kill."""

    def __init__(self, net, gcs, tmp_path, name, cpus, **cfg):
        self.net, self.gcs_fake = net, gcs
        session = tmp_path / name
        session.mkdir()
        self.nm = NodeManager(dict({"secret": SECRET, "session_dir": str(session), "num_cpus": cpus,
                                    "object_store_memory": 1 << 20, "node_ip": "127.0.0.1",
                                    "gcs_address": GCS, "node_id": os.urandom(16)}, **cfg),
                              None, -1, bytearray(1 << 20))
        self.nm.address, self.nm.tcp_address = f"unix:/mem/{name}", None
        self.nm.zygote = FakeZygote()
        self.workers = {}              # pid -> Worker
        self.killed = []               # pids the node manager killed

    async def start(self):
        """What NodeManager.start does, in memory and without the zygote or the periodic loops."""
        nm = self.nm
        await self.net.serve(nm.address, nm.handlers.accepting(messages.DRIVER, messages.WORKER,
                                                               messages.NODE_MANAGER))
        h = nm.handlers.accepting(messages.GCS)
        nm.gcs = GcsClient(GCS, SECRET, h, window=0)   # a lost GCS is not reconnected to
        nm.gcs._attach(await self.net.connect(GCS, SECRET, h, name=nm.address))
        nm.view = ClusterView.from_wire(await nm.gcs.call("register_node", nm._registration()))
        return self

    async def start_asked_workers(self):
        """Every worker the node manager asked the zygote for registers now."""
        asked, self.nm.zygote.asked = self.nm.zygote.asked, []
        for wid in asked:
            pid = 10_000 + len(self.workers) + 100 * len(self.net.listeners)
            self.workers[pid] = await Worker(self.nm, wid, pid).register(self.net)
        await settle()
        return len(asked)

    def kill(self, pid):
        w = self.workers.get(pid)
        if w is not None and w.pid not in self.killed:
            self.killed.append(pid)
            w.conn.close()

    def worker_at(self, address):
        return next(w for w in self.workers.values() if w.address == address)

    def available(self, name="CPU"):
        return self.nm.scheduler.available.get(name)


def in_memory(body):
    """Run ``body(net, gcs, make_node)`` on a fresh loop; node managers are checked at the end."""
    async def main(tmp_path, monkeypatch):
        net = memory.MemoryNetwork(SECRET)
        gcs = FakeGcs(net)
        await net.serve(GCS, gcs.handlers())
        nodes = []

        async def make_node(name, cpus=2, **cfg):
            node = await Node(net, gcs, tmp_path, name, cpus, **cfg).start()
            nodes.append(node)
            return node

        def kill(pid):
            for node in nodes:
                node.kill(pid)
        monkeypatch.setattr(manager, "_kill", kill)     # no real process to signal
        try:
            await asyncio.wait_for(body(net, gcs, make_node), 30)
        finally:
            for node in nodes:
                node.nm.scheduler.validate()
                node.nm.shutting_down = True
            for address in list(net.listeners):
                net.stop(address)
            await settle(20)

    def run(tmp_path, monkeypatch):
        asyncio.run(main(tmp_path, monkeypatch))
    return run


def test_lease_granted_queued_then_granted_to_the_worker_given_back(tmp_path, monkeypatch):
    async def body(net, gcs, make_node):
        node = await make_node("n1", cpus=2)
        owner = await Owner(net, "own1").connect(node.nm)
        l1, f1 = owner.lease({"CPU": 1.0})
        l2, f2 = owner.lease({"CPU": 1.0})
        await settle()
        assert not f1.done() and not f2.done()          # no idle worker yet: two are started
        assert await node.start_asked_workers() == 2
        g1, g2 = f1.result(), f2.result()
        assert {g1["address"], g2["address"]} == {w.address for w in node.workers.values()}
        assert g1["node_id"] == node.nm.node_id and node.available() == 0
        l3, f3 = owner.lease({"CPU": 1.0})              # the node is full: queued, no worker started
        await settle()
        assert not f3.done() and node.nm.zygote.asked == []
        owner.conn.notify("return_lease", {"lease_id": l1})
        await settle()
        assert f3.result()["address"] == g1["address"]  # the worker given back, reused at once
        assert node.available() == 0 and set(node.nm.scheduler.leases) == {l2, l3}
        for lid in (l2, l3):
            owner.conn.notify("return_lease", {"lease_id": lid})
        await settle()
        assert node.available() == 2 and not node.nm.scheduler.leases and len(node.nm.idle) == 2
    in_memory(body)(tmp_path, monkeypatch)


def test_duplicate_lease_id_is_refused_and_the_first_request_keeps_its_lease(tmp_path, monkeypatch):
    async def body(net, gcs, make_node):
        node = await make_node("n1", cpus=1)
        owner = await Owner(net, "own1").connect(node.nm)
        lid, first = owner.lease({"CPU": 1.0})
        await settle()
        again = asyncio.ensure_future(owner.conn.call("request_lease", {"lease_id": lid, "resources": {"CPU": 1.0}}))
        with pytest.raises(messages.RemoteError, match="already in use on this node"):
            await again
        await node.start_asked_workers()
        assert first.result()["address"] and set(node.nm.scheduler.leases) == {lid}
        # once granted, the same id is still refused (it names a live lease)
        with pytest.raises(messages.RemoteError, match="already in use"):
            await owner.conn.call("request_lease", {"lease_id": lid, "resources": {"CPU": 1.0}})
        assert node.available() == 0 and len(node.nm.scheduler.leases) == 1
    in_memory(body)(tmp_path, monkeypatch)


def test_spillback_decisions_follow_the_gcs_view(tmp_path, monkeypatch):
    async def body(net, gcs, make_node):
        n1 = await make_node("n1", cpus=2)
        n2 = await make_node("n2", cpus=4)
        gcs.push_view()
        await settle()
        assert len(n1.nm.view) == 2
        owner = await Owner(net, "own1").connect(n1.nm)
        # too big for n1, fits on n2: spill there
        _, f = owner.lease({"CPU": 3.0})
        await settle()
        assert f.result() == {"spillback": n2.nm.address, "node_id": n2.nm.node_id}
        # a request that was spilled once stays where it could ever run
        _, f = owner.lease({"CPU": 1.0}, no_spill=True)
        await node_grant(n1, f)
        # hard node affinity to a node that is not there: refused, with the way out in the message
        _, f = owner.lease({"CPU": 1.0}, strategy={"type": "NODE_AFFINITY", "node_id": os.urandom(16),
                                                    "soft": False})
        await settle()
        assert f.result()["error"] == "infeasible" and "soft=True" in f.result()["message"]
        # no node can run it: queued here, and the owner is told what is missing
        lid, f = owner.lease({"CPU": 6.0})
        await settle()
        assert not f.done() and owner.infeasible == [
            {"lease_id": lid, "missing": {"CPU": 6.0}, "node_resources": n1.nm.resources}]
        # a node that can run it joins: the next view moves the queued request there
        n3 = await make_node("n3", cpus=8)
        gcs.push_view()
        await settle()
        assert f.result() == {"spillback": n3.nm.address, "node_id": n3.nm.node_id}
        assert not n1.nm.scheduler.queue
    in_memory(body)(tmp_path, monkeypatch)


async def node_grant(node, fut):
    await settle()
    await node.start_asked_workers()
    assert "address" in fut.result(), fut.result()
    return fut.result()


def test_worker_death_returns_its_lease_resources_and_a_gone_owner_ends_its_workers(tmp_path, monkeypatch):
    async def body(net, gcs, make_node):
        node = await make_node("n1", cpus=1)
        owner = await Owner(net, "own1").connect(node.nm)
        l1, f1 = owner.lease({"CPU": 1.0})
        grant = await node_grant(node, f1)
        l2, f2 = owner.lease({"CPU": 1.0})
        await settle()
        assert not f2.done() and node.available() == 0
        # the leased worker dies (its connection drops): the CPU comes back, the queued request
        # gets a new worker
        dead = node.worker_at(grant["address"])
        dead.conn.close()
        await settle()
        assert node.available() == 1 and l1 not in node.nm.scheduler.leases
        assert dead.wid not in node.nm.workers and len(node.nm.zygote.asked) == 1   # a worker for l2
        g2 = await node_grant(node, f2)
        assert g2["address"] != grant["address"]
        # the owner goes away: the workers it leased are killed, its queued requests forgotten
        other = await Owner(net, "own2").connect(node.nm)
        _, f3 = other.lease({"CPU": 1.0})
        await settle()
        owner.conn.close()
        await settle()
        assert node.killed == [node.worker_at(g2["address"]).pid]
        assert l2 not in node.nm.scheduler.leases
        # (own2's request now fits: granted to a new worker once the killed one is gone)
        await node_grant(node, f3)
        assert node.available() == 0
    in_memory(body)(tmp_path, monkeypatch)


def test_blocked_worker_lends_its_cpu_and_takes_it_back(tmp_path, monkeypatch):
    async def body(net, gcs, make_node):
        node = await make_node("n1", cpus=1)
        owner = await Owner(net, "own1").connect(node.nm)
        l1, f1 = owner.lease({"CPU": 1.0})
        g1 = await node_grant(node, f1)
        l2, f2 = owner.lease({"CPU": 1.0})           # a nested task: queued behind its caller
        await settle()
        assert not f2.done()
        w1 = node.worker_at(g1["address"])
        w1.conn.notify("blocked", None)             # the caller waits in get(): its CPU is lent
        await node_grant(node, f2)
        assert node.available() == 0
        w1.conn.notify("unblocked", None)           # it resumes while the nested task runs:
        await settle()                               # briefly oversubscribed, never refused
        assert node.available() == -1
        owner.conn.notify("return_lease", {"lease_id": l2})
        await settle()
        assert node.available() == 0
        # a lease returned while blocked gives back only what it still held
        w1.conn.notify("blocked", None)
        await settle()
        assert node.available() == 1
        owner.conn.notify("return_lease", {"lease_id": l1})
        await settle()
        assert node.available() == 1 and not node.nm.scheduler.leases
    in_memory(body)(tmp_path, monkeypatch)


def test_bundles_prepare_commit_cancel_and_a_gone_preparer(tmp_path, monkeypatch):
    async def body(net, gcs, make_node):
        node = await make_node("n1", cpus=2)
        to_nm = gcs.conns[node.nm.node_id]           # the GCS's side of the node's connection
        pg = os.urandom(16)
        pg_hex = pg.hex()
        assert await to_nm.call("prepare_bundle", {"pg_id": pg, "index": 0, "resources": {"CPU": 1.0}}) is True
        assert await to_nm.call("prepare_bundle", {"pg_id": pg, "index": 0, "resources": {"CPU": 1.0}}) is True
        assert node.available() == 1                 # (preparing twice reserves once)
        assert await to_nm.call("prepare_bundle", {"pg_id": pg, "index": 1, "resources": {"CPU": 2.0}}) is False
        assert await to_nm.call("commit_bundle", {"pg_id": pg, "index": 1}) is False     # never prepared
        assert await to_nm.call("commit_bundle", {"pg_id": pg, "index": 0}) is True
        assert node.available(f"CPU_group_0_{pg_hex}") == 1 and node.available(f"CPU_group_{pg_hex}") == 1
        # a task in the group runs on the bundle's CPU, not the node's free one
        owner = await Owner(net, "own1").connect(node.nm)
        lid, f = owner.lease({f"CPU_group_{pg_hex}": 1.0})
        await node_grant(node, f)
        assert node.available() == 1 and node.available(f"CPU_group_{pg_hex}") == 0
        owner.conn.notify("return_lease", {"lease_id": lid})
        to_nm.notify("cancel_bundle", {"pg_id": pg, "index": 0})
        await settle()
        assert node.available() == 2 and node.nm.scheduler.total == node.nm.scheduler.available
        assert f"CPU_group_{pg_hex}" not in node.nm.scheduler.total
        # a bundle prepared but never committed is released when its preparer goes away
        assert await to_nm.call("prepare_bundle", {"pg_id": pg, "index": 2, "resources": {"CPU": 2.0}}) is True
        assert node.available() == 0
        to_nm.close()                                # the GCS died between prepare and commit
        await settle()
        assert node.available() == 2 and not node.nm.bundles
    in_memory(body)(tmp_path, monkeypatch)
