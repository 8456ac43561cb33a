"""Every message of the system, in one table, checked where it enters a process.

Each entry names a message, its kind (a request, answered once, or a notification), the roles
that send it, the roles that handle it and the shape of its payload (a small schema: field
names, types, required or optional, bounds).  Schemas are compiled once into plain Python
functions (``compile``), so checking a decoded payload costs about a microsecond.

    check(method, payload)            raises BadMessage naming the message and the field
    handlers(role, {name: fn})        a role's handler table: every message the role handles has
                                      a handler and no handler is for a message it does not handle
    table.accepting(*peer_roles)      the same table restricted to what those peers may send
    error_to_wire / error_from_wire   structured remote errors: type, message, simple fields,
                                      traceback text; rebuilt as the Luminary exception of that
                                      name, else a RemoteError carrying the text

The zygote's socketpair (``fork``/``forked``/``exit``) is listed for completeness; it does not
use the RPC protocol and is not checked here.
"""
from __future__ import annotations

import math
import re
import traceback

from ... import exceptions as exc

DRIVER, WORKER, NODE_MANAGER, GCS, ZYGOTE = "driver", "worker", "node_manager", "gcs", "zygote"
ROLES = (DRIVER, WORKER, NODE_MANAGER, GCS, ZYGOTE)
OWNERS = (DRIVER, WORKER)          # processes that own objects and submit tasks
ANY = (DRIVER, WORKER, NODE_MANAGER, GCS)
REQUEST, NOTE = "request", "notification"


class RemoteError(exc.RaySystemError):
    """The peer's handler raised an error that is not a Luminary exception.

    ``type_name`` is the remote exception's class name, ``remote_message`` its text, ``fields``
    its simple attributes and ``traceback_str`` the remote traceback."""

    def __init__(self, text="", type_name="", remote_message=None, fields=None, traceback_str=None):
        super().__init__(text, traceback_str)
        self.type_name = type_name
        self.remote_message = text if remote_message is None else remote_message
        self.fields = fields or {}


class BadMessage(RemoteError):
    """A message that the table does not know, or whose payload does not fit its schema."""

    def __init__(self, method, field="", why=""):
        where = f" field {field!r}" if field else ""
        text = f"bad message {method!r}:{where} {why}".rstrip()
        super().__init__(text, "BadMessage", text, {"method": str(method), "field": field, "why": why})
        self.method, self.field, self.why = method, field, why


# --- schema types -------------------------------------------------------------------------------
# Each type emits Python statements checking the variable ``v<depth>``; failures call
# _fail(path, what) where path is an expression naming the field.

class _Type:
    what = "a value"

    def emit(self, var, path, out, ind, depth):
        raise NotImplementedError


class _Exact(_Type):
    def __init__(self, cls, what, lo=None, hi=None, length=None, maxlen=None, values=None):
        self.cls, self.what = cls, what
        self.lo, self.hi, self.length, self.maxlen, self.values = lo, hi, length, maxlen, values

    def cond(self, var):
        if self.cls is float:    # any finite number (bool excluded): NaN and inf fail the bounds
            c = [f"({var}.__class__ is float or {var}.__class__ is int)"]
        else:
            c = [f"{var}.__class__ is {self.cls.__name__}"]
        if self.lo is not None:
            c.append(f"{var} >= {self.lo!r}")
        if self.hi is not None:
            c.append(f"{var} <= {self.hi!r}")
        if self.length is not None:
            c.append(f"len({var}) == {self.length}")
        if self.maxlen is not None:
            c.append(f"len({var}) <= {self.maxlen}")
        if self.values is not None:
            c.append(f"{var} in {set(self.values)!r}")
        return " and ".join(c)

    def emit(self, var, path, out, ind, depth):
        out.append(f"{ind}if not ({self.cond(var)}): _fail({path}, {self.what!r}, {var})")


class _AnyT(_Type):
    what = "any value"

    def emit(self, var, path, out, ind, depth):
        pass


class _NoneT(_Type):
    what = "nothing (None)"

    def emit(self, var, path, out, ind, depth):
        out.append(f"{ind}if {var} is not None: _fail({path}, {self.what!r}, {var})")


