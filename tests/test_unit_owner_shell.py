"""The owner's I/O shell (worker/submitter.py around the Owner state machine) in a real CoreWorker
whose peers are in memory: fake node managers, leased workers and a fake GCS reached through
``rpc.memory`` connections (real handshake, message table and schema checks), no process and no
socket.  The test drives the public API (``remote``, ``get``) on the main thread; the core's I/O
thread runs the shell and every fake peer on its one event loop.

    main thread: f.remote() / ray.get() ──post──▶ core I/O loop: TaskSubmitter ─┬─▶ FakeNode (request_lease)
                                                                                ├─▶ FakeWorker (push_task)
                                                                                └─▶ FakeGcs (register/wait_actor)
"""
import asyncio
import os
import threading

import cloudpickle
import pytest

import luminary as ray
from luminary import exceptions as exc
from luminary._private import ids, serialization
from luminary._private.gcs.client import GcsClient
from luminary._private.rpc import memory, messages
from luminary._private.worker import state
from luminary._private.worker.core import DRIVER, CoreWorker
from luminary._private.worker.mapped import MappedObjects
from luminary._private.worker.refs import ReferenceTable

pytestmark = pytest.mark.timeout(60)
SECRET = b"o" * 32
ME = "unix:/mem/driver"
GCS = "unix:/mem/gcs"
WAIT_S = 5.0


class Peers:
    """What the fakes saw, with one condition to wait on (no sleeps: ``until`` waits for a change)."""

    def __init__(self):
        self.changed = threading.Condition()

    def note(self):
        with self.changed:
            self.changed.notify_all()

    def until(self, pred, what):
        with self.changed:
            assert self.changed.wait_for(pred, WAIT_S), f"timed out waiting for {what}"


def _run_spec(obj, spec, fns):
    """Run a pushed call the way an executor does, on a real function or instance."""
    if "fn" in spec:
        fns[spec["fid"]] = cloudpickle.loads(spec["fn"])
    kind, data = spec["args"][:2]
    assert kind == "v", "these tests pass inline arguments only"
    args, kwargs = serialization.loads_inline(data)
    fn = getattr(obj, spec["method"]) if spec.get("method") else fns[spec["fid"]]
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the user's error travels in the reply
        err = exc.RayTaskError(spec["name"], repr(e), e)
        return {"rets": [["e", serialization.dumps_error(err)]], "app_error": True}
    if spec["nret"] == 0:
        return {"rets": []}
    return {"rets": [["v", serialization.serialize(result).to_inline()]], "dur": 0.0}


class FakeWorker:
    """A leased worker: runs what is pushed, or dies mid-call when its node's script says so."""

    def __init__(self, node, address):
        self.node, self.address, self.fns = node, address, {}

    def handlers(self):
        return messages.TABLE.bind({**messages.push_handlers(self.push_task), "cancel_task": lambda c, p: None})

    def push_task(self, conn, spec):
        node = self.node
        node.pushed.append((self.address, spec["name"]))
        if node.die_on_push:
            node.die_on_push -= 1
            node.dead.add(self.address)
            node.net.stop(self.address)        # the worker process is gone: its connections close
            node.peers.note()
            return None                        # (the reply is never delivered)
        reply = _run_spec(None, spec, self.fns)
        node.peers.note()
        return reply


