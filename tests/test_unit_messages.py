"""The message table (luminary/_private/rpc/messages.py), without starting any process:
every role's handlers match the table, every name sent anywhere is in it, a bad message fails
alone while the connection keeps serving, and remote errors come back as the right class."""
import ast
import asyncio
import logging
import mmap
import os
import pathlib
import signal

import pytest

import luminary
from luminary import exceptions as exc
from luminary._private.rpc import messages as m
from luminary._private.rpc import protocol

pytestmark = pytest.mark.timeout(30)

PKG = pathlib.Path(luminary.__file__).parent
OID = b"o" * 16


def run(coro):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# --- every role's handlers are exactly its messages in the table -----------------------------------

def _gcs_table():
    from luminary._private.gcs.server import GcsServer
    return GcsServer(os.urandom(32)).handlers


def _nm_table(tmp_path):
    from luminary._private.node.manager import NodeManager
    cfg = {"secret": os.urandom(32), "session_dir": str(tmp_path), "num_cpus": 1,
           "object_store_memory": 1 << 20, "node_ip": "127.0.0.1"}
    arena = mmap.mmap(-1, 1 << 20)

    async def make():
        return NodeManager(cfg, None, -1, arena).handlers
    return run(make())


def _core_table(tmp_path, mode):
    from luminary._private.worker.core import CoreWorker
    from luminary._private.worker.executor import Executor
    cfg = {"secret": os.urandom(32), "worker_id": os.urandom(16), "session_dir": str(tmp_path)}
    core = CoreWorker(mode, cfg)
    old = signal.getsignal(signal.SIGINT)
    try:
        if mode == "worker":
            Executor(core)
        return core.build_handlers()
    finally:
        signal.signal(signal.SIGINT, old)
        core.io.stop()


def test_every_role_handles_exactly_its_messages(tmp_path):
    from luminary._private.worker.core import WORKER
    tables = {m.GCS: _gcs_table(), m.NODE_MANAGER: _nm_table(tmp_path),
              m.DRIVER: _core_table(tmp_path, "driver"), m.WORKER: _core_table(tmp_path, WORKER)}
    for role, table in tables.items():
        assert isinstance(table, m.Handlers) and table.role == role
        assert set(table) == m.TABLE.handled_by(role), role
        for name, (fn, check, is_request) in table.items():
            assert callable(fn) and is_request == (m.TABLE[name].kind == m.REQUEST)
    handled = set().union(*(set(t) for t in tables.values()))
    assert handled == set(m.TABLE)          # no message without a handler somewhere
    assert len(m.TABLE) >= 60 and set(m.ZYGOTE_TABLE) == {"fork", "forked", "exit"}


def test_registration_refuses_missing_extra_and_unknown_handlers():
    need = {name: (lambda c, p: None) for name in m.TABLE.handled_by(m.GCS)}
    assert set(m.handlers(m.GCS, need)) == set(need)
    with pytest.raises(ValueError, match="missing.*'kv_get'"):
        m.handlers(m.GCS, {k: v for k, v in need.items() if k != "kv_get"})
    with pytest.raises(ValueError, match="not handled by gcs.*'push_task'"):
        m.handlers(m.GCS, dict(need, push_task=lambda c, p: None))
    with pytest.raises(ValueError, match="not in the table.*'made_up'"):
        m.handlers(m.GCS, dict(need, made_up=lambda c, p: None))


# --- every name sent anywhere is in the table, with the right kind ------------------------------------

def _sent_messages():
    """(file, line, name, kind) of every literal message name passed to a send call."""
    found = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            attr, args = node.func.attr, node.args
            pos, kind = None, m.REQUEST
            if attr in ("request", "call", "request_into", "call_sync_gcs"):
                pos = 0
            elif attr == "notify":
                pos, kind = 0, m.NOTE
            elif attr == "call_sync":
                pos = 1
            elif attr == "post" and args and isinstance(args[0], ast.Attribute) \
                    and args[0].attr in ("notify", "request"):
                pos, kind = 1, (m.NOTE if args[0].attr == "notify" else m.REQUEST)
            if pos is not None and len(args) > pos and isinstance(args[pos], ast.Constant) \
                    and isinstance(args[pos].value, str):
                found.append((path.name, node.lineno, args[pos].value, kind))
    return found


def test_every_message_sent_is_in_the_table_with_its_kind():
    sent = _sent_messages()
    assert len(sent) > 60
    for where, line, name, kind in sent:
        assert name in m.TABLE, f"{where}:{line} sends {name!r}, which the table does not list"
        assert m.TABLE[name].kind == kind, f"{where}:{line} sends {name!r} as a {kind}"
    names = {n for _, _, n, _ in sent} | {"register_worker", "register_driver"}   # core.start(register_as)
    # handled but sent by nothing in the package today, or sent with a computed name (list_objects
    # to every core worker, the CLI's list_actors, the live stacks' fan-out through stacks._ask,
    # push_call or push_task as submitter.wire_payload chooses)
    assert set(m.TABLE) - names == {"kill_worker", "list_objects", "list_actors", "node_stacks", "dump_stacks",
                                    "push_call"}


