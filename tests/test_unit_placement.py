"""The placement module, without processes: exact resources, task/actor/bundle placement rules,
and the GCS waking placement waiters on a cluster-view change."""
import asyncio
import random
import time

import pytest

from luminary._private.node.scheduler import LeaseRequest, LocalScheduler
from luminary._private.placement import (LOCAL, ClusterView, NodeView, Reject, ResourceSet, Spill, TaskPlacer,
                                         actor_load, fits, group_resources, place_actor, plan_bundles, to_units)

pytestmark = pytest.mark.timeout(20)

A, B, C, ME = b"a", b"b", b"c", b"m"


def rs(**res):
    return ResourceSet.from_wire(res)


def need(**res):
    return ResourceSet.request(res)


def node(nid, total, avail=None, alive=True):
    return NodeView(nid, f"addr-{nid.decode()}", rs(**total), rs(**(total if avail is None else avail)), alive=alive)


def view(*nodes):
    return ClusterView(nodes)


# --- exact arithmetic ------------------------------------------------------------------------------
def test_ten_tenths_fill_one_cpu_exactly_and_an_eleventh_does_not_fit():
    avail, tenth = rs(CPU=1), need(CPU=0.1)
    taken = 0
    while fits(tenth, avail):
        avail.subtract(tenth)
        taken += 1
    assert taken == 10
    assert avail.units("CPU") == 0 and avail.to_wire() == {"CPU": 0.0}
    assert need(CPU=0.1) + need(CPU=0.2) == need(CPU=0.3)       # 0.1 + 0.2 != 0.3 in floats


def test_local_scheduler_grants_ten_tenth_cpu_leases_not_eleven():
    s = LocalScheduler({"CPU": 1})
    for i in range(11):
        s.submit(LeaseRequest(i, {"CPU": 0.1}, "owner"))
    grants, _ = s.schedule(idle_workers=20)
    for g in grants:
        s.grant(g, object())
    assert len(grants) == 10 and len(s.queue) == 1
    assert s.available.units("CPU") == 0
    for g in grants:
        s.release(g.lease_id)
    assert s.available == s.total
    s.validate()


def test_wire_conversion_is_at_the_edge_and_round_trips():
    r = ResourceSet.from_wire({"CPU": 0.1, "GPU": 0.5, "memory": 2e9, "zero": 0.0})
    assert r.to_wire() == {"CPU": 0.1, "GPU": 0.5, "memory": 2e9}      # zeros dropped
    assert ResourceSet.from_wire(r.to_wire()) == r
    assert to_units(0.00001) == 1                  # a positive ask never rounds to nothing
    assert to_units(1 / 3) == 3333 and to_units(0.00005) == 1
    assert ResourceSet.request({"CPU": 0, "x": -1, "y": 2}).to_wire() == {"y": 2.0}


def test_randomized_fractional_allocations_return_exactly_to_the_totals():
    rng = random.Random(1234)
    totals = {"CPU": 7.3, "GPU": 2, "custom": 0.9, "memory": 3.5e9}
    s = LocalScheduler(totals)
    fractions = [0.1, 0.2, 0.3, 0.05, 1 / 3, 0.7, 0.0001, 1.1]
    live, next_id = [], 0
    for _ in range(3000):
        if live and rng.random() < 0.45:
            s.release(live.pop(rng.randrange(len(live))))
        else:
            res = {k: rng.choice(fractions) * (1e9 if k == "memory" else 1)
                   for k in rng.sample(sorted(totals), rng.randint(1, 3))}
            s.submit(LeaseRequest(next_id, res, "owner"))
            next_id += 1
            grants, _ = s.schedule(idle_workers=1)
            for g in grants:
                s.grant(g, object())
                live.append(g.lease_id)
            s.queue.clear()
        s.validate()
        assert all(s.available.units(k) >= 0 for k in s.available)
    for lid in live:
        s.release(lid)
    assert s.available == s.total == ResourceSet.from_wire(totals)
    assert s.available.to_wire() == s.total.to_wire()


def test_bundle_capacity_comes_and_goes_exactly():
    s = LocalScheduler({"CPU": 2})
    bundle = need(CPU=0.3)
    assert s.reserve(bundle)
    extra = group_resources(bundle, 0, "ab")
    s.add_capacity(extra)
    assert s.total.get("CPU_group_0_ab") == 0.3 and s.total.get("CPU_group_ab") == 0.3
    assert s.fits({"CPU_group_ab": 0.3}) and not s.fits({"CPU_group_ab": 0.3001})
    s.remove_capacity(extra)
    s.unreserve(bundle)
    assert s.total == rs(CPU=2) and s.available == rs(CPU=2)
    assert "CPU_group_ab" not in s.total and "bundle_group_ab" not in s.available


