"""The node's memory monitor: a worker is ended before the kernel's OOM killer acts, with a clear error."""
import time

import pytest

from _backend import IS_RAY, ray

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(IS_RAY, reason="Luminary's memory monitor and its unit logic")]


def test_pick_victim_prefers_idle_then_newest_task_of_the_busiest_owner_then_actors():
    from luminary._private.node.memory_monitor import pick_victim
    w = lambda kind, owner=None, started=0.0, rss=1: {"kind": kind, "owner": owner, "started": started, "rss": rss}
    idle_small, idle_big = w("idle", rss=1), w("idle", rss=9)
    a1, a2, b1 = w("task", "A", 1.0), w("task", "A", 5.0), w("task", "B", 9.0)
    actor = w("actor", rss=100)
    assert pick_victim([a1, idle_small, actor, idle_big]) is idle_big
    assert pick_victim([a1, a2, b1, actor]) is a2          # owner A runs the most; its newest
    assert pick_victim([actor]) is actor
    assert pick_victim([]) is None


def test_read_memory_prefers_a_cgroup_limit(tmp_path):
    from luminary._private.node.memory_monitor import read_memory
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text("1000000\n")
    (cg / "memory.current").write_text("600000\n")
    (cg / "memory.stat").write_text("anon 1\ninactive_file 100000\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:    250 kB\n")
    assert read_memory(str(cg), str(meminfo)) == (500000, 1000000)
    (cg / "memory.max").write_text("max\n")
    assert read_memory(str(cg), str(meminfo)) == (750 * 1024, 1000 * 1024)


SQUEEZED = {"num_cpus": 1, "_system_config": {"memory_usage_threshold": 0.0001, "memory_monitor_refresh_ms": 50}}


@pytest.mark.parametrize("ray_start_fresh", [SQUEEZED], indirect=True)
def test_a_task_ended_for_memory_fails_with_out_of_memory_error(ray_start_fresh):
    @ray.remote(max_retries=0)
    def hog():
        time.sleep(60)

    start = time.monotonic()
    with pytest.raises(ray.exceptions.OutOfMemoryError) as info:
        ray.get(hog.remote(), timeout=60)
    assert time.monotonic() - start < 30
    text = str(info.value)
    assert "Top memory users" in text and "memory_usage_threshold" in text and "GiB used of" in text

    @ray.remote(max_retries=2)
    def retried():
        time.sleep(60)

    # retriable tasks run again on their own memory budget (not their max_retries), then fail
    with pytest.raises(ray.exceptions.OutOfMemoryError):
        ray.get(retried.remote(), timeout=100)


def test_bad_memory_settings_are_refused(shutdown_only):
    for bad in ({"memory_usage_threshold": 1.5}, {"memory_usage_threshold": float("nan")},
                {"memory_monitor_refresh_ms": -1}):
        with pytest.raises(ValueError, match="_system_config"):
            ray.init(num_cpus=1, _system_config=bad)
