"""The GCS's actor and placement-group tables as pure state machines: events in, actions out, no
process, no socket, no loop; ``validate_state()`` after every step."""
import random

import pytest

from luminary._private.gcs import actor_state, pg_state
from luminary._private.gcs.actor_state import ActorState as A, ActorTable
from luminary._private.gcs.pg_state import GroupTable, PgState as P

pytestmark = pytest.mark.timeout(60)
N1, N2, N3 = b"1" * 16, b"2" * 16, b"3" * 16


def kinds(actions):
    return [a[0] for a in actions]


def find(actions, kind):
    got = [a for a in actions if a[0] == kind]
    assert got, f"no {kind} in {kinds(actions)}"
    return got[-1]


def replies(actions, req):
    return [a[2] for a in actions if a[0] in ("reply", "fail") and a[1] is req]


class Actors:
    def __init__(self):
        self.t = ActorTable()
        self.t.trace = []
        self.returned = []

    def feed(self, *event):
        out = self.t.handle(event)
        self.returned += [(a[1], a[2]) for a in out if a[0] == "return_lease"]
        assert len(self.returned) == len(set(self.returned)), "a lease given back twice"
        self.t.validate_state()
        return out

    def register(self, aid, ready=True, **kw):
        p = {"actor_id": aid, "spec": {"cls": b"c", "args": []}, "resources": {"CPU": 1.0}, "owner": "o",
             "max_restarts": 0, "class_name": "C"}
        p.update(kw)
        req = object()
        out = self.feed("register", req, p)
        if ready and aid in self.t.actors and self.t.actors[aid].state == A.DEPENDENCIES_UNREADY:
            out += self.feed("dependencies_ready", aid)
        return req, out

    def up(self, aid, node=N1, lease=None):
        a = self.t.actors[aid]
        lease = lease or b"L" + bytes([len(self.returned)]) + aid[:4] + bytes([a.attempt])
        self.feed("planned", aid, a.attempt, node)
        out = self.feed("leased", aid, a.attempt, node, lease, {"worker_id": b"w" * 16, "address": "unix:/w"})
        assert find(out, "create")[4]["incarnation"] == a.incarnation
        return self.feed("created", aid, a.attempt, "unix:/w", 7)


def test_actor_lifecycle_create_restart_and_death_without_restarts_left():
    w = Actors()
    req, out = w.register(b"a" * 16, max_restarts=1)
    assert kinds(out) == ["persist", "watch_owner", "reply", "schedule"]
    assert w.t.actors[b"a" * 16].state == A.PENDING_CREATION
    wait = object()
    assert not replies(w.feed("wait", wait, b"a" * 16), wait)        # long poll until ALIVE
    out = w.up(b"a" * 16)
    assert replies(out, wait)[0]["state"] == "ALIVE" and "keep_worker" in kinds(out)
    out = w.feed("worker_lost", b"a" * 16, 0)
    a = w.t.actors[b"a" * 16]
    assert a.state == A.RESTARTING and a.num_restarts == 1 and a.incarnation == 1
    assert kinds(out)[:1] == ["return_lease"] and "schedule" in kinds(out)
    assert w.feed("worker_lost", b"a" * 16, 0) == []                  # an old incarnation's loss: ignored
    w.up(b"a" * 16, node=N2)
    out = w.feed("worker_lost", b"a" * 16, 1)
    assert a.state == A.DEAD and "no restarts left (max_restarts=1)" in a.cause_text
    assert [s for _, s in w.t.trace] == [A.PENDING_CREATION, A.ALIVE, A.RESTARTING, A.ALIVE, A.DEAD]


def test_actor_killed_while_its_constructor_runs_gives_the_lease_back_once():
    w = Actors()
    w.register(b"k" * 16)
    a = w.t.actors[b"k" * 16]
    attempt = a.attempt
    w.feed("leased", b"k" * 16, attempt, N1, b"lease", {"worker_id": b"w" * 16, "address": "unix:/w"})
    kill = object()
    out = w.feed("kill", kill, b"k" * 16, True)
    assert a.state == A.DEAD and ("return_lease", N1, b"lease", True) in out and replies(out, kill) == [True]
    # the constructor's answer arrives late: its worker connection is dropped, nothing given back twice
    out = w.feed("created", b"k" * 16, attempt, "unix:/w", 7)
    assert kinds(out) == ["drop_worker"]
    out = w.feed("leased", b"k" * 16, attempt, N1, b"late", {"worker_id": b"w" * 16, "address": "unix:/w"})
    assert out == [("return_lease", N1, b"late", True)]