class FakeNode:
    """A node manager: grants each lease a fresh FakeWorker, or spills, or refuses as infeasible."""

    def __init__(self, net, peers, name, spill_to=None, infeasible=None):
        self.net, self.peers, self.name = net, peers, name
        self.address = f"unix:/mem/{name}"
        self.node_id = os.urandom(16)
        self.spill_to = spill_to          # a FakeNode to send requests to (unless no_spill)
        self.infeasible = infeasible      # refuse every request with this message
        self.warn_infeasible = None       # queue every request, warning its owner that this is missing
        self.waiting = {}                 # lease id -> future of a queued request's answer
        self.die_on_push = 0              # the next N pushes kill their worker mid-call
        self.requests = []                # request_lease payloads
        self.granted = {}                 # lease id -> worker address
        self.returned = []                # (lease id, kill) in order
        self.pushed = []                  # (worker address, call name)
        self.dead = set()                 # addresses of workers that died
        self.n = 0

    def handlers(self):
        return messages.TABLE.bind({
            "request_lease": self.request_lease, "return_lease": self.return_lease,
            "cancel_lease_request": self.cancel_lease_request, "blocked": lambda c, p: None,
            "unblocked": lambda c, p: None, "store_release": lambda c, p: None,
            "store_delete": lambda c, p: None})

    async def serve(self):
        await self.net.serve(self.address, self.handlers())
        return self

    async def request_lease(self, conn, p):
        self.requests.append(p)
        self.peers.note()
        if self.infeasible:
            return {"error": "infeasible", "message": self.infeasible}
        if self.warn_infeasible:
            conn.notify("infeasible", {"lease_id": p["lease_id"], "missing": self.warn_infeasible,
                                       "node_resources": {"CPU": 2.0}})
            fut = self.waiting[p["lease_id"]] = asyncio.get_running_loop().create_future()
            return fut
        if self.spill_to is not None and not p.get("no_spill"):
            return {"spillback": self.spill_to.address, "node_id": self.spill_to.node_id}
        self.n += 1
        address = f"{self.address}-worker-{self.n}"
        await self.net.serve(address, FakeWorker(self, address).handlers())
        self.granted[p["lease_id"]] = address
        return {"worker_id": self.n.to_bytes(16, "big"), "address": address, "node_id": self.node_id}

    def cancel_lease_request(self, conn, p):
        fut = self.waiting.pop(p["lease_id"], None)
        if fut is not None:
            fut.set_result(None)
        self.peers.note()
        return True

    def return_lease(self, conn, p):
        assert p["lease_id"] in self.granted, "a lease this node never granted came back"
        assert p["lease_id"] not in [lid for lid, _ in self.returned], "a lease was returned twice"
        self.returned.append((p["lease_id"], bool(p.get("kill"))))
        self.net.stop(self.granted[p["lease_id"]])
        self.peers.note()

    def all_returned(self):
        """Every lease whose worker lives came back (a dead worker's lease is freed by its node
        manager, which sees the worker's connection drop; the owner does not return it)."""
        live = {lid for lid, address in self.granted.items() if address not in self.dead}
        return {lid for lid, _ in self.returned} >= live


class FakeGcs:
    """Actors: created at once on an in-memory worker holding a real instance; a worker that dies
    is replaced at the next incarnation while restarts are left (as the GCS's actor manager)."""

    def __init__(self, net, peers):
        self.net, self.peers = net, peers
        self.actors = {}                  # actor id -> record
        self.die_on_call = {}             # method name -> how many of its calls kill the actor's worker

    def handlers(self):
        return messages.TABLE.bind({
            "register_actor": self.register_actor, "wait_actor": self.wait_actor,
            "kill_actor": lambda c, p: True, "register_owner": lambda c, p: True,
            "task_events": lambda c, p: None})

    async def register_actor(self, conn, p):
        a = self.actors[p["actor_id"]] = {"payload": p, "incarnation": -1, "restarts_left": p["max_restarts"],
                                          "state": "ALIVE", "calls": []}
        await self._start(p["actor_id"], a)
        return {"existing": False, "actor_id": p["actor_id"]}

    async def _start(self, aid, a):
        spec = a["payload"]["spec"]
        cls = cloudpickle.loads(spec["cls"])
        args, kwargs = serialization.loads_inline(spec["args"][1])
        instance = cls(*args, **kwargs)            # the user's class, as a worker builds it
        a["incarnation"] += 1
        a["address"] = f"unix:/mem/actor-{aid.hex()[:8]}-{a['incarnation']}"

        def push_task(conn, spec, a=a, instance=instance, address=a["address"]):
            a["calls"].append((a["incarnation"], spec["method"]))
            if spec["method"] == "__ray_terminate__":
                return {"rets": []}
            if self.die_on_call.get(spec["method"]):
                self.die_on_call[spec["method"]] -= 1
                self._died(aid, a, address)
                return None
            reply = _run_spec(instance, spec, {})
            self.peers.note()
            return reply
        await self.net.serve(a["address"], messages.TABLE.bind({**messages.push_handlers(push_task),
                                                                "cancel_task": lambda c, p: None}))

    def _died(self, aid, a, address):
        self.net.stop(address)
        if a["restarts_left"] > 0:
            a["restarts_left"] -= 1
            a["state"] = "RESTARTING"
        else:
            a["state"] = "DEAD"
        self.peers.note()

    async def wait_actor(self, conn, p):
        a = self.actors[p["actor_id"]]
        if a["state"] == "RESTARTING":
            await self._start(p["actor_id"], a)
            a["state"] = "ALIVE"
        if a["state"] == "DEAD":
            return {"state": "DEAD", "cause_text": "its worker died and no restarts are left",
                    "incarnation": a["incarnation"]}
        return {"state": "ALIVE", "address": a["address"], "incarnation": a["incarnation"]}


