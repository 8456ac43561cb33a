"""The head survives its GCS: SIGKILL the GCS of a `luminary start --head` cluster and the head
restarts it on the same storage and port; node managers, workers and drivers reconnect, and
nothing a user was told succeeded is lost or done twice.  Luminary only (Ray's GCS fault
tolerance needs an external Redis and KubeRay)."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(IS_RAY, reason="Luminary's GCS restart")]

CLI = [sys.executable, "-m", "luminary.cli.main"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliCluster:
    """Nodes started with `luminary start`, stopped by their own PIDs (never `luminary stop`,
    which would stop other clusters of this user too)."""

    def __init__(self, storage=None, env=None):
        self.port = _free_port()
        self.env = dict(os.environ, **(env or {}))
        self.address = f"127.0.0.1:{self.port}"
        self.pids = []
        args = ["--head", "--port", str(self.port), "--num-cpus", "2"]
        if storage:
            args += ["--storage", storage]
        self.start(*args)

    def start(self, *args, check=True):
        out = subprocess.run(CLI + ["start", *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check:
            assert out.returncode == 0, out.stderr
            self.pids = [r["pid"] for _, r in self.records()]
        return out

    def join(self, **env):
        out = subprocess.run(CLI + ["start", "--address", self.address, "--num-cpus", "1"],
                             env=dict(self.env, **env), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        self.pids = [r["pid"] for _, r in self.records()]

    def records(self):
        from luminary._private import procutil
        out = []
        for path in glob.glob(os.path.join(procutil.state_dir("nodes"), "*.json")):
            try:
                rec = json.load(open(path))
            except (OSError, ValueError):
                continue
            if rec.get("gcs_address") == f"tcp:{self.address}":
                out.append((path, rec))
        return out

    @property
    def head_pid(self):
        return next(r["pid"] for _, r in self.records() if r["head"])

    def gcs_pid(self):
        for child in psutil.Process(self.head_pid).children():
            try:
                if "gcs" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
            except psutil.Error:
                pass
        return None

    def kill_gcs(self):
        old = poll_for(self.gcs_pid, timeout=15, desc="a running GCS")
        os.kill(old, signal.SIGKILL)
        return old

    def wait_new_gcs(self, old):
        return poll_for(lambda: (p := self.gcs_pid()) and p != old and p, timeout=20, desc="the restarted GCS")

    def status(self):
        return subprocess.run(CLI + ["status", "--address", self.address], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def stop(self):
        from luminary._private.node import launch
        for path, rec in self.records():
            try:
                os.killpg(rec["pid"], signal.SIGKILL)
            except OSError:
                pass
            shutil.rmtree(rec.get("session_dir") or "/nonexistent", ignore_errors=True)
            os.unlink(path)
        launch.remove_cluster_file(f"tcp:{self.address}")
        poll_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                 for p in self.pids), timeout=15, desc="the cluster's nodes to end")


@pytest.fixture
def cli_cluster(shutdown_only):
    clusters = []

    def make(**kw):
        c = CliCluster(**kw)
        clusters.append(c)
        return c
    try:
        yield make
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for c in clusters:
            c.stop()


def _driver(address, code, **env):
    """A driver script in its own process (a job), started now; returns the Popen."""
    script = textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT, ADDR=address, **env),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


JOB = """
import os, time, luminary as ray
ray.init(address=os.environ["ADDR"])

@ray.remote
def square(x):
    time.sleep(0.01)
    return x * x

@ray.remote
class Tally:
    def __init__(self):
        self.total = 0
    def add(self, x):
        self.total += x
        return self.total

t = Tally.remote()
ray.get(t.add.remote(0))
print("ready", flush=True)
results, adds = [], []
for i in range(60):
    results.append(square.remote(i))
    adds.append(t.add.remote(1))
    time.sleep(0.02)
