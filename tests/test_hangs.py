"""Programs that once hung or silently lost work (issue: hangs and lost work).

Each test is a small program a Ray user writes; each runs on Luminary and, with
LUMINARY_TEST_BACKEND=ray, on Ray, whose behaviour is the reference.
"""

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from _backend import BACKEND, IS_RAY, poll_for, ray

pg_mod = __import__(f"{BACKEND}.util.placement_group", fromlist=["x"])
ss_mod = __import__(f"{BACKEND}.util.scheduling_strategies", fromlist=["x"])


# --------------------------------------------------------------------------
# the same refs nested in the arguments of several tasks
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_same_nested_refs_passed_twice(ray_start):
    @ray.remote
    def total(refs):
        return sum(ray.get(refs))

    refs = [ray.put(1)]
    assert ray.get(total.remote(refs), timeout=20) == 1
    # the second task reuses the worker that already fetched and let go of the ref
    assert ray.get(total.remote(refs), timeout=20) == 1
    assert ray.get([total.remote(refs) for _ in range(5)], timeout=20) == [1] * 5


@pytest.mark.timeout(60)
def test_many_tasks_share_a_list_of_large_refs(ray_start):
    @ray.remote
    def firsts(refs):
        return [int(a[0]) for a in ray.get(refs)]

    big = [ray.put(np.full(1 << 17, i, dtype=np.int64)) for i in range(10)]   # 1 MiB each
    out = ray.get([firsts.remote(big) for _ in range(10)], timeout=40)
    assert out == [list(range(10))] * 10


@pytest.mark.timeout(90)
@pytest.mark.parametrize("ray_start_fresh", [{"num_cpus": 1}], indirect=True)
def test_blocked_tasks_release_cpu_under_races(ray_start_fresh):
    """Tasks blocked in get (of shared large refs, of their own children, in wait) give their
    CPU back so the tasks they wait for can run, also with fractional requests."""
    big = [ray.put(np.full(300_000, i)) for i in range(6)]

    @ray.remote
    def leaf(x):
        return x

    @ray.remote
    def user(refs, i):
        return sum(int(a[0]) for a in ray.get(refs)) + ray.get(leaf.remote(i))

    assert ray.get([user.remote(big, i) for i in range(20)], timeout=60) == [15 + i for i in range(20)]

    @ray.remote(num_cpus=0.3)
    def fractional(refs, i):
        ray.get(refs[i % len(refs)])
        return ray.get(leaf.options(num_cpus=0.3).remote(i))

    assert ray.get([fractional.remote(big, i) for i in range(40)], timeout=60) == list(range(40))

    @ray.remote(num_cpus=1)
    def child():
        return 1

    @ray.remote(num_cpus=1)
    def parent():
        return sum(ray.get([child.remote() for _ in range(4)]))

    @ray.remote(num_cpus=1)
    def waiter():
        ready, _ = ray.wait([child.remote()], timeout=30)
        return len(ready)

    assert ray.get([parent.remote() for _ in range(4)], timeout=60) == [4] * 4
    assert ray.get([waiter.remote() for _ in range(4)], timeout=60) == [1] * 4
    # and every CPU comes back once the work is done
    poll_for(lambda: ray.available_resources().get("CPU") == 1.0, timeout=10, desc="the CPU to be free again")


# --------------------------------------------------------------------------
# placement groups
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("ray_start_fresh", [{"num_cpus": 2}], indirect=True)
def test_placement_group_captures_child_tasks(ray_start_fresh):
    pg = pg_mod.placement_group([{"CPU": 2}])
    ray.get(pg.ready(), timeout=20)

    @ray.remote(num_cpus=1)
    def child():
        return ray.get_runtime_context().get_placement_group_id()

    @ray.remote(num_cpus=1)
    def parent():
        current = pg_mod.get_current_placement_group()
        return ray.get(child.remote()), current.id.hex() if current is not None else None

    strategy = ss_mod.PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    child_pg, parent_pg = ray.get(parent.options(scheduling_strategy=strategy).remote(), timeout=20)
    assert child_pg == pg.id.hex()
    assert parent_pg == pg.id.hex()
    # the driver is in no group
    assert pg_mod.get_current_placement_group() is None
    pg_mod.remove_placement_group(pg)
    assert ray.get(child.remote(), timeout=20) is None


