"""Task events without a cluster: the owner's trace, the bounded task table, filters, and the
Prometheus text (checked with prometheus_client's parser)."""
import pytest

from luminary._private.gcs.prometheus import render
from luminary._private.gcs.task_table import TaskTable, apply_filters
from luminary._private.gcs.events import Metrics

pytestmark = pytest.mark.timeout(30)

OWNER = {"wid": b"o" * 16, "pid": 1, "node": b"n" * 16}
WORKER = {"wid": b"w" * 16, "pid": 2, "node": b"m" * 16}


def _tid(i):
    return i.to_bytes(12, "big")


def _submitted(i, name="f", ts=1.0, states=(0, 1, 2), node=None):
    trans = []
    for k, s in enumerate(states):
        trans += [s, ts + k * 0.01]
    return ["O", _tid(i), [name, None, 1, None, {"CPU": 1.0}, ts], trans, node, None, None]


def test_the_cap_drops_the_oldest_and_counts_them():
    table = TaskTable(cap=3)
    table.apply(OWNER, [_submitted(i) for i in range(5)])
    assert len(table.tasks) == 3 and table.dropped == 2
    assert [r.tid for r in table.tasks.values()] == [_tid(2), _tid(3), _tid(4)]
    table.apply(OWNER, [], dropped=7)         # dropped by a process whose buffer was full
    assert table.dropped + table.dropped_at_source == 9


def test_worker_and_owner_reports_merge_in_any_order():
    table = TaskTable()
    table.apply(WORKER, [["W", _tid(1), 5.0, None, None, None]])          # running, seen first
    table.apply(OWNER, [_submitted(1, ts=4.0)])                           # owner: pushed
    row = table.rows(detail=True)[0]
    assert row["state"] == "RUNNING" and row["worker_pid"] == 2 and row["attempt_number"] == 0
    table.apply(OWNER, [["O", _tid(1), None, [4, 6.0], None, None, None]])  # failed (app error)
    table.apply(WORKER, [["W", _tid(1), None, 5.9, "TASK_EXECUTION_EXCEPTION", "ValueError: boom"]])
    row = table.rows(detail=True)[0]
    assert row["state"] == "FAILED" and row["error_message"] == "ValueError: boom"
    assert row["start_time_ms"] == 5000 and row["end_time_ms"] == 5900
    assert [e["state"] for e in row["events"]] == ["PENDING_ARGS_AVAIL", "PENDING_ARGS_AVAIL",
                                                   "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING", "FAILED"]


def test_a_retry_is_a_new_attempt():
    table = TaskTable()
    table.apply(OWNER, [_submitted(1, states=(0, 1, 2, 1, 2, 3), node=b"n" * 16)])
    row = table.rows()[0]
    assert row["attempt_number"] == 1 and row["state"] == "FINISHED" and row["node_id"] == (b"n" * 16).hex()


def test_owner_side_failure_keeps_its_error():
    table = TaskTable()
    table.apply(OWNER, [["O", _tid(1), ["g", None, 1, None, {}, 1.0], [0, 1.0, 4, 1.1], None,
                         "TASK_CANCELLED", "cancelled"]])
    row = table.rows(detail=True)[0]
    assert (row["state"], row["error_type"], row["error_message"]) == ("FAILED", "TASK_CANCELLED", "cancelled")


def test_filters_and_limit():
    rows = [{"name": "f", "state": "FINISHED", "n": i} for i in range(5)] + [{"name": "g", "state": "FAILED", "n": 9}]
    assert len(apply_filters(rows, [("name", "=", "f")])) == 5
    assert len(apply_filters(rows, [("name", "=", "f")], limit=2)) == 2
    assert apply_filters(rows, [("state", "=", "failed")])[0]["name"] == "g"   # states match in any case
    assert len(apply_filters(rows, [("name", "!=", "f")])) == 1
    assert apply_filters(rows, [("n", "=", "9")])[0]["name"] == "g"
    with pytest.raises(ValueError):
        apply_filters(rows, [("n", ">", 1)])


def test_owner_traces_failures_retries_and_calls_reported_pending():
    """The usual path (queued, pushed, finished) is the worker's to tell; the owner notes a
    failure with its error, and every change of a call the recorder reported as pending."""
    from luminary._private.worker.owner import Call, Owner, State
    owner = Owner(b"w" * 16, {}, set())
    owner.trace = []
    call = Call(b"t" * 12, {"args": ["v", b""]}, b"f", b"", {"CPU": 1.0}, [], 1, 0, False, [], ([], []), "f")
    owner.handle(("submit", call, []))
    assert owner.trace == []
    owner.handle(("cancel", call.tid, False, True))
    kinds = [type(s) for c, s in owner.trace]
    assert kinds[-2] is bytes and owner.trace[-1][1] == State.FAILED    # the error, then FAILED
    owner.trace = []
    pending = Call(b"u" * 12, {"args": ["v", b""]}, b"f", b"", {"CPU": 1.0}, [], 1, 0, False, [], ([], []), "f")
    pending.traced = True
    owner.handle(("submit", pending, []))
    assert [s for c, s in owner.trace] == [State.QUEUED]


