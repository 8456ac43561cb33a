"""Generator tasks: streaming (ObjectRefGenerator), dynamic and static returns."""

import asyncio
import os
import time

import numpy as np
import pytest

from _backend import poll_for, ray


@ray.remote
def count_up(n):
    for i in range(n):
        yield i


def _wait_file(path, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


def test_generator_returns_object_ref_generator(ray_start):
    gen = count_up.remote(5)
    assert isinstance(gen, ray.ObjectRefGenerator)
    refs = list(gen)
    assert len(refs) == 5
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == [0, 1, 2, 3, 4]


def test_generator_iterate_and_get(ray_start):
    out = []
    for ref in count_up.remote(4):
        out.append(ray.get(ref))
    assert out == [0, 1, 2, 3]


def test_generator_next_and_stop_iteration(ray_start):
    gen = count_up.remote(2)
    assert ray.get(next(gen)) == 0
    assert ray.get(next(gen)) == 1
    with pytest.raises(StopIteration):
        next(gen)


def test_empty_generator(ray_start):
    @ray.remote
    def empty():
        return
        yield  # noqa: unreachable, makes this a generator function

    assert list(empty.remote()) == []


def test_streaming_option_explicit(ray_start):
    gen = count_up.options(num_returns="streaming").remote(3)
    assert isinstance(gen, ray.ObjectRefGenerator)
    assert [ray.get(r) for r in gen] == [0, 1, 2]


def test_generator_values_arrive_while_running(ray_start, tmp_path):
    go = str(tmp_path / "go")
    finished = str(tmp_path / "finished")

    @ray.remote
    def streamer(go, finished):
        yield "first"
        # do not continue until the consumer has seen the first item
        if not _wait_file(go):
            yield "consumer never signalled"
            return
        yield "second"
        open(finished, "w").close()

    gen = streamer.remote(go, finished)
    first = ray.get(next(gen), timeout=60)
    assert first == "first"
    assert not os.path.exists(finished)  # the task is still running
    open(go, "w").close()
    assert ray.get(next(gen), timeout=60) == "second"
    with pytest.raises(StopIteration):
        next(gen)
    poll_for(lambda: os.path.exists(finished), timeout=30, desc="generator end")


def test_generator_large_items(ray_start):
    @ray.remote
    def arrays(n):
        for i in range(n):
            yield np.full(2 * 1024 * 1024, i, dtype=np.float64)

    for i, ref in enumerate(arrays.remote(3)):
        arr = ray.get(ref)
        assert arr.shape == (2 * 1024 * 1024,)
        assert arr[0] == i and arr[-1] == i


def test_generator_exception_mid_stream(ray_start):
    @ray.remote
    def fails_after_one():
        yield 1
        raise ValueError("mid-stream failure")

    gen = fails_after_one.remote()
    assert ray.get(next(gen)) == 1
    # Ray: next() still returns a ref; getting it raises the task's error
    ref = next(gen)
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(ref)
    assert isinstance(info.value, ValueError)
    assert "mid-stream failure" in str(info.value)
    with pytest.raises(StopIteration):
        next(gen)


def test_generator_exception_in_for_loop(ray_start):
    @ray.remote
    def fails_after_two():
        yield "a"
        yield "b"
        raise KeyError("boom")

    got = []
    with pytest.raises(KeyError):
        for ref in fails_after_two.remote():
            got.append(ray.get(ref))
    assert got == ["a", "b"]


def test_generator_async_iteration(ray_start):
    async def consume():
        out = []
        async for ref in count_up.remote(4):
            out.append(await ref)
        return out

    assert asyncio.run(consume()) == [0, 1, 2, 3]


def test_generator_passes_refs_to_tasks(ray_start):
    @ray.remote
    def double(x):
        return 2 * x

    refs = [double.remote(ref) for ref in count_up.remote(3)]
    assert ray.get(refs) == [0, 2, 4]


def test_generator_inside_task(ray_start):
    @ray.remote
    def consume(n):
        return [ray.get(r) for r in count_up.remote(n)]

    assert ray.get(consume.remote(3)) == [0, 1, 2]


@pytest.mark.filterwarnings("ignore:.*dynamic.*")  # Ray deprecates "dynamic"
def test_dynamic_num_returns(ray_start):
    @ray.remote(num_returns="dynamic")
    def dyn(n):
        for i in range(n):
            yield i * 10

    ref = dyn.remote(3)
    assert isinstance(ref, ray.ObjectRef)
    inner = ray.get(ref)
    inner_refs = list(inner)
    assert len(inner_refs) == 3
    assert all(isinstance(r, ray.ObjectRef) for r in inner_refs)
    assert ray.get(inner_refs) == [0, 10, 20]
    # the same via .options
    inner = ray.get(count_up.options(num_returns="dynamic").remote(2))
    assert [ray.get(r) for r in inner] == [0, 1]


def test_static_num_returns_generator(ray_start):
    @ray.remote(num_returns=3)
    def three():
        for i in range(3):
            yield i + 100

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert ray.get(refs) == [100, 101, 102]


def test_static_num_returns_generator_mismatch(ray_start):
    @ray.remote(num_returns=3)
    def only_two():
        yield 1
        yield 2

    refs = only_two.remote()
    # Ray: "Task returned 2 objects, but num_returns=3." (RayTaskError(ValueError))
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(refs)