# --- task placement at a node manager ---------------------------------------------------------------
def choose(placer, req, local, *others, now=0.0, **kw):
    return placer.choose(req, local, view(*others), now, **kw)


def test_infeasible_here_spills_to_a_node_that_fits_else_queues_here():
    p = TaskPlacer(ME)
    me = node(ME, {"CPU": 2})
    d = choose(p, need(GPU=1), me, node(A, {"CPU": 2}), node(B, {"CPU": 2, "GPU": 1}, {"CPU": 2}))
    assert isinstance(d, Spill) and d.node_id == B and d.address == "addr-b"   # waits there for the GPU
    assert choose(p, need(TPU=1), me, node(A, {"CPU": 2})) is LOCAL               # nowhere: queued, reported
    assert choose(p, need(GPU=1), me, node(B, {"GPU": 1}, alive=False)) is LOCAL  # dead nodes don't count


def test_spread_round_robins_over_nodes_with_room():
    p = TaskPlacer(ME)
    me, a, b = node(ME, {"CPU": 2}), node(A, {"CPU": 2}), node(B, {"CPU": 2}, {"CPU": 0})
    picks = []
    for i in range(4):
        d = choose(p, need(CPU=1), me, a, b, now=float(i), strategy={"type": "SPREAD"})
        picks.append(ME if d is LOCAL else d.node_id)
    assert sorted(set(picks)) == [A, ME] and picks[0] != picks[1]       # b is full: skipped


def test_node_affinity_hard_and_soft():
    p = TaskPlacer(ME)
    me, a = node(ME, {"CPU": 2}), node(A, {"CPU": 2})
    assert choose(p, need(CPU=1), me, a, strategy={"type": "NODE_AFFINITY", "node_id": ME}) is LOCAL
    d = choose(p, need(CPU=1), me, a, strategy={"type": "NODE_AFFINITY", "node_id": A})
    assert isinstance(d, Spill) and d.node_id == A
    dead = {"type": "NODE_AFFINITY", "node_id": B}
    assert isinstance(choose(p, need(CPU=1), me, a, strategy=dead), Reject)
    assert "soft=True" in choose(p, need(CPU=1), me, a, strategy=dead).message
    assert choose(p, need(CPU=1), me, a, strategy=dict(dead, soft=True)) is LOCAL    # falls back: room here


def test_locality_goes_to_the_node_holding_most_argument_bytes():
    p = TaskPlacer(ME)
    me, a, b = node(ME, {"CPU": 2}), node(A, {"CPU": 2}, {"CPU": 0}), node(B, {"CPU": 2})
    d = choose(p, need(CPU=1), me, a, b, locality={A: 10_000_000, B: 10})
    assert isinstance(d, Spill) and d.node_id == A          # busy, but the bytes are there


def test_hybrid_rule_stays_local_under_half_used_else_least_loaded_with_room():
    p = TaskPlacer(ME)
    a = node(A, {"CPU": 4}, {"CPU": 1})
    b = node(B, {"CPU": 4}, {"CPU": 3})
    assert choose(p, need(CPU=1), node(ME, {"CPU": 4}, {"CPU": 2.0001}), a, b) is LOCAL   # 49.9975% used
    d = choose(p, need(CPU=1), node(ME, {"CPU": 4}, {"CPU": 2}), a, b)                 # exactly 50%
    assert isinstance(d, Spill) and d.node_id == B
    # nobody less loaded than here: stay
    assert choose(TaskPlacer(ME), need(CPU=1), node(ME, {"CPU": 4}, {"CPU": 2}), a) is LOCAL
    # no room anywhere now: wait here if it can ever run here
    assert choose(TaskPlacer(ME), need(CPU=1), node(ME, {"CPU": 4}, {"CPU": 0}), node(A, {"CPU": 4}, {"CPU": 0})) is LOCAL