def test_prometheus_text_parses():
    from prometheus_client.parser import text_string_to_metric_families
    m = Metrics()
    m.apply([["def", "reqs", "counter", "requests \"quoted\"", []], ["reqs", [["route", "/a\n"]], 3.0],
             ["def", "lat", "histogram", "latency", [0.5]], ["lat", [], [1, 2, 1.7, 3]],
             ["def", "depth", "gauge", "depth", []], ["depth", [], 4.0], ["depth", [], 2.0]])
    text = render(m, {"FINISHED": 3}, [{"state": "ALIVE"}], [{"node_id": "ab", "store": {"used": 10}}], {}, 0)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["reqs"].samples[0].value == 3.0 and fams["reqs"].samples[0].labels == {"route": "/a\n"}
    lat = {(s.name, s.labels.get("le")): s.value for s in fams["lat"].samples}
    assert lat[("lat_bucket", "0.5")] == 1 and lat[("lat_bucket", "+Inf")] == 3 and lat[("lat_count", None)] == 3
    assert fams["depth"].samples[0].value == 2.0
    assert fams["luminary_tasks"].samples[0].labels == {"State": "FINISHED"}
    assert fams["luminary_object_store_used_bytes"].samples[0].value == 10


def test_task_table_stream_and_recent_for_the_dashboard():
    from luminary._private.gcs.task_table import TaskTable
    t = TaskTable()
    proc = {"wid": b"w" * 16, "pid": 7, "node": b"n" * 16}
    evs = []
    for i in range(5):
        tid = bytes([i]) * 12
        evs.append(["O", tid, ["f" if i % 2 else "g", None, 1, None, {"CPU": 1}, 100.0 + i], [3, 101.0 + i], None,
                    None, None])
        evs.append(["W", tid, 100.0 + i, 100.5 + i, "ValueError" if i == 4 else None, "boom" if i == 4 else None])
    t.apply(proc, evs)
    rows = t.stream(since=102.0)           # ended at or after 102: tasks 2, 3, 4, newest first
    assert [r[3] for r in rows] == [104.0, 103.0, 102.0]
    assert rows[0][0] == (b"w" * 16).hex() and rows[0][1] == 7 and rows[0][5] == "g" and rows[0][6] is True
    assert [r[6] for r in rows[1:]] == [False, False]
    assert [r["name"] for r in t.recent(filters=[("name", "=", "f")], limit=5)] == ["f", "f"]
    assert len(t.recent(limit=2)) == 2 and t.recent(limit=1)[0]["task_id"] == (bytes([4]) * 12).hex()


def test_select_stops_at_the_limit_and_summary_is_summed_in_place():
    table = TaskTable(cap=100)
    table.apply(OWNER, [_submitted(i, name="f" if i % 2 else "g", states=(0, 1, 2, 3 if i % 3 else 4))
                        for i in range(30)])
    table.apply(WORKER, [["W", _tid(i), 2.0, 2.5, None, None] for i in range(30)])
    assert [r["task_id"] for r in table.select(limit=2)] == [_tid(0).hex(), _tid(1).hex()]
    failed = table.select([("state", "=", "FAILED")], limit=None, detail=True)
    assert len(failed) == 10 and all(r["state"] == "FAILED" and "events" in r for r in failed)
    assert [e["state"] for e in failed[0]["events"]] == ["PENDING_ARGS_AVAIL", "PENDING_ARGS_AVAIL",
                                                         "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER",
                                                         "FAILED", "RUNNING"]
    assert table.select([("error_message", "!=", "x")], limit=3, detail=True)[0]["events"]
    s = table.summary()
    assert s["total_tasks"] == 30 and s["total_actor_tasks"] == 0
    assert s["summary"]["f"]["state_counts"] == {"FINISHED": 10, "FAILED": 5}
    assert s["summary"]["g"]["duration_n"] == 15 and s["summary"]["g"]["duration_s_total"] == pytest.approx(7.5)