def test_constructor_error_crash_refusal_exit_and_checkpoints():
    w = Actors()
    w.register(b"e" * 16, max_restarts=5)
    a = w.t.actors[b"e" * 16]
    w.feed("leased", a.actor_id, a.attempt, N1, b"l1", {"worker_id": b"w" * 16, "address": "unix:/w"})
    out = w.feed("create_crashed", a.actor_id, a.attempt, "EOF")    # not counted as a restart
    assert a.state == A.PENDING_CREATION and a.num_restarts == 0 and "schedule" in kinds(out)
    w.feed("leased", a.actor_id, a.attempt, N1, b"l2", {"worker_id": b"w" * 16, "address": "unix:/w"})
    w.feed("create_failed", a.actor_id, a.attempt, b"exc", "ValueError: bad")
    assert a.state == A.DEAD and a.cause == b"exc" and w.returned == [(N1, b"l1"), (N1, b"l2")]
    w.register(b"r" * 16)
    r = w.t.actors[b"r" * 16]
    w.feed("lease_refused", r.actor_id, r.attempt, "setup failed", True)
    assert r.state == A.DEAD and r.cause is not None
    w.register(b"x" * 16, max_restarts=-1)
    w.up(b"x" * 16)
    out = w.feed("checkpoint", b"x" * 16, b"ck")
    assert out == [("persist_checkpoint", b"x" * 16, b"ck")]
    w.feed("exit", b"x" * 16)
    w.feed("worker_lost", b"x" * 16, 0)                                # exited on purpose: no restart
    x = w.t.actors[b"x" * 16]
    assert x.state == A.DEAD and "exited intentionally" in x.cause_text and x.checkpoint is None


def test_names_detached_get_if_exists_and_owner_death():
    w = Actors()
    w.register(b"n" * 16, name="svc", namespace="ns")
    req, out = w.register(b"m" * 16, name="svc", namespace="ns", get_if_exists=True)
    assert replies(out, req)[0]["existing"] and b"m" * 16 not in w.t.actors
    req, out = w.register(b"m" * 16, name="svc", namespace="ns")
    assert "already exists in namespace 'ns'" in str(replies(out, req)[0])
    w.register(b"s" * 16, name="svc", namespace="other")               # names are per namespace
    w.register(b"d" * 16, detached=True, owner="o")
    assert w.t.list_named(True, None) == [{"name": "svc", "namespace": "ns"}, {"name": "svc", "namespace": "other"}]
    w.feed("owner_died", "o", False)
    assert w.t.actors[b"d" * 16].state != A.DEAD and w.t.actors[b"n" * 16].state == A.DEAD
    assert w.t.named("svc", "ns") is None
    req, out = w.register(b"m" * 16, name="svc", namespace="ns")      # the name is free again
    assert replies(out, req)[0] == {"existing": False, "actor_id": b"m" * 16}


def test_gcs_restart_reattaches_kept_workers_and_restarts_lost_ones():
    w = Actors()
    w.register(b"a" * 16, max_restarts=1, owner="gone")
    w.register(b"b" * 16, max_restarts=1, owner="back")
    w.up(b"a" * 16, lease=b"la")
    w.up(b"b" * 16, lease=b"lb")
    rows = [a.to_row() for a in w.t.actors.values()]
    again = Actors()
    again.feed("load", rows, {}, {})
    assert all(a.state == A.ALIVE and not a.attached for a in again.t.actors.values())
    out = again.feed("node_back", N1, [b"la", b"stray"])
    assert ("reattach", b"a" * 16, 0, "unix:/w") in out and ("return_lease", N1, b"stray", True) in out
    assert again.t.actors[b"b" * 16].state == A.RESTARTING            # its lease was gone
    out = again.feed("reattached", b"a" * 16, 0, True)
    assert "keep_worker" in kinds(out) and again.t.actors[b"a" * 16].attached
    again.feed("recovery_ended", {"back"})
    assert again.t.actors[b"a" * 16].state == A.DEAD and "did not reconnect" in again.t.actors[b"a" * 16].cause_text


