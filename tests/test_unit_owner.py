"""The owner state machine without processes, sockets or threads: events in, actions out."""
import pickle
import random

import pytest

from luminary import exceptions as exc
from luminary._private import ids, serialization
from luminary._private.config import PIPELINE_DEPTH
from luminary._private.worker.owner import Call, Owner, State

pytestmark = pytest.mark.timeout(60)

ME = "unix:/owner"
WID = b"w" * 16


class Ref:
    def __init__(self, oid, owner=ME):
        self.id = oid
        self.owner = owner


class World:
    """The owner plus the data views it reads, and helpers to run the actions it emits."""

    def __init__(self):
        self.values = {}
        self.live = set()
        self.owner = Owner(WID, self.values, self.live, "/session")
        self.stored = {}
        self.released = []

    def feed(self, *event):
        actions = self.owner.handle(event)
        for a in actions:
            if a[0] in ("put", "store", "replace"):
                self.stored[a[1]] = (a[2], a[3])
                self.values[a[1]] = (a[2], a[3])
            elif a[0] == "forget":
                self.values.pop(a[1], None)
            elif a[0] == "release":
                self.released.extend(a[1])
        self.owner.validate_state()
        return actions

    def task(self, name="f", retries=3, retry_exc=False, args=(), held=((), ()), nret=1, res=None):
        tid = ids.new_task_id()
        returns = [ids.object_id(tid, i + 1) for i in range(nret)]
        self.live.update(returns)
        spec = {"tid": tid, "name": name, "args": ["v", b""], "nret": nret}
        return Call(tid, spec, b"fid", b"blob", res or {"CPU": 1.0}, returns, nret, retries, retry_exc,
                    list(args), (list(held[0]), list(held[1])), name)


def kinds(actions):
    return [a[0] for a in actions]


def one(actions, kind):
    found = [a for a in actions if a[0] == kind]
    assert len(found) == 1, (kind, actions)
    return found[0]


def grant(w, actions, address="unix:/worker1"):
    """Answer the lease request in ``actions`` with a worker and connect to it."""
    _, key, lease_id, req, target = one(actions, "request_lease")
    out = w.feed("lease_reply", key, lease_id, True, {"worker_id": b"x" * 16, "address": address}, None, req)
    assert one(out, "connect_lease")[1] == lease_id
    return lease_id, w.feed("lease_connected", lease_id, True)


def ok_reply(value=1, dur=0.5):
    return {"rets": [["v", pickle.dumps(value)]], "dur": dur}


def error_reply(err):
    return {"rets": [["e", serialization.dumps_error(err)]], "app_error": True, "dur": 0.5}


def test_task_lifecycle_lease_push_reply_and_lease_return():
    w = World()
    t = w.task()
    out = w.feed("submit", t, [])
    assert t.state == State.QUEUED and kinds(out) == ["request_lease"]
    lease_id, out = grant(w, out)
    push = one(out, "push")
    assert push[2] is t and t.state == State.PUSHED
    out = w.feed("push_reply", lease_id, t.tid, True, ok_reply(42))
    assert t.state == State.FINISHED
    assert pickle.loads(w.stored[t.returns[0]][1]) == 42
    assert "idle" in kinds(out) and not w.owner.calls
    timer = one(out, "timer")
    assert timer[2] == ("lease_idle", lease_id)
    out = w.feed(*timer[2])
    assert one(out, "return_lease")[1] == lease_id and not w.owner.leases


def test_waits_for_its_arguments_and_fails_on_an_argument_error():
    w = World()
    dep = Ref(b"d" * 20)
    t = w.task(args=[(0, dep)])
    assert w.feed("submit", t, [dep]) == []
    assert t.state == State.WAITING
    w.values[dep.id] = ("v", pickle.dumps(5))
    out = w.feed("dep_ready", t.tid)
    assert t.state == State.QUEUED and t.spec["refs"][0][:2] == [0, "v"]
    assert kinds(out) == ["request_lease"]
    bad = Ref(b"e" * 20)
    w.values[bad.id] = ("e", serialization.dumps_error(ValueError("upstream")))
    t2 = w.task(args=[(0, bad)], held=([bad.id], [ME]))
    w.feed("submit", t2, [])
    assert t2.state == State.FAILED
    assert isinstance(pickle.loads(w.stored[t2.returns[0]][1]), ValueError)
    assert bad.id in w.released


