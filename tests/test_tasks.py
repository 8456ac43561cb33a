"""Remote functions: submission, arguments, return values, scheduling."""

import os
import time

import numpy as np
import pytest

from _backend import poll_for, ray


@ray.remote
def add_one(x):
    return x + 1


@ray.remote
def identity(x):
    return x


@ray.remote
def span(duration):
    """Sleep to simulate work; report (start, end) wall-clock times."""
    start = time.time()
    time.sleep(duration)
    return start, time.time()


def max_overlap(spans):
    events = [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans]
    events.sort(key=lambda ev: (ev[0], ev[1]))  # ends before starts on ties
    cur = best = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


# --------------------------------------------------------------------------
# return values
# --------------------------------------------------------------------------

def test_simple_return(ray_start):
    assert ray.get(add_one.remote(1)) == 2


def test_return_value_types(ray_start):
    @ray.remote
    def make(kind):
        return {
            "int": 7,
            "str": "hello",
            "none": None,
            "list": [1, "a", 2.5],
            "tuple": (1, 2),
            "dict": {"a": [1, 2], "b": {"c": None}},
            "bytes": b"\x00\x01",
            "set": {1, 2, 3},
        }[kind]

    kinds = ["int", "str", "none", "list", "tuple", "dict", "bytes", "set"]
    results = ray.get([make.remote(k) for k in kinds])
    assert results == [7, "hello", None, [1, "a", 2.5], (1, 2),
                       {"a": [1, 2], "b": {"c": None}}, b"\x00\x01", {1, 2, 3}]


def test_get_list_preserves_order(ray_start):
    refs = [identity.remote(i) for i in range(20)]
    assert ray.get(refs) == list(range(20))
    assert ray.get(list(reversed(refs))) == list(reversed(range(20)))


def test_module_level_and_closure_functions(ray_start):
    offset = 100

    @ray.remote
    def closure(x):
        return x + offset

    assert ray.get(closure.remote(1)) == 101
    assert ray.get(add_one.remote(41)) == 42


def test_args_and_kwargs(ray_start):
    @ray.remote
    def f(a, b=2, *args, c=3, **kwargs):
        return a, b, args, c, kwargs

    assert ray.get(f.remote(1)) == (1, 2, (), 3, {})
    assert ray.get(f.remote(1, 5, 6, 7, c=8, d=9)) == (1, 5, (6, 7), 8, {"d": 9})


def test_many_small_tasks(ray_start):
    refs = [add_one.remote(i) for i in range(300)]
    assert ray.get(refs) == [i + 1 for i in range(300)]


# --------------------------------------------------------------------------
# ObjectRef arguments
# --------------------------------------------------------------------------

def test_ref_args_resolved_before_run(ray_start):
    @ray.remote
    def kind_and_value(x):
        return type(x).__name__, x

    put_ref = ray.put(10)
    assert ray.get(kind_and_value.remote(put_ref)) == ("int", 10)
    # the output of one task fed to another
    assert ray.get(kind_and_value.remote(add_one.remote(add_one.remote(1)))) == ("int", 3)
    # keyword arguments are resolved too
    assert ray.get(kind_and_value.remote(x=put_ref)) == ("int", 10)


def test_ref_arg_waits_for_slow_dependency(ray_start):
    @ray.remote
    def slow_value():
        time.sleep(0.5)
        return "slow"

    @ray.remote
    def consume(v):
        return "got " + v

    assert ray.get(consume.remote(slow_value.remote())) == "got slow"


def test_nested_refs_passed_as_refs(ray_start):
    @ray.remote
    def inspect(container):
        inner = container[0] if isinstance(container, list) else container["k"]
        return type(inner).__name__, ray.get(inner)

    ref = ray.put("payload")
    kind, value = ray.get(inspect.remote([ref]))
    assert kind == "ObjectRef"
    assert value == "payload"
    kind, value = ray.get(inspect.remote({"k": add_one.remote(1)}))
    assert kind == "ObjectRef"
    assert value == 2


def test_large_numpy_arg(ray_start):
    arr = np.arange(20 * 1024 * 1024 // 8, dtype=np.float64)

    @ray.remote
    def summarize(a):
        return float(a.sum()), a.shape, a.dtype.str, bool(a.flags.writeable)

    total, shape, dtype, writeable = ray.get(summarize.remote(arr))
    assert total == float(arr.sum())
    assert shape == arr.shape
    assert dtype == arr.dtype.str
    # large numpy arguments are zero-copy views of the shared object store
    assert writeable is False
    # the same array put once and passed by ref
    ref = ray.put(arr)
    assert ray.get(summarize.remote(ref))[0] == total


# --------------------------------------------------------------------------
# tasks that submit tasks
# --------------------------------------------------------------------------

def test_task_submits_tasks(ray_start):
    @ray.remote
    def fan_out(n):
        return sum(ray.get([add_one.remote(i) for i in range(n)]))

    assert ray.get(fan_out.remote(10)) == sum(range(1, 11))


def test_task_returns_object_ref(ray_start):
    @ray.remote
    def make_ref():
        return add_one.remote(41)

    @ray.remote
    def make_put_ref():
        return ray.put("inner")

    inner = ray.get(make_ref.remote())
    assert isinstance(inner, ray.ObjectRef)
    assert ray.get(inner) == 42
    inner = ray.get(make_put_ref.remote())
    assert isinstance(inner, ray.ObjectRef)
    assert ray.get(inner) == "inner"


def test_recursive_tasks(ray_start):
    @ray.remote
    def fib(n):
        if n < 2:
            return n
        return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))

    assert ray.get(fib.remote(6)) == 8