def test_records_share_repeated_names_ids_and_resource_shapes():
    table = TaskTable(cap=10)
    table.apply(dict(OWNER), [_submitted(1, name="fn" * 20, node=b"x" * 16)])
    table.apply(dict(OWNER, wid=bytes(b"o" * 16)), [_submitted(2, name="".join(["fn"] * 20), node=bytes(b"x" * 16))])
    a, b = table.tasks[_tid(1)], table.tasks[_tid(2)]
    assert a.name is b.name and a.node is b.node and a.owner is b.owner and a.resources is b.resources


def test_a_call_finished_within_one_owner_batch_is_told_by_its_worker_alone():
    """The owner leaves out a call submitted, pushed once and finished between two of its
    flushes; the worker's record carries the submission, so the task is listed all the same."""
    info = ["f", None, 1, b"p" * 12, {"CPU": 1.0}, 1.0, 10, 0, OWNER["wid"]]
    table = TaskTable()
    table.apply(WORKER, [["W", _tid(1), 1.1, 1.2, None, None, info],
                         ["W", _tid(2), 1.1, 1.3, "TASK_EXECUTION_EXCEPTION", "boom", info]])
    ok, bad = table.tasks[_tid(1)].row(True), table.tasks[_tid(2)].row(True)
    assert ok["state"] == "FINISHED" and ok["name"] == "f" and ok["creation_time_ms"] == 1000
    assert ok["worker_pid"] == 2 and ok["owner_worker_id"] == OWNER["wid"].hex()
    assert [e["state"] for e in ok["events"]] == ["PENDING_ARGS_AVAIL", "RUNNING", "FINISHED"]
    assert bad["state"] == "FAILED" and bad["error_message"] == "boom"
    # the owner's own record, when it spans batches, agrees and adds no second end
    table.apply(OWNER, [["O", _tid(1), None, [3, 1.25], None, None, None]])
    assert [e["state"] for e in table.tasks[_tid(1)].row(True)["events"]].count("FINISHED") == 1


def test_counts_stay_equal_to_a_recount_through_random_records_and_evictions():
    """counts() is kept as records change (no pass over the table per sample): after every
    batch of random owner and worker records, in any order, with the cap evicting, it equals
    a recount of the rows."""
    import collections
    import random
    rng = random.Random(7)
    table = TaskTable(cap=40)
    info = lambda: ["f", None, 1, None, {}, 1.0, 10, 0, OWNER["wid"]]  # noqa: E731
    for _ in range(300):
        batch = []
        for _ in range(rng.randint(1, 12)):
            i = rng.randint(0, 120)
            kind = rng.random()
            if kind < 0.35:      # a worker's record of a call that ended (the fast path when new)
                err = "TASK_EXECUTION_EXCEPTION" if rng.random() < 0.2 else None
                batch.append(["W", _tid(i), 1.0, 1.5, err, "boom" if err else None, info()])
            elif kind < 0.42:    # a group of clean ends (the worker's usual record)
                tids = rng.sample(range(121), rng.randint(1, 4))
                if rng.random() < 0.1:
                    tids.append(tids[0])         # (a group naming a task twice: merged one by one)
                flat = []
                for t in tids:
                    flat += [_tid(t), 1.0 if rng.random() < 0.8 else None, 1.5, 0.9, 10 << 16]
                batch.append(["E", ["f", None, 1, None, {}, OWNER["wid"]], flat, 0.0])
            elif kind < 0.5:     # running, no info
                batch.append(["W", _tid(i), 1.0, None, None, None, None])
            else:                # the owner: submitted and some states
                states = rng.choice([(0,), (0, 1), (0, 1, 2), (0, 1, 2, 3), (0, 1, 2, 4), (1, 2, 1, 2, 3)])
                batch.append(_submitted(i, states=states) if rng.random() < 0.6
                             else ["O", _tid(i), None, [states[-1], 2.0], None, None, None])
        table.apply(WORKER if rng.random() < 0.5 else OWNER, batch)
        counts = table.counts()
        recount = collections.Counter(r.state for r in table.tasks.values())
        assert counts == dict(recount)
        assert sum(counts.values()) == len(table.tasks) <= 40