class _Stamp(_Type):
    what = "a time (a float)"

    def emit(self, var, path, out, ind, depth):
        out.append(f"{ind}if {var}.__class__ is not float: _fail({path}, {self.what!r}, {var})")


class _Opt(_Type):
    def __init__(self, t):
        self.t, self.what = t, f"{t.what} or None"

    def emit(self, var, path, out, ind, depth):
        body = []
        self.t.emit(var, path, body, ind + "    ", depth)
        if body:
            out.append(f"{ind}if {var} is not None:")
            out.extend(body)


class _OneOf(_Type):
    def __init__(self, *types):
        self.types = types
        self.what = " or ".join(t.what for t in types)

    def emit(self, var, path, out, ind, depth):   # leaves only
        conds = " or ".join(f"({t.cond(var)})" for t in self.types)
        out.append(f"{ind}if not ({conds}): _fail({path}, {self.what!r}, {var})")


class _List(_Type):
    def __init__(self, item, maxlen):
        self.item, self.maxlen = item, maxlen
        self.what = f"a list of at most {maxlen} items"

    def emit(self, var, path, out, ind, depth):
        out.append(f"{ind}if {var}.__class__ is not list or len({var}) > {self.maxlen}: "
                   f"_fail({path}, {self.what!r}, {var})")
        body = []
        i, x = f"i{depth}", f"v{depth + 1}"
        self.item.emit(x, f"'%s[%d]' % ({path}, {i})", body, ind + "    ", depth + 1)
        if body:
            out.append(f"{ind}for {i}, {x} in enumerate({var}):")
            out.extend(body)


class _Map(_Type):
    def __init__(self, key, value, maxlen):
        self.key, self.value, self.maxlen = key, value, maxlen
        self.what = f"a map of at most {maxlen} entries"

    def emit(self, var, path, out, ind, depth):
        out.append(f"{ind}if {var}.__class__ is not dict or len({var}) > {self.maxlen}: "
                   f"_fail({path}, {self.what!r}, {var})")
        body = []
        k, x = f"k{depth}", f"v{depth + 1}"
        self.key.emit(k, f"'%s key %r' % ({path}, {k})", body, ind + "    ", depth + 1)
        self.value.emit(x, f"'%s[%r]' % ({path}, {k})", body, ind + "    ", depth + 1)
        if body:
            out.append(f"{ind}for {k}, {x} in {var}.items():")
            out.extend(body)


class _Struct(_Type):
    """A map with named fields; ``name?`` marks an optional field.  ``open`` structs accept
    fields they do not list (specs that carry options through several processes)."""

    def __init__(self, fields, open=False):
        self.fields = [(n.rstrip("?"), t, not n.endswith("?")) for n, t in fields.items()]
        self.open = open
        self.what = "a map with fields " + ", ".join(n for n in fields)

    def emit(self, var, path, out, ind, depth):
        out.append(f"{ind}if {var}.__class__ is not dict: _fail({path}, {self.what!r}, {var})")
        x = f"v{depth + 1}"
        n = f"n{depth}"
        required = sum(1 for _, _, r in self.fields if r)
        if not self.open:
            out.append(f"{ind}{n} = {required}")
        for name, t, req in self.fields:
            fpath = repr(name) if path == "''" else f"{path} + {'.' + name!r}"
            out.append(f"{ind}{x} = {var}.get({name!r}, _MISSING)")
            body = []
            t.emit(x, fpath, body, ind + "    ", depth + 1)
            if req:
                out.append(f"{ind}if {x} is _MISSING: _fail({fpath}, 'a required field', None, True)")
                out.extend(line[4:] for line in body)
            else:
                if not self.open:
                    body.append(f"{ind}    {n} += 1")
                if body:
                    out.append(f"{ind}if {x} is not _MISSING:")
                    out.extend(body)
        if not self.open:
            known = {name for name, _, _ in self.fields}
            out.append(f"{ind}if len({var}) != {n}: _extra({path}, {var}, {known!r})")


