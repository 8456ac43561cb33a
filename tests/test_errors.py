"""Errors: task exceptions, retries, worker crashes, bad input, cancellation."""

import os
import threading
import time

import psutil
import pytest

from _backend import poll_for, ray

exc = ray.exceptions


class AppError(Exception):
    """A user-defined exception class (module level, so picklable by name)."""


class RetryableError(Exception):
    pass


def bump(path):
    """Increment the counter stored in file ``path``; return the new value.

    Tasks use it to count their attempts (one task at a time per file).
    """
    n = int(open(path).read()) if os.path.exists(path) else 0
    n += 1
    with open(path, "w") as f:
        f.write(str(n))
    return n


def count(path):
    return int(open(path).read()) if os.path.exists(path) else 0


@ray.remote
def add_one(x):
    return x + 1


# --------------------------------------------------------------------------
# exception classes
# --------------------------------------------------------------------------

def test_exception_hierarchy():
    names = ["RayError", "RayTaskError", "WorkerCrashedError", "TaskCancelledError",
             "GetTimeoutError", "ObjectLostError", "OwnerDiedError", "ObjectStoreFullError"]
    for name in names:
        cls = getattr(exc, name)
        assert isinstance(cls, type) and issubclass(cls, Exception)
        assert issubclass(cls, exc.RayError)
    assert issubclass(exc.GetTimeoutError, TimeoutError)
    assert issubclass(exc.OwnerDiedError, exc.ObjectLostError)


# --------------------------------------------------------------------------
# exceptions raised by tasks
# --------------------------------------------------------------------------

def test_task_exception_is_ray_task_error_and_user_type(ray_start):
    @ray.remote
    def fail():
        raise ValueError("original message 1234")

    with pytest.raises(exc.RayTaskError) as info:
        ray.get(fail.remote())
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, exc.RayError)
    assert "original message 1234" in str(err)
    # catching by the user's exception type works too
    with pytest.raises(ValueError, match="original message 1234"):
        ray.get(fail.remote())


def test_custom_exception_class(ray_start):
    @ray.remote
    def fail():
        raise AppError("custom failure")

    with pytest.raises(AppError, match="custom failure") as info:
        ray.get(fail.remote())
    assert isinstance(info.value, exc.RayTaskError)


def test_exception_in_list_get(ray_start):
    @ray.remote
    def maybe_fail(i):
        if i == 2:
            raise KeyError("bad index")
        return i

    with pytest.raises(KeyError):
        ray.get([maybe_fail.remote(i) for i in range(4)])


def test_error_propagates_through_dependent_task(ray_start, tmp_path):
    marker = str(tmp_path / "dependent_ran")

    @ray.remote
    def fail():
        raise ValueError("upstream failure")

    @ray.remote
    def dependent(x, path):
        open(path, "w").close()
        return x

    with pytest.raises(exc.RayTaskError) as info:
        ray.get(dependent.remote(fail.remote(), marker))
    assert isinstance(info.value, ValueError)
    assert "upstream failure" in str(info.value)
    # the dependent task never ran: its argument could not be produced
    assert not os.path.exists(marker)
    # a task that receives the failed ref nested in a list does run, and
    # sees the error when it gets the ref itself
    @ray.remote
    def nested_get(lst):
        try:
            ray.get(lst[0])
        except ValueError as e:
            return "caught: " + str(e)
        return "not raised"

    out = ray.get(nested_get.remote([fail.remote()]))
    assert out.startswith("caught:") and "upstream failure" in out


def test_exception_caught_inside_task(ray_start):
    @ray.remote
    def fail():
        raise ValueError("inner")

    @ray.remote
    def catcher():
        try:
            ray.get(fail.remote())
        except exc.RayTaskError as e:
            return type(e).__name__.startswith("RayTaskError"), isinstance(e, ValueError)
        return None

    assert ray.get(catcher.remote()) == (True, True)


# --------------------------------------------------------------------------
# retries of application errors
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_retry_exceptions_true_retries(ray_start, tmp_path):
    path = str(tmp_path / "attempts")

    @ray.remote(max_retries=2, retry_exceptions=True)
    def flaky(path):
        n = bump(path)
        if n < 2:
            raise ValueError(f"attempt {n}")
        return n

    assert ray.get(flaky.remote(path)) == 2
    assert count(path) == 2


