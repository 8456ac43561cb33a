"""util.concurrent.futures.LuminaryExecutor (alias RayExecutor): a concurrent.futures.Executor
whose calls run as tasks.  Ray 2.60 ships no such executor, so these tests skip on Ray."""

import concurrent.futures as cf
import os
import threading
import time

import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = pytest.mark.skipif(IS_RAY, reason="Ray 2.60 has no ray.util.concurrent.futures executor")

if not IS_RAY:
    from luminary.util.concurrent.futures import LuminaryExecutor, RayExecutor
    from luminary.util.concurrent.futures.ray_executor import RayExecutor as RayExecutorAtRayPath


def pid_and(x):
    return os.getpid(), x


def divide(a, b):
    return a / b


def wait_for_file(path, value, started=None, limit=60):
    """Return ``value`` once ``path`` exists (touching ``started`` first)."""
    if started:
        open(started, "w").close()
    deadline = time.time() + limit
    while not os.path.exists(path):
        if time.time() > deadline:
            return "timed out"
        time.sleep(0.01)
    return value


def touch(path):
    open(path, "w").close()
    return path


@pytest.mark.timeout(60)
def test_names():
    assert RayExecutor is LuminaryExecutor and RayExecutorAtRayPath is LuminaryExecutor
    assert issubclass(LuminaryExecutor, cf.Executor)


@pytest.mark.timeout(60)
def test_submit_runs_in_worker_processes(ray_start):
    with LuminaryExecutor() as ex:
        futures = [ex.submit(pid_and, i) for i in range(6)]
        results = [f.result(timeout=30) for f in futures]
    assert [x for _, x in results] == list(range(6))
    assert os.getpid() not in {p for p, _ in results}
    assert all(isinstance(f, cf.Future) and f.done() for f in futures)


@pytest.mark.timeout(60)
def test_keyword_arguments_object_refs_and_remote_functions(ray_start):
    @ray.remote
    def triple(x):
        return 3 * x
    with LuminaryExecutor() as ex:
        assert ex.submit(divide, b=4, a=2).result(timeout=30) == 0.5
        assert ex.submit(divide, ray.put(9), 3).result(timeout=30) == 3.0   # refs resolved
        assert ex.submit(triple, 5).result(timeout=30) == 15


@pytest.mark.timeout(60)
def test_errors_keep_their_type(ray_start):
    with LuminaryExecutor() as ex:
        fut = ex.submit(divide, 1, 0)
        with pytest.raises(ZeroDivisionError):
            fut.result(timeout=30)
        assert isinstance(fut.exception(), ZeroDivisionError)
        assert ex.submit(divide, 4, 2).exception(timeout=30) is None
        with pytest.raises(ZeroDivisionError):
            list(ex.map(divide, [1, 2], [1, 0]))
        with pytest.raises(TypeError):
            ex.submit(42)


@pytest.mark.timeout(60)
def test_map_order_chunksize_and_timeout(ray_start, tmp_path):
    with LuminaryExecutor() as ex:
        assert list(ex.map(divide, [1, 4, 9], [1, 2, 3])) == [1.0, 2.0, 3.0]
        out = list(ex.map(pid_and, range(10), chunksize=5))
        assert [x for _, x in out] == list(range(10))
        assert len({p for p, _ in out[:5]}) == 1 and len({p for p, _ in out[5:]}) == 1  # one task per chunk
        assert os.getpid() not in {p for p, _ in out}
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(divide, [1], [1], chunksize=0)
        results = ex.map(wait_for_file, [str(tmp_path / "never")], [1], timeout=0.3)
        with pytest.raises(cf.TimeoutError):
            next(results)
        # the timed-out call was cancelled when the results generator gave up on it
        results.close()


@pytest.mark.timeout(60)
def test_done_callback_and_as_completed(ray_start):
    called = threading.Event()
    seen = []
    with LuminaryExecutor() as ex:
        fut = ex.submit(pid_and, "x")
        fut.add_done_callback(lambda f: (seen.append(f.result()[1]), called.set()))
        assert called.wait(30)
        futures = [ex.submit(divide, i, 1) for i in range(5)]
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [0, 1, 2, 3, 4]
    assert seen == ["x"]


@pytest.mark.timeout(60)
def test_cancel_waiting_and_running_calls(ray_start, tmp_path):
    go, started = str(tmp_path / "go"), str(tmp_path / "started")
    marker = str(tmp_path / "should_not_exist")
    ex = LuminaryExecutor(max_workers=1)
    blocker = ex.submit(wait_for_file, go, "done", started)
    waiting = ex.submit(touch, marker)                 # beyond max_workers: held by the executor
    assert waiting.cancel() and waiting.cancelled()
    poll_for(lambda: os.path.exists(started), timeout=30, desc="the blocking task to start")
    assert blocker.cancel()                            # running: the task is interrupted
    assert blocker.cancelled()
    with pytest.raises(cf.CancelledError):
        blocker.result(timeout=1)
    after = ex.submit(pid_and, 1)                      # the slot is free again
    assert after.result(timeout=30)[1] == 1
    assert not after.cancel()                          # finished futures cannot be cancelled
    ex.shutdown(wait=True)
    assert not os.path.exists(marker)


@pytest.mark.timeout(60)
def test_shutdown_waits_and_refuses_new_work(ray_start, tmp_path):
    go = str(tmp_path / "go")
    ex = LuminaryExecutor(max_workers=2)
    futures = [ex.submit(wait_for_file, go, i) for i in range(3)]
    touch(go)
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pid_and, 1)


@pytest.mark.timeout(60)
def test_shutdown_cancel_futures(ray_start, tmp_path):
    never = str(tmp_path / "never")
    ex = LuminaryExecutor(max_workers=1)
    futures = [ex.submit(wait_for_file, never, i) for i in range(3)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)


@pytest.mark.timeout(60)
def test_task_options_and_bad_arguments(ray_start):
    @ray.remote
    def unused():
        return None
    with LuminaryExecutor(num_cpus=0.5) as ex:
        assigned = ex.submit(lambda: ray.get_runtime_context().get_assigned_resources()).result(timeout=30)
    assert assigned.get("CPU") == 0.5
    with pytest.raises(ValueError, match="max_workers"):
        LuminaryExecutor(max_workers=0)
    with pytest.raises(ValueError, match="bogus"):
        LuminaryExecutor(bogus=1)
    with LuminaryExecutor() as ex, pytest.raises(ValueError, match="plain function"):
        ex.map(unused, [1], chunksize=2)