assert ray.get(results) == [i * i for i in range(60)]
assert ray.get(adds) == list(range(1, 61))         # each add ran exactly once, in order
late = Tally.remote()                               # needs the GCS: created after it is back
print("done", ray.get(t.add.remote(0)), ray.get(late.add.remote(5)), flush=True)
"""


def test_job_of_tasks_and_actor_calls_survives_a_gcs_kill(cli_cluster):
    c = cli_cluster()
    job = _driver(c.address, JOB)
    try:
        assert job.stdout.readline().strip() == "ready", job.stderr.read()
        old = c.kill_gcs()                          # mid-job
        out, err = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "done 60 5"
    c.wait_new_gcs(old)


def test_named_detached_actor_kv_and_placement_group_survive(cli_cluster):
    c = cli_cluster()
    c.join()
    status_before = c.status().stdout
    ray.init(address=c.address, namespace="keep")
    from luminary.experimental import internal_kv as kv
    from luminary.util.placement_group import placement_group, placement_group_table

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    counter = Counter.options(name="counter", lifetime="detached").remote()
    assert ray.get([counter.inc.remote() for _ in range(3)]) == [1, 2, 3]
    assert kv._internal_kv_put(b"model", b"v1")
    pg = placement_group([{"CPU": 1}], strategy="PACK", lifetime="detached", name="grp")
    assert pg.wait(30)

    old = c.kill_gcs()
    assert ray.get(counter.inc.remote()) == 4          # actor calls go straight to the worker meanwhile
    assert kv._internal_kv_get(b"model") == b"v1"      # waits for the restarted GCS
    c.wait_new_gcs(old)
    ray.shutdown()

    # a new driver after the restart finds all of it
    ray.init(address=c.address, namespace="keep")
    again = ray.get_actor("counter")
    assert ray.get(again.inc.remote()) == 5            # same incarnation, state kept
    assert kv._internal_kv_get(b"model") == b"v1"
    table = placement_group_table()
    assert [g["state"] for g in table.values() if g["name"] == "grp"] == ["CREATED"]

    @ray.remote(num_cpus=1)
    def inside():
        return "in the group"
    from luminary.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    assert ray.get(inside.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()) == "in the group"
    status_after = c.status().stdout
    nodes = lambda text: sorted(line.split()[1] for line in text.splitlines() if line.startswith("  node "))  # noqa: E731
    assert "2 alive node(s), 0 dead" in status_before and "2 alive node(s), 0 dead" in status_after
    assert nodes(status_after) == nodes(status_before) and len(nodes(status_before)) == 2
    ray.kill(again)


def test_checkpoint_acknowledged_before_a_gcs_restart_restores_the_actor(cli_cluster):
    c = cli_cluster()
    ray.init(address=c.address)

    @ray.remote(checkpoint_interval=1, max_restarts=1)
    class Account:
        def __init__(self):
            self.balance = 0

        def deposit(self, x):
            self.balance += x
            return self.balance

        def pid(self):
            return os.getpid()

    acct = Account.remote()
    assert ray.get([acct.deposit.remote(10), acct.deposit.remote(5)]) == [10, 15]
    c.wait_new_gcs(c.kill_gcs())
    os.kill(ray.get(acct.pid.remote()), signal.SIGKILL)   # the restarted GCS restarts it from storage
    assert poll_for(lambda: _try(lambda: ray.get(acct.deposit.remote(1))), timeout=30) == 16


def _try(fn):
    try:
        return fn()
    except ray.exceptions.RayActorError:
        return None


def test_reconnect_window_expiry_gives_a_clear_error(cli_cluster, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    c = cli_cluster(storage=str(state / "gcs.sqlite"))
    job = _driver(c.address, """
        import os, sys, time, luminary as ray
        from luminary.exceptions import RaySystemError
        ray.init(address=os.environ["ADDR"])
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.monotonic()
        try:
            ray.get_actor("anything")
        except RaySystemError as e:
            print(type(e).__name__, round(time.monotonic() - t0), "|", e, flush=True)
        """, LUMINARY_GCS_RECONNECT_S="1.5")
    try:
        assert job.stdout.readline().strip() == "ready", job.stderr.read()
        os.rename(state, tmp_path / "moved")     # the GCS cannot come back: its storage's directory is gone
        c.kill_gcs()
        job.stdin.write("go\n")
        job.stdin.flush()
        out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    kind, rest = out.split(" ", 1)
    assert kind == "GcsUnavailableError", out + err[-2000:]
    assert int(rest.split(" ")[0]) <= 3
    assert f"The GCS at tcp:{c.address} has been unreachable for 1.5s" in rest
    assert "LUMINARY_GCS_RECONNECT_S" in rest
    head_log = open(glob.glob(os.path.join(c.records()[0][1]["session_dir"], "logs", "node.log"))[0]).read()
    assert "restarting the GCS failed" in head_log and "does not exist" in head_log


def test_two_gcss_on_one_storage_refuse(cli_cluster, tmp_path):
    path = str(tmp_path / "shared.sqlite")
    cli_cluster(storage=path)
    other = CliCluster.__new__(CliCluster)
    other.port, other.env = _free_port(), dict(os.environ)
    out = subprocess.run(CLI + ["start", "--head", "--port", str(other.port), "--storage", path], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "Another GCS" in out.stderr and path in out.stderr, out.stderr
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    out = subprocess.run(CLI + ["start", "--head", "--port", str(other.port), "--storage", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "corrupted" in out.stderr and str(bad) in out.stderr, out.stderr
    assert bad.read_bytes() == b"garbage" * 1000


@pytest.fixture
def redis_server(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (.ci/run installs it with apt-get where it can)")
    pytest.importorskip("redis", reason="the redis package (pip install 'luminary[redis]')")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(port=port)

    def up():
        try:
            return client.ping()
        except redis.RedisError:
            return False
    try:
        poll_for(up, timeout=10, desc="redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.kill()
        proc.wait()


def test_survival_with_redis_storage(cli_cluster, redis_server):
    c = cli_cluster(storage=redis_server)
    ray.init(address=c.address)
    from luminary.experimental import internal_kv as kv

    @ray.remote
    class Box:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)
            return list(self.items)

    box = Box.options(name="box", lifetime="detached").remote()
    assert ray.get(box.add.remote("a")) == ["a"]
    kv._internal_kv_put(b"k", b"redis")
    old = c.kill_gcs()
    assert kv._internal_kv_get(b"k") == b"redis"
    c.wait_new_gcs(old)
    assert ray.get(ray.get_actor("box").add.remote("b")) == ["a", "b"]
    assert ray.get(Box.remote().add.remote("new")) == ["new"]
    # a second head on the same Redis database is refused while this one holds the lock
    out = subprocess.run(CLI + ["start", "--head", "--port", str(_free_port()), "--storage", redis_server],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "holds the lock" in out.stderr, out.stderr
    ray.kill(box)