class _Address(_Type):
    """An address another process connects to: "unix:/absolute/path" or "tcp:HOST:PORT" (a host
    name or IPv4/IPv6 literal, a port in 0..65535), checked here so that a bad one is refused at
    the edge instead of failing the code that later parses it."""
    what = "an address 'unix:/path' or 'tcp:host:port'"

    def emit(self, var, path, out, ind, depth):
        out.append(f"{ind}if not _address_ok({var}): _fail({path}, {self.what!r}, {var})")


_HOST_OK = re.compile(r"[A-Za-z0-9._:\-\[\]%]{1,255}\Z")


def address_ok(v) -> bool:
    if v.__class__ is not str or len(v) > 4096:
        return False
    if v.startswith("unix:/"):
        return "\0" not in v
    if not v.startswith("tcp:"):
        return False
    host, sep, port = v[4:].rpartition(":")
    return bool(sep) and _HOST_OK.match(host) is not None and port.isdigit() and len(port) <= 5 \
        and int(port) <= 65535


def bytes_(length=None, maxlen=1 << 31):
    if length is not None:
        return _Exact(bytes, f"bytes of length {length}", length=length)
    return _Exact(bytes, f"bytes of at most {maxlen}", maxlen=maxlen)


def str_(maxlen=1 << 20, values=None):
    if values is not None:
        return _Exact(str, f"one of {sorted(values)}", values=tuple(values))
    return _Exact(str, f"a string of at most {maxlen} characters", maxlen=maxlen)


def int_(lo=0, hi=(1 << 63) - 1):
    return _Exact(int, f"an integer in [{lo}, {hi}]", lo=lo, hi=hi)


def num(lo=0.0, hi=1e18):
    return _Exact(float, f"a finite number in [{lo:g}, {hi:g}]", lo=lo, hi=hi)


BOOL = _Exact(bool, "true or false")
NONE = _NoneT()
ANYV = _AnyT()
opt, one_of, list_, map_, struct = _Opt, _OneOf, _List, _Map, _Struct

ID = bytes_(16)                       # node, worker, actor, placement group, object ids
TASK_ID = bytes_(12)
LEASE_ID = bytes_(maxlen=64)
ADDRESS = _Address()                  # "unix:/path" or "tcp:host:port"
NAME = str_(1 << 16)
RESOURCES = map_(str_(1024), num(0.0, 1e15), 1 << 16)       # requested amounts
AMOUNTS = map_(str_(1024), num(-1e15, 1e15), 1 << 16)       # totals and availability (may dip)
OIDS = list_(ID, 1 << 22)
# worker output: the lines (no newline), stderr or not, and who printed them (Ray's prefix)
LOG = struct({"lines": list_(str_(1 << 26), 1 << 22), "err?": BOOL, "name?": str_(1 << 16),
              "pid?": int_(1, 1 << 31), "ip?": str_(256)})
STRATEGY = opt(struct({"type": str_(64), "node_id?": ID, "soft?": BOOL}))
NRET = one_of(int_(0, 1 << 20), str_(values=("streaming", "dynamic")))
JOB = opt(int_(0, (1 << 32) - 1))
# a runtime env's wire spec (runtime_env/__init__.py): packages by URI, pip requirements, env vars
RENV = struct({"key": str_(64), "env_vars?": map_(str_(1 << 12), str_(1 << 20), 1 << 12),
               "working_dir?": str_(256), "py_modules?": list_(str_(256), 1 << 10),
               "pip?": struct({"packages": list_(str_(1 << 12), 1 << 12), "options": list_(str_(1 << 12), 256)}),
               "config?": map_(str_(64), ANYV, 8), "user?": map_(str_(64), ANYV, 16)})