def test_every_actor_transition_is_allowed_by_the_table():
    with pytest.raises(AssertionError, match="DEAD -> ALIVE is not allowed"):
        t = ActorTable()
        t.handle(("register", object(), {"actor_id": b"z" * 16, "spec": {}, "resources": {}}))
        a = t.actors[b"z" * 16]
        t._to(a, A.DEAD)
        t._to(a, A.ALIVE)


# --- placement groups ----------------------------------------------------------------------------
class Groups:
    def __init__(self):
        self.t = GroupTable()
        self.t.trace = []
        self.reserved = set()          # (node, pg, index) prepared and not cancelled

    def feed(self, *event):
        out = self.t.handle(event)
        if event[0] == "node_dead":       # what a dead node held is gone with it
            self.reserved = {r for r in self.reserved if r[0] != event[1]}
        for a in out:
            if a[0] == "cancel_bundle":
                assert (a[1], a[2], a[3]) in self.reserved, f"cancelled a bundle not reserved: {a}"
                self.reserved.discard((a[1], a[2], a[3]))
        self.t.validate_state()
        return out

    def create(self, pg_id, n=2, strategy="PACK", detached=False):
        req = object()
        out = self.feed("create", req, {"pg_id": pg_id, "bundles": [{"CPU": 1.0}] * n, "strategy": strategy,
                                        "lifetime": "detached" if detached else None}, "o")
        return req, out

    def place(self, pg_id, nodes, fail_commit=(), remove_prepared=False):
        pg = self.t.groups[pg_id]
        out = self.feed("plan", pg_id, pg.attempt, nodes)
        prep = [a for a in out if a[0] == "prepare"]
        if not prep:
            return out
        items = [(i, nid) for i, nid, _ in prep[0][3]]
        self.reserved.update((nid, pg_id, i) for i, nid in items)
        out = self.feed("prepared", pg_id, pg.attempt, items, True)
        assert pg.state == P.PREPARED
        attempt = pg.attempt
        if remove_prepared:
            out += self.feed("remove", pg_id)
        return out + self.feed("committed", pg_id, attempt, set(fail_commit))


def test_pg_created_rescheduled_on_node_death_and_removed():
    g = Groups()
    req, out = g.create(b"p" * 16, strategy="STRICT_SPREAD")
    assert kinds(out) == ["persist", "watch_owner", "plan", "reply"]
    wait = object()
    assert not replies(g.feed("wait", wait, b"p" * 16, None), wait)
    out = g.place(b"p" * 16, {N1: {"CPU": 4.0}})                    # STRICT_SPREAD needs two nodes
    assert out[-1][0] == "plan" and out[-1][3] is True                  # wait for a view change
    out = g.place(b"p" * 16, {N1: {"CPU": 4.0}, N2: {"CPU": 4.0}})
    pg = g.t.groups[b"p" * 16]
    assert pg.state == P.CREATED and replies(out, wait) == ["CREATED"] and sorted(pg.nodes) == [N1, N2]
    g.feed("node_dead", N2)
    assert pg.state == P.RESCHEDULING and sorted(pg.nodes, key=str) == sorted([N1, None], key=str)
    out = g.place(b"p" * 16, {N1: {"CPU": 3.0}, N3: {"CPU": 4.0}})      # not N1 again: STRICT_SPREAD
    assert pg.state == P.CREATED and sorted(pg.nodes) == [N1, N3]
    out = g.feed("remove", b"p" * 16)
    assert pg.state == P.REMOVED and not g.reserved and ("capacity_changed",) in out
    assert [s for _, s in g.t.trace] == [P.PREPARED, P.CREATED, P.RESCHEDULING, P.PREPARED, P.CREATED, P.REMOVED]