def test_worker_death_retries_then_fails_with_worker_crashed():
    w = World()
    t = w.task(retries=1)
    out = w.feed("submit", t, [])
    lease_id, out = grant(w, out)
    out = w.feed("push_reply", lease_id, t.tid, False, ConnectionError("lost"))
    assert t.state == State.QUEUED and t.retries_left == 0
    assert lease_id not in w.owner.leases
    lease2, out = grant(w, out, "unix:/worker2")
    assert one(out, "push")[2] is t
    w.feed("push_reply", lease2, t.tid, False, ConnectionError("lost again"))
    assert t.state == State.FAILED
    assert isinstance(pickle.loads(w.stored[t.returns[0]][1]), exc.WorkerCrashedError)


def test_application_errors_retry_only_listed_types():
    w = World()
    t = w.task(retries=2, retry_exc=[KeyError])
    lease_id, out = grant(w, w.feed("submit", t, []))
    w.feed("push_reply", lease_id, t.tid, True, error_reply(exc.RayTaskError("f", "tb", KeyError("k"))))
    assert t.state == State.PUSHED and t.retries_left == 1      # pushed again on the same lease
    w.feed("push_reply", lease_id, t.tid, True, error_reply(exc.RayTaskError("f", "tb", ValueError("v"))))
    assert t.state == State.FAILED and t.retries_left == 1


def test_cancel_in_each_state():
    w = World()
    dep = Ref(b"d" * 20)
    waiting = w.task(args=[(0, dep)])
    w.feed("submit", waiting, [dep])
    w.feed("cancel", waiting.tid, False, True)
    assert waiting.state == State.FAILED
    assert isinstance(pickle.loads(w.stored[waiting.returns[0]][1]), exc.TaskCancelledError)

    queued = w.task()
    w.feed("submit", queued, [])
    w.feed("cancel", queued.tid, False, True)
    assert queued.state == State.FAILED

    w = World()
    pushed = w.task()
    lease_id, out = grant(w, w.feed("submit", pushed, []))
    out = w.feed("cancel", pushed.tid, True, True)
    assert one(out, "cancel_task")[1:] == (lease_id, pushed.tid, True, True)
    # the worker is killed: a cancelled task is never retried
    w.feed("push_reply", lease_id, pushed.tid, False, ConnectionError("killed"))
    assert pushed.state == State.FAILED and pushed.retries_left == 3


def test_bounced_tasks_go_back_to_the_head_of_the_queue():
    w = World()
    a, b = w.task(), w.task()
    first = w.feed("submit", a, [])
    w.feed("submit", b, [])
    lease_id, out = grant(w, first)
    assert one(out, "push")[2] is a and b.state == State.QUEUED
    out = w.feed("push_reply", lease_id, a.tid, True, {"bounced": True})
    # the worker blocked and handed ``a`` back: it goes first again, before ``b``
    assert one(out, "push")[2] is a and b.state == State.QUEUED


def test_lineage_rebuilds_a_lost_stored_value():
    w = World()
    t = w.task(retries=2)
    lease_id, out = grant(w, w.feed("submit", t, []))
    node = b"n" * 16
    out = w.feed("push_reply", lease_id, t.tid, True, {"rets": [["s", [node, 1 << 20]]], "dur": 0.5})
    oid = t.returns[0]
    assert w.owner.lineage[oid] is t
    assert w.owner.reconstruct(oid, node, "node died") == "resubmitted"
    out = w.owner.take()
    assert ("forget", oid) in out and t.retries_left == 1
    assert one(out, "push")[2] is t and t.state == State.PUSHED     # on the lease still held
    w.values.pop(oid)
    w.owner.validate_state()
    # a put object (no lineage) becomes ObjectLostError instead
    put_oid = ids.put_object_id()
    w.values[put_oid] = ("s", [node, 10])
    assert w.owner.reconstruct(put_oid, node, "node died") == "lost"
    assert one(w.owner.take(), "replace")[1] == put_oid


def test_spillback_asks_the_named_node_once():
    w = World()
    t = w.task()
    out = w.feed("submit", t, [])
    _, key, lease_id, req, _ = one(out, "request_lease")
    out = w.feed("lease_reply", key, lease_id, True, {"spillback": "tcp:10.0.0.2:1"}, None, req)
    again = one(out, "request_lease")
    assert again[4] == "tcp:10.0.0.2:1" and again[3]["no_spill"] is True
    out = w.feed("lease_reply", key, lease_id, True, {"error": "x", "message": "no node can run it"}, "peer", again[3])
    assert t.state == State.FAILED
    assert isinstance(pickle.loads(w.stored[t.returns[0]][1]), exc.TaskUnschedulableError)


