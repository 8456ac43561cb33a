"""util.multiprocessing.Pool: the standard library's Pool API on actors."""

import importlib
import os
import time

import pytest

from _backend import BACKEND, IS_RAY, poll_for, ray

_mp = importlib.import_module(f"{BACKEND}.util.multiprocessing")
Pool = _mp.Pool
MpTimeoutError = _mp.TimeoutError

_initialized_value = None


class CustomError(Exception):
    pass


def square(x):
    return x * x


def add(a, b, c=0):
    return a + b + c


def fail_on_three(x):
    if x == 3:
        raise CustomError(f"three is bad ({x})")
    return x


def raise_key_error():
    raise KeyError("missing")


def getpid(_=None):
    return os.getpid()


def set_global(value):
    global _initialized_value
    _initialized_value = value


def get_global(_=None):
    return _initialized_value


def wait_for_file(path, timeout=60):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            return "timed out"
        time.sleep(0.01)
    return "released"


@pytest.fixture
def pool(ray_start):
    p = Pool(processes=2)
    yield p
    p.terminate()


@pytest.mark.timeout(60)
def test_map_and_chunksize(pool):
    assert pool.map(square, range(20)) == [x * x for x in range(20)]
    assert pool.map(square, range(20), chunksize=3) == [x * x for x in range(20)]
    assert pool.map(square, range(5), 100) == [0, 1, 4, 9, 16]
    assert pool.map(square, []) == []
    assert pool.map(square, (x for x in range(4))) == [0, 1, 4, 9]  # not sized


@pytest.mark.timeout(60)
def test_starmap(pool):
    assert pool.starmap(add, [(1, 2), (3, 4), (5, 6, 7)]) == [3, 7, 18]
    assert pool.starmap(add, [(i, i) for i in range(10)], chunksize=4) == [2 * i for i in range(10)]
    assert pool.starmap_async(add, [(1, 1), (2, 2)]).get(timeout=30) == [2, 4]


@pytest.mark.timeout(60)
def test_apply(pool):
    assert pool.apply(add, (1, 2)) == 3
    assert pool.apply(add, (1, 2), {"c": 10}) == 13
    assert pool.apply(square, (7,)) == 49


@pytest.mark.timeout(60)
def test_apply_async_result(pool):
    r = pool.apply_async(add, (2, 3))
    assert r.get(timeout=30) == 5
    assert r.ready()
    assert r.successful()
    r.wait()  # returns at once


@pytest.mark.timeout(60)
def test_map_async_with_callbacks(pool):
    got, errors = [], []
    r = pool.map_async(square, range(6), callback=got.append, error_callback=errors.append)
    assert r.get(timeout=30) == [0, 1, 4, 9, 16, 25]
    # the callback runs before get() returns
    assert len(got) == 1 and sorted(got[0]) == [0, 1, 4, 9, 16, 25] and errors == []
    if not IS_RAY:  # the standard library passes the list in order; Ray in completion order
        assert got == [[0, 1, 4, 9, 16, 25]]

    r = pool.apply_async(square, (4,), callback=got.append)
    r.wait(timeout=30)
    assert r.ready()
    assert got[-1] == 16

    r = pool.apply_async(fail_on_three, (3,), callback=got.append, error_callback=errors.append)
    with pytest.raises(CustomError):
        r.get(timeout=30)
    assert len(errors) == 1
    if not IS_RAY:  # Ray passes its internal wrapper (PoolTaskError), not the exception
        assert isinstance(errors[0], CustomError)
    assert got[-1] == 16


@pytest.mark.timeout(60)
def test_errors_reraise_as_the_original_type(pool):
    with pytest.raises(CustomError, match="three is bad"):
        pool.map(fail_on_three, range(6))
    with pytest.raises(CustomError):
        pool.apply(fail_on_three, (3,))
    with pytest.raises(KeyError):
        pool.apply(raise_key_error)
    r = pool.map_async(fail_on_three, range(6), chunksize=1)
    r.wait(timeout=30)
    poll_for(r.ready, timeout=30)
    assert not r.successful()
    with pytest.raises(CustomError):
        r.get()
    # the pool still works after errors
    assert pool.map(square, [3]) == [9]


@pytest.mark.timeout(60)
def test_async_result_timeout_and_not_ready(pool, tmp_path):
    release = str(tmp_path / "release")
    r = pool.apply_async(wait_for_file, (release,))
    with pytest.raises(MpTimeoutError):
        r.get(timeout=0.1)
    assert not r.ready()
    with pytest.raises(ValueError):
        r.successful()
    open(release, "w").close()
    assert r.get(timeout=30) == "released"
    assert r.successful()


@pytest.mark.timeout(60)
def test_imap_ordered(pool):
    assert list(pool.imap(square, range(10))) == [x * x for x in range(10)]
    assert list(pool.imap(square, range(10), chunksize=3)) == [x * x for x in range(10)]
    assert list(pool.imap(square, iter(range(7)))) == [x * x for x in range(7)]  # lazy input
    assert list(pool.imap(square, [])) == []


