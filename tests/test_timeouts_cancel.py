"""Never hang silently: task timeouts (beyond Ray) and cancellation that reaches every kind of call."""

import asyncio
import os
import threading
import time

import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = pytest.mark.timeout(90)
luminary_only = pytest.mark.skipif(IS_RAY, reason="timeout_s is Luminary's (Ray has no task timeouts)")


@luminary_only
def test_task_timeout_interrupts_and_raises_task_timeout_error(ray_start):
    @ray.remote(timeout_s=0.5, max_retries=3)
    def slow():
        time.sleep(60)

    start = time.monotonic()
    with pytest.raises(ray.exceptions.TaskTimeoutError) as info:
        ray.get(slow.remote(), timeout=30)
    assert time.monotonic() - start < 10
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, ray.exceptions.RayError)
    assert "timeout_s=0.5" in str(err) and "time.sleep(60)" in str(err)   # where it was interrupted

    @ray.remote(timeout_s=5)
    def quick():
        return "fine"
    assert ray.get(quick.remote(), timeout=30) == "fine"   # calls within their timeout are untouched


@luminary_only
def test_timeouts_of_actor_calls_of_every_kind(ray_start):
    @ray.remote
    class Sync:
        @ray.method(timeout_s=0.5)
        def stuck(self):
            time.sleep(60)

        def ok(self):
            return "alive"

    @ray.remote(max_concurrency=2)
    class Threaded:
        def stuck(self):
            while True:
                time.sleep(0.01)

        def ok(self):
            return "alive"

    @ray.remote
    class Async:
        async def stuck(self):
            await asyncio.sleep(60)

        async def ok(self):
            return "alive"

    s, t, a = Sync.remote(), Threaded.remote(), Async.remote()
    for call in (s.stuck.remote(), t.stuck.options(timeout_s=0.5).remote(), a.stuck.options(timeout_s=0.5).remote()):
        with pytest.raises(ray.exceptions.TaskTimeoutError):
            ray.get(call, timeout=30)
    assert ray.get([s.ok.remote(), t.ok.remote(), a.ok.remote()], timeout=30) == ["alive"] * 3


@luminary_only
@pytest.mark.parametrize("ray_start_fresh", [{"num_cpus": 1}], indirect=True)
def test_a_call_that_ignores_the_interrupt_is_ended_and_retried_when_asked(ray_start_fresh, tmp_path):
    @ray.remote(timeout_s=0.3, max_retries=0)
    def stubborn():
        while True:
            try:
                time.sleep(60)
            except BaseException:
                pass

    with pytest.raises(ray.exceptions.TaskTimeoutError):
        ray.get(stubborn.remote(), timeout=60)

    counter = tmp_path / "attempts"

    @ray.remote(timeout_s=0.3, max_retries=2, retry_exceptions=[ray.exceptions.TaskTimeoutError])
    def flaky(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        with open(path, "w") as f:
            f.write(str(n + 1))
        if n < 2:
            time.sleep(60)
        return n

    # the worker the stubborn task ran on is gone; that costs the next task no retry
    assert ray.get(flaky.remote(str(counter)), timeout=60) == 2
    assert counter.read_text() == "3"


@luminary_only
def test_timeout_s_is_validated(ray_start):
    for bad in (0, -1, float("nan"), float("inf"), "10"):
        with pytest.raises(ValueError, match="timeout_s"):
            ray.remote(timeout_s=bad)(lambda: 1)


def test_recursive_cancel_reaches_the_tasks_a_task_submitted(ray_start):
    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1

        def get(self):
            return self.n

    @ray.remote
    def child(counter, started):
        ray.get(started.inc.remote())
        time.sleep(3)
        ray.get(counter.inc.remote())

    @ray.remote
    def parent(counter, started):
        ray.get(child.remote(counter, started))

    done, started = Counter.remote(), Counter.remote()
    ref = parent.remote(done, started)
    poll_for(lambda: ray.get(started.get.remote()) == 1, timeout=30, desc="the child to start")
    ray.cancel(ref, recursive=True)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)):
        ray.get(ref, timeout=30)
    # had the child not been cancelled, it would have counted by now
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert ray.get(done.get.remote()) == 0
        time.sleep(0.5)


@luminary_only
def test_cancel_interrupts_a_running_threaded_actor_method(ray_start):
    @ray.remote(max_concurrency=2)
    class Busy:
        def __init__(self):
            self.started = threading.Event()

        def spin(self):
            self.started.set()
            while True:
                time.sleep(0.01)

        def is_started(self):
            return self.started.is_set()

    b = Busy.remote()
    ref = b.spin.remote()
    poll_for(lambda: ray.get(b.is_started.remote()), timeout=20, desc="spin to start")
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=20)
    assert ray.get(b.is_started.remote()) is True
    with pytest.raises(ValueError, match="force"):
        ray.cancel(b.spin.remote(), force=True)


@luminary_only
@pytest.mark.timeout(120)
def test_a_long_get_says_what_it_waits_for(tmp_path):
    import subprocess
    import sys
    import textwrap
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent("""
        import time
        import luminary as ray
        ray.init(num_cpus=1)

        @ray.remote
        def hog():
            time.sleep(3)

        @ray.remote(resources={"unobtainium": 1})
        def never():
            return 1

        @ray.remote
        def after(x):
            return x

        refs = [hog.remote(), never.remote()]
        refs.append(after.remote(refs[1]))
        try:
            ray.get(refs, timeout=2.5)
        except ray.exceptions.GetTimeoutError:
            print("timed out as asked")
    """))
    env = dict(os.environ, LUMINARY_WAIT_WARN_S="0.5")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, env=env)
    assert "timed out as asked" in out.stdout, out.stderr[-3000:]
    err = out.stderr
    assert "get() has waited" in err
    assert "hog (task" in err and "is running on worker" in err
    assert "never (task" in err and "waiting for resources" in err and "unobtainium" in err
    assert "after (task" in err and "waiting for 1 argument" in err
