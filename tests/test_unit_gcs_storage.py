"""The GCS's storage and its recovery after a restart, without processes: what is written is read
back by the next GCS, bad storage is refused with the path named, and a restarted GCS reconciles
nodes, actors, owners and leases."""
import asyncio
import os
import sqlite3
import time

import msgpack
import pytest

from luminary._private.gcs.client import GcsClient, GcsUnavailableError
from luminary._private.gcs.server import GcsServer
from luminary._private.gcs.storage import (MemoryStorage, SqliteStorage, StorageError, open_storage, parse_spec,
                                           redis_from_env)

pytestmark = pytest.mark.timeout(30)
SECRET = b"s" * 32


class FakeConn:
    """What the GCS's handlers use of a connection."""

    def __init__(self):
        self.state = {}
        self.close_callbacks = []
        self.closed = False
        self.sent = []

    def notify(self, method, payload=None):
        self.sent.append((method, payload))

    def close(self):
        self.closed = True
        for cb in self.close_callbacks:
            cb(self)


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    asyncio.set_event_loop(lp)
    yield lp
    for t in asyncio.all_tasks(lp):
        t.cancel()
    lp.run_until_complete(asyncio.sleep(0))
    lp.close()
    asyncio.set_event_loop(None)


def test_sqlite_rows_survive_reopen_and_transactions_are_whole(tmp_path):
    path = str(tmp_path / "gcs.sqlite")
    st = SqliteStorage(path)
    st.put("kv", b"a", b"1")
    st.write([("actors", b"x" * 16, b"row"), ("names", b"\x00n", b"x" * 16)])
    assert st.delete("kv", b"a") and not st.delete("kv", b"a")
    st.put("kv", b"b", b"2")
    with pytest.raises(sqlite3.Error):     # a bad row: the whole change is rolled back
        st.write([("kv", b"c", b"3"), ("kv", b"d", object())])
    st.close()
    again = SqliteStorage(path)
    assert again.items("kv") == {b"b": b"2"}
    assert again.get("names", b"\x00n") == b"x" * 16 and again.keys("actors") == [b"x" * 16]
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_second_opener_of_one_sqlite_store_is_refused(tmp_path):
    path = str(tmp_path / "gcs.sqlite")
    first = SqliteStorage(path)
    with pytest.raises(StorageError, match=f"Another GCS \\(pid {os.getpid()}\\) is using the storage {path}"):
        SqliteStorage(path)
    first.close()
    SqliteStorage(path).close()        # free again once the first one closed (or died)


def test_corrupt_foreign_and_incompatible_stores_are_reported_not_replaced(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match=f"{bad} is corrupted"):
        SqliteStorage(str(bad))
    assert bad.read_bytes() == b"this is not a database" * 100       # left untouched

    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE users (id)")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="not a Luminary GCS store"):
        SqliteStorage(str(foreign))

    old = tmp_path / "old.sqlite"
    SqliteStorage(str(old)).close()
    db = sqlite3.connect(old)
    db.execute("UPDATE luminary_meta SET v='999' WHERE k='schema'")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="incompatible Luminary version \\(schema 999"):
        SqliteStorage(str(old))

    with pytest.raises(StorageError, match="directory .*nowhere does not exist"):
        SqliteStorage(str(tmp_path / "nowhere" / "gcs.sqlite"))


def test_storage_specs():
    assert parse_spec(None) == ("memory", None) and parse_spec("memory") == ("memory", None)
    assert parse_spec("sqlite:///tmp/x.db") == ("sqlite", "/tmp/x.db")
    assert parse_spec("/tmp/x.db") == ("sqlite", "/tmp/x.db")
    assert parse_spec("redis://h:1/2") == ("redis", "redis://h:1/2")
    assert redis_from_env("10.0.0.1:6379") == "redis://10.0.0.1:6379/0"
    assert isinstance(open_storage("memory"), MemoryStorage)


def _actor(aid, **kw):
    p = {"actor_id": aid, "spec": {"cls": b"c", "args": [], "owner": "tcp:o:1", "owner_id": b"o" * 16},
         "resources": {"CPU": 1.0}, "name": None, "namespace": "", "detached": False, "owner": "tcp:o:1",
         "max_restarts": 0, "meta": {}, "get_if_exists": False, "class_name": "C", "strategy": None}
    p.update(kw)
    return p