@pytest.mark.timeout(60)
def test_imap_unordered(pool):
    assert sorted(pool.imap_unordered(square, range(10))) == [x * x for x in range(10)]
    assert sorted(pool.imap_unordered(square, iter(range(9)), chunksize=2)) == \
        [x * x for x in range(9)]


@pytest.mark.timeout(60)
def test_imap_unordered_yields_ready_results_first(pool, tmp_path):
    release = str(tmp_path / "release")
    it = pool.imap_unordered(wait_for_file_or_square, [release, 2])
    assert next(it) == 4
    open(release, "w").close()
    assert next(it) == "released"
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.skipif(IS_RAY, reason="Ray's pool deals chunks to actors round-robin up front, so "
                                   "work queued behind a slow chunk waits for it")
@pytest.mark.timeout(60)
def test_slow_item_does_not_hold_up_other_work(pool, tmp_path):
    # as in the standard library, a free process takes the next chunk
    release = str(tmp_path / "release")
    it = pool.imap_unordered(wait_for_file_or_square, [release] + list(range(2, 12)))
    assert sorted(next(it) for _ in range(10)) == [x * x for x in range(2, 12)]
    open(release, "w").close()
    assert next(it) == "released"
    r = pool.map_async(wait_for_file_or_square, [str(tmp_path / "r2"), 5, 6, 7], chunksize=1)
    got = pool.map(square, range(6))  # not stuck behind the waiting item
    assert got == [x * x for x in range(6)]
    assert not r.ready()
    open(str(tmp_path / "r2"), "w").close()
    assert r.get(timeout=30) == ["released", 25, 36, 49]


def wait_for_file_or_square(x):
    return wait_for_file(x) if isinstance(x, str) else x * x


@pytest.mark.timeout(60)
def test_imap_next_timeout(pool, tmp_path):
    release = str(tmp_path / "release")
    it = pool.imap(wait_for_file, [release])
    with pytest.raises(MpTimeoutError):
        it.next(timeout=0.1)
    open(release, "w").close()
    assert it.next(timeout=30) == "released"
    with pytest.raises(StopIteration):
        it.next()


@pytest.mark.skipif(IS_RAY, reason="Ray's imap yields its internal PoolTaskError instead of "
                                   "raising (the standard library raises)")
@pytest.mark.timeout(60)
def test_imap_error_raises_for_its_item_and_iteration_goes_on(pool):
    it = pool.imap(fail_on_three, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(CustomError):
        next(it)
    assert list(it) == [4, 5]


@pytest.mark.timeout(60)
def test_initializer_runs_in_every_process(ray_start):
    with Pool(processes=2, initializer=set_global, initargs=("ready",)) as p:
        assert p.map(get_global, range(8), chunksize=1) == ["ready"] * 8


@pytest.mark.timeout(60)
def test_maxtasksperchild_replaces_processes(ray_start):
    with Pool(processes=1, maxtasksperchild=1) as p:
        pids = [p.apply(getpid) for _ in range(3)]
    assert len(set(pids)) == 3
    with Pool(processes=2) as p:
        pids = p.map(getpid, range(8), chunksize=1)
    assert len(set(pids)) <= 2


@pytest.mark.timeout(60)
def test_close_join(ray_start):
    p = Pool(processes=2)
    results = []
    for i in range(6):
        p.apply_async(square, (i,), callback=results.append)
    with pytest.raises(ValueError):
        p.join()  # still running
    p.close()
    with pytest.raises(ValueError):
        p.apply(square, (1,))
    with pytest.raises(ValueError):
        p.map(square, [1])
    p.join()
    assert sorted(results) == [0, 1, 4, 9, 16, 25]  # join waits for the outstanding work


@pytest.mark.timeout(60)
def test_context_manager_terminates(ray_start):
    with Pool(processes=2) as p:
        assert p.map(square, [1, 2]) == [1, 4]
    with pytest.raises(ValueError):
        p.apply(square, (1,))
    with pytest.raises(ValueError):
        p.imap(square, [1])
    p.join()  # after terminate: returns


@pytest.mark.timeout(60)
def test_callbacks_fire_without_get(ray_start):
    p = Pool(processes=2)
    results = []
    p.map_async(square, [1, 2, 3], callback=results.extend)
    poll_for(lambda: len(results) == 3, timeout=30, desc="callback")
    assert sorted(results) == [1, 4, 9]
    p.terminate()


@pytest.mark.timeout(60)
def test_too_many_processes_is_an_error(ray_start):
    with pytest.raises(ValueError):
        Pool(processes=1000)


@pytest.mark.timeout(60)
def test_pool_initializes_the_cluster(shutdown_only):
    assert not ray.is_initialized()
    with Pool(processes=1) as p:
        assert ray.is_initialized()
        assert p.map(square, [1, 2, 3]) == [1, 4, 9]
    assert ray.cluster_resources().get("CPU") == 1
