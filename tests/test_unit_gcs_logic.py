"""The GCS server's actor and placement-group logic with in-memory node managers and workers:
real connections (handshake, message table, schemas) without a process or a socket."""
import asyncio
import os

import pytest

from luminary._private.gcs.server import GcsServer
from luminary._private.rpc import memory, messages

pytestmark = pytest.mark.timeout(60)
SECRET = b"g" * 32
GCS = "unix:/mem/gcs"
DRIVER = "unix:/mem/driver"


class FakeNode:
    """A node manager that grants every lease with a fresh in-memory worker process stand-in."""

    def __init__(self, net, name, cpus=2.0, constructor_error=None):
        self.net, self.name, self.cpus = net, name, cpus
        self.node_id = os.urandom(16)
        self.constructor_error = constructor_error
        self.leases = {}          # lease id -> worker address
        self.returned = []        # lease ids given back, in order
        self.bundles = {}         # (pg id, index) -> committed
        self.created = []         # create_actor payloads seen by its workers
        self.n = 0
        self.conn = None

    def handlers(self):
        return messages.TABLE.bind({
            "request_lease": self.request_lease, "cancel_lease_request": lambda c, p: True,
            "return_lease": self.return_lease, "kill_worker_nowait": self.kill_worker,
            "prepare_bundle": self.prepare_bundle, "commit_bundle": self.commit_bundle,
            "cancel_bundle": lambda c, p: self.bundles.pop((p["pg_id"], p["index"]), None),
            "view": lambda c, p: None, "log_remote": lambda c, p: None})

    async def start(self):
        self.conn = await self.net.connect(GCS, SECRET, self.handlers(), name=self.name)
        await self.conn.call("register_node", {"node_id": self.node_id, "address": f"unix:/mem/{self.name}",
                                               "ip": "127.0.0.1", "resources": {"CPU": self.cpus}})
        return self

    async def request_lease(self, conn, p):
        self.n += 1
        address = f"unix:/mem/{self.name}-worker-{self.n}"
        await self.net.serve(address, messages.TABLE.bind({"create_actor": self.create_actor}))
        self.leases[p["lease_id"]] = address
        return {"worker_id": self.n.to_bytes(16, "big"), "address": address}

    def create_actor(self, conn, p):
        self.created.append(p)
        if self.constructor_error is not None:
            return {"error": b"pickled", "error_text": self.constructor_error}
        return {"pid": 1000 + len(self.created)}

    def return_lease(self, conn, p):
        assert p["lease_id"] not in self.returned, "a lease was given back twice"
        self.returned.append(p["lease_id"])
        address = self.leases.get(p["lease_id"])
        if address is not None and p.get("kill"):
            self.net.stop(address)

    def kill_worker(self, conn, p):
        self.net.stop(f"unix:/mem/{self.name}-worker-{int.from_bytes(p['worker_id'], 'big')}")

    def prepare_bundle(self, conn, p):
        used = sum(1.0 for _ in self.bundles)
        if used + p["resources"].get("CPU", 0) > self.cpus:
            return False
        self.bundles[(p["pg_id"], p["index"])] = False
        return True

    def commit_bundle(self, conn, p):
        key = (p["pg_id"], p["index"])
        if key not in self.bundles:
            return False
        self.bundles[key] = True
        return True

    def die(self):
        for address in list(self.leases.values()):
            self.net.stop(address)
        self.conn.close()


async def until(pred, what, timeout=5.0):
    deadline = asyncio.get_event_loop().time() + timeout
    while not pred():
        if asyncio.get_event_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def actor_payload(aid, **kw):
    p = {"actor_id": aid, "spec": {"cls": b"c", "args": [], "owner": DRIVER, "owner_id": b"o" * 16},
         "resources": {"CPU": 1.0}, "name": None, "namespace": "", "detached": False, "owner": DRIVER,
         "max_restarts": 0, "meta": {}, "get_if_exists": False, "class_name": "C", "strategy": None}
    p.update(kw)
    return p


def in_memory_gcs(body):
    async def main():
        net = memory.MemoryNetwork(SECRET)
        gcs = GcsServer(SECRET)
        gcs.connect = net.connect
        gcs.address = GCS
        await net.serve(GCS, gcs.handlers.accepting(messages.NODE_MANAGER, messages.DRIVER, messages.WORKER))
        driver = await net.connect(GCS, SECRET, {}, name="driver")
        try:
            await asyncio.wait_for(body(net, gcs, driver), 30)
        finally:
            driver.close()
            for address in list(net.listeners):
                net.stop(address)
            await asyncio.sleep(0.01)
            gcs.actors.table.validate_state()
            gcs.placement_groups.table.validate_state()
    asyncio.run(main())


