"""Multi-node clusters on one machine: real node processes over TCP on loopback
(``cluster_utils.Cluster``).  Placement, locality, transfers, spillback, node failure, security."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from _backend import IS_RAY, poll_for, ray
from conftest import _descendants, check_no_leaks

pytestmark = [pytest.mark.timeout(120)]

if IS_RAY:
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
else:
    from luminary.cluster_utils import Cluster
    from luminary.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def node_id():
    return ray.get_runtime_context().get_node_id()


@pytest.fixture
def cluster():
    before = _descendants()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        check_no_leaks("after the multi-node cluster", before)


def test_custom_resources_choose_the_node(cluster):
    gadget = cluster.add_node(num_cpus=1, resources={"gadget": 1})
    cluster.connect()

    @ray.remote(resources={"gadget": 1})
    def where():
        return node_id()

    assert ray.get(where.remote()) == gadget.node_id
    assert ray.cluster_resources()["CPU"] == 2
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2


def test_spread_and_node_affinity(cluster):
    other = cluster.add_node(num_cpus=2)
    cluster.connect()

    @ray.remote(num_cpus=0.5)
    def where(i):
        time.sleep(0.05)
        return node_id()

    spread = set(ray.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(8)]))
    assert len(spread) == 2
    pinned = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other.node_id, soft=False))
                      .remote(i) for i in range(4)])
    assert set(pinned) == {other.node_id}


def test_task_runs_where_its_big_argument_lives(cluster):
    big = cluster.add_node(num_cpus=1, resources={"producer": 1}, object_store_memory=256 << 20)
    cluster.add_node(num_cpus=1)
    cluster.connect()

    @ray.remote(resources={"producer": 1})
    def produce():
        return np.ones(20 << 20, dtype=np.uint8)   # 20 MB, stored on the producer's node

    @ray.remote
    def consume(a):
        return node_id(), int(a.sum())

    ref = produce.remote()
    ray.wait([ref])
    where, total = ray.get(consume.remote(ref))
    assert total == 20 << 20
    assert where == big.node_id


def test_cross_node_get_of_a_large_array(cluster):
    cluster.add_node(num_cpus=1, resources={"far": 1}, object_store_memory=768 << 20)
    cluster.connect()

    @ray.remote(resources={"far": 1})
    def make():
        a = np.arange(500 * 1024 * 1024 // 8, dtype=np.int64)   # 500 MB
        return a

    t0 = time.monotonic()
    a = ray.get(make.remote(), timeout=90)
    assert a.nbytes == 500 * 1024 * 1024
    assert a[0] == 0 and a[-1] == a.size - 1 and a[a.size // 2] == a.size // 2
    assert time.monotonic() - t0 < 90


def test_spillback_when_local_node_is_busy(cluster):
    cluster.add_node(num_cpus=2)
    cluster.connect()

    @ray.remote
    def busy():
        time.sleep(0.5)
        return node_id()

    nodes = set(ray.get([busy.remote() for _ in range(6)]))
    assert len(nodes) == 2


def test_killed_node_tasks_retried_actor_restarted_object_rebuilt(cluster, tmp_path):
    doomed = cluster.add_node(num_cpus=2, resources={"spot": 1})
    cluster.connect()

    @ray.remote(resources={"spot": 0.1}, max_retries=3)
    def make_block():
        return np.full(1 << 20, 7, dtype=np.uint8)       # stored on the spot node

    @ray.remote(resources={"spot": 0.1}, max_retries=3)
    def slow(path):
        if not os.path.exists(path):
            open(path, "w").close()
            time.sleep(60)                                # killed with its node
        return node_id()

    @ray.remote(resources={"spot": 0.1}, max_restarts=1)
    class Pinger:
        def where(self):
            return node_id()

    block = make_block.remote()
    ray.wait([block])
    actor = Pinger.remote()
    assert ray.get(actor.where.remote()) == doomed.node_id
    marker = str(tmp_path / "started")
    running = slow.remote(marker)
    poll_for(lambda: os.path.exists(marker), timeout=30, desc="slow task to start")

    cluster.remove_node(doomed, allow_graceful=False)     # SIGKILL every process of that node
    spare = cluster.add_node(num_cpus=2, resources={"spot": 1})

    assert ray.get(running, timeout=60) == spare.node_id          # retried elsewhere
    assert int(ray.get(block, timeout=60).sum()) == 7 << 20       # rebuilt from lineage
    where = poll_for(lambda: _actor_where(actor), timeout=60, desc="actor restart")
    assert where == spare.node_id


def _actor_where(actor):
    try:
        return ray.get(actor.where.remote(), timeout=10)
    except ray.exceptions.RayActorError:
        return None


def test_object_owned_by_a_dead_node_is_lost_not_hung(cluster):
    doomed = cluster.add_node(num_cpus=1, resources={"spot": 1})
    cluster.connect()

    @ray.remote(resources={"spot": 1})
    def put_there():
        return [ray.put(np.zeros(1 << 20))]      # the worker on the doomed node owns it

    inner = ray.get(put_there.remote())[0]
    cluster.remove_node(doomed, allow_graceful=False)
    with pytest.raises(ray.exceptions.ObjectLostError):
        ray.get(inner, timeout=60)


@pytest.mark.skipif(IS_RAY, reason="Luminary's authentication")
def test_wrong_secret_is_refused_and_cluster_keeps_working(cluster, tmp_path):
    head_log = os.path.join(cluster.head_node.session_dir, "logs", "node.log")
    bad = tmp_path / "bad.secret"
    bad.write_bytes(os.urandom(32))
    os.environ["LUMINARY_SECRET_FILE"] = str(bad)
    try:
        with pytest.raises(ConnectionError, match="secret"):
            ray.init(address=cluster.address)
    finally:
        del os.environ["LUMINARY_SECRET_FILE"]
    # a peer that sends garbage instead of the handshake is dropped; nothing it sent is parsed
    host, port = cluster.address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        from luminary._private.rpc import channel
        s.recv(channel.SERVER_HELLO)
        s.sendall(channel.MAGIC + b"\x00" * 32 + b"\x02" + b"\x00" * 32 + b"\x80\x04garbage")
        s.settimeout(5)
        assert s.recv(100) in (channel.DENY, b"")   # refused and closed by the GCS
        assert s.recv(100) == b""
    poll_for(lambda: "wrong cluster secret" in open(head_log).read(), timeout=10, desc="refusal logged")
    cluster.connect()
    assert ray.get(ray.put(41)) == 41


@pytest.mark.skipif(IS_RAY, reason="Luminary's command-line tool")
def test_cli_start_status_stop(tmp_path):
    port = _free_port()
    env = dict(os.environ)
    cli = [sys.executable, "-m", "luminary.cli.main"]
    before = _descendants()
    try:
        out = subprocess.run(cli + ["start", "--head", "--port", str(port), "--num-cpus", "1"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"127.0.0.1:{port}" in out.stdout
        out = subprocess.run(cli + ["start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                                    "--resources", '{"gadget": 2}'], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        again = subprocess.run(cli + ["start", "--head", "--port", str(port)], env=env, capture_output=True,
                               text=True, timeout=60)
        assert again.returncode != 0 and "already in use" in again.stderr
        status = subprocess.run(cli + ["status", "--address", f"127.0.0.1:{port}"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert "2 alive node(s)" in status.stdout and "gadget 0/2 used" in status.stdout
        code = ("import luminary as ray; ray.init(address='127.0.0.1:%d');"
                "f = ray.remote(resources={'gadget': 1})(lambda: 'ok');"
                "print(ray.get(f.remote()))" % port)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert run.stdout.strip() == "ok", run.stderr
        example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "examples", "rl_parameter_server.py")
        rl = subprocess.run([sys.executable, example, "--address", f"127.0.0.1:{port}", "--workers", "2",
                             "--iterations", "8"], capture_output=True, text=True, timeout=120)
        assert rl.returncode == 0, rl.stderr[-2000:]
        assert "placed on 2 node(s)" in rl.stdout
    finally:
        out = subprocess.run(cli + ["stop"], capture_output=True, text=True, timeout=60)
    assert "Stopped 2" in out.stdout
    poll_for(lambda: not _luminary_daemons(), timeout=15, desc="nodes to stop")


def _luminary_daemons():
    import psutil
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if "luminary._private.node" in cmd or "luminary::" in cmd:
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lost_task_argument_is_rebuilt_for_its_consumer(cluster):
    doomed = cluster.add_node(num_cpus=1, resources={"spot": 1})
    cluster.connect()

    @ray.remote(resources={"spot": 0.1}, max_retries=2)
    def make():
        return np.full(2 << 20, 5, dtype=np.uint8)

    @ray.remote(max_retries=2)
    def consume(a):
        return int(a.sum())

    block = make.remote()
    ray.wait([block])
    cluster.remove_node(doomed, allow_graceful=False)
    cluster.add_node(num_cpus=1, resources={"spot": 1})
    assert ray.get(consume.remote(block), timeout=60) == 5 * (2 << 20)


def test_prints_on_another_node_reach_the_driver(cluster, capfd):
    cluster.add_node(num_cpus=1, resources={"far": 1})
    cluster.connect()

    @ray.remote(resources={"far": 1})
    def shout():
        print("greetings from the far node")
        return 1

    ray.get(shout.remote())
    seen = []

    def printed():
        seen.append(capfd.readouterr().out)
        return "greetings from the far node" in "".join(seen)
    poll_for(printed, timeout=20, desc="the remote print at the driver")
    assert "shout" in "".join(seen)


def test_batches_of_short_tasks_use_every_node(cluster):
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.connect()

    @ray.remote
    def short():
        time.sleep(0.001)
        return node_id()

    ray.get([short.remote() for _ in range(30)])
    for _ in range(4):   # back to back, as a driver loop would: no batch may leave a node idle
        used = set(ray.get([short.remote() for _ in range(1000)]))
        assert len(used) == 3


def test_placement_group_bundles_lost_with_a_node_are_placed_again(cluster):
    if IS_RAY:
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    else:
        from luminary.util.placement_group import placement_group, placement_group_table
        from luminary.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    doomed = cluster.add_node(num_cpus=1)
    cluster.connect()
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(30)

    @ray.remote(num_cpus=1)
    def where():
        return node_id()

    def run_in_each_bundle():
        return ray.get([where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=i)).remote() for i in range(2)], timeout=60)

    assert doomed.node_id in run_in_each_bundle()
    cluster.remove_node(doomed, allow_graceful=False)
    fresh = cluster.add_node(num_cpus=1)
    # the lost bundle moves to the new node; the one on the head stays where it was
    poll_for(lambda: placement_group_table(pg)["state"] == "CREATED"
             and fresh.node_id in placement_group_table(pg)["bundles_to_node_id"].values(),
             timeout=60, desc="the lost bundle placed on the new node")
    nodes = run_in_each_bundle()
    assert sorted(nodes) == sorted([cluster.head_node.node_id, fresh.node_id])