def test_pg_refused_prepare_failed_commit_and_late_answers():
    g = Groups()
    g.create(b"q" * 16)
    pg = g.t.groups[b"q" * 16]
    out = g.feed("plan", pg.pg_id, pg.attempt, {N1: {"CPU": 1.0}, N2: {"CPU": 1.0}})
    items = [(i, nid) for i, nid, _ in find(out, "prepare")[3]]
    g.reserved.add((items[0][1], pg.pg_id, items[0][0]))
    out = g.feed("prepared", pg.pg_id, pg.attempt, items[:1], False)   # the second node said no
    assert pg.state == P.PENDING and kinds(out) == ["cancel_bundle", "plan"]
    g.place(pg.pg_id, {N1: {"CPU": 2.0}, N2: {"CPU": 2.0}}, fail_commit={N1})
    assert pg.state in (P.PENDING, P.RESCHEDULING) and N1 not in pg.nodes
    g.place(pg.pg_id, {N2: {"CPU": 2.0}})
    assert pg.state == P.CREATED
    # removal while a plan's prepare is in flight: the late yes is cancelled
    g.create(b"r" * 16)
    r = g.t.groups[b"r" * 16]
    attempt = r.attempt
    g.feed("plan", r.pg_id, attempt, {N3: {"CPU": 4.0}})
    g.feed("remove", r.pg_id)
    g.reserved.update({(N3, r.pg_id, 0), (N3, r.pg_id, 1)})
    out = g.feed("prepared", r.pg_id, attempt, [(0, N3), (1, N3)], True)
    assert kinds(out) == ["cancel_bundle", "cancel_bundle"] and r.state == P.REMOVED


def test_pg_owner_death_wait_timeout_and_restart_reconciliation():
    g = Groups()
    g.create(b"o" * 16)
    g.create(b"d" * 16, detached=True)
    g.place(b"d" * 16, {N1: {"CPU": 4.0}})
    wait = object()
    out = g.feed("wait", wait, b"o" * 16, 0.5)
    assert out == [("wait_timer", wait, b"o" * 16, 0.5)]
    assert replies(g.feed("wait_timeout", wait, b"o" * 16), wait) == ["PENDING"]
    g.feed("owner_died", "o")
    assert g.t.groups[b"o" * 16].state == P.REMOVED and g.t.groups[b"d" * 16].state == P.CREATED
    again = Groups()
    again.feed("load", [pg.to_row() for pg in g.t.groups.values()])
    held = [(b"d" * 16, 0), (b"d" * 16, 1), (b"o" * 16, 0), (b"x" * 16, 0)]
    again.reserved = {(N1, pg_id, i) for pg_id, i in held}
    out = again.feed("node_back", N1, held)
    assert [(a[2], a[3]) for a in out] == [(b"o" * 16, 0), (b"x" * 16, 0)]
    assert again.t.table()[(b"d" * 16).hex()]["bundles_to_node_id"] == {0: N1.hex(), 1: N1.hex()}


# --- long random event sequences -------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_random_actor_event_sequences_keep_the_invariants(seed):
    rng = random.Random(seed)
    w = Actors()
    ids = []
    granted = 0
    seen = set()
    for step in range(1500):
        if not ids or rng.random() < 0.05:
            aid = (len(ids) + 1).to_bytes(16, "big")
            ids.append(aid)
            w.register(aid, ready=rng.random() < 0.9, max_restarts=rng.choice([0, 1, 3, -1]),
                       name=rng.choice([None, "x", "y"]), owner=rng.choice(["o1", "o2"]),
                       detached=rng.random() < 0.3, get_if_exists=rng.random() < 0.5)
            continue
        aid = rng.choice(ids[-8:])
        a = w.t.actors.get(aid)
        if a is None:
            continue
        r = rng.random()
        attempt = a.attempt if rng.random() < 0.9 else a.attempt - 1
        if r < 0.2:
            granted += 1
            w.feed("leased", aid, attempt, rng.choice([N1, N2]), b"g%d" % granted,
                   {"worker_id": b"w" * 16, "address": "unix:/w"})
        elif r < 0.35:
            w.feed("created", aid, attempt, "unix:/w", 1)
        elif r < 0.4:
            w.feed("create_crashed", aid, attempt, "gone")
        elif r < 0.43:
            w.feed("create_failed", aid, attempt, b"e", "raised")
        elif r < 0.45:
            w.feed("lease_refused", aid, attempt, "never", False)
        elif r < 0.55:
            w.feed("planned", aid, attempt, rng.choice([N1, N2, None]))
        elif r < 0.68:
            w.feed("worker_lost", aid, a.incarnation - rng.choice([0, 0, 1]))
        elif r < 0.72:
            w.feed("kill", object(), aid, rng.random() < 0.7)
        elif r < 0.76:
            w.feed("wait", object(), aid, rng.randint(0, a.incarnation + 1), rng.random() < 0.8)
        elif r < 0.78:
            w.feed("exit", aid)
        elif r < 0.8:
            w.feed("checkpoint", aid, b"c")
        elif r < 0.82:
            w.feed("owner_died", rng.choice(["o1", "o2"]), False)
        elif r < 0.85:
            w.feed("node_dead", rng.choice([N1, N2]))
        elif r < 0.87:
            seen |= {s for _, s in w.t.trace}
            rows = [x.to_row() for x in w.t.actors.values()]     # the GCS restarts on what it stored
            names = {actor_state.name_key(ns, n): i for (ns, n), i in w.t.names.items()}
            w = Actors()
            w.feed("load", rows, {}, names)
            for nid in (N1, N2):
                w.feed("node_back", nid, [x.lease[1] for x in w.t.actors.values() if x.lease and x.lease[0] == nid
                                          and rng.random() < 0.7])
        elif r < 0.9:
            w.feed("reattached", aid, a.incarnation, rng.random() < 0.8)
        elif r < 0.92:
            w.feed("dependencies_ready", aid)
        else:
            w.feed("recovery_ended", {"o1"})
    seen |= {s for _, s in w.t.trace}
    assert {A.PENDING_CREATION, A.ALIVE, A.DEAD} <= seen     # every transition: the test below