def test_actor_is_created_restarted_after_its_worker_dies_then_killed():
    async def body(net, gcs, driver):
        node = await FakeNode(net, "n1").start()
        aid = b"a" * 16
        reply = await driver.call("register_actor", actor_payload(aid, max_restarts=1, name="svc"))
        assert reply == {"existing": False, "actor_id": aid}
        info = await driver.call("wait_actor", {"actor_id": aid})
        assert info["state"] == "ALIVE" and info["incarnation"] == 0 and info["pid"] == 1001
        assert node.created[0]["incarnation"] == 0 and node.created[0]["gcs_address"] == GCS
        # get_if_exists returns the live one; a second registration of the name is refused
        again = await driver.call("register_actor", actor_payload(b"b" * 16, name="svc", get_if_exists=True))
        assert again["existing"] and again["actor_id"] == aid
        with pytest.raises(Exception, match="already exists in namespace"):
            await driver.call("register_actor", actor_payload(b"c" * 16, name="svc"))
        # the worker dies: restart 1 of 1, on a new lease, at incarnation 1
        net.stop(info["address"])
        info = await driver.call("wait_actor", {"actor_id": aid, "min_incarnation": 1})
        assert info["state"] == "ALIVE" and info["incarnation"] == 1 and info["num_restarts"] == 1
        assert len(node.returned) == 1
        # no restarts left: the next death is final, with the reason
        net.stop(info["address"])
        info = await driver.call("wait_actor", {"actor_id": aid, "min_incarnation": 2})
        assert info["state"] == "DEAD" and "no restarts left (max_restarts=1)" in info["cause_text"]
        assert len(node.returned) == 2 and await driver.call("get_named_actor", {"name": "svc", "namespace": ""}) is None
    in_memory_gcs(body)


def test_constructor_error_kill_and_owner_death():
    async def body(net, gcs, driver):
        bad = await FakeNode(net, "bad", constructor_error="ValueError: no").start()
        info_bad = None
        await driver.call("register_actor", actor_payload(b"e" * 16))
        info_bad = await driver.call("wait_actor", {"actor_id": b"e" * 16})
        assert info_bad["state"] == "DEAD" and info_bad["cause_text"] == "ValueError: no"
        assert bad.returned == list(bad.leases)            # its lease went back
        bad.die()
        node = await FakeNode(net, "good").start()
        await driver.call("register_actor", actor_payload(b"k" * 16))
        assert (await driver.call("wait_actor", {"actor_id": b"k" * 16}))["state"] == "ALIVE"
        assert await driver.call("kill_actor", {"actor_id": b"k" * 16}) is True
        info = await driver.call("wait_actor", {"actor_id": b"k" * 16})
        assert info["state"] == "DEAD" and "killed by luminary.kill()" in info["cause_text"]
        # a non-detached actor dies with its owner's connection; a detached one stays
        owner = await net.connect(GCS, SECRET, {}, name="owner")
        await owner.call("register_actor", actor_payload(b"o" * 16, owner="unix:/mem/owner"))
        await owner.call("register_actor", actor_payload(b"d" * 16, owner="unix:/mem/owner", detached=True))
        for aid in (b"o" * 16, b"d" * 16):
            assert (await driver.call("wait_actor", {"actor_id": aid}))["state"] == "ALIVE"
        owner.close()
        info = await driver.call("wait_actor", {"actor_id": b"o" * 16, "min_incarnation": 1})
        assert info["state"] == "DEAD" and "owner" in info["cause_text"]
        assert (await driver.call("wait_actor", {"actor_id": b"d" * 16}))["state"] == "ALIVE"
        assert len(node.returned) == 2
    in_memory_gcs(body)


def test_placement_group_created_rescheduled_when_its_node_dies_and_removed():
    async def body(net, gcs, driver):
        n1 = await FakeNode(net, "n1").start()
        pg_id = b"p" * 16
        await driver.call("create_pg", {"pg_id": pg_id, "bundles": [{"CPU": 1.0}, {"CPU": 1.0}],
                                        "strategy": "STRICT_SPREAD", "name": "grp", "lifetime": None})
        assert await driver.call("wait_pg", {"pg_id": pg_id, "timeout": 0.05}) == "PENDING"   # one node only
        n2 = await FakeNode(net, "n2").start()
        assert await driver.call("wait_pg", {"pg_id": pg_id, "timeout": 5}) == "CREATED"
        assert all(n1.bundles.values()) and all(n2.bundles.values()) and len(n1.bundles) == len(n2.bundles) == 1
        table = await driver.call("pg_table")
        assert table[pg_id.hex()]["state"] == "CREATED"
        n2.die()                           # its bundle is lost; the other stays on n1
        await until(lambda: gcs.placement_groups.groups[pg_id].state == "RESCHEDULING", "RESCHEDULING")
        n3 = await FakeNode(net, "n3").start()
        assert await driver.call("wait_pg", {"pg_id": pg_id, "timeout": 5}) == "CREATED"
        assert len(n1.bundles) == 1 and all(n3.bundles.values()) and len(n3.bundles) == 1
        assert sorted(gcs.placement_groups.groups[pg_id].nodes) == sorted([n1.node_id, n3.node_id])
        await driver.call("remove_pg", {"pg_id": pg_id})
        await until(lambda: not n1.bundles and not n3.bundles, "bundles cancelled")
        assert await driver.call("wait_pg", {"pg_id": pg_id, "timeout": 1}) == "REMOVED"
    in_memory_gcs(body)