def test_short_tasks_are_pipelined_on_one_lease():
    w = World()
    first = w.task()
    lease_id, out = grant(w, w.feed("submit", first, []))
    w.feed("push_reply", lease_id, first.tid, True, ok_reply(dur=0.0001))
    w.feed("push_reply", lease_id, first.tid, True, ok_reply(dur=0.0001))   # a stale reply is ignored
    assert first.state == State.FINISHED
    lease = w.owner.leases[lease_id]
    for _ in range(30):                      # one at a time, each done in 0.1 ms
        t = w.task()
        w.feed("submit", t, [])
        assert len(lease.inflight) == 1
        w.feed("push_reply", lease_id, t.tid, True, ok_reply(dur=0.0001))
    many = [w.task() for _ in range(PIPELINE_DEPTH + 4)]
    for t in many:
        w.feed("submit", t, [])
    assert len(lease.inflight) == PIPELINE_DEPTH          # short tasks: pipelined on the one lease
    assert sum(t.state == State.QUEUED for t in many) == 4


# --- actor calls --------------------------------------------------------------------------------

def actor_call(w, actor_id, retries=0, name="A.m"):
    t = w.task(name=name, retries=retries)
    t.spec["actor"] = actor_id
    t.actor = actor_id
    return t


def test_actor_calls_go_in_order_through_restart_with_max_task_retries():
    w = World()
    aid = b"a" * 16
    c1, c2 = actor_call(w, aid, retries=1), actor_call(w, aid, retries=0)
    out = w.feed("submit", c1, [])
    assert one(out, "locate_actor")[1:] == (aid, 0)
    w.feed("submit", c2, [])
    out = w.feed("actor_located", aid, True, {"state": "ALIVE", "incarnation": 0, "address": "unix:/actor"})
    assert one(out, "connect_actor")[1:] == (aid, "unix:/actor", 0)
    out = w.feed("actor_connected", aid, 0, True)
    assert [a[3] for a in out if a[0] == "push_actor"] == [c1, c2]
    # the actor's worker dies with both calls in flight: c1 retries, c2 fails
    out = w.feed("actor_lost", aid, 0)
    assert one(out, "locate_actor")[1:] == (aid, 1)
    assert c1.state == State.QUEUED and c2.state == State.FAILED
    assert isinstance(pickle.loads(w.stored[c2.returns[0]][1]), exc.ActorDiedError)
    w.feed("actor_located", aid, True, {"state": "ALIVE", "incarnation": 1, "address": "unix:/actor2"})
    out = w.feed("actor_connected", aid, 1, True)
    assert one(out, "push_actor")[3] is c1
    w.feed("actor_reply", aid, c1.tid, True, ok_reply("again"))
    assert c1.state == State.FINISHED and not w.owner.calls


def test_actor_death_fails_queued_and_later_calls():
    w = World()
    aid = b"b" * 16
    c1 = actor_call(w, aid)
    w.feed("submit", c1, [])
    cause = pickle.dumps(RuntimeError("ctor failed"))
    w.feed("actor_located", aid, True, {"state": "DEAD", "cause": cause, "cause_text": "boom"})
    assert c1.state == State.FAILED
    c2 = actor_call(w, aid)
    w.feed("submit", c2, [])
    assert c2.state == State.FAILED
    err = pickle.loads(w.stored[c2.returns[0]][1])
    assert isinstance(err, exc.ActorDiedError) and "boom" in str(err)


def test_handle_freed_terminates_after_queued_calls():
    w = World()
    aid = b"c" * 16
    handle = b"\xac" + aid[:15]
    w.feed("actor_created", aid, handle, ([b"h" * 20], [ME]), False)
    c1 = actor_call(w, aid)
    w.feed("submit", c1, [])
    term = w.task(name="__ray_terminate__", nret=0, retries=0)
    out = w.feed("handle_freed", handle, term)
    assert b"h" * 20 in w.released
    assert term.actor == aid and list(w.owner.actors[aid].queue) == [c1, term]
    # an actor never called from here: the shell asks the GCS whether it runs ...
    idle = World()
    idle.feed("actor_created", aid, handle, ([], []), False)
    term = idle.task(name="__ray_terminate__", nret=0, retries=0)
    assert one(idle.feed("handle_freed", handle, term), "end_actor")[1:] == (aid, term)
    # ... and when it does, it ends gracefully after a __ray_terminate__ call (its hooks run)
    out = idle.feed("terminate_actor", aid, term)
    assert term.actor == aid and one(out, "locate_actor")[1] == aid


