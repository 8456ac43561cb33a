"""The owner's records: one ``Call`` per task or actor call with one ``State`` and its checked
``TRANSITIONS``, the per-key task queues, the leases, and the per-actor queues.  Pure data; the
state machine that changes them is owner.py."""
from __future__ import annotations

import collections
import enum

OOM_RETRIES = 15         # retries of a retriable task ended by a node's memory monitor


class State(enum.IntEnum):
    WAITING = 0     # top-level ObjectRef arguments not all ready
    QUEUED = 1      # ready, in its key's queue (task) or its actor's queue (actor call)
    PUSHED = 2      # sent to a worker; its reply is awaited
    FINISHED = 3    # return values stored
    FAILED = 4      # an error stored in every return value


def members(enum_cls):
    """A plain class whose attributes are ``enum_cls``'s members.  Reading a member from an Enum
    class costs about 50 ns on Python 3.11 (a plain class attribute 10): the state machines read
    a dozen per call, so they read them from here."""
    return type(f"{enum_cls.__name__}Members", (), {m.name: m for m in enum_cls})


S = members(State)
TRANSITIONS = {
    S.WAITING: {S.QUEUED, S.FAILED},
    S.QUEUED: {S.PUSHED, S.FAILED},
    S.PUSHED: {S.QUEUED, S.FINISHED, S.FAILED},
    S.FINISHED: {S.QUEUED},          # rebuilt from lineage
    S.FAILED: set(),
}
LIVE = (S.WAITING, S.QUEUED, S.PUSHED)


class Call:
    """One task or actor call, from submission to its last reply."""
    __slots__ = ("tid", "spec", "fid", "fn_blob", "resources", "key", "strategy", "locality", "returns",
                 "nret", "retries_left", "retry_exc", "arg_refs", "held", "state", "lease", "actor",
                 "cancelled", "name", "deps_left", "gen_seen", "gen_dropped", "parent", "pushed_at",
                 "oom_retries_left", "renv", "traced", "tpl")

    def __init__(self, tid, spec, fid, fn_blob, resources, returns, nret, max_retries, retry_exc,
                 arg_refs, held, name, actor=None):
        self.tid = tid
        self.spec = spec
        self.fid = fid
        self.fn_blob = fn_blob
        self.resources = resources
        self.strategy = None
        self.locality = None
        self.key = tuple(sorted(resources.items())) if resources else ()
        self.returns = returns
        self.nret = nret
        self.retries_left = max_retries
        self.retry_exc = retry_exc
        self.arg_refs = arg_refs          # [(position, ObjectRef)] of top-level ObjectRef arguments
        self.held = held                  # (oids, owners) this call keeps alive until it ends
        self.state = S.WAITING
        self.lease = None                 # the Lease it was pushed on (tasks)
        self.actor = actor                # the actor id (actor calls)
        self.cancelled = False
        self.name = name
        self.deps_left = 0
        self.gen_seen = None
        self.gen_dropped = False
        self.parent = None                # the task that submitted it (recursive cancel)
        self.pushed_at = None             # when the shell sent it (monotonic seconds; diagnostics)
        self.oom_retries_left = OOM_RETRIES  # runs again after its node ended it for memory
        self.renv = None                  # runtime env wire spec: leased workers must run in it
        self.traced = False               # task events: every state change is noted (see Owner._to)
        self.tpl = None                   # (id, spec less its own fields): see submitter.wire_payload

    def __repr__(self):
        return f"Call({self.name}, {self.tid.hex()[:12]}, {self.state.name})"


Task = Call   # the name callers use for a task record


class KeyQueue:
    __slots__ = ("key", "resources", "queue", "leases", "requests", "avg_run", "depth", "strategy",
                 "cancel_pending", "renv")

    def __init__(self, key, resources, strategy):
        self.key = key
        self.resources = resources
        self.queue = collections.deque()
        self.leases = []
        self.requests = set()
        self.avg_run = 0.1
        self.depth = 1
        self.strategy = strategy
        self.cancel_pending = False
        self.renv = None


class Lease:
    __slots__ = ("lease_id", "grant", "nm", "inflight", "kq", "idle_timer", "dead", "oom")

    def __init__(self, lease_id, grant, nm, kq):
        self.lease_id = lease_id
        self.grant = grant
        self.nm = nm                     # which node manager granted it (None: the local one)
        self.inflight = {}
        self.kq = kq
        self.idle_timer = False
        self.dead = False
        self.oom = None                  # why its node ended it for memory, if it did


class Actor:
    __slots__ = ("actor_id", "queue", "inflight", "incarnation", "state", "cause", "asking",
                 "handle_oid", "held", "detached")

    def __init__(self, actor_id):
        self.actor_id = actor_id
        self.queue = collections.deque()
        self.inflight = {}
        self.incarnation = -1
        self.state = "unknown"        # unknown (address being asked) | alive | dead
        self.cause = None
        self.asking = False
        self.handle_oid = None
        self.held = None
        self.detached = False