# --- the edge: a bad message fails alone and the connection keeps serving --------------------------

def _serve_and_connect(tmp_path, table, client_table=None):
    secret = os.urandom(32)

    async def go():
        server, addr = await protocol.serve(f"unix:{tmp_path}/s.sock", secret, table)
        conn = await protocol.connect(addr, secret, client_table or m.TABLE.bind({}))
        return server, conn
    return go()


def test_malformed_payloads_fail_only_their_request_naming_the_field(tmp_path, caplog):
    seen = []
    table = m.TABLE.bind({
        "store_get": lambda c, p: ["here", p["oid"]],
        "store_create": lambda c, p: 0,
        "store_release": lambda c, p: seen.append(p["oids"]),
    })

    async def main():
        server, conn = await _serve_and_connect(tmp_path, table)
        bad = [("store_get", {"oid": 7}, "oid", "must be bytes of length 16, got int"),         # wrong type
               ("store_get", {}, "oid", "is missing"),                                          # missing
               ("store_get", {"oid": OID, "wait": True, "junk": b"x" * 100_000}, "junk", "not a field"),
               ("store_create", {"oid": OID, "size": 1 << 60, "owner": b""}, "size", "integer in"),   # huge
               ("store_create", {"oid": OID, "size": 1.5, "owner": b""}, "size", "integer"),
               ("store_get", None, "", "must be a map")]
        for method, payload, field, why in bad:
            with pytest.raises(m.BadMessage, match=why) as info:
                await conn.call(method, payload)
            assert info.value.method == method and info.value.field == field
            assert isinstance(info.value, exc.RayError)
            assert await conn.call("store_get", {"oid": OID}) == ["here", OID]   # still serving
        with pytest.raises(m.BadMessage, match="unknown method") as info:
            await conn.call("no_such_message", {"oid": OID})
        assert info.value.method == "no_such_message"
        with pytest.raises(m.BadMessage, match="is a notification"):
            await conn.call("store_release", {"oids": [OID]})
        with pytest.raises(m.BadMessage, match="not handled"):
            await conn.call("store_stats", None)
        # a bad notification is dropped, the next good one is handled
        conn.notify("store_release", {"oids": [b"short"]})
        conn.notify("store_release", {"oids": "nope"})
        conn.notify("made_up_note", 1)
        conn.notify("store_release", {"oids": [OID]})
        assert await conn.call("store_get", {"oid": OID}) == ["here", OID]   # answered after the notes
        assert seen == [[OID]]
        for _ in range(20):        # the same fault again and again: logged once
            with pytest.raises(m.BadMessage):
                await conn.call("store_get", {"oid": 1})
        assert await conn.call("store_get", {"oid": OID}) == ["here", OID]
        conn.close()
        server.close()
    with caplog.at_level(logging.WARNING, logger=protocol.__name__):
        run(main())
    refusals = [r for r in caplog.records if "store_get" in r.getMessage()]
    assert len(refusals) == 1


def test_messages_from_a_role_that_may_not_send_them_are_refused(tmp_path):
    views, commits = [], []
    # a node manager's socket for local drivers and workers: a view comes only from the GCS
    table = m.TABLE.bind({"view": lambda c, p: views.append(p), "commit_bundle": lambda c, p: commits.append(p),
                          "ping": lambda c, p: "pong"}).accepting(m.DRIVER, m.WORKER)

    async def main():
        server, conn = await _serve_and_connect(tmp_path, table)
        with pytest.raises(m.BadMessage, match="not accepted from a peer of role driver/worker"):
            await conn.call("commit_bundle", {"pg_id": OID, "index": 0})
        conn.notify("view", {})
        assert await conn.call("ping") == "pong"      # answered after the view was read
        conn.close()
        server.close()
    run(main())
    assert views == [] and commits == []


# --- structured remote errors -------------------------------------------------------------------------

def _raiser(e):
    def handler(c, p):
        raise e
    return handler


