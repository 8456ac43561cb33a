"""The state API (``util.state``) and the CLI that shows it (``luminary list/get/summary/memory/
timeline/logs``): what a user reads to find failed, stuck and big things in a live cluster.

Runs against Ray where the API matches (Ray's state API needs its dashboard: skipped when Ray
is installed without it); the CLI parts are Luminary's."""
import json
import os
import signal

import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = pytest.mark.timeout(60)

if IS_RAY:
    try:
        import aiohttp  # noqa: F401  (ray's state API is served by its dashboard)
    except ImportError:
        pytest.skip("Ray is installed without its dashboard: no state API to compare with", allow_module_level=True)
    from ray.util import state
else:
    from luminary.util import state

luminary_only = pytest.mark.skipif(IS_RAY, reason="Luminary's CLI")


@ray.remote
def sa_ok(x):
    return x


@ray.remote(max_retries=0)
def sa_bad():
    raise ValueError("sa_bad exploded")


@ray.remote
def sa_many(x):
    return x


@ray.remote
def sa_cli(x):
    return x


@ray.remote
def sa_timeline(x):
    return x


@ray.remote(max_restarts=1)
class SaCounter:
    def pid(self):
        return os.getpid()


@ray.remote
class SaTalker:
    def say(self, s):
        print(s, flush=True)
        return os.getpid()


def _tasks(name, **kw):
    return state.list_tasks(filters=[("name", "=", name)], limit=1000, **kw)


def _cli(capsys, *argv):
    from luminary.cli.main import main
    capsys.readouterr()
    main(list(argv))
    return capsys.readouterr().out


def test_counts_by_state_and_a_failed_tasks_error(ray_start):
    assert ray.get([sa_ok.remote(i) for i in range(5)]) == list(range(5))
    with pytest.raises(Exception):
        ray.get(sa_bad.remote())
    poll_for(lambda: len([t for t in _tasks("sa_ok") if t["state"] == "FINISHED"]) == 5, desc="5 FINISHED")
    failed = poll_for(lambda: [t for t in _tasks("sa_bad", detail=True)
                               if t["state"] == "FAILED" and t.get("error_message")], desc="the failed task")
    t = failed[0]
    assert t["error_type"] == "TASK_EXECUTION_EXCEPTION"
    assert "ValueError" in t["error_message"] and "sa_bad exploded" in t["error_message"]
    assert t["func_or_class_name"] == "sa_bad" and t["type"] == "NORMAL_TASK"
    assert t["worker_pid"] and t["node_id"]
    summary = state.summarize_tasks()["cluster"]["summary"]
    assert summary["sa_ok"]["state_counts"]["FINISHED"] == 5
    assert summary["sa_bad"]["state_counts"]["FAILED"] == 1
    assert state.get_task(t["task_id"])["state"] == "FAILED"


def test_filters_and_limit(ray_start):
    ray.get([sa_many.remote(i) for i in range(6)])
    poll_for(lambda: len([t for t in _tasks("sa_many") if t["state"] == "FINISHED"]) == 6)
    assert len(state.list_tasks(filters=[("name", "=", "sa_many")], limit=2)) == 2
    others = state.list_tasks(filters=[("name", "!=", "sa_many")], limit=1000)
    assert all(t["name"] != "sa_many" for t in others)
    assert state.list_tasks(filters=[("name", "=", "sa_many"), ("state", "=", "FAILED")]) == []


def test_actor_restarts_and_running_task(ray_start):
    a = SaCounter.remote()
    pid = ray.get(a.pid.remote())
    os.kill(pid, signal.SIGKILL)
    def restarted():
        try:
            return ray.get(a.pid.remote()) != pid
        except ray.exceptions.RayActorError:
            return False      # a call that reached the dying incarnation
    poll_for(restarted, timeout=20, desc="the restarted actor")
    aid = a._actor_id.hex()
    row = poll_for(lambda: [r for r in state.list_actors(filters=[("actor_id", "=", aid)])
                            if r["num_restarts"] == 1 and r["state"] == "ALIVE"], desc="restart counted")[0]
    assert row["class_name"] == "SaCounter"
    assert state.get_actor(aid)["actor_id"] == aid
    summary = state.summarize_actors()["cluster"]["summary"]
    assert summary["SaCounter"]["state_counts"]["ALIVE"] >= 1
    calls = poll_for(lambda: [t for t in _tasks("SaCounter.pid") if t["state"] == "FINISHED"])
    assert calls[0]["type"] == "ACTOR_TASK" and calls[0]["actor_id"] == aid


def test_list_objects_sees_a_put_object_with_owner_and_size(ray_start):
    ref = ray.put(b"x" * 300_000)
    rows = poll_for(lambda: state.list_objects(filters=[("object_id", "=", ref.hex())]))
    mine = [r for r in rows if r["pid"] == os.getpid()]
    assert mine and mine[0]["object_size"] >= 300_000
    assert mine[0]["reference_type"] == "LOCAL_REFERENCE"
    del ref


