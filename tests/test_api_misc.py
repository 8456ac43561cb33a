"""init/shutdown, runtime context, resources, nodes, driver logs."""

import os
import string
import sys
import time

import pytest

from _backend import poll_for, ray

HEX = set(string.hexdigits.lower())


def is_hex(value):
    return isinstance(value, str) and len(value) > 0 and set(value) <= HEX


@ray.remote
def add_one(x):
    return x + 1


@ray.remote
def hold_until(started, release, timeout=60):
    open(started, "w").close()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(release):
            return "released"
        time.sleep(0.01)
    return "timed out"


# --------------------------------------------------------------------------
# runtime context
# --------------------------------------------------------------------------

def test_runtime_context_in_driver(ray_start):
    ctx = ray.get_runtime_context()
    assert is_hex(ctx.get_job_id())
    assert is_hex(ctx.get_node_id())
    assert is_hex(ctx.get_worker_id())
    # Ray: there is no current task in the driver
    assert ctx.get_task_id() is None


def test_runtime_context_in_task(ray_start):
    @ray.remote
    def context():
        ctx = ray.get_runtime_context()
        return ctx.get_job_id(), ctx.get_task_id(), ctx.get_node_id(), ctx.get_worker_id()

    driver = ray.get_runtime_context()
    job_a, task_a, node_a, worker_a = ray.get(context.remote())
    job_b, task_b, node_b, worker_b = ray.get(context.remote())
    for value in (job_a, task_a, node_a, worker_a):
        assert is_hex(value)
    assert job_a == job_b == driver.get_job_id()
    assert node_a == node_b == driver.get_node_id()
    assert task_a != task_b
    assert worker_a != driver.get_worker_id()
    assert worker_b != driver.get_worker_id()


# --------------------------------------------------------------------------
# resources and nodes
# --------------------------------------------------------------------------

def test_cluster_resources(ray_start):
    total = ray.cluster_resources()
    assert isinstance(total, dict)
    assert total["CPU"] == 2
    assert total.get("GPU", 0) == 0


@pytest.mark.timeout(90)
def test_available_resources_track_running_tasks(ray_start, tmp_path):
    # Ray updates available_resources asynchronously: poll, don't sleep.
    poll_for(lambda: ray.available_resources().get("CPU", 0) == 2, timeout=30,
             desc="all CPUs available")
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    ref = hold_until.remote(started, release)
    poll_for(lambda: os.path.exists(started), timeout=60, desc="task start")
    poll_for(lambda: ray.available_resources().get("CPU", 0) == 1, timeout=30,
             desc="one CPU in use")
    assert ray.cluster_resources()["CPU"] == 2
    open(release, "w").close()
    assert ray.get(ref, timeout=30) == "released"
    poll_for(lambda: ray.available_resources().get("CPU", 0) == 2, timeout=30,
             desc="CPU given back")


def test_nodes(ray_start):
    nodes = ray.nodes()
    assert isinstance(nodes, list) and len(nodes) == 1
    node = nodes[0]
    assert isinstance(node, dict)
    assert node["NodeID"] == ray.get_runtime_context().get_node_id()
    assert node["Alive"] is True
    assert node["Resources"]["CPU"] == 2


def test_get_gpu_ids_cpu_only(ray_start):
    assert ray.get_gpu_ids() == []

    @ray.remote
    def gpu_ids():
        return ray.get_gpu_ids()

    assert ray.get(gpu_ids.remote()) == []


# --------------------------------------------------------------------------
# driver logs
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_print_from_task_reaches_driver(ray_start, capfd):
    @ray.remote
    def chatty_task_name(tag):
        print("stdout line " + tag)
        print("stderr line " + tag, file=sys.stderr)
        return tag

    tag = "tag-%d-%d" % (os.getpid(), time.time_ns())
    assert ray.get(chatty_task_name.remote(tag)) == tag
    seen = {"out": "", "err": ""}

    def printed():
        captured = capfd.readouterr()
        seen["out"] += captured.out
        seen["err"] += captured.err
        both = seen["out"] + seen["err"]
        return ("stdout line " + tag) in both and ("stderr line " + tag) in both

    poll_for(printed, timeout=30, interval=0.05, desc="task output in the driver")
    line = next(ln for ln in (seen["out"] + seen["err"]).splitlines()
                if ("stdout line " + tag) in ln)
    # Ray prefixes lines with "(chatty_task_name pid=...)"
    assert "chatty_task_name" in line
    assert ("stdout line " + tag) in seen["out"]


# --------------------------------------------------------------------------
# init / shutdown
# --------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_init_shutdown_lifecycle(shutdown_only):
    assert ray.is_initialized() is False
    ray.init(num_cpus=1)
    assert ray.is_initialized() is True
    assert ray.get(add_one.remote(1)) == 2
    # a second init raises unless ignore_reinit_error=True
    with pytest.raises(RuntimeError):
        ray.init(num_cpus=1)
    ray.init(num_cpus=2, ignore_reinit_error=True)
    assert ray.is_initialized()
    assert ray.cluster_resources()["CPU"] == 1  # the running cluster is kept
    assert ray.get(add_one.remote(2)) == 3
    ray.shutdown()
    assert ray.is_initialized() is False
    ray.shutdown()  # a second shutdown is a no-op
    assert ray.is_initialized() is False
    # a new cluster can be started after shutdown, with other settings
    ray.init(num_cpus=3, address=None)
    assert ray.is_initialized()
    assert ray.cluster_resources()["CPU"] == 3
    assert ray.nodes()[0]["Resources"]["CPU"] == 3
    assert ray.get(add_one.remote(3)) == 4


@pytest.mark.timeout(90)
def test_init_unknown_keyword(shutdown_only):
    # Ray raises RuntimeError("Unknown keyword argument(s): ...") (not TypeError)
    with pytest.raises(RuntimeError, match="no_such_kwarg"):
        ray.init(num_cpus=1, no_such_kwarg=1)
    assert not ray.is_initialized()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("ray_start_fresh", [{
    "address": None,
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": {"custom": 2},
    "namespace": "luminary_test_ns",
    "log_to_driver": False,
}], indirect=True)
def test_init_options(ray_start_fresh, tmp_path):
    total = ray.cluster_resources()
    assert total["CPU"] == 1
    assert total["custom"] == 2
    assert total.get("GPU", 0) == 0
    assert ray.get_runtime_context().namespace == "luminary_test_ns"

    @ray.remote(resources={"custom": 1})
    def uses_custom():
        return "custom ok"

    assert ray.get(uses_custom.remote(), timeout=60) == "custom ok"

    # two tasks needing custom=1 and no CPU run at the same time on 1 CPU
    @ray.remote(num_cpus=0, resources={"custom": 1})
    def barrier(directory, parties):
        open(os.path.join(directory, "%d-%d" % (os.getpid(), time.time_ns())), "w").close()
        deadline = time.time() + 45
        while time.time() < deadline:
            if len(os.listdir(directory)) >= parties:
                return True
            time.sleep(0.01)
        return False

    assert ray.get([barrier.remote(str(tmp_path), 2) for _ in range(2)], timeout=60) == [True, True]

    # a task needing more of the custom resource than exists stays pending
    too_much = uses_custom.options(resources={"custom": 3}).remote()
    ready, _ = ray.wait([too_much], timeout=0.3)
    assert ready == []
    ray.cancel(too_much)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(too_much, timeout=30)
