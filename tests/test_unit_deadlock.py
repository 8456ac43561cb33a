"""The GCS's wait-for graph (gcs/deadlock.py), without processes: which waits leave no way out."""
from luminary._private.gcs.deadlock import Wait, WaitGraph, describe

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16
T1, T2, T3, T4, T5 = (bytes([i]) * 12 for i in range(1, 6))


def _graph(*waits):
    g = WaitGraph()
    for w in waits:
        g.add(w)
    return g


def test_two_sync_actors_in_a_cycle_are_deadlocked_and_named():
    g = _graph(Wait(A, T1, "ping", [(B, T3, "pong")]), Wait(B, T2, "pong", [(A, T4, "back")]))
    assert g.deadlocked() == {A, B}
    cycle, reached = g.cycle_from(A, g.deadlocked())
    assert [w.actor for w in cycle] == [A, B] and reached == {A, B}
    rows, text = describe(cycle, lambda a: {A: "Ping", B: "Pong"}[a])
    assert "Ping(41414141).ping waits in get() for Pong(42424242).pong" in text
    assert [r["waits_for"] for r in rows] == ["Pong(42424242).pong", "Ping(41414141).back"]


def test_a_threaded_actor_is_stuck_only_when_every_slot_waits():
    a1 = Wait(A, T1, "outer", [(B, T3, "inner")], slots=2)
    b1 = Wait(B, T2, "outer", [(A, T4, "inner")], slots=2)
    g = _graph(a1, b1)
    assert g.deadlocked() == set()              # each has a free thread to serve the inner call
    g.add(Wait(A, T5, "outer", [(B, T3, "inner")], slots=2))
    assert g.deadlocked() == set()
    g.add(Wait(B, b"\x09" * 12, "outer", [(A, T4, "inner")], slots=2))
    assert g.deadlocked() == {A, B}
    g.remove(A, T1)                              # a thread frees: a way out again
    assert g.deadlocked() == set()


def test_a_task_and_an_actor_waiting_on_each_other():
    task = Wait(None, T1, "calls_back", [(A, T2, "ping")])
    actor = Wait(A, T3, "wait_on", [(T1, T1, None)])
    g = _graph(task, actor)
    assert g.deadlocked() == {T1, A}
    cycle, _ = g.cycle_from(A, g.deadlocked())
    _, text = describe(cycle, lambda a: "Holder")
    assert "Holder(41414141).wait_on waits in get() for the result of task calls_back(01010101)" in text
    assert "task calls_back(01010101) waits in get() for Holder(41414141).ping" in text


def test_a_wait_with_one_target_outside_a_stuck_set_still_needs_it_and_a_way_out_ends_it():
    # C waits on A (stuck in a cycle with B): C is stuck too; answered with the cycle it waits on
    g = _graph(Wait(A, T1, "ping", [(B, T3, "pong")]), Wait(B, T2, "pong", [(A, T4, "back")]),
               Wait(C, T5, "watch", [(A, T1, "ping")]))
    assert g.deadlocked() == {A, B, C}
    cycle, reached = g.cycle_from(C, g.deadlocked())
    assert {w.actor for w in cycle} == {A, B} and reached == {A, B, C}
    # get() needs every object: one target stuck is enough to be stuck ...
    g = _graph(Wait(A, T1, "ping", [(B, T3, "pong"), (T5, T5, None)]), Wait(B, T2, "pong", [(A, T4, "back")]))
    assert g.deadlocked() == {A, B}
    # ... and a wait only on what is not stuck (a task still running) is a way out for the chain
    g = _graph(Wait(A, T1, "ping", [(B, T3, "pong")]), Wait(B, T2, "pong", [(T5, T5, None)]))
    assert g.deadlocked() == set()


def test_a_sync_actors_newer_wait_replaces_its_older_one():
    g = WaitGraph()
    old = Wait(A, T1, "m", [(B, T3, "n")])
    assert g.add(old) == []
    assert g.add(Wait(A, T2, "m", [(B, T4, "n")])) == [old]
    assert list(g.waits[A]) == [T2]