# --------------------------------------------------------------------------
# num_returns
# --------------------------------------------------------------------------

def test_num_returns_multiple(ray_start):
    @ray.remote(num_returns=2)
    def two():
        return 1, 2

    @ray.remote(num_returns=3)
    def three(x):
        return x, x * 2, x * 3

    refs = two.remote()
    assert isinstance(refs, list) and len(refs) == 2
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == [1, 2]
    a, b, c = three.remote(5)
    assert ray.get(c) == 15 and ray.get(a) == 5 and ray.get(b) == 10


def test_num_returns_via_options(ray_start):
    @ray.remote
    def triple():
        return "a", "b", "c"

    single = triple.remote()
    assert isinstance(single, ray.ObjectRef)
    assert ray.get(single) == ("a", "b", "c")
    refs = triple.options(num_returns=3).remote()
    assert ray.get(refs) == ["a", "b", "c"]


def test_num_returns_one_keeps_tuple(ray_start):
    @ray.remote(num_returns=1)
    def pair():
        return 1, 2

    assert ray.get(pair.remote()) == (1, 2)


def test_num_returns_zero_returns_none(ray_start):
    # Ray: with num_returns=0, .remote() returns None.
    @ray.remote(num_returns=0)
    def nothing():
        return None

    assert nothing.remote() is None


def test_num_returns_mismatch_is_task_error(ray_start):
    @ray.remote(num_returns=2)
    def one_value():
        return 1

    refs = one_value.remote()
    assert len(refs) == 2
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(refs[0])


# --------------------------------------------------------------------------
# resources and scheduling
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_num_cpus_limits_concurrency(ray_start):
    # warm up: make sure worker start-up does not dominate the timings
    ray.get([span.remote(0.05) for _ in range(2)])
    start = time.time()
    spans = ray.get([span.remote(0.3) for _ in range(6)])
    wall = time.time() - start
    assert max_overlap(spans) <= 2
    # 6 x 0.3 s on 2 CPUs is 3 rounds: at least 0.9 s, well under serial 1.8 s
    assert wall >= 0.85
    assert wall < 1.75, f"6 tasks took {wall:.2f}s: they did not run 2 at a time"
    assert max_overlap(spans) == 2


@pytest.mark.timeout(60)
def test_num_cpus_option_reserves_cpus(ray_start):
    spans = ray.get([span.options(num_cpus=2).remote(0.2) for _ in range(3)])
    assert max_overlap(spans) == 1


@pytest.mark.timeout(90)
def test_fractional_cpus_run_together(ray_start, tmp_path):
    # 4 tasks x 0.5 CPU fit on 2 CPUs at once: a 4-party barrier completes.
    @ray.remote(num_cpus=0.5)
    def barrier(directory, parties):
        open(os.path.join(directory, str(os.getpid()) + "-" + str(time.time())), "w").close()
        deadline = time.time() + 45
        while time.time() < deadline:
            if len(os.listdir(directory)) >= parties:
                return True
            time.sleep(0.01)
        return False

    assert ray.get([barrier.remote(str(tmp_path), 4) for _ in range(4)]) == [True] * 4


def test_remote_with_options_runs(ray_start):
    @ray.remote(num_cpus=1, num_gpus=0, memory=50 * 1024 * 1024, max_retries=0,
                retry_exceptions=False, name="named_task")
    def f(x):
        return x * 2

    assert ray.get(f.remote(21)) == 42
    assert ray.get(f.options(name="other_name", num_cpus=0.5).remote(1)) == 2
    assert ray.get(add_one.options(resources={}, memory=1024).remote(1)) == 2


def test_direct_call_raises_type_error(ray_start):
    with pytest.raises(TypeError):
        add_one(1)


@pytest.mark.timeout(60)
def test_infeasible_task_stays_pending_and_can_be_cancelled(ray_start):
    # Ray keeps a task whose resources no node has pending (it does not fail).
    ref = identity.options(resources={"no_such_resource": 1}).remote(1)
    ready, not_ready = ray.wait([ref], timeout=0.5)
    assert ready == [] and not_ready == [ref]
    gpu_ref = identity.options(num_gpus=1).remote(1)
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(gpu_ref, timeout=0.3)
    ray.cancel(ref)
    ray.cancel(gpu_ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(gpu_ref, timeout=30)
    # the cluster still schedules normal work
    assert ray.get(add_one.remote(1), timeout=30) == 2


@pytest.mark.timeout(90)
@pytest.mark.parametrize("ray_start_fresh", [{"num_cpus": 1}], indirect=True)
def test_nested_get_does_not_deadlock_one_cpu(ray_start_fresh, tmp_path):
    # A task blocked in ray.get gives its CPU back so its child can run.
    @ray.remote
    def leaf(x):
        return x * 2

    @ray.remote
    def parent(x):
        return ray.get(leaf.remote(x)) + 1

    @ray.remote
    def chain(n):
        return 0 if n == 0 else 1 + ray.get(chain.remote(n - 1))

    assert ray.get(parent.remote(5), timeout=60) == 11
    assert ray.get(chain.remote(3), timeout=60) == 3

    # ray.wait inside a task also releases the CPU
    @ray.remote
    def waiter():
        ready, _ = ray.wait([leaf.remote(1)], num_returns=1, timeout=30)
        return ray.get(ready)

    assert ray.get(waiter.remote(), timeout=60) == [2]

    # only one CPU: two independent tasks do not overlap
    spans = ray.get([span.remote(0.2) for _ in range(2)])
    assert max_overlap(spans) == 1