def _alive(gcs, aid, lease_id, address, nid=b"n" * 16):
    """Drive the actor table as a creation would: a lease on ``nid``, then the constructor ran."""
    a = gcs.actors.actors[aid]
    gcs.actors.feed("leased", aid, a.attempt, nid, lease_id, {"worker_id": b"w" * 16, "address": address})
    gcs.actors._opening[(aid, a.attempt)] = FakeConn()
    gcs.actors.feed("created", aid, a.attempt, address, 1234)
    assert a.state == "ALIVE" and a.lease == (nid, lease_id)
    return a


def test_restarted_gcs_reads_every_table(tmp_path, loop):
    path = str(tmp_path / "gcs.sqlite")
    gcs = GcsServer(SECRET, SqliteStorage(path))
    conn = FakeConn()
    assert gcs.next_job_id(conn, None) == 1
    gcs.kv_put(conn, {"key": b"k", "value": b"v", "ns": "n"})
    gcs.register_owner(conn, {"address": "tcp:o:1"})
    nconn = FakeConn()
    gcs.register_node(nconn, {"node_id": b"n" * 16, "address": "tcp:n:1", "ip": "127.0.0.1",
                              "resources": {"CPU": 2.0}, "head": True})
    named = gcs.actors.register_actor(conn, _actor(b"a" * 16, name="keeper", detached=True, max_restarts=-1))
    assert named == {"existing": False, "actor_id": b"a" * 16}
    _alive(gcs, b"a" * 16, b"lease-a", "tcp:w:1")
    gcs.actors.actor_checkpoint(conn, {"actor_id": b"a" * 16, "state": b"ckpt"})
    gcs.actors.register_actor(conn, _actor(b"b" * 16))          # owned by tcp:o:1, not detached
    _alive(gcs, b"b" * 16, b"lease-b", "tcp:w:2")
    gcs.placement_groups.create_pg(conn, {"pg_id": b"p" * 16, "bundles": [{"CPU": 1.0}], "strategy": "PACK",
                                          "name": "grp", "lifetime": "detached"})
    pg = gcs.placement_groups.groups[b"p" * 16]
    gcs.placement_groups.feed("plan", pg.pg_id, pg.attempt, {b"n" * 16: {"CPU": 2.0}})
    gcs.placement_groups.feed("prepared", pg.pg_id, pg.attempt, [(0, b"n" * 16)], True)
    gcs.placement_groups.feed("committed", pg.pg_id, pg.attempt, set())
    assert pg.state == "CREATED" and pg.nodes == [b"n" * 16]
    gcs.storage.close()       # the GCS process dies here

    again = GcsServer(SECRET, SqliteStorage(path), reconcile_s=5)
    c2 = FakeConn()
    assert again.next_job_id(c2, None) == 2
    assert again.kv_get(c2, {"key": b"k", "ns": "n"}) == b"v"
    assert again.get_nodes(c2, None)[0]["Alive"] and again.recovering_until is not None
    got = again.actors.get_named_actor(c2, {"name": "keeper", "namespace": ""})
    assert got["actor_id"] == b"a" * 16 and got["state"] == "ALIVE"
    assert again.actors.actors[b"a" * 16].checkpoint == b"ckpt"
    assert again.placement_groups.get_pg(c2, {"name": "grp"})["pg_id"] == b"p" * 16
    # a registration sent again after the restart is recognised, not a second actor or a name clash
    assert again.actors.register_actor(c2, _actor(b"a" * 16, name="keeper")) == {"existing": False,
                                                                                  "actor_id": b"a" * 16}
    assert again.kv_put(c2, {"key": b"k", "value": b"v", "ns": "n", "overwrite": False}) is True

    # the node comes back holding lease-a and a lease no actor owns; lease-b's worker died meanwhile
    n2 = FakeConn()
    again.register_node(n2, {"node_id": b"n" * 16, "address": "tcp:n:1", "ip": "127.0.0.1",
                             "resources": {"CPU": 2.0}, "head": True,
                             "leases": [{"lease_id": b"lease-a", "worker_id": b"w" * 16, "address": "tcp:w:1"},
                                        {"lease_id": b"stray", "worker_id": b"x" * 16, "address": "tcp:w:9"}],
                             "bundles": [{"pg_id": b"p" * 16, "index": 0, "committed": True},
                                         {"pg_id": b"q" * 16, "index": 0, "committed": False}]})
    assert ("return_lease", {"lease_id": b"stray", "kill": True}) in n2.sent
    assert ("cancel_bundle", {"pg_id": b"q" * 16, "index": 0}) in n2.sent
    assert not any(m == "cancel_bundle" and p["pg_id"] == b"p" * 16 for m, p in n2.sent)
    assert again.actors.actors[b"b" * 16].state == "DEAD"          # max_restarts=0, worker gone
    assert "no restarts left" in again.actors.actors[b"b" * 16].cause_text
    again.storage.close()