@pytest.mark.timeout(60)
def test_retry_exceptions_exhausted(ray_start, tmp_path):
    path = str(tmp_path / "attempts")

    @ray.remote
    def always_fails(path):
        n = bump(path)
        raise ValueError(f"attempt {n}")

    with pytest.raises(ValueError, match="attempt 2"):
        ray.get(always_fails.options(max_retries=1, retry_exceptions=True).remote(path))
    assert count(path) == 2


def test_application_errors_not_retried_by_default(ray_start, tmp_path):
    path = str(tmp_path / "attempts")

    @ray.remote
    def fails(path):
        bump(path)
        raise ValueError("no retry")

    with pytest.raises(ValueError):
        ray.get(fails.remote(path))
    assert count(path) == 1
    # max_retries alone covers system failures only, not application errors
    with pytest.raises(ValueError):
        ray.get(fails.options(max_retries=3).remote(path))
    assert count(path) == 2


@pytest.mark.timeout(60)
def test_retry_exceptions_list_only_retries_listed(ray_start, tmp_path):
    @ray.remote(max_retries=2, retry_exceptions=[RetryableError])
    def flaky(path, error_kind):
        n = bump(path)
        if n < 2:
            raise RetryableError("listed") if error_kind == "listed" else KeyError("unlisted")
        return n

    listed = str(tmp_path / "listed")
    assert ray.get(flaky.remote(listed, "listed")) == 2
    assert count(listed) == 2

    unlisted = str(tmp_path / "unlisted")
    with pytest.raises(KeyError):
        ray.get(flaky.remote(unlisted, "unlisted"))
    assert count(unlisted) == 1


# --------------------------------------------------------------------------
# worker crashes
# --------------------------------------------------------------------------

@ray.remote
def crash_until(path, n_crashes):
    n = bump(path)
    if n <= n_crashes:
        os._exit(1)
    return n


@pytest.mark.timeout(90)
def test_worker_crash_retried_with_max_retries(ray_start, tmp_path):
    path = str(tmp_path / "attempts")
    assert ray.get(crash_until.options(max_retries=2).remote(path, 1), timeout=60) == 2
    assert count(path) == 2


@pytest.mark.timeout(90)
def test_worker_crash_default_max_retries(ray_start, tmp_path):
    # Ray's default max_retries for tasks is 3 (system failures only).
    path = str(tmp_path / "attempts")
    assert ray.get(crash_until.remote(path, 1), timeout=60) == 2


@pytest.mark.timeout(90)
def test_worker_crash_without_retries(ray_start, tmp_path):
    path = str(tmp_path / "attempts")
    ref = crash_until.options(max_retries=0).remote(path, 5)
    with pytest.raises(exc.WorkerCrashedError):
        ray.get(ref, timeout=60)
    assert count(path) == 1
    # crashes exhaust retries too
    path2 = str(tmp_path / "attempts2")
    with pytest.raises(exc.WorkerCrashedError):
        ray.get(crash_until.options(max_retries=1).remote(path2, 5), timeout=60)
    assert count(path2) == 2
    # the cluster keeps working
    assert ray.get(add_one.remote(1), timeout=60) == 2


# --------------------------------------------------------------------------
# serialization failures
# --------------------------------------------------------------------------

def test_unpicklable_argument(ray_start):
    kept = ray.put("still here")
    # Ray raises TypeError at .remote() time ("Could not serialize the argument")
    with pytest.raises(TypeError):
        add_one.remote(threading.Lock())
    with pytest.raises(TypeError):
        add_one.remote([1, threading.Lock()])
    # the cluster keeps working
    assert ray.get(add_one.remote(1)) == 2
    assert ray.get(kept) == "still here"


def test_unpicklable_put(ray_start):
    with pytest.raises(TypeError):
        ray.put(threading.Lock())
    assert ray.get(ray.put(1)) == 1


def test_unpicklable_return_value(ray_start):
    @ray.remote
    def bad_return():
        return threading.Lock()

    with pytest.raises(exc.RayTaskError) as info:
        ray.get(bad_return.remote())
    assert isinstance(info.value, TypeError)  # the pickling error's own type
    assert ray.get(add_one.remote(1)) == 2


