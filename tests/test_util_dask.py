"""util.dask: Dask graphs (arrays, delayed, dataframes when pandas is installed) computed as tasks."""

import importlib
import os

import numpy as np
import pytest

from _backend import BACKEND, IS_RAY, ray

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
ray_dask = importlib.import_module(f"{BACKEND}.util.dask")
ray_dask_get = ray_dask.ray_dask_get


@dask.delayed
def inc(x):
    return x + 1


@dask.delayed
def pid_of(_x):
    return os.getpid()


@dask.delayed
def big(n):
    return np.ones(n)


@dask.delayed
def describe(arr):
    return float(arr.sum()), bool(arr.flags.writeable)


@dask.delayed
def fail(x):
    raise ZeroDivisionError(f"cannot divide {x}")


@dask.delayed
def cpus(_x):
    return ray.get_runtime_context().get_assigned_resources().get("CPU")


@pytest.mark.timeout(120)
def test_dask_array_matches_numpy(ray_start):
    base = np.arange(400 * 300, dtype=np.float64).reshape(400, 300)
    x = da.from_array(base, chunks=(100, 100))
    total, col_means = dask.compute(x.sum(), x.mean(axis=0), scheduler=ray_dask_get)
    assert total == base.sum()
    np.testing.assert_allclose(col_means, base.mean(axis=0))
    prod = (x @ x.T).compute(scheduler=ray_dask_get)
    np.testing.assert_allclose(prod, base @ base.T)


@pytest.mark.timeout(120)
def test_delayed_runs_as_tasks_in_other_processes(ray_start):
    chain = inc(inc(inc(1)))
    value, pid = dask.compute(chain, pid_of(chain), scheduler=ray_dask_get)
    assert value == 4
    assert pid != os.getpid()
    # nested collections of results keep their structure
    assert dask.compute({"a": inc(1), "b": [inc(2), inc(3)]}, scheduler=ray_dask_get) == \
        ({"a": 2, "b": [3, 4]},)


@pytest.mark.timeout(120)
def test_intermediate_results_travel_through_the_object_store(ray_start):
    # a 4 MB intermediate reaches its consumer as a read-only view of shared memory
    total, writeable = describe(big(500_000)).compute(scheduler=ray_dask_get)
    assert total == 500_000.0
    assert writeable is False


@pytest.mark.timeout(120)
def test_config_set_scheduler(ray_start):
    with dask.config.set(scheduler=ray_dask_get):
        assert dask.compute(pid_of(inc(1)))[0] != os.getpid()
        assert inc(41).compute() == 42


@pytest.mark.timeout(120)
def test_enable_and_disable_dask_on_ray(ray_start):
    try:
        with ray_dask.enable_dask_on_ray():
            assert dask.config.get("scheduler") is ray_dask_get
            assert pid_of(1).compute() != os.getpid()
        assert dask.config.get("scheduler", None) is None
        ray_dask.enable_dask_on_ray()
        assert dask.config.get("scheduler") is ray_dask_get
        assert inc(1).compute() == 2
    finally:
        ray_dask.disable_dask_on_ray()
    assert dask.config.get("scheduler", None) is None


@pytest.mark.timeout(120)
def test_errors_propagate_with_their_type(ray_start):
    with pytest.raises(ZeroDivisionError, match="cannot divide 2"):
        dask.compute(inc(fail(inc(1))), scheduler=ray_dask_get)


@pytest.mark.timeout(120)
def test_ray_remote_args_apply_to_every_task(ray_start):
    assert dask.compute(cpus(1), scheduler=ray_dask_get, ray_remote_args={"num_cpus": 0.5}) == (0.5,)


@pytest.mark.skipif(IS_RAY, reason="luminary_dask_get is Luminary's name for the same scheduler")
@pytest.mark.timeout(120)
def test_luminary_name_and_bad_arguments(ray_start):
    assert ray_dask.luminary_dask_get is ray_dask_get
    assert dask.compute(inc(1), scheduler=ray_dask.luminary_dask_get) == (2,)
    with pytest.raises(TypeError, match="ray_remote_args"):
        dask.compute(inc(1), scheduler=ray_dask_get, ray_remote_args=["num_cpus"])
    with pytest.raises(TypeError, match="unexpected keyword"):
        dask.compute(inc(1), scheduler=ray_dask_get, bogus=1)


@pytest.mark.timeout(120)
def test_dataframe_groupby(ray_start):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame({"k": [i % 3 for i in range(30)], "v": list(range(30))})
    ddf = dd.from_pandas(frame, npartitions=4)
    result = ddf.groupby("k").v.sum().compute(scheduler=ray_dask_get)
    pd.testing.assert_series_equal(result.sort_index(), frame.groupby("k").v.sum())