def test_recovery_window_end_declares_missing_nodes_and_owners_dead(tmp_path, loop):
    path = str(tmp_path / "gcs.sqlite")
    gcs = GcsServer(SECRET, SqliteStorage(path))
    conn = FakeConn()
    gcs.register_node(FakeConn(), {"node_id": b"n" * 16, "address": "tcp:n:1", "ip": "127.0.0.1",
                                   "resources": {"CPU": 1.0}})
    gcs.actors.register_actor(conn, _actor(b"a" * 16, owner="tcp:gone:1"))
    gcs.actors.register_actor(conn, _actor(b"b" * 16, owner="tcp:back:1"))
    gcs.placement_groups.create_pg(FakeConn(), {"pg_id": b"p" * 16, "bundles": [{"CPU": 1.0}],
                                                "strategy": "PACK", "name": None, "lifetime": None})
    gcs.storage.close()

    again = GcsServer(SECRET, SqliteStorage(path), reconcile_s=0)
    again.register_owner(FakeConn(), {"address": "tcp:back:1"})
    again._end_recovery()
    assert not again.nodes[b"n" * 16]["Alive"]
    assert "did not reconnect" in again.nodes[b"n" * 16]["death_reason"]
    assert again.actors.actors[b"a" * 16].state == "DEAD"
    assert "did not reconnect after the GCS restarted" in again.actors.actors[b"a" * 16].cause_text
    assert again.actors.actors[b"b" * 16].state != "DEAD"
    again.storage.close()
    third = GcsServer(SECRET, SqliteStorage(path))     # what the reconciliation decided is stored too
    assert third.actors.actors[b"a" * 16].state == "DEAD" and not third.nodes[b"n" * 16]["Alive"]
    third.storage.close()


def test_client_queues_during_outage_and_fails_clearly_when_the_window_ends(loop):
    client = GcsClient("tcp:127.0.0.1:1", SECRET, {}, window=0.3)
    results = []

    async def scenario():
        client.outage_since = time.monotonic()
        client.request("kv_get", {"key": b"k"}, lambda ok, r: results.append((ok, r)))
        assert results == []                      # waits for the GCS
        await client._reconnect()                 # nothing listens there: the window passes
    loop.run_until_complete(scenario())
    assert client.closed and len(results) == 1
    ok, err = results[0]
    assert not ok and isinstance(err, GcsUnavailableError)
    assert "unreachable for 0.3s" in str(err) and "LUMINARY_GCS_RECONNECT_S" in str(err)
    client.request("kv_get", {"key": b"k"}, lambda ok, r: results.append((ok, r)))
    assert results[1][0] is False and results[1][1] is err


def test_rows_are_msgpack_a_reader_can_inspect(tmp_path, loop):
    path = str(tmp_path / "gcs.sqlite")
    gcs = GcsServer(SECRET, SqliteStorage(path))
    gcs.actors.register_actor(FakeConn(), _actor(b"a" * 16, name="x", namespace="ns"))
    gcs.storage.close()
    db = sqlite3.connect(path)
    (row,) = db.execute("SELECT v FROM rows WHERE tbl='actors'").fetchone()
    (name_key,) = db.execute("SELECT k FROM rows WHERE tbl='names'").fetchone()
    db.close()
    assert msgpack.unpackb(row, raw=False)["name"] == "x" and name_key == b"ns\x00x"