def test_unpicklable_closure(ray_start):
    lock = threading.Lock()

    def uses_lock():
        with lock:
            return 1

    # Ray refuses to export a remote function capturing a lock (TypeError)
    with pytest.raises(TypeError):
        ray.remote(uses_lock).remote()
    assert ray.get(add_one.remote(1)) == 2


# --------------------------------------------------------------------------
# bad option values (types asserted are the ones Ray raises)
# --------------------------------------------------------------------------

def _fn():
    return 1


@pytest.mark.parametrize("options, error", [
    ({"num_cpus": -1}, ValueError),
    ({"num_gpus": -1}, ValueError),
    ({"memory": -1}, ValueError),
    ({"num_returns": -1}, ValueError),
    ({"num_returns": "bogus"}, TypeError),  # Ray's TypeError comes from comparing str >= int
    ({"max_retries": -2}, ValueError),
    ({"max_retries": "x"}, TypeError),
    ({"retry_exceptions": "x"}, TypeError),
    ({"resources": {"CPU": 1}}, ValueError),  # use num_cpus instead
    ({"resources": {"GPU": 1}}, ValueError),
    ({"no_such_option": 1}, ValueError),
])
def test_bad_options(ray_start, options, error):
    with pytest.raises(error):
        ray.remote(**options)(_fn)
    with pytest.raises(error):
        ray.remote(_fn).options(**options).remote()


# --------------------------------------------------------------------------
# cancellation
# --------------------------------------------------------------------------

@ray.remote
def wait_for_file(started, release, timeout=60):
    """Signal start by creating ``started``; spin (short sleeps) until ``release`` exists."""
    with open(started, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(release):
            return "released"
        time.sleep(0.01)
    return "timed out"


def _started(path):
    return lambda: os.path.exists(path) and os.path.getsize(path) > 0


@pytest.mark.timeout(90)
def test_cancel_pending_task(ray_start, tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    # occupy the whole 2-CPU cluster
    blocker = wait_for_file.options(num_cpus=2).remote(started, release)
    poll_for(_started(started), timeout=60, desc="blocker start")
    ran = str(tmp_path / "pending_ran")
    pending = wait_for_file.remote(ran, release)
    ready, _ = ray.wait([pending], timeout=0.2)
    assert ready == []
    ray.cancel(pending)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(pending, timeout=30)
    ready, _ = ray.wait([pending], timeout=5)
    assert ready == [pending]  # a cancelled task's ref counts as ready
    open(release, "w").close()
    assert ray.get(blocker, timeout=30) == "released"
    assert not os.path.exists(ran)
    assert ray.get(add_one.remote(1), timeout=30) == 2


@pytest.mark.timeout(90)
def test_cancel_running_task(ray_start, tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    ref = wait_for_file.remote(started, release)
    poll_for(_started(started), timeout=60, desc="task start")
    t0 = time.time()
    ray.cancel(ref)
    # Ray raises RayTaskError(TaskCancelledError): an instance of both
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=30)
    assert time.time() - t0 < 20
    assert ray.get(add_one.remote(1), timeout=30) == 2


@pytest.mark.timeout(90)
def test_force_cancel_running_task_kills_worker(ray_start, tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    ref = wait_for_file.remote(started, release)
    poll_for(_started(started), timeout=60, desc="task start")
    pid = int(open(started).read())
    ray.cancel(ref, force=True)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=30)

    def worker_gone():
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    poll_for(worker_gone, timeout=30, desc=f"worker {pid} to be killed")
    assert ray.get(add_one.remote(1), timeout=30) == 2


@pytest.mark.timeout(60)
def test_cancel_finished_task_is_noop(ray_start):
    ref = add_one.remote(1)
    assert ray.get(ref) == 2
    ray.cancel(ref)
    assert ray.get(ref) == 2
    ray.cancel(ray.put(5))  # cancelling a put object does nothing
    with pytest.raises(TypeError):
        ray.cancel(1)


@pytest.mark.timeout(90)
def test_cancel_propagates_to_dependents(ray_start, tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    upstream = wait_for_file.remote(started, release)
    downstream = add_one.remote(upstream)
    poll_for(_started(started), timeout=60, desc="task start")
    ray.cancel(upstream)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(downstream, timeout=30)