def test_requests_just_spilled_count_against_their_target_until_they_expire():
    p = TaskPlacer(ME)
    me = node(ME, {"CPU": 4}, {"CPU": 1})
    a, b = node(A, {"CPU": 2}), node(B, {"CPU": 2})
    first = [choose(p, need(CPU=1), me, a, b, now=0.0).node_id for _ in range(4)]
    assert sorted(first) == [A, A, B, B]            # a burst spreads instead of piling on one node
    d = choose(p, need(CPU=1), me, a, b, now=0.05)
    assert d is LOCAL                               # both look full now; room here
    d = choose(p, need(CPU=1), me, a, b, now=0.0 + TaskPlacer.SENT_MEMORY_S + 0.1)
    assert isinstance(d, Spill)                     # the memory expired: the reports rule again


def test_no_spill_stays_when_it_can_ever_run_here():
    p = TaskPlacer(ME)
    d = choose(p, need(CPU=1), node(ME, {"CPU": 1}, {"CPU": 0}), node(A, {"CPU": 8}), no_spill=True)
    assert d is LOCAL
    d = choose(p, need(CPU=2), node(ME, {"CPU": 1}), node(A, {"CPU": 8}), no_spill=True)
    assert isinstance(d, Spill) and d.node_id == A


# --- actors at the GCS ----------------------------------------------------------------------------
def test_actor_goes_where_there_is_room_counting_actors_being_placed():
    v = view(node(A, {"CPU": 4}, {"CPU": 1}), node(B, {"CPU": 4}, {"CPU": 2}))
    assert place_actor(need(CPU=1), v) == B                     # most free CPU
    counts, pending = actor_load([(B, need(CPU=2), False), (A, need(CPU=1), True), (None, need(CPU=1), False)])
    assert counts == {B: 1, A: 1} and pending == {B: need(CPU=2)}
    assert place_actor(need(CPU=1), v, None, counts, pending) == A    # b's room is promised already
    assert place_actor(need(GPU=1), v) is None                   # no node could ever hold it
    assert place_actor(need(CPU=8), v) is None


def test_actor_spread_prefers_fewest_actors_and_affinity_is_hard_unless_soft():
    v = view(node(A, {"CPU": 4}), node(B, {"CPU": 4}, {"CPU": 3}))
    assert place_actor(need(CPU=1), v, {"type": "SPREAD"}, {A: 2, B: 1}) == B
    assert place_actor(need(CPU=1), v, {"type": "NODE_AFFINITY", "node_id": B}) == B
    assert place_actor(need(CPU=1), v, {"type": "NODE_AFFINITY", "node_id": C}) is None
    assert place_actor(need(CPU=1), v, {"type": "NODE_AFFINITY", "node_id": C, "soft": True}) == A
    # a node without room now is still chosen when it is the only one that could hold it: it waits there
    assert place_actor(need(CPU=4), view(node(A, {"CPU": 4}, {"CPU": 0}))) == A


# --- placement-group bundles ----------------------------------------------------------------------
NODES = {A: {"CPU": 2}, B: {"CPU": 2, "GPU": 1}, C: {"CPU": 1}}


def test_pack_and_strict_pack():
    assert plan_bundles([{"CPU": 1}, {"CPU": 1}], "STRICT_PACK", NODES) == [B, B]      # most room first
    assert plan_bundles([{"CPU": 2}, {"CPU": 1}], "STRICT_PACK", NODES) is None
    assert plan_bundles([{"CPU": 2}, {"CPU": 1}], "PACK", NODES) == [A, B]   # no node holds 3: fill a, then b
    packed = plan_bundles([{"CPU": 2}, {"CPU": 2}, {"CPU": 1}], "PACK", NODES)
    assert packed == [A, B, C]                                                       # falls back, exact fill
    tenths = [{"CPU": 0.1}] * 10
    assert plan_bundles(tenths, "STRICT_PACK", {A: {"CPU": 1}}) == [A] * 10
    assert plan_bundles(tenths + [{"CPU": 0.1}], "STRICT_PACK", {A: {"CPU": 1}}) is None


def test_spread_uses_the_least_used_node_first():
    assert plan_bundles([{"CPU": 1}] * 3, "SPREAD", NODES) == [A, B, C]
    assert plan_bundles([{"CPU": 1}] * 5, "SPREAD", NODES) == [A, B, C, A, B]
    assert plan_bundles([{"CPU": 1}] * 6, "SPREAD", NODES) is None