def test_remote_errors_come_back_as_their_class(tmp_path):
    table = m.TABLE.bind({
        "get_object": _raiser(exc.ObjectLostError("ab" * 16, "unix:/owner", message="gone for good")),
        "store_get": _raiser(exc.ObjectStoreFullError("no room")),
        "wait_actor": _raiser(exc.ActorDiedError(error_msg="the actor died", actor_id=b"a" * 16)),
        "get_named_actor": _raiser(ValueError("An actor named 'x' already exists")),
        "kv_get": _raiser(KeyError("k")),
    })

    async def main():
        server, conn = await _serve_and_connect(tmp_path, table)
        with pytest.raises(exc.ObjectLostError, match="gone for good") as info:
            await conn.call("get_object", {"oid": OID})
        assert info.value.object_ref_hex == "ab" * 16 and info.value.owner_address == "unix:/owner"
        assert "_raiser" in info.value.remote_traceback or "handler" in info.value.remote_traceback
        with pytest.raises(exc.ObjectStoreFullError, match="no room"):
            await conn.call("store_get", {"oid": OID})
        with pytest.raises(exc.ActorDiedError, match="the actor died") as info:
            await conn.call("wait_actor", {"actor_id": OID})
        assert info.value.actor_id == b"a" * 16
        with pytest.raises(m.RemoteError) as info:        # not a Luminary error: carried as text + type
            await conn.call("get_named_actor", {"name": "x", "namespace": None})
        assert info.value.type_name == "ValueError"
        assert info.value.remote_message == "An actor named 'x' already exists"
        assert "ValueError" in info.value.traceback_str and isinstance(info.value, exc.RayError)
        with pytest.raises(m.RemoteError, match="KeyError"):
            await conn.call("kv_get", {"key": b"k"})
        conn.close()
        server.close()
    run(main())


def test_error_wire_format_round_trips_without_a_connection():
    wire = m.error_to_wire(exc.TaskCancelledError("t1"))
    assert wire["type"] == "TaskCancelledError" and wire["fields"]["task_id"] == "t1"
    back = m.error_from_wire(wire)
    assert type(back) is exc.TaskCancelledError and back.task_id == "t1" and "t1" in str(back)
    assert type(m.error_from_wire("old text")) is m.RemoteError
    odd = m.error_from_wire({"type": "RayTaskError", "message": "x", "fields": {}, "tb": ""})
    assert isinstance(odd, exc.RayError)      # rebuilt, or carried as a RemoteError: never outside RayError
    bad = m.error_from_wire(m.error_to_wire(m.BadMessage("kv_get", "key", "is missing")))
    assert type(bad) is m.BadMessage and bad.field == "key" and bad.method == "kv_get"


def test_schema_checks_are_cheap():
    import time
    spec = {"tid": b"t" * 12, "fid": b"f" * 16, "name": "f", "args": ["v", b"x" * 100], "nret": 1,
            "owner": "unix:/tmp/x", "owner_id": b"w" * 16, "job": 1, "ns": None, "res": {"CPU": 1.0}}
    check = m.TABLE["push_task"].check
    start = time.perf_counter()
    for _ in range(10000):
        check(spec)
    per_call = (time.perf_counter() - start) / 10000
    assert per_call < 20e-6, per_call     # ~1 us here; generous for a loaded machine


def test_a_call_sent_as_its_own_fields_and_a_template_is_rebuilt_checked_and_bounded():
    """push_call carries only a call's own fields and the id of a template its owner sent once
    on the connection: the worker rebuilds the whole spec; a template it never received, a
    template with a field a spec may not have, or more templates than the cap are refused with
    an error naming the problem (the connection goes on)."""
    import types

    conn = types.SimpleNamespace(state={})
    got = []
    h = m.push_handlers(lambda c, spec: got.append(spec) or "ran")
    tpl = {"fid": b"", "name": "A.f", "nret": 1, "owner": "unix:/tmp/x", "owner_id": b"w" * 16, "job": 1,
           "actor": b"a" * 16, "method": "f", "group": None}
    h["call_template"](conn, m.TABLE["call_template"].check({"id": 7, "spec": dict(tpl)}))
    call = {"tpl": 7, "tid": b"t" * 12, "args": ["v", b"x"], "ev": 1.0, "par": b"p" * 12}
    assert h["push_call"](conn, m.TABLE["push_call"].check(dict(call))) == "ran"
    assert got[0] == dict(tpl, tid=b"t" * 12, args=["v", b"x"], ev=1.0, par=b"p" * 12)
    m.TABLE["push_task"].check(got[0])            # the rebuilt spec is a valid push_task
    with pytest.raises(ValueError, match="never sent"):
        h["push_call"](conn, dict(call, tpl=8))
    with pytest.raises(m.BadMessage, match="not a field"):
        m.TABLE["call_template"].check({"id": 9, "spec": dict(tpl, tid=b"t" * 12)})
    with pytest.raises(m.BadMessage, match="not a field"):
        m.TABLE["push_call"].check(dict(call, name="B.g"))      # only a call's own fields ride along
    for i in range(m.MAX_TEMPLATES - 1):
        h["call_template"](conn, {"id": 100 + i, "spec": tpl})
    with pytest.raises(ValueError, match="call templates on one connection"):
        h["call_template"](conn, {"id": 1 << 20, "spec": tpl})
