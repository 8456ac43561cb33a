"""util.joblib: joblib.Parallel on the "ray" backend runs calls as tasks in other processes."""

import importlib
import os

import pytest

from _backend import BACKEND, IS_RAY, ray

joblib = pytest.importorskip("joblib")
if IS_RAY:
    # joblib pickles this module's functions by reference; Ray's workers find the module through
    # PYTHONPATH (inherited when the module's cluster starts, after collection)
    _TESTS = os.path.dirname(os.path.abspath(__file__))
    _OLD = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([_TESTS] + _OLD)
register_ray = importlib.import_module(f"{BACKEND}.util.joblib").register_ray


def square(x):
    return x * x


def pid_and_value(x):
    return os.getpid(), x


def fails_on_three(x):
    if x == 3:
        raise ZeroDivisionError(f"cannot take {x}")
    return x


@pytest.fixture
def backend(ray_start):
    register_ray()
    return "ray"


@pytest.mark.timeout(120)
def test_parallel_results_in_order_from_other_processes(backend):
    with joblib.parallel_backend(backend):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(pid_and_value)(i) for i in range(40))
    assert [v for _, v in out] == list(range(40))
    pids = {p for p, _ in out}
    assert os.getpid() not in pids


@pytest.mark.timeout(120)
def test_n_jobs_minus_one_uses_the_cluster(backend):
    with joblib.parallel_backend(backend, n_jobs=-1):
        out = joblib.Parallel()(joblib.delayed(square)(i) for i in range(20))
        assert joblib.Parallel()._effective_n_jobs() == int(ray.cluster_resources()["CPU"])
    assert out == [i * i for i in range(20)]


@pytest.mark.timeout(120)
def test_exception_propagates_with_its_type(backend):
    with joblib.parallel_backend(backend):
        with pytest.raises(ZeroDivisionError, match="cannot take 3"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(fails_on_three)(i) for i in range(8))
        # the backend is usable again after a failure
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


@pytest.mark.timeout(120)
def test_n_jobs_one_runs_in_this_process(backend):
    with joblib.parallel_backend(backend):
        out = joblib.Parallel(n_jobs=1)(joblib.delayed(pid_and_value)(i) for i in range(3))
    assert out == [(os.getpid(), i) for i in range(3)]


@pytest.mark.timeout(120)
def test_closures_and_large_arguments(backend):
    import numpy as np
    weights = np.arange(200_000, dtype=np.float64)   # 1.6 MB: travels through the object store
    with joblib.parallel_backend(backend):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(lambda k: float(weights[k]) * 2)(k)
                                       for k in (0, 10, 199_999))
    assert out == [0.0, 20.0, 399_998.0]


@pytest.mark.skipif(IS_RAY, reason="Ray registers only the name 'ray'")
@pytest.mark.timeout(120)
def test_registered_as_luminary_too(backend):
    with joblib.parallel_backend("luminary"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(pid_and_value)(i) for i in range(6))
    assert [v for _, v in out] == list(range(6))
    assert os.getpid() not in {p for p, _ in out}
