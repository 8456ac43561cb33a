"""Objects: put/get, wait, ObjectRef behaviour, the shared-memory store."""

import asyncio
import os
import pickle
import time

import numpy as np
import pytest

from _backend import ray

MB = 1024 * 1024


@ray.remote
def identity(x):
    return x


@ray.remote
def sleep_then(duration, value):
    time.sleep(duration)
    return value


# --------------------------------------------------------------------------
# put / get
# --------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    0, -5, 2 ** 70, 3.25, "", "hello", "ünïcödé", None, True,
    [1, 2, [3]], (1, "a"), {"a": 1, "b": [1, 2], 3: None}, {1, 2}, b"raw",
    bytearray(b"mutable"),
])
def test_put_get_roundtrip(ray_start, value):
    ref = ray.put(value)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref) == value
    if isinstance(value, bytearray):
        return  # Ray hands a bytearray back as bytes; only equality is checked
    assert type(ray.get(ref)) is type(value)


def test_put_get_large_bytes(ray_start):
    data = os.urandom(10 * MB)
    ref = ray.put(data)
    out = ray.get(ref)
    assert type(out) is bytes
    assert out == data
    # and through a task
    assert ray.get(identity.remote(ref)) == data


def test_put_get_custom_object(ray_start):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    p = ray.get(ray.put(Point(1, 2)))
    assert (p.x, p.y) == (1, 2)


def test_get_same_ref_twice(ray_start):
    ref = ray.put({"k": "v"})
    assert ray.get(ref) == ray.get(ref) == {"k": "v"}
    assert ray.get([ref, ref]) == [{"k": "v"}, {"k": "v"}]


def test_get_empty_list(ray_start):
    assert ray.get([]) == []


def test_put_object_ref_is_rejected(ray_start):
    # Ray: "Calling 'put' on an ray.ObjectRef is not allowed" (TypeError)
    with pytest.raises(TypeError):
        ray.put(ray.put(1))


def test_put_list_of_refs_keeps_refs(ray_start):
    inner = ray.put("inner")
    outer = ray.put([inner, 5])
    got = ray.get(outer)
    assert isinstance(got[0], ray.ObjectRef)
    assert got[0] == inner
    assert ray.get(got[0]) == "inner"
    assert got[1] == 5


# --------------------------------------------------------------------------
# numpy
# --------------------------------------------------------------------------

def test_small_numpy_roundtrip(ray_start):
    for arr in [np.arange(10), np.zeros((3, 4), dtype=np.float32),
                np.array(["a", "bc"]), np.array(3.5), np.empty(0)]:
        out = ray.get(ray.put(arr))
        assert isinstance(out, np.ndarray)
        assert out.dtype == arr.dtype
        assert out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)