_TASK_FIELDS = {
    "tid": TASK_ID, "fid": bytes_(maxlen=64), "name": NAME, "args": list_(ANYV, 8), "nret": NRET,
    "owner": ADDRESS, "owner_id": ID, "job": JOB, "ns?": opt(NAME), "res?": RESOURCES, "pg?": ANYV,
    "fn?": bytes_(), "path?": list_(str_(1 << 16), 1 << 16), "gpus?": list_(ANYV, 1 << 10),
    "actor?": ID, "method?": NAME, "group?": opt(NAME), "refs?": list_(list_(ANYV, 8), 1 << 20),
    "ncpu?": num(0.0, 1e15), "timeout_s?": num(0.0, 1e9), "max_calls?": int_(1, 1 << 62),
    "ev?": _Stamp(),            # task events: when it was submitted (worker/events.py)
    "par?": TASK_ID,            # task events: the task that submitted it
}
TASK_SPEC = struct(_TASK_FIELDS)
# A call's own fields; the rest of its spec is a template its owner sent once on the connection
# (call_template, then push_call naming it): an actor method's calls differ only in these.
_PER_CALL = ("tid", "args", "refs?", "ev?", "par?")
CALL_TEMPLATE = struct({"id": int_(0, 1 << 31),
                        "spec": struct({k: t for k, t in _TASK_FIELDS.items() if k not in _PER_CALL})})
PUSH_CALL = struct({"tpl": int_(0, 1 << 31), **{k: _TASK_FIELDS[k] for k in _PER_CALL}})
MAX_TEMPLATES = 4096     # call templates per connection (a worker refuses more)


def push_handlers(push_task):
    """A worker's handlers of push_task, call_template and push_call around one ``push_task(conn,
    spec)``: a connection's templates are kept in its state, and a push_call's spec is its
    template with the call's own fields, handed to ``push_task``."""
    def call_template(conn, p):
        tpls = conn.state.get("tpls")
        if tpls is None:
            tpls = conn.state["tpls"] = {}
        if len(tpls) >= MAX_TEMPLATES and p["id"] not in tpls:
            raise ValueError(f"more than {MAX_TEMPLATES} call templates on one connection")
        tpls[p["id"]] = p["spec"]

    def push_call(conn, p):
        tpl = conn.state.get("tpls", {}).get(p.pop("tpl"))
        if tpl is None:
            raise ValueError("push_call names a call template this connection never sent")
        spec = tpl.copy()
        spec.update(p)
        return push_task(conn, spec)
    return {"push_task": push_task, "call_template": call_template, "push_call": push_call}
ACTOR_SPEC = struct({"cls": bytes_(), "args": list_(ANYV, 8), "owner": ADDRESS, "owner_id": ID}, open=True)
REGISTER = struct({"worker_id": ID, "pid": int_(1, 1 << 31), "address": ADDRESS, "log_to_driver?": BOOL})
VIEW = map_(ID, struct({"address": ADDRESS, "total": AMOUNTS, "available": AMOUNTS}), 1 << 16)


def _short(v, n=80):
    r = v if type(v) is str else repr(v)
    return r if len(r) <= n else r[:n] + "..."


# --- compiling schemas -----------------------------------------------------------------------------
_MISSING = object()


def compile_check(name, payload_type):
    """Compile a payload schema into ``check(payload)`` raising BadMessage(name, field)."""
    out = ["def check(v0):"]
    payload_type.emit("v0", "''", out, "    ", 0)
    out.append("    return v0")
    src = "\n".join(out)

    def fail(path, what, value, missing=False):
        if missing:
            raise BadMessage(name, path, "is missing")
        raise BadMessage(name, path, f"must be {what}, got {_describe(value)}")

    def extra(path, value, known):
        names = sorted((_short(k, 40) for k in value if k not in known), key=str)
        field = f"{path}.{names[0]}" if path else names[0]
        raise BadMessage(name, field, "is not a field of this message")
    ns = {"_fail": fail, "_extra": extra, "_MISSING": _MISSING, "_address_ok": address_ok}
    exec(compile(src, f"<message {name}>", "exec"), ns)  # noqa: S102 - generated from the table above
    check = ns["check"]
    check.source = src
    return check


def _describe(v):
    if isinstance(v, (bytes, str, list, dict)):
        return f"{type(v).__name__} of length {len(v)}"
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{type(v).__name__} {_short(repr(v), 40)}"
    return type(v).__name__



class Msg:
    __slots__ = ("name", "kind", "senders", "handled_by", "payload", "channel", "check")

    def __init__(self, name, kind, senders, handled_by, payload, channel="rpc"):
        self.name, self.kind, self.payload, self.channel = name, kind, payload, channel
        self.senders = frozenset((senders,) if isinstance(senders, str) else senders)
        self.handled_by = frozenset((handled_by,) if isinstance(handled_by, str) else handled_by)
        self.check = compile_check(name, payload)