# --- random event sequences ---------------------------------------------------------------------

def test_random_event_sequences_keep_the_invariants():
    """Feed long random sequences of plausible events; validate_state() after every step, and at
    the end every call has reached FINISHED or FAILED once all replies are in."""
    rng = random.Random(1234)
    for round_ in range(30):
        w = World()
        pending_leases = []      # (key, lease_id, req)
        connecting = []
        pushed = []              # (lease_id, tid)
        actor_pushed = []        # (actor_id, tid)
        actors = [bytes([65 + i]) * 16 for i in range(2)]
        incarnation = {a: 0 for a in actors}
        located = set()
        deps = {}
        submitted = []

        def run(*event):
            for a in w.feed(*event):
                if a[0] == "request_lease":
                    pending_leases.append((a[1], a[2], a[3]))
                elif a[0] == "connect_lease":
                    connecting.append(a[1])
                elif a[0] == "push":
                    pushed.append((a[1], a[2].tid))
                elif a[0] == "push_actor":
                    actor_pushed.append((a[1], a[3].tid))
                elif a[0] == "locate_actor":
                    located.discard(a[1])
        for step in range(300):
            r = rng.random()
            if r < 0.25:
                if rng.random() < 0.3:
                    aid = rng.choice(actors)
                    t = actor_call(w, aid, retries=rng.choice([0, 1, 2]))
                else:
                    t = w.task(retries=rng.choice([0, 1, 3]), res={"CPU": rng.choice([1.0, 0.5])})
                missing = []
                if rng.random() < 0.3:
                    d = Ref(ids.put_object_id())
                    t.arg_refs = [(0, d)]
                    missing = [d]
                    deps[d.id] = t.tid
                submitted.append(t)
                run("submit", t, missing)
            elif r < 0.35 and deps:
                oid, tid = deps.popitem()
                w.values[oid] = ("v", pickle.dumps(1)) if rng.random() < 0.9 else \
                    ("e", serialization.dumps_error(ValueError("dep")))
                run("dep_ready", tid)
            elif r < 0.5 and pending_leases:
                key, lease_id, req = pending_leases.pop(rng.randrange(len(pending_leases)))
                choice = rng.random()
                if choice < 0.8:
                    run("lease_reply", key, lease_id, True, {"worker_id": b"x" * 16, "address": "unix:/w"}, None, req)
                elif choice < 0.9:
                    run("lease_reply", key, lease_id, True, None, None, req)
                else:
                    run("spill_unreachable", key, lease_id)
            elif r < 0.53 and (pending_leases or connecting or pushed):
                # the node's memory monitor ends a leased worker: its grant may still be on the
                # way, its connection being made, or calls in flight on it
                pool = [p[1] for p in pending_leases] + connecting + [p[0] for p in pushed]
                if rng.random() < 0.7:
                    run("lease_oom", rng.choice(pool), "memory low")
                else:
                    run("lease_lost", rng.choice(pool))      # (or its connection closed)
            elif r < 0.58 and connecting:
                run("lease_connected", connecting.pop(0), rng.random() < 0.9)
            elif r < 0.8 and pushed:
                lease_id, tid = pushed.pop(rng.randrange(len(pushed)))
                c = rng.random()
                if c < 0.7:
                    run("push_reply", lease_id, tid, True, ok_reply(dur=rng.choice([0.0001, 0.5])))
                elif c < 0.8:
                    run("push_reply", lease_id, tid, True, {"bounced": True})
                elif c < 0.9:
                    run("push_reply", lease_id, tid, True, error_reply(exc.RayTaskError("f", "tb", ValueError())))
                else:
                    run("push_reply", lease_id, tid, False, ConnectionError("worker died"))
            elif r < 0.86:
                aid = rng.choice(actors)
                a = w.owner.actors.get(aid)
                if a is not None and a.asking:
                    if rng.random() < 0.9:
                        run("actor_located", aid, True, {"state": "ALIVE", "incarnation": incarnation[aid],
                                                         "address": "unix:/a"})
                        run("actor_connected", aid, incarnation[aid], rng.random() < 0.9)
                    else:
                        run("actor_located", aid, True, {"state": "DEAD", "cause_text": "gone"})
                elif a is not None and a.state == "alive" and rng.random() < 0.3:
                    run("actor_lost", aid, incarnation[aid])
                    incarnation[aid] += 1
            elif r < 0.95 and actor_pushed:
                aid, tid = actor_pushed.pop(rng.randrange(len(actor_pushed)))
                run("actor_reply", aid, tid, True, ok_reply())
            elif submitted:
                t = rng.choice(submitted)
                run("cancel", t.tid, False, False)
            for tick in [a for a in w.owner.take()]:
                pass
        # every call that ended did so exactly once, and ended calls are gone from the table
        for t in submitted:
            if t.state in (State.FINISHED, State.FAILED):
                assert t.tid not in w.owner.calls
            else:
                assert w.owner.calls.get(t.tid) is t, (round_, t)