def test_nodes_workers_jobs_placement_groups(ray_start):
    nodes = state.list_nodes()
    assert len(nodes) == 1 and nodes[0]["state"] == "ALIVE" and nodes[0]["is_head_node"]
    assert state.get_node(nodes[0]["node_id"])["node_id"] == nodes[0]["node_id"]
    drivers = poll_for(lambda: [w for w in state.list_workers(limit=1000) if w["worker_type"] == "DRIVER"
                                and w["pid"] == os.getpid()])
    assert drivers[0]["is_alive"]
    assert any(j["status"] == "RUNNING" for j in state.list_jobs())
    from luminary.util import placement_group, remove_placement_group
    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready())
    pgs = state.list_placement_groups(filters=[("placement_group_id", "=", pg.id.hex())])
    assert pgs and pgs[0]["state"] == "CREATED"
    remove_placement_group(pg)


@luminary_only
def test_cli_list_get_summary(ray_start, capsys):
    ray.get([sa_cli.remote(i) for i in range(3)])
    poll_for(lambda: len([t for t in _tasks("sa_cli") if t["state"] == "FINISHED"]) == 3)
    rows = json.loads(_cli(capsys, "list", "tasks", "--filter", "name=sa_cli", "--format", "json"))
    assert len(rows) == 3 and {r["state"] for r in rows} == {"FINISHED"}
    assert len(json.loads(_cli(capsys, "list", "tasks", "--filter", "name=sa_cli", "--limit", "1",
                               "--format", "json"))) == 1
    table = _cli(capsys, "list", "tasks", "--filter", "name=sa_cli")
    assert "TASK_ID" in table and table.count("sa_cli") == 3
    got = _cli(capsys, "get", "tasks", rows[0]["task_id"], "--format", "json")
    assert json.loads(got)["task_id"] == rows[0]["task_id"]
    assert "sa_cli" in _cli(capsys, "summary", "tasks")
    yml = _cli(capsys, "list", "nodes", "--format", "yaml")
    assert "state: \"ALIVE\"" in yml


@luminary_only
def test_cli_memory_sees_a_put_object(ray_start, capsys):
    ref = ray.put(b"y" * 250_000)
    out = poll_for(lambda: (lambda o: ref.hex()[:20] in o and o)(_cli(capsys, "memory")))
    line = [ln for ln in out.splitlines() if ref.hex()[:20] in ln][0]
    assert str(os.getpid()) in line and "object_store" in line
    rows = json.loads(_cli(capsys, "memory", "--format", "json"))
    mine = [r for r in rows if r["object_id"] == ref.hex()]
    assert mine[0]["is_owner"] and mine[0]["object_size"] >= 250_000
    assert "Totals per node" in out
    del ref


@luminary_only
def test_timeline_is_chrome_trace_json(ray_start, capsys, tmp_path):
    ray.get([sa_timeline.remote(i) for i in range(4)])
    # the owner's FINISHED and the worker's started/ended travel in separate batches: wait for both
    poll_for(lambda: len([t for t in _tasks("sa_timeline", detail=True)
                          if t.get("end_time_ms") and t.get("start_time_ms") and t.get("worker_pid")]) == 4)
    out = tmp_path / "trace.json"
    _cli(capsys, "timeline", "-o", str(out))
    events = json.loads(out.read_text())
    ran = [e for e in events if e["ph"] == "X" and e["name"] == "sa_timeline"]
    assert len(ran) == 4
    for e in ran:
        assert e["dur"] > 0 and e["ts"] > 0 and isinstance(e["tid"], int) and e["pid"].startswith("node ")
    rows = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M"}
    assert {(e["pid"], e["tid"]) for e in ran} <= rows


@luminary_only
def test_logs_of_an_actor(ray_start, capsys):
    a = SaTalker.remote()
    ray.get(a.say.remote("hello-from-sa-talker"))
    logs = state.list_logs()
    assert logs["worker_out"]
    aid = a._actor_id.hex()
    poll_for(lambda: any("hello-from-sa-talker" in ln for ln in state.get_log(actor_id=aid, tail=100)))
    assert "hello-from-sa-talker" in _cli(capsys, "logs", "--actor-id", aid)
    assert "worker_out:" in _cli(capsys, "logs")


@luminary_only
def test_the_event_cap_bounds_the_table_and_counts_drops(shutdown_only, monkeypatch, capsys):
    monkeypatch.setenv("LUMINARY_TASK_EVENTS_MAX", "50")
    ray.init(num_cpus=2)
    ray.get([sa_many.remote(i) for i in range(200)])

    def settled():
        s = state.summarize_tasks()["cluster"]
        return s if s["total_tasks"] + s["dropped"] >= 200 else None
    s = poll_for(settled, timeout=30, desc="the task events of 200 tasks")
    assert s["total_tasks"] == 50 and s["dropped"] >= 150
    assert len(state.list_tasks(limit=None)) == 50
    capsys.readouterr()
    from luminary.cli.main import main
    main(["list", "tasks", "--limit", "10"])
    err = capsys.readouterr().err
    assert "10 of 50 tasks shown" in err and "older task records were dropped" in err, err
