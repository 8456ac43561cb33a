"""Actors through real processes: ordering, handles, kinds, options, lifecycle, bad input."""
import asyncio
import os
import threading
import time

import psutil
import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = pytest.mark.timeout(90)


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()


def test_calls_from_one_caller_run_in_order(ray_start):
    c = Counter.remote()
    refs = [c.inc.remote() for _ in range(1000)]
    assert ray.get(refs) == list(range(1, 1001))


def test_constructor_args_and_objectref_args(ray_start):
    start = ray.put(100)
    c = Counter.remote(start)
    k = ray.put(5)
    assert ray.get(c.inc.remote(k)) == 105


def test_handles_passed_to_tasks_and_actors(ray_start):
    c = Counter.remote()

    @ray.remote
    def bump(h, n):
        return ray.get([h.inc.remote() for _ in range(n)])[-1]

    @ray.remote
    class Forwarder:
        def __init__(self, h):
            self.h = h

        def bump(self):
            return ray.get(self.h.inc.remote(10))

    assert ray.get(bump.remote(c, 3)) == 3
    f = Forwarder.remote(c)
    assert ray.get(f.bump.remote()) == 13
    assert ray.get(c.get.remote()) == 13


def test_method_num_returns(ray_start):
    @ray.remote
    class Multi:
        @ray.method(num_returns=2)
        def two(self):
            return 1, 2

        def three(self):
            return 1, 2, 3

    m = Multi.remote()
    a, b = m.two.remote()
    assert ray.get([a, b]) == [1, 2]
    x, y, z = m.three.options(num_returns=3).remote()
    assert ray.get([x, y, z]) == [1, 2, 3]


def test_threaded_actor_runs_calls_concurrently(ray_start):
    @ray.remote(max_concurrency=4)
    class Meeting:
        def __init__(self):
            self.barrier = threading.Barrier(4, timeout=20)

        def join(self):
            return self.barrier.wait()   # needs 4 calls in flight at once

    m = Meeting.remote()
    assert sorted(ray.get([m.join.remote() for _ in range(4)])) == [0, 1, 2, 3]


def test_async_actor_interleaves_calls(ray_start):
    @ray.remote
    class AsyncBox:
        def __init__(self):
            self.event = asyncio.Event()

        async def wait_for_signal(self):
            await asyncio.wait_for(self.event.wait(), 20)
            return "released"

        async def signal(self):
            self.event.set()
            return "set"

    a = AsyncBox.remote()
    waiting = a.wait_for_signal.remote()
    assert ray.get(a.signal.remote()) == "set"
    assert ray.get(waiting) == "released"


def test_async_actor_default_concurrency_is_high(ray_start):
    @ray.remote
    class Sleeper:
        async def nap(self):
            await asyncio.sleep(0.5)
            return 1

    s = Sleeper.remote()
    ray.get(s.nap.remote())
    t0 = time.monotonic()
    assert sum(ray.get([s.nap.remote() for _ in range(50)])) == 50
    assert time.monotonic() - t0 < 5     # 50 x 0.5 s interleaved, not 25 s


def test_concurrency_groups(ray_start):
    @ray.remote(concurrency_groups={"io": 2, "compute": 1})
    class Grouped:
        def __init__(self):
            self.barrier = threading.Barrier(2, timeout=20)

        @ray.method(concurrency_group="io")
        def io(self):
            return self.barrier.wait()

        @ray.method(concurrency_group="compute")
        def compute(self):
            return threading.current_thread().name

    g = Grouped.remote()
    assert sorted(ray.get([g.io.remote(), g.io.remote()])) == [0, 1]
    assert isinstance(ray.get(g.compute.remote()), str)


def test_actor_method_generator(ray_start):
    @ray.remote
    class Gen:
        def count(self, n):
            for i in range(n):
                yield i

    g = Gen.remote()
    assert [ray.get(r) for r in g.count.remote(4)] == [0, 1, 2, 3]


def test_named_actor_get_actor_and_list(ray_start):
    c = Counter.options(name="named-counter").remote()
    ray.get(c.inc.remote())
    h = ray.get_actor("named-counter")
    assert ray.get(h.inc.remote()) == 2
    assert "named-counter" in ray.util.list_named_actors()
    with pytest.raises(ValueError):
        Counter.options(name="named-counter").remote()
    same = Counter.options(name="named-counter", get_if_exists=True).remote()
    assert ray.get(same.get.remote()) == 2
    ray.kill(c)


def test_get_actor_unknown_name_is_a_clear_error(ray_start):
    with pytest.raises(ValueError, match="no-such-actor"):
        ray.get_actor("no-such-actor")


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _call_fails(method):
    try:
        ray.get(method.remote(), timeout=10)
    except ray.exceptions.RayActorError:
        return True
    return False


def test_kill_makes_calls_fail(ray_start):
    c = Counter.remote()
    pid = ray.get(c.pid.remote())
    ray.kill(c)
    # kill is asynchronous in Ray: calls fail once it has taken effect
    poll_for(lambda: _call_fails(c.inc), timeout=20, desc="calls to a killed actor to fail")
    poll_for(lambda: _gone(pid), timeout=20, desc="killed actor process to exit")


