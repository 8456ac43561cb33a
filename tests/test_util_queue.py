"""util.queue.Queue: an actor-backed FIFO queue shared by the driver, tasks and actors."""

import asyncio
import importlib
import pickle
import queue as stdlib_queue

import pytest

from _backend import BACKEND, poll_for, ray

_q = importlib.import_module(f"{BACKEND}.util.queue")
Queue, Empty, Full = _q.Queue, _q.Empty, _q.Full


@ray.remote
def produce(q, items):
    for item in items:
        q.put(item)
    return len(items)


@ray.remote
def consume(q, n, timeout=None):
    return [q.get(timeout=timeout) for _ in range(n)]


@ray.remote
class Consumer:
    def __init__(self, q):
        self.q = q

    def take(self, n):
        return [self.q.get() for _ in range(n)]


@ray.remote
class AsyncUser:
    async def roundtrip(self, q, item):
        await q.put_async(item)
        return await q.get_async()

    async def get_with_timeout(self, q, timeout):
        try:
            await q.get_async(timeout=timeout)
        except Empty:
            return "empty"
        return "got"


@pytest.mark.timeout(10)
def test_exceptions_are_stdlib_subclasses():
    assert issubclass(Empty, stdlib_queue.Empty)
    assert issubclass(Full, stdlib_queue.Full)


@pytest.mark.timeout(60)
def test_put_get_fifo_and_sizes(ray_start):
    q = Queue()
    assert q.empty() and not q.full()
    assert q.size() == q.qsize() == len(q) == 0
    for i in range(5):
        q.put(i)
    assert q.qsize() == 5 and len(q) == 5 and not q.empty()
    assert [q.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.empty()


@pytest.mark.timeout(60)
def test_values_of_any_type(ray_start):
    import numpy as np
    q = Queue()
    arr = np.arange(50_000, dtype=np.float64)  # larger than the inline limit
    q.put({"a": [1, 2]})
    q.put(arr)
    q.put(None)
    assert q.get() == {"a": [1, 2]}
    assert np.array_equal(q.get(), arr)
    assert q.get() is None


@pytest.mark.timeout(60)
def test_maxsize_full_and_nowait(ray_start):
    q = Queue(maxsize=2)
    q.put_nowait(1)
    q.put(2, block=False)
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(Full):
        q.put(3, block=False)
    with pytest.raises(Full):
        q.put(3, timeout=0.1)
    assert q.get_nowait() == 1
    assert q.get(block=False) == 2
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    # the stdlib classes catch them too
    with pytest.raises(stdlib_queue.Empty):
        q.get_nowait()


@pytest.mark.timeout(60)
def test_negative_timeout_is_an_error(ray_start):
    q = Queue()
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)


@pytest.mark.timeout(60)
def test_batches(ray_start):
    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])  # does not fit: nothing is added
    assert q.qsize() == 2
    q.put_nowait_batch((3,))
    assert q.full()
    with pytest.raises(Empty):
        q.get_nowait_batch(4)  # not enough: nothing is taken
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait_batch(1) == [3]
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)


@pytest.mark.timeout(60)
def test_blocking_get_waits_for_a_put(ray_start):
    q = Queue()
    ref = consume.remote(q, 2)
    ready, _ = ray.wait([ref], timeout=0.2)
    assert not ready  # blocked in get
    q.put("a")
    q.put("b")
    assert ray.get(ref, timeout=30) == ["a", "b"]


@pytest.mark.timeout(60)
def test_blocking_put_waits_for_room(ray_start):
    q = Queue(maxsize=1)
    ref = produce.remote(q, list(range(6)))
    # the producer blocks on a full queue; each get makes room for the next item
    assert [q.get(timeout=30) for _ in range(6)] == list(range(6))
    assert ray.get(ref, timeout=30) == 6
    assert q.empty()


@pytest.mark.timeout(60)
def test_blocked_put_times_out_with_full(ray_start):
    q = Queue(maxsize=1)
    q.put("x")

    @ray.remote
    def put_with_timeout(q):
        try:
            q.put("y", timeout=0.1)
        except Full:
            return "full"
        return "put"

    assert ray.get(put_with_timeout.remote(q), timeout=30) == "full"
    assert q.get_nowait() == "x"
    assert q.empty()


@pytest.mark.timeout(60)
def test_shared_between_tasks_and_actors(ray_start):
    q = Queue()
    consumer = Consumer.remote(q)
    taken = consumer.take.remote(4)
    assert ray.get(produce.remote(q, [1, 2, 3, 4]), timeout=30) == 4
    assert ray.get(taken, timeout=30) == [1, 2, 3, 4]
    poll_for(q.empty, timeout=10, desc="queue drained")


@pytest.mark.timeout(60)
def test_many_blocked_getters_at_once(ray_start):
    # an async actor: more blocked getters than CPUs do not starve the putter
    q = Queue()
    refs = [consume.remote(q, 1, 30) for _ in range(4)]
    for i in range(4):
        q.put(i)
    got = sorted(v for r in ray.get(refs, timeout=30) for v in r)
    assert got == [0, 1, 2, 3]


@pytest.mark.timeout(60)
def test_async_api_inside_an_async_actor(ray_start):
    q = Queue()
    user = AsyncUser.remote()
    assert ray.get(user.roundtrip.remote(q, "hello"), timeout=30) == "hello"
    assert ray.get(user.get_with_timeout.remote(q, 0.1), timeout=30) == "empty"


@pytest.mark.timeout(60)
def test_async_api_in_the_driver(ray_start):
    q = Queue()

    async def main():
        await q.put_async(1)
        await q.put_async(2, block=False)
        got = [await q.get_async(), await q.get_async(block=False)]
        with pytest.raises(Empty):
            await q.get_async(timeout=0.05)
        with pytest.raises(Empty):
            await q.get_async(block=False)
        return got

    assert asyncio.run(main()) == [1, 2]


@pytest.mark.timeout(60)
def test_pickle_roundtrip_is_the_same_queue(ray_start):
    q = Queue(maxsize=5)
    q2 = pickle.loads(pickle.dumps(q))
    q2.put("via copy")
    assert q.get(timeout=30) == "via copy"
    assert q2.maxsize == 5


@pytest.mark.timeout(60)
def test_actor_options_name(ray_start):
    q = Queue(actor_options={"name": "util_queue_test_q", "num_cpus": 0})
    q.put(7)
    actor = ray.get_actor("util_queue_test_q")
    assert ray.get(actor.qsize.remote()) == 1
    assert q.get() == 7
    q.shutdown()


@pytest.mark.timeout(60)
def test_shutdown(ray_start):
    q = Queue()
    q.put(1)
    handle = q.actor
    q.shutdown()
    assert q.actor is None
    q.shutdown()  # again: no-op
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(handle.qsize.remote(), timeout=30)


@pytest.mark.timeout(60)
def test_shutdown_force(ray_start):
    q = Queue()
    handle = q.actor
    blocked = consume.remote(q, 1)  # parked in the actor
    q.shutdown(force=True)
    assert q.actor is None
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(handle.qsize.remote(), timeout=30)
    with pytest.raises(ray.exceptions.RayError):
        ray.get(blocked, timeout=30)


@pytest.mark.timeout(60)
def test_shutdown_with_a_blocked_getter(ray_start):
    q = Queue()
    blocked = consume.remote(q, 1)
    ready, _ = ray.wait([blocked], timeout=0.2)
    assert not ready
    q.shutdown(grace_period_s=1)
    with pytest.raises(ray.exceptions.RayError):
        ray.get(blocked, timeout=30)