def _m(name, kind, senders, handled_by, payload, channel="rpc"):
    return Msg(name, kind, senders, handled_by, payload, channel)


R, N = REQUEST, NOTE
NM, OW = NODE_MANAGER, OWNERS

MESSAGES = [
    # --- handled by the node manager -----------------------------------------------------------
    _m("register_worker", R, WORKER, NM, REGISTER),
    _m("register_driver", R, DRIVER, NM, REGISTER),
    _m("request_lease", R, OW + (GCS,), NM, struct({
        "lease_id": LEASE_ID, "resources": RESOURCES, "strategy?": STRATEGY,
        "locality?": map_(ID, int_(), 1 << 16), "no_spill?": BOOL, "actor?": BOOL,
        "renv?": RENV})),
    _m("cancel_lease_request", R, OW + (GCS,), NM, struct({"lease_id": LEASE_ID, "release_if_granted?": BOOL})),
    _m("return_lease", N, OW + (GCS,), NM, struct({"lease_id": LEASE_ID, "kill?": BOOL})),
    _m("blocked", N, OW, NM, NONE),
    _m("unblocked", N, OW, NM, NONE),
    _m("store_create", R, OW, NM, struct({"oid": ID, "size": int_(0, 1 << 48), "owner": bytes_(maxlen=64)})),
    _m("store_seal", N, OW, NM, struct({"oid": ID})),
    _m("store_abort", N, OW, NM, struct({"oid": ID})),
    _m("store_get", R, OW, NM, struct({"oid": ID, "wait?": BOOL, "pull_from?": opt(ADDRESS)})),
    _m("store_release", N, OW, NM, struct({"oids": OIDS})),
    _m("store_delete", N, OW, NM, struct({"oids": OIDS})),
    _m("store_stats", R, OW + (GCS,), NM, NONE),
    # the n largest objects of the node's store, for the history's object samples (gcs/events.py)
    _m("store_top", R, (GCS,), NM, struct({"n": int_(1, 1000)})),
    _m("kill_worker", R, GCS, NM, struct({"worker_id": ID})),
    _m("kill_worker_nowait", N, GCS, NM, struct({"worker_id": ID})),
    _m("log", N, (WORKER, NM), (NM, GCS, DRIVER), LOG),   # worker -> its node -> drivers, GCS
    _m("log_remote", N, GCS, NM, LOG),                    # another node's worker output
    _m("node_info", R, OW + (GCS,), NM, NONE),
    _m("shutdown", R, DRIVER, NM, NONE),
    _m("view", N, GCS, NM, VIEW),
    _m("flush_logs", R, DRIVER, NM, struct({"timeout?": num(0.0, 3600.0)})),
    _m("transfer_begin", R, NM, NM, struct({"oid": ID})),
    _m("fetch_chunk", R, NM, NM, struct({"oid": ID, "offset": int_(0, 1 << 48), "length": int_(0, 1 << 30)})),
    _m("transfer_end", N, NM, NM, struct({"oid": ID})),
    _m("drop_copies", N, NM, NM, struct({"oids": OIDS})),
    _m("prepare_bundle", R, GCS, NM, struct({"pg_id": ID, "index": int_(0, 1 << 20), "resources": RESOURCES})),
    _m("commit_bundle", R, GCS, NM, struct({"pg_id": ID, "index": int_(0, 1 << 20)})),
    _m("cancel_bundle", N, GCS, NM, struct({"pg_id": ID, "index": int_(0, 1 << 20)})),
    _m("ping", R, ANY, (NM, GCS, DRIVER, WORKER), NONE),
    # live stacks (stacks.py): the GCS asks every node manager, which asks its workers and drivers
    _m("node_stacks", R, GCS, NM, struct({"timeout": num(0.1, 600.0)})),
    # --- handled by the GCS -------------------------------------------------------------------------
    _m("register_node", R, NM, GCS, struct({
        "node_id": ID, "address": ADDRESS, "ip": str_(1024), "resources": RESOURCES,
        "head?": BOOL, "pid?": int_(1, 1 << 31), "port?": int_(0, 65535),
        # a node manager re-registering after a GCS restart: the leases it granted to a GCS, its bundles
        "leases?": list_(struct({"lease_id": LEASE_ID, "worker_id": ID, "address": ADDRESS}), 1 << 16),
        "bundles?": list_(struct({"pg_id": ID, "index": int_(0, 1 << 20), "committed": BOOL}), 1 << 16)})),
    _m("heartbeat", R, NM, GCS, struct({"node_id": ID, "available": AMOUNTS, "total?": AMOUNTS,
                                        "pending?": list_(RESOURCES, 1 << 12)})),
    _m("get_nodes", R, OW + (NM,), GCS, NONE),
    _m("cluster_resources", R, OW, GCS, NONE),
    _m("next_job_id", R, DRIVER, GCS, NONE),
    _m("kv_put", R, OW + (NM,), GCS, struct({"key": bytes_(maxlen=1 << 16), "value": bytes_(), "ns?": opt(NAME),
                                     "overwrite?": BOOL})),
    _m("kv_get", R, OW + (NM,), GCS, struct({"key": bytes_(maxlen=1 << 16), "ns?": opt(NAME)})),
    _m("kv_del", R, OW + (NM,), GCS, struct({"key": bytes_(maxlen=1 << 16), "ns?": opt(NAME)})),
    _m("kv_keys", R, OW + (NM,), GCS, struct({"prefix?": bytes_(maxlen=1 << 16), "ns?": opt(NAME)})),
    _m("register_actor", R, OW, GCS, struct({
        "actor_id": ID, "spec": ACTOR_SPEC, "resources": RESOURCES, "name": opt(NAME),
        "namespace": opt(NAME), "detached": BOOL, "owner": ADDRESS, "max_restarts": int_(-1, 1 << 31),
        "meta": map_(str_(256), ANYV, 64), "get_if_exists": BOOL, "class_name": NAME,
        "strategy": STRATEGY})),
    _m("register_owner", R, OW, GCS, struct({"address": ADDRESS})),
    _m("wait_actor", R, OW, GCS, struct({"actor_id": ID, "min_incarnation?": int_(0, 1 << 31), "wait?": BOOL})),
    _m("get_named_actor", R, OW, GCS, struct({"name": NAME, "namespace": opt(NAME)})),
    _m("list_named_actors", R, OW, GCS, struct({"all_namespaces": BOOL, "namespace": opt(NAME)})),
    _m("list_actors", R, OW, GCS, NONE),
    _m("kill_actor", R, OW, GCS, struct({"actor_id": ID, "no_restart?": BOOL})),
    _m("actor_exit", R, WORKER, GCS, struct({"actor_id": ID})),
    _m("actor_checkpoint", R, WORKER, GCS, struct({"actor_id": ID, "state": bytes_()})),
    _m("create_pg", R, OW, GCS, struct({
        "pg_id": ID, "bundles": list_(RESOURCES, 1 << 16), "strategy": str_(64), "name": opt(NAME),
        "lifetime": opt(str_(64))})),
    _m("remove_pg", R, OW, GCS, struct({"pg_id": ID})),
    _m("wait_pg", R, OW, GCS, struct({"pg_id": ID, "timeout": opt(num(-1e12, 1e12))})),
    _m("get_pg", R, OW, GCS, struct({"name": NAME})),
    _m("pg_table", R, OW, GCS, NONE),
    _m("cluster_stacks", R, OW, GCS, struct({"timeout?": num(0.1, 600.0)})),
    # deadlock detection (gcs/deadlock.py): a sync actor blocked in get on calls to actors; answered
    # with the cycle when one closes, or None when the wait ends (actor_wait_end)
    # (a plain task sends no actor; "slots": the calls the actor runs at once, all blocked = stuck)
    _m("actor_wait", R, WORKER, GCS, struct({
        "actor?": ID, "task": TASK_ID, "method": NAME, "slots?": int_(1, 1 << 20),
        "on": list_(struct({"actor?": ID, "task": TASK_ID, "method?": NAME}), 1 << 12)})),
    _m("actor_wait_end", N, WORKER, GCS, struct({"actor?": ID, "task": TASK_ID})),
    # observability (gcs/events.py): batched task events and metric deltas, state queries
    _m("task_events", N, OW, GCS, struct({"proc": map_(str_(64), ANYV, 64), "blob?": bytes_(maxlen=1 << 28),
                                          "n?": int_(0, 1 << 31),
                                          "metrics?": list_(ANYV, 1 << 20), "dropped?": int_()})),
    _m("state_query", R, OW + (NM,), GCS, struct({"what": str_(64), "filters?": list_(list_(ANYV, 3), 64),
                                                 "limit?": int_(0, 1 << 31), "detail?": BOOL, "id?": str_(256),
                                                 "recent?": BOOL, "since?": num(0, 1e12)})),
    # --- handled by core workers (drivers and workers) -------------------------------------------
    _m("list_objects", R, OW + (GCS,), OW, opt(struct({"oids": list_(ID, 1 << 12)}))),   # oids: only these
    _m("dump_stacks", R, NM, OW, NONE),
    _m("get_object", R, OW, OW, struct({"oid": ID})),
    _m("reconstruct", R, OW, OW, struct({"oid": ID, "node_id?": opt(ID), "why?": str_()})),
    _m("add_borrower", R, OW, OW, struct({"oids": OIDS, "addr": ADDRESS})),
    _m("remove_borrower", N, OW, OW, struct({"oids": OIDS, "addr": ADDRESS})),
    _m("infeasible", N, NM, OW, struct({"lease_id": LEASE_ID, "missing": RESOURCES, "node_resources": AMOUNTS})),
    _m("worker_oom", R, NM, OW, struct({"lease_id": LEASE_ID, "message": str_(1 << 16)})),
    _m("gen_item", N, WORKER, OW, struct({"tid": TASK_ID, "idx": int_(0, 1 << 32), "ret": list_(ANYV, 4),
                                           "contained?": list_(list_(ANYV, 2), 1 << 20)})),
    # --- handled by workers only ------------------------------------------------------------------
    _m("push_task", R, OW, WORKER, TASK_SPEC),
    _m("call_template", N, OW, WORKER, CALL_TEMPLATE),
    _m("push_call", R, OW, WORKER, PUSH_CALL),
    _m("cancel_task", N, OW, WORKER, struct({"tid": TASK_ID, "force?": BOOL, "recursive?": BOOL})),
    _m("create_actor", R, GCS, WORKER, struct({
        "actor_id": ID, "incarnation": int_(0, 1 << 31), "checkpoint": opt(bytes_()),
        "gcs_address": ADDRESS, "cls": bytes_(), "args": list_(ANYV, 8), "owner": ADDRESS}, open=True)),
    # --- the zygote's socketpair (not the RPC protocol) ---------------------------------------------
    _m("fork", N, NM, ZYGOTE, struct({"worker_id": ID}), channel="zygote"),
    _m("forked", N, ZYGOTE, NM, struct({"forked": ID, "pid": int_(1, 1 << 31)}), channel="zygote"),
    _m("exit", N, ZYGOTE, NM, struct({"exit": int_(1, 1 << 31), "status": int_(-(1 << 31), 1 << 31)}),
       channel="zygote"),
]