@pytest.mark.timeout(60)
def test_placement_group_table_keeps_the_connection(ray_start):
    pg = pg_mod.placement_group([{"CPU": 1}, {"CPU": 0.5}])
    ray.get(pg.ready(), timeout=20)
    table = pg_mod.placement_group_table()
    entry = table[pg.id.hex()]
    assert entry["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 0.5}}
    assert set(entry["bundles_to_node_id"]) == {0, 1}
    assert pg_mod.placement_group_table(pg)["state"] == "CREATED"
    # the connection to the GCS is still good for everything else
    assert ray.cluster_resources()["CPU"] == 2.0
    pg_mod.remove_placement_group(pg)


# --------------------------------------------------------------------------
# actor method retries
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_actor_method_retry_exceptions(ray_start):
    @ray.remote
    class Flaky:
        def __init__(self):
            self.n = 0

        @ray.method(retry_exceptions=[ValueError], max_task_retries=3)
        def until_third(self):
            self.n += 1
            if self.n < 3:
                raise ValueError("not yet")
            return self.n

        @ray.method(retry_exceptions=[KeyError], max_task_retries=3)
        def other_error(self):
            self.n += 100
            raise ValueError("not retried: not a KeyError")

    a = Flaky.remote()
    assert ray.get(a.until_third.remote(), timeout=20) == 3
    with pytest.raises(ValueError):
        ray.get(a.other_error.remote(), timeout=20)
    assert ray.get(a.until_third.remote(), timeout=20) == 104   # ran exactly once


@pytest.mark.timeout(60)
def test_actor_level_task_retries_with_method_retry_exceptions(ray_start):
    @ray.remote(max_task_retries=2)
    class AlwaysFails:
        def __init__(self):
            self.n = 0

        @ray.method(retry_exceptions=[ValueError])
        def fail(self):
            self.n += 1
            raise ValueError(str(self.n))

    b = AlwaysFails.remote()
    with pytest.raises(ValueError, match="3"):
        ray.get(b.fail.remote(), timeout=20)


# --------------------------------------------------------------------------
# get of several refs, one failed
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_get_raises_a_failed_ref_without_waiting_for_the_others(ray_start):
    @ray.remote
    def forever():
        time.sleep(600)

    @ray.remote
    def bad():
        raise ValueError("boom")

    slow = forever.remote()
    failed = bad.remote()
    start = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        ray.get([slow, failed], timeout=30)
    assert time.monotonic() - start < 10
    # already failed before the get
    with pytest.raises(ValueError, match="boom"):
        ray.get([slow, failed], timeout=30)
    ray.cancel(slow, force=True)


# --------------------------------------------------------------------------
# a task nobody waits for, submitted as the script's last line
# --------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_last_line_task_runs_and_prints(tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "last_line.py"
    script.write_text(textwrap.dedent(f"""
        import {BACKEND} as ray
        ray.init(num_cpus=1)

        @ray.remote
        def echo(x):
            print("ECHO-FROM-TASK", x)
            open({str(marker)!r}, "w").write(str(x))
            return x

        echo.remote(7)
    """))
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert marker.read_text() == "7"
    assert "ECHO-FROM-TASK 7" in out.stdout + out.stderr


# --------------------------------------------------------------------------
# cancelling a running async actor method
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_cancel_running_async_actor_method(ray_start):
    @ray.remote
    class Sleeper:
        def __init__(self):
            self.started = False
            self.cancelled = False

        async def nap(self):
            self.started = True
            try:
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                self.cancelled = True
                raise

        async def state(self):
            return self.started, self.cancelled

    s = Sleeper.remote()
    ref = s.nap.remote()
    poll_for(lambda: ray.get(s.state.remote())[0], timeout=20, desc="the method to start")
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=20)
    assert ray.get(s.state.remote(), timeout=20) == (True, True)
    # the actor still serves calls
    assert ray.get(s.state.remote(), timeout=20)[1] is True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ray_start_fresh", [{"num_cpus": 2}], indirect=True)
def test_release_cpus_when_actor_creation_task_blocking(ray_start_fresh):
    """Ray's own test: after the constructor's get, the actor holds one CPU and one is free."""
    @ray.remote(num_cpus=1)
    def get_100():
        time.sleep(0.5)
        return 100

    @ray.remote(num_cpus=1)
    class A:
        def __init__(self):
            self.num = ray.get(get_100.remote())

        def get_num(self):
            return self.num

    a = A.remote()
    assert ray.get(a.get_num.remote(), timeout=30) == 100
    poll_for(lambda: ray.available_resources().get("CPU") == 1.0, timeout=10, desc="one CPU free")


@pytest.mark.timeout(60)
@pytest.mark.skipif(IS_RAY, reason="Ray deadlocks here: its actor holds the only CPU while its constructor waits")
@pytest.mark.parametrize("ray_start_fresh", [{"num_cpus": 1}], indirect=True)
def test_actor_constructor_blocked_in_get_lends_its_cpu(ray_start_fresh):
    """Ray's release-CPU pattern: an actor holding the only CPU waits in __init__ for a task."""
    @ray.remote(num_cpus=1)
    def get_100():
        return 100

    @ray.remote(num_cpus=1)
    class A:
        def __init__(self):
            self.num = ray.get(get_100.remote())

        def get_num(self):
            return self.num

    a = A.remote()
    assert ray.get(a.get_num.remote(), timeout=30) == 100
    # the actor holds its CPU again once the constructor is done
    poll_for(lambda: ray.available_resources().get("CPU", 0) == 0, timeout=10, desc="the actor's CPU")
