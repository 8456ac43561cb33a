"""The pure parts of what the event log keeps for after the cluster ended: when object samples
are due and how their rows are built, a store's largest objects, and why a pending task waits
(recorded by its owner or read from its state)."""
import msgpack
import pytest

from luminary._private import ids, stuck
from luminary._private.gcs import object_sample as osm
from luminary._private.gcs.task_table import TaskTable
from luminary._private.node.store import ObjectStore

pytestmark = pytest.mark.timeout(20)
KB = 4096


def _stats(**used):
    return [{"node_id": n, "store": {"used": u, "objects": 1 if u else 0, "spilled_bytes": 0,
                                     "fallback_bytes": 0}} for n, u in used.items()]


def test_object_samples_are_due_only_when_stores_change_and_at_most_every_few_seconds():
    clock = osm.SampleClock(every=5)
    assert clock.due(_stats(a=0), 0) is None              # no object yet: nothing to ask
    assert clock.due(_stats(a=KB), 1) == "ask"
    clock.running = True
    assert clock.due(_stats(a=KB), 2) is None             # one sample at a time
    clock.running = False
    clock.done(_stats(a=KB), 2, empty=False)
    assert clock.due(_stats(a=2 * KB), 4) is None         # too soon
    assert clock.due(_stats(a=KB), 8) is None             # nothing changed
    assert clock.due(_stats(a=2 * KB), 8) == "ask"
    clock.done(_stats(a=2 * KB), 8, empty=False)
    assert clock.due(_stats(a=0), 14) == "empty"          # emptied: one empty sample, no asking
    clock.done(_stats(a=0), 14, empty=True)
    assert clock.due(_stats(a=0), 30) is None


def test_merge_keeps_the_largest_once_each_at_its_primary_copy():
    big, mid, small = b"B" * 16, b"M" * 16, b"S" * 16
    tops = {"n1": [[big, 900, "spilled", b"w1", False], [small, 10, "shared_memory", b"w1", True]],
            "n2": [[big, 900, "shared_memory", b"w1", True], [mid, 500, "shared_memory", b"w2", True]]}
    got = osm.merge_tops(tops, n=2)
    assert [(o["oid"], o["node_id"], o["where"], o["copies"]) for o in got] == [
        (big, "n2", "shared_memory", 2), (mid, "n2", "shared_memory", 1)]


def test_rows_say_who_owns_each_object_why_it_is_referenced_and_what_made_it():
    tid = ids.new_task_id()
    ret, put = ids.object_id(tid, 1), ids.put_object_id()
    top = [{"oid": put, "size": 900, "where": "shared_memory", "owner": b"w1", "node_id": "n1", "copies": 1},
           {"oid": ret, "size": 500, "where": "spilled", "owner": b"w2", "node_id": "n1", "copies": 1}]
    answers = {b"w1": {"objects": [{"oid": put, "ref": "LOCAL_REFERENCE", "local": 1, "submitted": 0,
                                    "borrowers": 0}]}}
    procs = {b"w1": {"pid": 11, "kind": "DRIVER", "addr": "unix:/x", "alive": True},
             b"w2": {"pid": 12, "kind": "WORKER", "alive": False}}
    rows = osm.build_rows(top, answers, procs)
    assert rows[0]["object_id"] == put.hex() and rows[0]["pid"] == 11 and rows[0]["type"] == "DRIVER"
    assert rows[0]["reference_type"] == "LOCAL_REFERENCE" and rows[0]["created_by"] == "put"
    assert rows[0]["task_id"] is None
    assert rows[1]["reference_type"] == "OWNER_DIED" and rows[1]["where"] == "spilled"
    assert rows[1]["created_by"] == "task return" and rows[1]["task_id"] == tid.hex()


def test_store_names_its_largest_sealed_objects_and_where_they_are(tmp_path):
    cap = 4 * KB
    store = ObjectStore(memoryview(bytearray(cap)), cap, str(tmp_path / "spill"))
    for oid, size in ((b"a", 10), (b"b", 3000), (b"c", 700)):
        store.create(oid, size, b"w")
        store.seal(oid)
    store.create(b"d", 100, b"w")            # not sealed: not listed
    got = store.largest(2)
    assert [(o[0], o[1], o[2], o[3]) for o in got] == [(b"b", 3000, "shared_memory", b"w"),
                                                         (b"c", 700, "shared_memory", b"w")]


def _owner_batch(tid, states, reason=None, info=True):
    rec = ["O", tid, ["f", None, 1, None, {"GPU": 1.0}, 1.0] if info else None, states, None, None, None]
    if reason is not None:
        rec.append(reason)
    return msgpack.packb([rec], use_bin_type=True)


def test_task_table_keeps_the_owners_reason_while_the_task_waits():
    t = TaskTable()
    tid = b"t" * 12
    t.add({"wid": b"w"}, _owner_batch(tid, [1, 2.0]), 1)
    t.add({"wid": b"w"}, _owner_batch(tid, [], "infeasible: no node has {GPU: 1}", info=False), 1)
    row = t.select([("task_id", "=", tid.hex())], 1, True)[0]
    assert row["state"] == "PENDING_NODE_ASSIGNMENT" and row["pending_reason"].startswith("infeasible")
    t.add({"wid": b"w"}, _owner_batch(tid, [2, 3.0], info=False), 1)     # a node joined: it was pushed
    assert t.select([("task_id", "=", tid.hex())], 1, True)[0]["pending_reason"] is None


def test_reasons_read_from_state_and_nodes_when_none_was_recorded():
    nodes = [{"NodeID": "n1", "Alive": True, "Resources": {"CPU": 2.0}, "Available": {"CPU": 0.0}}]
    rows = [{"task_id": "a", "state": "PENDING_ARGS_AVAIL"},
            {"task_id": "b", "state": "PENDING_NODE_ASSIGNMENT", "required_resources": {"CPU": 1.0}},
            {"task_id": "c", "state": "PENDING_NODE_ASSIGNMENT", "required_resources": {"GPU": 1.0}},
            {"task_id": "d", "state": "PENDING_NODE_ASSIGNMENT", "pending_reason": "infeasible: recorded"},
            {"task_id": "e", "state": "FINISHED", "pending_reason": "stale"}]
    got = {r["task_id"]: r["pending_reason"] for r in stuck.fill_reasons(rows, nodes, now=0, free_when="then")}
    assert "arguments" in got["a"]
    assert got["b"] == "waiting for resources {CPU: 1} (free then across the cluster: {CPU: 0})"
    assert got["c"].startswith("infeasible") and "GPU: 1" in got["c"]
    assert got["d"] == "infeasible: recorded" and got["e"] is None
    nodes[0]["Available"] = None          # not recorded: no figure rather than a wrong one
    row = {"state": "PENDING_NODE_ASSIGNMENT", "required_resources": {"CPU": 1.0}}
    assert stuck.fill_reasons([row], nodes)[0]["pending_reason"] == "waiting for resources {CPU: 1}"
    assert "GPU: 1" in stuck.infeasible_reason({"GPU": 1.0}, {"CPU": 4.0, "node:x": 1.0})