def test_clean_ends_travel_by_group_and_read_back_as_full_rows():
    """A worker's clean ends are batched by (name, owner, parent, actor, resources): threads
    ending calls at once lose none, each call keeps its own times, argument sizes and resource
    shape, and a malformed group loses only its own batch."""
    import threading
    import time
    import types

    import msgpack

    from luminary._private.worker import events as E

    rec = E.Recorder(types.SimpleNamespace(io=None), "WORKER")
    rec.armed = True                           # (no loop to arm a flush on)
    owner = OWNER["wid"]

    def call(i, res):
        spec = {"tid": _tid(i), "name": "f", "job": 1, "owner_id": owner, "args": ["v", b"x" * i],
                "ev": 100.0 + i, "par": b"p" * 12, "res": res}
        if i % 3 == 0:
            spec["refs"] = [[b"r", "unix:/x"]] * 2
        return types.SimpleNamespace(spec=spec, started=time.monotonic(), told=False)

    ok = {"rets": [["v", b"r"]]}
    calls = [call(i, {"CPU": 1.0} if i % 2 else {"CPU": 0.5}) for i in range(400)]
    threads = [threading.Thread(target=lambda part=calls[k::4]: [rec.ended(c, ok) for c in part]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = call(999, None)
    rec.ended(failed, {"app_error": True, "rets": [["e", __import__("pickle").dumps(ValueError("boom"))]]})
    records = rec._worker_records()
    assert sorted(r[0] for r in records) == ["E", "E", "W"]       # two resource shapes, one failure
    table = TaskTable()
    table.add(WORKER, msgpack.packb(records, use_bin_type=True), len(records))
    table.add(WORKER, msgpack.packb([["E", ["f", None, 1, None, None, owner], [_tid(5000), "x", 1.0, 1.0, 0], 0.0]]), 1)
    assert table.size() == 401 and table.bad_batches == 1
    assert table.counts() == {"FINISHED": 400, "FAILED": 1}
    row = table.get(_tid(7)).row(True)
    assert row["state"] == "FINISHED" and row["name"] == "f" and row["worker_pid"] == 2
    assert row["required_resources"] == {"CPU": 1.0} and row["args_bytes"] == 7 and row["args_object_refs"] == 0
    assert row["creation_time_ms"] == 107000 and row["parent_task_id"] == (b"p" * 12).hex()
    assert row["start_time_ms"] is not None and row["owner_worker_id"] == owner.hex()
    row = table.get(_tid(6)).row(True)
    assert row["required_resources"] == {"CPU": 0.5} and row["args_object_refs"] == 2
    assert table.get(_tid(999)).row(True)["error_message"] == "boom"
    # a group's call its owner reported pending first is merged into the owner's record
    table.apply(OWNER, [_submitted(7000, ts=1.0)])
    table.apply(WORKER, [["E", ["f", None, 1, None, None, owner], [_tid(7000), 1.0, 1.1, 1.0, 0], 0.1]])
    row = table.get(_tid(7000)).row(True)
    assert row["state"] == "FINISHED" and row["start_time_ms"] == 1100
    assert [e["state"] for e in row["events"]][-2:] == ["RUNNING", "FINISHED"]


def test_summary_and_state_filters_over_clean_ends_agree_with_full_records():
    """The summary sums a group's clean ends without building them, and a filter on another
    state passes over them; both agree with the same figures taken from fully built records."""
    import copy
    owner = OWNER["wid"]
    table = TaskTable()
    flat = []
    for i in range(50):
        flat += [_tid(i), 1.0 if i % 5 else None, 1.5 + i / 100, 0.9, 10 << 16]
    table.apply(WORKER, [["E", ["f", None, 1, None, None, owner], flat, 100.0],
                         ["E", ["A.g", b"a" * 16, 1, None, None, owner], [_tid(60), 2.0, 2.25, 1.9, 0], 100.0]])
    table.apply(WORKER, [["W", _tid(70), 3.0, 3.5, "TASK_EXECUTION_EXCEPTION", "boom",
                          ["f", None, 1, None, {}, 2.9, 1, 0, owner]]])
    table.apply(OWNER, [_submitted(80, name="h")])
    full = copy.deepcopy(table)
    full.tasks                                      # every record built and kept
    def rounded(summary):          # (a duration from a group is taken without the clock offset)
        for v in summary["summary"].values():
            v["duration_s_total"] = round(v["duration_s_total"], 9)
        return summary
    assert rounded(table.summary()) == rounded(full.summary())
    s = table.summary()["summary"]
    assert s["f"]["state_counts"] == {"FINISHED": 50, "FAILED": 1} and s["f"]["duration_n"] == 41
    assert s["A.g"]["type"] == "ACTOR_TASK" and abs(s["A.g"]["duration_s_total"] - 0.25) < 1e-9
    failed = [("state", "=", "FAILED")]
    assert [r["task_id"] for r in table.select(failed)] == [_tid(70).hex()]
    assert table.select(failed, detail=True) == full.select(failed, detail=True)
    assert len(table.select([("state", "=", "FINISHED")])) == 51
    assert all(v.__class__ is tuple for k, v in table._tasks.items() if k != _tid(70) and k != _tid(80))