def test_strict_spread_distinct_nodes_and_infeasible_cases():
    assert sorted(plan_bundles([{"CPU": 1}] * 3, "STRICT_SPREAD", NODES)) == [A, B, C]
    assert plan_bundles([{"CPU": 1}] * 4, "STRICT_SPREAD", NODES) is None            # more bundles than nodes
    assert plan_bundles([{"GPU": 1}, {"GPU": 1}], "STRICT_SPREAD", NODES) is None     # one GPU node only
    assert plan_bundles([{"CPU": 2}] * 3, "STRICT_SPREAD", NODES) is None             # c is too small


def test_strict_spread_reseats_bundles_when_first_fit_would_fail():
    nodes = {A: {"CPU": 1, "custom": 1}, B: {"CPU": 1}}
    # largest first puts CPU:1 on a (first that fits), then custom finds no free node; a matching exists
    assert plan_bundles([{"CPU": 1}, {"custom": 0.5}], "STRICT_SPREAD", nodes) == [B, A]


# --- the GCS wakes placement on view changes ------------------------------------------------------
class FakeConn:
    def __init__(self):
        self.closed = False
        self.close_callbacks = []
        self.state = {}
        self.calls = []

    def notify(self, method, params):
        self.calls.append(method)

    async def call(self, method, params):
        self.calls.append(method)
        return True


def test_gcs_wakes_a_pending_placement_group_when_a_node_with_room_joins():
    from luminary._private.gcs.server import VIEW_WAIT_SAFETY_S, GcsServer

    async def main():
        gcs = GcsServer(b"s" * 32)
        gcs.register_node(FakeConn(), {"node_id": A, "ip": "x", "address": "a", "resources": {"CPU": 1}})
        gcs.placement_groups.create_pg(FakeConn(), {"pg_id": b"p" * 16, "bundles": [{"CPU": 2}],
                                                    "strategy": "PACK", "lifetime": "detached"})
        for _ in range(5):
            await asyncio.sleep(0)
        pg = gcs.placement_groups.groups[b"p" * 16]
        assert pg.state == "PENDING"
        seen = gcs.view_version
        gcs.heartbeat(None, {"node_id": A, "available": {"CPU": 1}, "total": {"CPU": 1}})
        assert gcs.view_version == seen                    # nothing placement depends on changed
        t0 = time.monotonic()
        conn_b = FakeConn()
        gcs.register_node(conn_b, {"node_id": B, "ip": "y", "address": "b", "resources": {"CPU": 2}})
        while pg.state == "PENDING" and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.001)
        assert pg.state == "CREATED" and pg.nodes == [B]
        assert time.monotonic() - t0 < VIEW_WAIT_SAFETY_S / 2     # woken by the join, not a poll
        assert conn_b.calls[:2] == ["prepare_bundle", "commit_bundle"]

    asyncio.run(main())


def test_wait_view_change_returns_at_once_if_changed_and_times_out_otherwise():
    from luminary._private.gcs.server import GcsServer

    async def main():
        gcs = GcsServer(b"s" * 32)
        seen = gcs.view_version
        gcs.register_node(FakeConn(), {"node_id": A, "ip": "x", "address": "a", "resources": {"CPU": 1}})
        assert await gcs.wait_view_change(seen, timeout=5)                  # already changed
        seen = gcs.view_version
        assert not await gcs.wait_view_change(seen, timeout=0.01)          # safety net
        waiter = asyncio.ensure_future(gcs.wait_view_change(seen, timeout=5))
        await asyncio.sleep(0)
        gcs.heartbeat(None, {"node_id": A, "available": {"CPU": 0.5}})      # new availability
        assert await asyncio.wait_for(waiter, 1)
        assert gcs.cluster.get(A).available == rs(CPU=0.5)
        # an actor no node could hold waits for capacity only: new room alone does not wake it
        cap = asyncio.ensure_future(gcs.wait_view_change(gcs.capacity_version, timeout=5, capacity=True))
        await asyncio.sleep(0)
        gcs.heartbeat(None, {"node_id": A, "available": {"CPU": 1}})
        await asyncio.sleep(0)
        assert not cap.done()
        gcs.heartbeat(None, {"node_id": A, "available": {"CPU": 1}, "total": {"CPU": 1, "GPU": 1}})
        assert await asyncio.wait_for(cap, 1)              # a bundle or resource appeared: look again
        gcs._node_lost(A, "test")
        assert gcs.view_version > seen + 3 and A not in gcs.cluster
        assert not gcs._view_waiters

    asyncio.run(main())