def test_random_sequences_exercise_every_actor_and_group_transition():
    """Over the seeded runs above, every transition of both tables happens at least once."""
    seen_a, seen_p = set(), set()
    for seed in range(6):
        rng = random.Random(seed)
        w = Actors()
        for step in range(800):
            aid = bytes([rng.randint(1, 4)]) * 16
            a = w.t.actors.get(aid)
            if a is None:
                w.register(aid, ready=rng.random() < 0.8, max_restarts=rng.choice([0, 2]))
                continue
            r = rng.random()
            if a.state == A.DEPENDENCIES_UNREADY:
                w.feed("dependencies_ready", aid) if r < 0.5 else w.feed("owner_died", "o", False)
            elif a.state in actor_state.CREATING:
                if r < 0.6:
                    w.up(aid)
                elif r < 0.7:
                    w.feed("lease_refused", aid, a.attempt, "no", False)
                else:
                    w.feed("kill", object(), aid, True)
            elif a.state == A.ALIVE:
                w.feed("worker_lost", aid, a.incarnation) if r < 0.7 else w.feed("kill", object(), aid, True)
            elif a.state == A.DEAD:
                del w.t.actors[aid]
        last = {}
        for aid, s in w.t.trace:
            seen_a.add((last.get(aid, A.DEPENDENCIES_UNREADY), s))
            last[aid] = s
        g = Groups()
        for step in range(300):
            pid = bytes([rng.randint(1, 4)]) * 16
            pg = g.t.groups.get(pid)
            r = rng.random()
            if pg is None:
                g.create(pid, n=rng.randint(1, 3), strategy=rng.choice(pg_state.STRATEGIES))
            elif pg.state in pg_state.PLACING:
                if r < 0.8:
                    g.place(pid, {N1: {"CPU": 3.0}, N2: {"CPU": 3.0}, N3: {"CPU": 3.0}},
                            fail_commit=rng.choice([(), (), (), {N1}, {N1, N2, N3}]),
                            remove_prepared=rng.random() < 0.1)
                else:
                    g.feed("remove", pid)
            elif pg.state == P.CREATED:
                if r < 0.5:
                    g.feed("node_dead", rng.choice([N1, N2, N3]))
                    for nid in (N1, N2, N3):
                        g.feed("node_alive", nid)
                else:
                    g.feed("remove", pid)
            elif pg.state == P.REMOVED:
                del g.t.groups[pid]
        last = {}
        for pid, s in g.t.trace:
            seen_p.add((last.get(pid, P.PENDING), s))
            last[pid] = s
    want_a = {(s, t) for s, ts in actor_state.TRANSITIONS.items() for t in ts}
    want_p = {(s, t) for s, ts in pg_state.TRANSITIONS.items() for t in ts}
    assert want_a - seen_a == set(), f"actor transitions never taken: {want_a - seen_a}"
    assert want_p - seen_p == set(), f"group transitions never taken: {want_p - seen_p}"
