"""Placement groups: the planning function alone, then groups reserved across real nodes."""
import time

import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = [pytest.mark.timeout(120)]

if IS_RAY:
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
else:
    from luminary.cluster_utils import Cluster
    from luminary.util.placement_group import placement_group, remove_placement_group
    from luminary.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@pytest.mark.skipif(IS_RAY, reason="Luminary's planner")
def test_planner_strategies():
    from luminary._private.gcs.placement_groups import plan
    nodes = {b"a": {"CPU": 2}, b"b": {"CPU": 2}}
    assert plan([{"CPU": 1}, {"CPU": 1}], "STRICT_PACK", nodes) in ([b"a", b"a"], [b"b", b"b"])
    assert sorted(plan([{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD", nodes)) == [b"a", b"b"]
    assert plan([{"CPU": 1}] * 3, "STRICT_SPREAD", nodes) is None          # 3 bundles, 2 nodes
    assert plan([{"CPU": 3}], "STRICT_PACK", nodes) is None
    assert sorted(plan([{"CPU": 2}, {"CPU": 2}], "PACK", nodes)) == [b"a", b"b"]   # falls back to 2 nodes
    assert sorted(plan([{"CPU": 1}, {"CPU": 1}], "SPREAD", nodes)) == [b"a", b"b"]
    assert plan([{"GPU": 1}], "PACK", nodes) is None


@pytest.fixture
def two_nodes():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    c.add_node(num_cpus=2)
    c.connect()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def where():
    return ray.get_runtime_context().get_node_id()


def test_strict_spread_places_bundles_on_distinct_nodes(two_nodes):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert ray.get(pg.ready(), timeout=60)
    f = ray.remote(num_cpus=1)(where)
    nodes = ray.get([f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                     for i in range(2)])
    assert len(set(nodes)) == 2
    remove_placement_group(pg)


def test_strict_pack_reserves_atomically_and_releases_on_remove(two_nodes):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(60)
    poll_for(lambda: ray.available_resources().get("CPU", 0) == 2, timeout=20, desc="CPUs reserved")
    big = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="STRICT_PACK")     # cannot fit on any node
    assert not big.wait(2)

    @ray.remote(num_cpus=1)
    class InGroup:
        def where(self):
            return where()

    actors = [InGroup.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote() for i in range(2)]
    assert len(set(ray.get([a.where.remote() for a in actors]))) == 1
    remove_placement_group(big)
    remove_placement_group(pg)
    poll_for(lambda: ray.available_resources().get("CPU", 0) == 4, timeout=20, desc="CPUs released")


def test_bad_placement_group_input(two_nodes):
    with pytest.raises(ValueError):
        placement_group([], strategy="PACK")
    with pytest.raises(ValueError):
        placement_group([{"CPU": 1}], strategy="EVERYWHERE")