def test_large_numpy_zero_copy_read_only(ray_start):
    arr = np.random.default_rng(0).random(20 * MB // 8)
    ref = ray.put(arr)
    a = ray.get(ref)
    b = ray.get(ref)
    np.testing.assert_array_equal(a, arr)
    assert a.flags.writeable is False
    assert np.shares_memory(a, b)
    with pytest.raises(ValueError):
        a[0] = 1.0
    # putting copies: mutating the original does not change the stored value
    arr[0] = -1.0
    assert ray.get(ref)[0] != -1.0


def test_large_numpy_from_task_zero_copy(ray_start):
    @ray.remote
    def make(n):
        return np.full(n, 7, dtype=np.int64)

    ref = make.remote(20 * MB // 8)
    a = ray.get(ref)
    b = ray.get(ref)
    assert a.shape == (20 * MB // 8,)
    assert a[0] == 7 and a[-1] == 7
    assert a.flags.writeable is False
    assert np.shares_memory(a, b)


def test_numpy_inside_containers(ray_start):
    value = {"a": np.arange(5), "b": [np.ones((2, 2)), np.zeros(3 * MB // 8)]}
    out = ray.get(ray.put(value))
    np.testing.assert_array_equal(out["a"], value["a"])
    np.testing.assert_array_equal(out["b"][0], value["b"][0])
    np.testing.assert_array_equal(out["b"][1], value["b"][1])


@pytest.mark.timeout(240)
def test_two_gigabyte_array_roundtrip(ray_start):
    n = 2 * 1024 ** 3 // 8
    ref = ray.put(np.ones(n))
    out = ray.get(ref)
    assert out.shape == (n,)
    assert out.dtype == np.float64
    assert out[0] == 1.0 and out[n // 2] == 1.0 and out[-1] == 1.0
    del out, ref


# --------------------------------------------------------------------------
# get errors and timeouts
# --------------------------------------------------------------------------

def test_get_timeout(ray_start):
    ref = sleep_then.remote(1.5, "late")
    start = time.time()
    with pytest.raises(ray.exceptions.GetTimeoutError) as info:
        ray.get(ref, timeout=0.2)
    assert time.time() - start < 1.4
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, ray.exceptions.RayError)
    with pytest.raises(TimeoutError):
        ray.get([ray.put(1), ref], timeout=0.1)
    # timeout=0 on a ready object returns it, on a pending one raises
    assert ray.get(ray.put(1), timeout=0) == 1
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(ref, timeout=0)
    # a sufficiently long timeout returns the value
    assert ray.get(ref, timeout=30) == "late"


def test_get_non_ref_raises(ray_start):
    # Ray: ray.get(non-ref) -> ValueError, ray.get([non-ref]) -> TypeError,
    # and a tuple of refs is not accepted either (ValueError).
    with pytest.raises(ValueError):
        ray.get(1)
    with pytest.raises(ValueError):
        ray.get("not a ref")
    with pytest.raises(TypeError):
        ray.get([ray.put(1), 2])
    with pytest.raises(ValueError):
        ray.get((ray.put(1),))


# --------------------------------------------------------------------------
# wait
# --------------------------------------------------------------------------

def test_wait_num_returns(ray_start):
    refs = [ray.put(i) for i in range(5)]
    ready, not_ready = ray.wait(refs)
    assert len(ready) == 1 and len(not_ready) == 4
    ready, not_ready = ray.wait(refs, num_returns=3)
    assert len(ready) == 3 and len(not_ready) == 2
    assert set(ready) | set(not_ready) == set(refs)
    ready, not_ready = ray.wait(refs, num_returns=5)
    assert ready == refs and not_ready == []


def test_wait_timeout_partial(ray_start):
    slow = sleep_then.remote(5, "slow")
    fast = [ray.put("a"), identity.remote("b")]
    refs = [slow] + fast
    start = time.time()
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=1.0)
    elapsed = time.time() - start
    assert 0.8 <= elapsed < 4
    assert ready == fast
    assert not_ready == [slow]
    ready, not_ready = ray.wait([slow], timeout=0)
    assert ready == [] and not_ready == [slow]
    ray.cancel(slow, force=True)


def test_wait_preserves_input_order(ray_start):
    slow = sleep_then.remote(5, "s")
    fast = [ray.put(i) for i in range(4)]
    refs = [fast[2], slow, fast[0], fast[3], fast[1]]
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=10)
    assert ready == [fast[2], fast[0], fast[3], fast[1]]
    assert not_ready == [slow]
    # When more refs are ready than requested, Ray picks an arbitrary subset,
    # but both lists keep the relative input order.
    for k in (1, 2, 3):
        ready, not_ready = ray.wait(refs, num_returns=k, timeout=10)
        assert len(ready) == k and len(not_ready) == len(refs) - k
        assert slow in not_ready
        assert set(ready) | set(not_ready) == set(refs)
        assert [r for r in refs if r in ready] == ready
        assert [r for r in refs if r in not_ready] == not_ready
    ray.cancel(slow, force=True)


def test_wait_returns_when_tasks_finish(ray_start):
    refs = [sleep_then.remote(0.2 * i, i) for i in range(3)]
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=30)
    assert ready == refs and not_ready == []
    assert ray.get(ready) == [0, 1, 2]


def test_wait_fetch_local(ray_start):
    refs = [identity.remote(i) for i in range(3)]
    ready, not_ready = ray.wait(refs, num_returns=3, fetch_local=False, timeout=30)
    assert ready == refs
    ready, _ = ray.wait(refs, num_returns=3, fetch_local=True, timeout=30)
    assert ready == refs


def test_wait_bad_arguments(ray_start):
    ref = ray.put(1)
    assert ray.wait([]) == ([], [])
    with pytest.raises(TypeError):
        ray.wait(ref)  # a single ref, not a list
    with pytest.raises(TypeError):
        ray.wait([1])
    with pytest.raises(ValueError):
        ray.wait([ref, ref])  # duplicates
    with pytest.raises(ValueError):
        ray.wait([ref], num_returns=2)
    with pytest.raises(ValueError):
        ray.wait([ref], num_returns=0)
    with pytest.raises(ValueError):
        ray.wait([ref], timeout=-1)


# --------------------------------------------------------------------------
# ObjectRef
# --------------------------------------------------------------------------

def test_object_ref_hashable_and_equal(ray_start):
    a, b = ray.put(1), ray.put(2)
    assert a == a and a != b
    assert len({a, a, b}) == 2
    d = {a: "a", b: "b"}
    assert d[a] == "a" and d[b] == "b"
    refs = [identity.remote(i) for i in range(3)]
    assert len(set(refs)) == 3


def test_object_ref_hex(ray_start):
    ref = ray.put("x")
    h = ref.hex()
    assert isinstance(h, str) and h
    assert all(c in "0123456789abcdef" for c in h)
    assert h != ray.put("x").hex()
    assert identity.remote(1).hex() != identity.remote(1).hex()


def test_object_ref_pickle_roundtrip(ray_start):
    ref = ray.put({"v": 1})
    clone = pickle.loads(pickle.dumps(ref))
    assert isinstance(clone, ray.ObjectRef)
    assert clone == ref
    assert hash(clone) == hash(ref)
    assert clone.hex() == ref.hex()
    assert ray.get(clone) == {"v": 1}


def test_object_ref_future(ray_start):
    fut = sleep_then.remote(0.2, "future-value").future()
    assert fut.result(timeout=30) == "future-value"
    assert ray.put(3).future().result(timeout=30) == 3


def test_object_ref_awaitable(ray_start):
    async def main():
        a = await identity.remote("awaited")
        b = await ray.put(5)
        c = await asyncio.gather(*[identity.remote(i) for i in range(3)])
        d = await asyncio.wait_for(sleep_then.remote(0.1, "w"), timeout=30)
        return a, b, list(c), d

    assert asyncio.run(main()) == ("awaited", 5, [0, 1, 2], "w")


def test_object_ref_future_of_failed_task(ray_start):
    @ray.remote
    def boom():
        raise ValueError("future boom")

    with pytest.raises(ValueError, match="future boom"):
        boom.remote().future().result(timeout=30)

    async def main():
        return await boom.remote()

    with pytest.raises(ray.exceptions.RayTaskError):
        asyncio.run(main())


# fresh-cluster test last, so the module cluster is started only once
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "ray_start_fresh", [{"num_cpus": 1, "object_store_memory": 100 * MB}], indirect=True)
def test_more_data_than_store_capacity(ray_start_fresh):
    # 10 x 30 MB held at once in a 100 MB store: everything stays gettable.
    refs = [ray.put(np.full(30 * MB // 8, i, dtype=np.float64)) for i in range(10)]
    for i, ref in enumerate(refs):
        arr = ray.get(ref)
        assert arr.shape == (30 * MB // 8,)
        assert arr[0] == i and arr[-1] == i
        del arr

    @ray.remote
    def make(i):
        return np.full(30 * MB // 8, i, dtype=np.float64)

    task_refs = [make.remote(i) for i in range(10)]
    for i, ref in enumerate(task_refs):
        arr = ray.get(ref)
        assert arr[0] == i and arr[-1] == i
        del arr
    # the first objects are still there
    assert ray.get(refs[0])[0] == 0