class Cluster:
    """A real CoreWorker (driver) whose node manager, GCS and workers are in memory."""

    def __init__(self, tmp_path, nodes=("nm1",)):
        self.peers = Peers()
        self.net = memory.MemoryNetwork(SECRET)
        self.core = core = CoreWorker(DRIVER, {"secret": SECRET, "worker_id": ids.random_id(),
                                               "session_dir": str(tmp_path)})
        core.connect = self.net.connect          # the seam: peers are reached in memory
        core.address = ME
        self.nodes = {name: FakeNode(self.net, self.peers, name) for name in nodes}
        self.gcs = FakeGcs(self.net, self.peers)
        try:
            core.io.run_coro(self._attach(), timeout=WAIT_S)
        except BaseException:
            core.stop()
            raise
        state.core = core

    async def _attach(self):
        """What CoreWorker._start does, with in-memory connections instead of sockets."""
        core, net = self.core, self.net
        for node in self.nodes.values():
            await node.serve()
        await net.serve(GCS, self.gcs.handlers())
        h = core.build_handlers()
        await net.serve(ME, h.accepting(messages.DRIVER, messages.WORKER, messages.GCS))
        core.refs = ReferenceTable(core.address)
        local = next(iter(self.nodes.values()))
        core.nm = await net.connect(local.address, SECRET, h.accepting(messages.NODE_MANAGER), name="node-manager")
        core.nm.close_callbacks.append(core._nm_lost)
        core.node_id, core.nm_pid = local.node_id, None
        core.mapped = MappedObjects(1 << 20, core.io.post, core.io.loop.call_later, core._send_releases)
        core.gcs = GcsClient(GCS, SECRET, h.accepting(messages.GCS))
        core.gcs._attach(await net.connect(GCS, SECRET, h.accepting(messages.GCS), name="gcs"))

    def owner_state(self, fn):
        """``fn(owner)`` on the I/O thread that owns the state (validate_state there too)."""
        async def on_loop():
            self.core.submitter.owner.validate_state()
            return fn(self.core.submitter.owner)
        return self.core.io.run_coro(on_loop(), timeout=WAIT_S)

    def close(self):
        self.owner_state(lambda o: None)
        state.core = None
        self.core.stop()
        assert not self.core.io.thread.is_alive()


@pytest.fixture
def cluster(tmp_path, request):
    c = Cluster(tmp_path, **getattr(request, "param", {}))
    try:
        yield c
    finally:
        c.close()


@ray.remote
def add(a, b):
    return a + b


def test_lease_push_reply_pipelined_and_every_lease_returned(cluster):
    nm = cluster.nodes["nm1"]
    assert ray.get([add.remote(i, 10) for i in range(20)], timeout=WAIT_S) == [i + 10 for i in range(20)]
    assert ray.get(add.options(num_cpus=0.5).remote("a", "b"), timeout=WAIT_S) == "ab"
    assert len(nm.pushed) == 21 and nm.granted
    assert all(r["resources"] in ({"CPU": 1.0}, {"CPU": 0.5}) for r in nm.requests)
    # idle leases go back (after the owner's idle timer), each exactly once, not killed
    cluster.peers.until(nm.all_returned, "every lease returned")
    assert not any(kill for _, kill in nm.returned)
    assert cluster.owner_state(lambda o: (len(o.leases), sum(c.state.name != "FINISHED" for c in o.calls.values()))) \
        == (0, 0)


@pytest.mark.parametrize("cluster", [{"nodes": ("nm1", "nm2")}], indirect=True)
def test_spillback_to_another_node(cluster):
    nm1, nm2 = cluster.nodes["nm1"], cluster.nodes["nm2"]
    nm1.spill_to = nm2
    assert ray.get(add.remote(1, 2), timeout=WAIT_S) == 3
    # asked the local node, followed the spillback once (no_spill), ran on nm2's worker
    assert nm1.requests and not nm1.granted and not nm1.pushed
    assert nm2.requests[0]["no_spill"] is True and nm2.requests[0]["lease_id"] == nm1.requests[0]["lease_id"]
    assert nm2.pushed == [(nm2.address + "-worker-1", "add")]
    cluster.peers.until(nm2.all_returned, "the spilled lease returned to the node that granted it")
    assert not nm1.returned


