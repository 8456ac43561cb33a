"""Luminary-specific lifecycle guarantees: no process or file outlives its cluster (also after
SIGKILL of the driver), distributed reference counting frees what nobody holds, the public
surface is exactly what is intended."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(IS_RAY, reason="Luminary internals")]


def _store_objects():
    from luminary._private.worker import state
    return state.core.call_sync("nm", "store_stats", None)["objects"]


def test_driver_sigkill_ends_the_whole_cluster(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        import numpy as np
        import luminary as ray
        ctx = ray.init(num_cpus=2)
        @ray.remote
        def forever():
            time.sleep(600)
        refs = [forever.remote() for _ in range(2)]
        big = ray.put(np.ones(10 << 20))
        print(ctx["session_dir"], flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    session_dir = proc.stdout.readline().strip()
    assert os.path.isdir(session_dir)
    cluster = psutil.Process(proc.pid).children(recursive=True)
    poll_for(lambda: len(psutil.Process(proc.pid).children(recursive=True)) >= 5, timeout=30,
             desc="node, GCS, zygote and two busy workers")
    cluster = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    def all_gone():
        for p in cluster:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True
    poll_for(all_gone, timeout=10, desc="every cluster process to exit after the driver's SIGKILL")
    poll_for(lambda: not os.path.exists(session_dir), timeout=10, desc="the session directory to be removed")


def test_object_freed_when_last_ref_dropped(ray_start):
    base = _store_objects()
    ref = ray.put(np.ones(5 << 20))
    assert _store_objects() == base + 1
    del ref
    poll_for(lambda: _store_objects() == base, timeout=10, desc="the object to be freed")


def test_borrowed_ref_keeps_object_alive_until_borrower_drops_it(ray_start):
    @ray.remote
    class Holder:
        def hold(self, refs):
            self.ref = refs[0]          # a ref nested in a list is passed as a ref: borrowed
            return True

        def read(self):
            return float(ray.get(self.ref).sum())

        def drop(self):
            del self.ref
            return True

    base = _store_objects()
    h = Holder.remote()
    ref = ray.put(np.ones(1 << 20))
    assert ray.get(h.hold.remote([ref]))
    del ref
    assert ray.get(h.read.remote()) == float(1 << 20)     # still alive through the borrower
    assert _store_objects() == base + 1
    assert ray.get(h.drop.remote())
    poll_for(lambda: _store_objects() == base, timeout=10, desc="freed after the borrower let go")


def test_refs_inside_an_object_live_as_long_as_it_does(ray_start):
    base = _store_objects()
    inner = ray.put(np.ones(1 << 20))
    outer = ray.put({"inner": inner})
    del inner
    assert _store_objects() == base + 1
    got = ray.get(outer)["inner"]
    assert float(ray.get(got).sum()) == float(1 << 20)
    del got, outer
    poll_for(lambda: _store_objects() == base, timeout=10, desc="inner freed with its container")


def test_segfaulting_worker_is_detected_and_retried(ray_start, tmp_path):
    marker = str(tmp_path / "crashed")

    @ray.remote(max_retries=1)
    def segfault_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            import ctypes
            ctypes.string_at(0)          # SIGSEGV
        return "recovered"

    assert ray.get(segfault_once.remote(marker), timeout=60) == "recovered"

    @ray.remote(max_retries=0)
    def segfault():
        import ctypes
        ctypes.string_at(0)

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(segfault.remote(), timeout=60)


def test_public_surface_is_exactly_what_is_intended():
    import luminary
    assert sorted(luminary.__all__) == sorted([
        "ObjectRef", "ObjectRefGenerator", "DynamicObjectRefGenerator", "available_resources", "cancel",
        "cluster_resources", "exceptions", "get", "get_gpu_ids", "get_runtime_context", "init",
        "is_initialized", "method", "nodes", "put", "remote", "shutdown", "wait", "get_actor", "kill",
        "actor", "util", "runtime_context", "cloudpickle", "ObjectID", "ActorClassID", "ActorID",
        "ClusterID", "FunctionID", "JobID", "NodeID", "PlacementGroupID", "TaskID", "UniqueID", "WorkerID"])
    for name in luminary.__all__:
        assert hasattr(luminary, name), name


@pytest.mark.parametrize("ray_start_fresh", [{"num_cpus": 1, "_system_config": {"infeasible_tasks": "fail"}}],
                         indirect=True)
def test_infeasible_task_can_be_made_to_fail_instead_of_wait(ray_start_fresh):
    @ray.remote(num_gpus=2)
    def needs_gpus():
        return 1

    with pytest.raises(ray.exceptions.TaskUnschedulableError, match="GPU"):
        ray.get(needs_gpus.remote(), timeout=30)

    @ray.remote
    def fine():
        return 2

    assert ray.get(fine.remote()) == 2


class _TwoArgError(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def test_exception_that_cannot_be_rebuilt_still_arrives_with_its_traceback(ray_start):
    @ray.remote
    def fail():
        raise _TwoArgError(1, 2)

    with pytest.raises(ray.exceptions.RayTaskError, match="_TwoArgError"):
        ray.get(fail.remote())
    assert ray.get(ray.put("still fine")) == "still fine"