def test_an_actor_call_its_worker_refuses_fails_instead_of_waiting_forever():
    """An error answer (the worker could not accept the request) is not a lost connection: the
    call fails with the reason at once; a lost connection is still left to actor_lost."""
    from luminary._private.rpc.protocol import ConnectionLost
    from luminary._private.rpc.messages import RemoteError
    w = World()
    aid = b"r" * 16
    c1, c2 = actor_call(w, aid), actor_call(w, aid)
    w.feed("submit", c1, [])
    w.feed("submit", c2, [])
    w.feed("actor_located", aid, True, {"state": "ALIVE", "incarnation": 0, "address": "unix:/actor"})
    w.feed("actor_connected", aid, 0, True)
    w.feed("actor_reply", aid, c1.tid, False, RemoteError("push_task: field 'ev' is not a list", "BadMessage"))
    assert c1.state == State.FAILED
    err = pickle.loads(w.stored[c1.returns[0]][1])
    assert isinstance(err, exc.RaySystemError) and "refused" in str(err) and "'ev'" in str(err)
    w.feed("actor_reply", aid, c2.tid, False, ConnectionLost("connection lost"))
    assert c2.state == State.PUSHED          # actor_lost decides (retry or ActorDiedError)


def _stored_error(w, call):
    kind, blob = w.stored[call.returns[0]]
    assert kind == "e"
    return pickle.loads(blob)


@pytest.mark.parametrize("when", ["before the grant", "while connecting"])
def test_a_lease_ended_for_memory_before_anything_ran_on_it_never_strands_the_queue(when):
    """The node's memory monitor may end a leased worker before the owner pushed anything to
    it (the grant still on its way, or the connection being made).  The first queued call then
    pays as if it had run there: a call without retries fails with OutOfMemoryError, a
    retriable one spends one memory retry and the queue asks for another lease; nothing is
    left waiting on a lease that is gone (it was: the call stayed queued forever)."""
    w = World()
    c = w.task(retries=0)
    _, key, lease_id, req, _ = one(w.feed("submit", c, []), "request_lease")
    grant_ = {"worker_id": b"x" * 16, "address": "unix:/w"}
    if when == "before the grant":
        w.feed("lease_oom", lease_id, "memory low")
        out = w.feed("lease_reply", key, lease_id, True, grant_, None, req)
        assert one(out, "return_lease")[1] == lease_id and "connect_lease" not in kinds(out)
    else:
        w.feed("lease_reply", key, lease_id, True, grant_, None, req)
        w.feed("lease_oom", lease_id, "memory low")
        assert "push" not in kinds(w.feed("lease_connected", lease_id, True))    # (too late: it is gone)
    assert c.state == State.FAILED and isinstance(_stored_error(w, c), exc.OutOfMemoryError)
    r = w.task(retries=2)
    _, key, lease_id, req, _ = one(w.feed("submit", r, []), "request_lease")
    w.feed("lease_reply", key, lease_id, True, {"worker_id": b"y" * 16, "address": "unix:/w2"}, None, req)
    out = w.feed("lease_oom", lease_id, "memory low")
    assert r.state == State.QUEUED and r.oom_retries_left < 15 and "request_lease" in kinds(out)


def test_an_idle_lease_ended_for_memory_is_not_used_again():
    w = World()
    c = w.task()
    lease_id, out = grant(w, w.feed("submit", c, []))
    w.feed("push_reply", lease_id, c.tid, True, ok_reply())
    w.feed("lease_oom", lease_id, "memory low")           # idle: nothing to charge
    d = w.task()
    out = w.feed("submit", d, [])
    assert "request_lease" in kinds(out) and "push" not in kinds(out) and d.state == State.QUEUED