class Table(dict):
    """name -> Msg for the messages of one channel."""

    def __init__(self, msgs, channel="rpc"):
        super().__init__((m.name, m) for m in msgs if m.channel == channel)
        self.channel = channel

    def handled_by(self, role):
        return {name for name, m in self.items() if role in m.handled_by}

    def handlers(self, role, impl: dict) -> "Handlers":
        """The handler table of a process of ``role``: exactly the messages it handles."""
        have, need = set(impl), self.handled_by(role)
        unknown = sorted(have - set(self))
        if unknown:
            raise ValueError(f"handlers for messages not in the table: {unknown}")
        extra, missing = sorted(have - need), sorted(need - have)
        if extra or missing:
            raise ValueError(f"the {role} role's handlers do not match the table: "
                             f"missing {missing}, not handled by {role}: {extra}")
        return Handlers(self, role, impl)

    def bind(self, impl: dict) -> "Handlers":
        """A handler table without a role (tools and tests): each name must be in the table."""
        unknown = sorted(set(impl) - set(self))
        if unknown:
            raise ValueError(f"handlers for messages not in the table: {unknown}")
        return Handlers(self, None, impl)


class Handlers(dict):
    """name -> (handler, check, is_request): what ``protocol.Connection`` dispatches on."""

    def __init__(self, table, role, impl, peers=None):
        super().__init__()
        self.table, self.role, self.impl, self.peers = table, role, dict(impl), peers
        self._views = {}
        for name, fn in impl.items():
            m = table[name]
            if peers is None or m.senders & peers:
                self[name] = (fn, m.check, m.kind == REQUEST)

    def accepting(self, *peers):
        """This table restricted to the messages that peers of these roles send (known from
        which server accepted the connection or where it was opened)."""
        key = frozenset(peers)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = Handlers(self.table, self.role, self.impl, key)
        return view

    def refusal(self, method, is_request):
        """Why ``method`` has no entry (or the wrong kind): a BadMessage for the sender."""
        m = self.table.get(method) if type(method) is str else None
        if m is None:
            return BadMessage(_short(method), "", "is not a message of this system (unknown method)")
        if (m.kind == REQUEST) != is_request:
            return BadMessage(method, "", f"is a {m.kind}, sent as a {REQUEST if is_request else NOTE}")
        if method not in self.impl:
            return BadMessage(method, "", f"is not handled by {self.role or 'this process'}")
        return BadMessage(method, "", f"is not accepted from a peer of role {'/'.join(sorted(self.peers))}")