def test_worker_dropped_mid_call_is_retried_on_a_new_lease(cluster):
    nm = cluster.nodes["nm1"]
    nm.die_on_push = 1
    assert ray.get(add.options(max_retries=1).remote(2, 3), timeout=WAIT_S) == 5
    assert [name for _, name in nm.pushed] == ["add", "add"]
    assert nm.pushed[0][0] != nm.pushed[1][0], "the retry ran on another worker"
    # without retries left the caller gets WorkerCrashedError (a RayError), not a hang
    nm.die_on_push = 1
    with pytest.raises(exc.WorkerCrashedError):
        ray.get(add.options(max_retries=0).remote(2, 3), timeout=WAIT_S)
    cluster.peers.until(nm.all_returned, "every live lease returned")
    dead = {lid for lid, address in nm.granted.items() if address in nm.dead}
    assert len(dead) == 2 and not dead & {lid for lid, _ in nm.returned}


def test_lease_refused_as_infeasible_fails_the_task(cluster):
    nm = cluster.nodes["nm1"]
    nm.infeasible = "no node has {'GPU': 8.0}"
    ref = add.options(num_gpus=8).remote(1, 1)
    with pytest.raises(exc.TaskUnschedulableError, match="no node has"):
        ray.get(ref, timeout=WAIT_S)
    assert nm.requests[0]["resources"] == {"CPU": 1.0, "GPU": 8.0} and not nm.granted


def _fails_once(tag):
    """A function that raises on its first run in a worker (the worker's copy counts the runs;
    ``tag`` makes each one a distinct function, so no worker has run it before)."""
    runs = []

    @ray.remote
    def fails_once():
        runs.append(tag)
        if len(runs) == 1:
            raise ValueError(f"first run of {tag} fails")
        return len(runs)
    return fails_once


def test_infeasible_warning_fails_the_task_when_the_driver_asked_to_fail_fast(cluster):
    nm = cluster.nodes["nm1"]
    nm.warn_infeasible = {"GPU": 8.0}
    cluster.core.cfg["infeasible_tasks"] = "fail"
    with pytest.raises(exc.TaskUnschedulableError, match="GPU: 8"):
        ray.get(add.options(num_gpus=8).remote(1, 1), timeout=WAIT_S)
    cluster.peers.until(lambda: not nm.waiting, "the queued lease request cancelled")
    assert not nm.granted


def test_application_error_is_retried_only_when_asked(cluster):
    f = _fails_once("a")
    assert ray.get(f.options(max_retries=1, retry_exceptions=True).remote(), timeout=WAIT_S) == 2
    f = _fails_once("b")
    with pytest.raises(ValueError, match="first run of b fails"):
        ray.get(f.options(max_retries=1).remote(), timeout=WAIT_S)


@ray.remote
class Counter:
    def __init__(self, start):
        self.n = start

    def incr(self):
        self.n += 1
        return self.n


def test_actor_calls_survive_a_restart_in_order_then_fail_when_no_restarts_are_left(cluster):
    gcs = cluster.gcs
    c = Counter.options(max_restarts=1, max_task_retries=1).remote(10)
    assert ray.get(c.incr.remote(), timeout=WAIT_S) == 11
    # the worker dies during the next call: it is retried on incarnation 1 (a fresh instance),
    # and the calls queued behind it keep their order
    gcs.die_on_call["incr"] = 1
    refs = [c.incr.remote() for _ in range(3)]
    assert ray.get(refs, timeout=WAIT_S) == [11, 12, 13]
    (a,) = gcs.actors.values()
    incs = [inc for inc, m in a["calls"] if m == "incr"]
    # incarnation 0 ran the first call and died on the next (the calls queued behind it may have
    # reached it in the same write); incarnation 1 ran the three, once each
    assert a["incarnation"] == 1 and incs[:2] == [0, 0] and incs.count(1) == 3 and incs[-3:] == [1, 1, 1]
    # no restarts left: the call fails with ActorDiedError naming the cause, and so do later ones
    gcs.die_on_call["incr"] = 1
    with pytest.raises(exc.ActorDiedError, match="no restarts are left"):
        ray.get(c.incr.remote(), timeout=WAIT_S)
    with pytest.raises(exc.ActorDiedError):
        ray.get(c.incr.remote(), timeout=WAIT_S)


def test_actor_call_without_task_retries_fails_on_restart_but_the_actor_comes_back(cluster):
    gcs = cluster.gcs
    c = Counter.options(max_restarts=1).remote(0)
    assert ray.get(c.incr.remote(), timeout=WAIT_S) == 1
    gcs.die_on_call["incr"] = 1
    with pytest.raises(exc.ActorDiedError, match="max_task_retries"):
        ray.get(c.incr.remote(), timeout=WAIT_S)
    assert ray.get(c.incr.remote(), timeout=WAIT_S) == 1     # restarted: a fresh instance
