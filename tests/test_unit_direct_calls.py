"""The paths that skip a thread hand-off: a caller writing a plain actor call itself, a threaded
actor's calls going straight to its group's threads, and decrements that wake the I/O thread at
most once per few milliseconds.  Each keeps what users rely on: calls in order per caller,
concurrency up to max_concurrency, dropped refs freed, a dead actor's calls failing."""
import os
import threading

import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = pytest.mark.timeout(120)


@ray.remote
class Log:
    def __init__(self):
        self.seen = []

    def add(self, i, *_ignored):
        self.seen.append(i)
        return i

    def get(self):
        return self.seen


def test_calls_keep_their_order_whichever_way_each_one_travels(ray_start):
    """Plain calls may be written by the caller's thread, calls with ObjectRef arguments go
    through the I/O thread: mixed, one after another, they still run in submission order."""
    log = Log.remote()
    dep = ray.put(1)
    refs = []
    for i in range(300):
        if i % 7 == 3:
            refs.append(log.add.remote(i, dep))     # an ObjectRef argument: the usual path
        elif i % 5 == 0:
            assert ray.get(log.add.remote(i)) == i  # synchronous: nothing in flight, may go direct
        else:
            refs.append(log.add.remote(i))
    ray.get(refs)
    assert ray.get(log.get.remote()) == list(range(300))


def test_calls_from_several_threads_each_keep_their_order(ray_start):
    log = Log.remote()
    ray.get(log.get.remote())

    def caller(k):
        for i in range(100):
            if i % 3 == 0:
                ray.get(log.add.remote((k, i)))
            else:
                log.add.remote((k, i))
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seen = [tuple(x) for x in ray.get(log.get.remote())]
    assert len(seen) == 300
    for k in range(3):
        assert [i for kk, i in seen if kk == k] == list(range(100))


@ray.remote(max_restarts=0)
class Fragile:
    def ping(self):
        return os.getpid()

    def die(self):
        os._exit(1)


def test_a_synchronous_call_to_an_actor_that_dies_raises_actor_died(ray_start):
    a = Fragile.remote()
    pid = ray.get(a.ping.remote())
    assert pid > 0
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(a.die.remote(), timeout=60)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(a.ping.remote(), timeout=60)


@ray.remote(max_restarts=1, max_task_retries=1)
class Restartable:
    def __init__(self):
        self.pid = os.getpid()

    def ping(self):
        return self.pid

    def die_once(self, marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return self.pid


def test_a_synchronous_call_lost_with_its_actor_is_retried_on_the_restarted_one(ray_start, tmp_path):
    a = Restartable.remote()
    first = ray.get(a.ping.remote())
    second = ray.get(a.die_once.remote(str(tmp_path / "died")), timeout=60)
    assert second != first
    assert ray.get(a.ping.remote()) == second


@ray.remote(max_concurrency=4)
class Gate:
    def __init__(self):
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.threads = set()

    def wait_for(self, n, timeout):
        """Blocks until ``n`` calls are inside at once (then all return)."""
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.threads.add(threading.get_ident())
        ok = poll_until(lambda: self.most >= n, timeout)
        with self.lock:
            self.inside -= 1
        return ok

    def stats(self):
        return self.most, len(self.threads)


def poll_until(pred, timeout):
    ev = threading.Event()
    deadline = timeout
    while not pred() and deadline > 0:
        ev.wait(0.01)
        deadline -= 0.01
    return pred()


def test_a_threaded_actor_runs_up_to_max_concurrency_calls_at_once_never_more(ray_start):
    g = Gate.remote()
    assert all(ray.get([g.wait_for.remote(4, 30) for _ in range(4)], timeout=60))
    # eight more calls that would need five at once: never more than four run together
    assert not any(ray.get([g.wait_for.remote(5, 0.5) for _ in range(8)], timeout=60))
    most, threads = ray.get(g.stats.remote())
    assert most == 4 and threads == 4       # the group's threads are reused, never a fifth


@pytest.mark.skipif(IS_RAY, reason="Luminary's reference table")
def test_a_dropped_ref_is_freed_soon_without_anything_else_happening(ray_start):
    from luminary._private.worker import state
    a = Log.remote()
    ref = a.add.remote(5)
    assert ray.get(ref) == 5
    oid = ref.id
    assert oid in state.core.refs.entries
    del ref
    poll_for(lambda: oid not in state.core.refs.entries and oid not in state.core.memory.values,
             timeout=5, desc="the dropped return value freed")


@ray.remote
def square(x):
    return x * x


@ray.remote(max_retries=1)
def die_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return os.getpid()


def test_synchronous_tasks_in_a_loop_return_their_own_results(ray_start):
    assert [ray.get(square.remote(i)) for i in range(300)] == [i * i for i in range(300)]
    # the same mixed with a burst in flight and tasks with ObjectRef arguments
    refs = [square.remote(i) for i in range(50)]
    assert ray.get(square.remote(ray.put(7))) == 49
    assert ray.get(square.remote(3)) == 9
    assert ray.get(refs) == [i * i for i in range(50)]


def test_a_synchronous_task_whose_worker_dies_is_retried(ray_start, tmp_path):
    assert ray.get(square.remote(2)) == 4          # a lease for the key is up and idle
    pid = ray.get(die_once.remote(str(tmp_path / "died")), timeout=60)
    assert pid > 0
    assert ray.get(square.remote(5)) == 25


@pytest.mark.skipif(IS_RAY, reason="Luminary's leases")
def test_synchronous_tasks_go_on_after_their_lease_went_back(ray_start):
    from luminary._private.worker import state
    owner = state.core.submitter.owner
    for round_ in range(3):
        assert [ray.get(square.remote(i)) for i in range(20)] == [i * i for i in range(20)]
        poll_for(lambda: not owner.leases, timeout=10, desc="the idle lease returned")
    assert ray.get(square.remote(9)) == 81