TABLE = Table(MESSAGES)
ZYGOTE_TABLE = Table(MESSAGES, channel="zygote")


def check(method, payload):
    """Validate a decoded payload of ``method``; raises BadMessage naming the message and field."""
    m = TABLE.get(method) if type(method) is str else None
    if m is None:
        raise BadMessage(_short(method), "", "is not a message of this system (unknown method)")
    return m.check(payload)


def handlers(role, impl):
    return TABLE.handlers(role, impl)


# --- structured remote errors --------------------------------------------------------------------
_SIMPLE = (str, int, float, bool, bytes, type(None))


def error_to_wire(e: BaseException, with_traceback=True):
    """A handler's exception as {type, message, fields, tb}; fields keep simple attributes."""
    if isinstance(e, RemoteError) and e.type_name:
        name, message, fields = e.type_name, e.remote_message, dict(e.fields)
    else:
        name, message = type(e).__name__, str(e)
        fields = {k: v for k, v in getattr(e, "__dict__", {}).items()
                  if type(k) is str and not k.startswith("_") and type(v) in _SIMPLE
                  and (type(v) not in (str, bytes) or len(v) <= 4096)}
    tb = ""
    if with_traceback and e.__traceback__ is not None:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-16384:]
    return {"type": name, "message": message, "fields": fields, "tb": tb}


def error_from_wire(payload, where=""):
    """Rebuild a remote error: the Luminary exception of that name, else a RemoteError."""
    if type(payload) is not dict:
        return RemoteError(str(payload))
    name = payload.get("type")
    message = payload.get("message")
    name = name if type(name) is str else "Exception"
    message = message if type(message) is str else str(message)
    fields = payload.get("fields") if type(payload.get("fields")) is dict else {}
    tb = payload.get("tb") if type(payload.get("tb")) is str else ""
    if name == "BadMessage":
        return BadMessage(fields.get("method", ""), fields.get("field", ""), fields.get("why", message))
    cls = getattr(exc, name, None)
    if isinstance(cls, type) and issubclass(cls, exc.RayError) and cls.__module__ == exc.__name__:
        try:
            err = cls.__new__(cls)
            Exception.__init__(err, message)
            err.__dict__.update(fields)
            if isinstance(err, exc.RaySystemError):
                err.__dict__.setdefault("client_exc", message)
                err.__dict__.setdefault("traceback_str", tb)
            str(err)
            err.remote_traceback = tb
            return err
        except Exception:  # noqa: BLE001 - a class that cannot be rebuilt this way travels as text
            pass
    return RemoteError(f"{name}: {message}", name, message, fields, tb)
