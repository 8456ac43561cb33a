"""The local scheduler's state machine, without processes."""
import pytest

from luminary._private.node.scheduler import LeaseRequest, LocalScheduler

pytestmark = pytest.mark.timeout(20)


def req(i, **res):
    return LeaseRequest(i, res or {"CPU": 1.0}, requester="owner")


def test_grants_only_what_fits_and_in_order():
    s = LocalScheduler({"CPU": 2})
    for i in range(3):
        s.submit(req(i))
    grants, need = s.schedule(idle_workers=5)
    assert [g.lease_id for g in grants] == [0, 1]
    for g in grants:
        s.grant(g, worker=object())
    assert s.available["CPU"] == 0
    s.release(0)
    grants, _ = s.schedule(idle_workers=5)
    assert [g.lease_id for g in grants] == [2]
    s.validate()


def test_requests_that_fit_but_lack_workers_are_counted():
    s = LocalScheduler({"CPU": 4})
    for i in range(3):
        s.submit(req(i))
    grants, need = s.schedule(idle_workers=1)
    assert len(grants) == 1 and need == 2
    assert len(s.queue) == 2


def test_small_request_passes_a_large_one_that_does_not_fit():
    s = LocalScheduler({"CPU": 2, "custom": 1})
    s.submit(req(0, CPU=4.0))            # infeasible here
    s.submit(req(1, custom=1.0))
    assert not s.feasible({"CPU": 4.0})
    assert s.missing({"CPU": 4.0, "custom": 1}) == {"CPU": 4.0}
    grants, _ = s.schedule(idle_workers=2)
    assert [g.lease_id for g in grants] == [1]


def test_blocked_worker_gives_back_cpu_and_takes_it_again():
    s = LocalScheduler({"CPU": 1})
    s.submit(req(0))
    (g,), _ = s.schedule(1)
    s.grant(g, object())
    assert s.available["CPU"] == 0
    s.block(0)
    assert s.available["CPU"] == 1         # a nested task can run now
    s.submit(req(1))
    (g1,), _ = s.schedule(1)
    s.grant(g1, object())
    s.unblock(0)
    assert s.available["CPU"] == -1        # briefly oversubscribed, as Ray does
    s.release(1)
    s.release(0)
    assert s.available["CPU"] == 1
    s.validate()


def test_gpu_ids_are_assigned_and_returned():
    s = LocalScheduler({"CPU": 4, "GPU": 2})
    s.submit(req(0, GPU=1.0))
    s.submit(req(1, GPU=1.0))
    grants, _ = s.schedule(2)
    leases = [s.grant(g, object()) for g in grants]
    assert sorted(l.gpu_ids[0] for l in leases) == [0, 1]
    s.release(leases[0].lease_id)
    freed = leases[0].gpu_ids[0]
    assert [i for i, f in enumerate(s.gpu_free) if f] == [freed]


def test_fractional_gpus_pack_on_one_device_and_whole_ones_take_free_devices():
    s = LocalScheduler({"CPU": 8, "GPU": 2})
    for i in range(3):
        s.submit(req(i, GPU=0.5))
    grants, _ = s.schedule(3)
    halves = [s.grant(g, object()) for g in grants]
    assert [l.gpu_ids for l in halves] == [[0], [0], [1]]      # two halves share GPU 0
    s.submit(req(9, GPU=1.0))
    assert s.schedule(1)[0] == []                              # 0.5 GPU left in all: no whole one
    s.release(halves[2].lease_id)
    (g,), _ = s.schedule(1)
    whole = s.grant(g, object())
    assert whole.gpu_ids == [1]
    for l in halves[:2] + [whole]:
        s.release(l.lease_id)
    assert s.gpu_free == [s.gpu_free[0]] * 2 and s.available.get("GPU") == 2.0


def test_dropping_a_requester_forgets_its_queue_and_returns_its_leases():
    s = LocalScheduler({"CPU": 1})
    a, b = LeaseRequest(0, {"CPU": 1.0}, "a"), LeaseRequest(1, {"CPU": 1.0}, "b")
    s.submit(a)
    s.submit(b)
    (g,), _ = s.schedule(2)
    s.grant(g, object())
    leases = s.drop_requester("a")
    assert [l.lease_id for l in leases] == [0]
    assert [r.lease_id for r in s.queue] == [1]


def test_fractional_leases_block_unblock_and_release_back_to_exactly_the_total():
    s = LocalScheduler({"CPU": 1, "GPU": 1})
    for i in range(10):
        s.submit(LeaseRequest(i, {"CPU": 0.1, "GPU": 0.1}, "owner"))
    grants, _ = s.schedule(idle_workers=10)
    assert len(grants) == 10
    for g in grants:
        s.grant(g, object())
    assert not s.fits({"CPU": 0.0001}) and s.available.units("GPU") == 0
    for i in range(0, 10, 2):
        s.block(i)                      # half of them wait in get(): 0.5 CPU lent out
    assert s.fits({"CPU": 0.5}) and not s.fits({"CPU": 0.5001})
    for i in range(0, 10, 3):
        s.unblock(i)
    for i in range(10):
        s.release(i)
    assert s.available == s.total
    assert s.available.to_wire() == {"CPU": 1.0, "GPU": 1.0}
    s.validate()