def test_kill_with_restart_allowed_restarts(ray_start):
    c = Counter.options(max_restarts=1).remote()
    pid1 = ray.get(c.pid.remote())
    ray.kill(c, no_restart=False)
    pid2 = poll_for(lambda: _pid_after_restart(c, pid1), timeout=30, desc="restart")
    assert pid2 != pid1


def _pid_after_restart(handle, old):
    try:
        pid = ray.get(handle.pid.remote(), timeout=10)
    except ray.exceptions.RayActorError:
        return None
    return pid if pid != old else None


def test_constructor_error_fails_every_call(ray_start):
    @ray.remote
    class Broken:
        def __init__(self):
            raise ValueError("constructor went wrong")

        def f(self):
            return 1

    b = Broken.remote()
    for _ in range(2):
        with pytest.raises(ray.exceptions.ActorDiedError, match="constructor went wrong"):
            ray.get(b.f.remote())


def test_exit_actor_is_final(ray_start):
    @ray.remote(max_restarts=3)
    class Quitter:
        def quit(self):
            ray.actor.exit_actor()

        def ping(self):
            return "pong"

    q = Quitter.remote()
    assert ray.get(q.ping.remote()) == "pong"
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(q.quit.remote())
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(q.ping.remote())


def test_ray_terminate_runs_after_queued_calls(ray_start):
    c = Counter.remote()
    refs = [c.inc.remote() for _ in range(5)]
    c.__ray_terminate__.remote()
    assert ray.get(refs) == [1, 2, 3, 4, 5]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(c.inc.remote())


def test_actor_ends_when_last_handle_goes(ray_start):
    c = Counter.remote()
    pid = ray.get(c.pid.remote())
    del c
    poll_for(lambda: _gone(pid), timeout=20, desc="actor process to exit after its last handle went away")


def test_a_method_alone_keeps_its_actor_and_the_last_reference_ends_it_without_a_gc(ray_start):
    """A handle keeps the methods called on it, but nothing there points back at the handle: a
    method object kept alone still calls the actor, and dropping the last reference ends the
    actor by reference counting alone (the garbage collector off)."""
    import gc
    c = Counter.remote()
    pid = ray.get(c.pid.remote())
    m = c.inc
    del c
    assert ray.get(m.remote()) == 1
    gc.disable()
    try:
        del m
        poll_for(lambda: _gone(pid), timeout=20, desc="actor process to exit after its last reference went away")
    finally:
        gc.enable()


def test_detached_actor_survives_its_handle(ray_start):
    c = Counter.options(name="detached-one", lifetime="detached").remote()
    ray.get(c.inc.remote())
    del c
    h = ray.get_actor("detached-one")
    assert ray.get(h.inc.remote()) == 2
    ray.kill(h)


def test_restart_after_crash_reruns_init(ray_start):
    @ray.remote(max_restarts=1)
    class Fragile:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

        def crash(self):
            os._exit(1)

        def reconstructed(self):
            return ray.get_runtime_context().was_current_actor_reconstructed

    f = Fragile.remote()
    assert ray.get([f.inc.remote(), f.inc.remote()]) == [1, 2]
    assert ray.get(f.reconstructed.remote()) is False
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(f.crash.remote())
    assert ray.get(f.inc.remote()) == 1          # state starts again from __init__
    assert ray.get(f.reconstructed.remote()) is True


def test_max_task_retries_retries_calls_in_flight(ray_start, tmp_path):
    marker = str(tmp_path / "crashed-once")

    @ray.remote(max_restarts=1, max_task_retries=1)
    class Once:
        def crash_first_time(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "second attempt"

    o = Once.remote()
    assert ray.get(o.crash_first_time.remote(marker)) == "second attempt"


def test_runtime_context_inside_actor(ray_start):
    @ray.remote
    class Self:
        def ids(self):
            ctx = ray.get_runtime_context()
            return ctx.get_actor_id(), ctx.current_actor._actor_id.hex() if not IS_RAY else ctx.get_actor_id()

    s = Self.remote()
    actor_id, via_handle = ray.get(s.ids.remote())
    assert actor_id and actor_id == via_handle
    assert ray.get_runtime_context().get_actor_id() is None


def test_max_pending_calls(ray_start):
    @ray.remote(max_pending_calls=2)
    class Slow:
        def wait(self, t):
            time.sleep(t)

    s = Slow.remote()
    ray.get(s.wait.remote(0))
    refs = [s.wait.remote(1), s.wait.remote(1)]
    with pytest.raises(ray.exceptions.PendingCallsLimitExceeded):
        s.wait.remote(0)
    ray.get(refs)


def test_bad_input_errors(ray_start):
    with pytest.raises(TypeError, match="remote"):
        Counter()
    c = Counter.remote()
    with pytest.raises(TypeError, match="remote"):
        c.inc()
    with pytest.raises((TypeError, ValueError)):
        Counter.options(bogus_option=1)
    with pytest.raises(AttributeError):
        c.no_such_method

    if not IS_RAY:  # Ray lets a bound method travel; Luminary says what to pass instead
        @ray.remote
        def call(m):
            return m

        with pytest.raises(TypeError, match="actor handle"):
            call.remote(c.inc)
