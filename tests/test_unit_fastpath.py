"""The object fast paths: refs counted in one batch per deserialization, decrements coalesced in
order on the I/O thread, and stored objects read again without a node-manager round trip."""
import gc
import mmap
import pickle
import threading

import numpy as np
import pytest

from _backend import poll_for, ray
from luminary._private.rpc.loop import IOThread
from luminary._private.worker import state
from luminary._private.worker.mapped import MappedObjects
from luminary._private.worker.refs import ReferenceTable

pytestmark = pytest.mark.timeout(60)
ME, OTHER = "unix:/me", "unix:/other"
MB = 1 << 20


# --- I/O thread: increments in batches, decrements in order -----------------------------------
class _Ref:
    def __init__(self, oid, owner=ME):
        self.id, self.owner = oid, owner


def _io_recording():
    io = IOThread(name="test-io")
    events = []
    io.incref_handler = lambda items: events.append(("inc", [i if type(i) is tuple else [r.id for r in i]
                                                              for i in items]))
    io.decref_handler = lambda oids: events.append(("dec", list(oids)))
    return io, events


def _sync(io):
    done = threading.Event()
    io.post(done.set)
    assert done.wait(10)


def test_consecutive_decrements_reach_the_handler_as_one_list_in_order():
    io, events = _io_recording()
    try:
        gate = threading.Event()
        io.post(gate.wait, 10)              # hold the loop so everything below lands in one drain
        io.post(events.append, "a")
        io.add_decref(b"x")
        io.add_decref(b"y")
        io.post(events.append, "b")
        io.add_decref(b"z")
        gate.set()
        _sync(io)
        assert events == ["a", ("dec", [b"x", b"y"]), "b", ("dec", [b"z"])]
    finally:
        io.stop()


def test_increments_queued_during_a_drain_are_applied_before_later_decrements():
    io, events = _io_recording()
    try:
        def submit_like():
            # a ref created and dropped while the loop is busy with this very batch
            io.add_increfs([_Ref(b"r")])
            io.add_decref(b"r")
        io.post(submit_like)
        _sync(io)
        assert events == [("inc", [[b"r"]]), ("dec", [b"r"])]
    finally:
        io.stop()


def test_increments_queued_during_a_drain_are_applied_before_later_callbacks():
    """put(value containing refs) queues the new ref's increment and then posts set_contains;
    if the loop is mid-batch, the increment must still land before set_contains runs (it was
    skipped for an unknown outer ref, and the inner objects were freed under the caller)."""
    io, events = _io_recording()
    try:
        gate = threading.Event()
        io.post(gate.wait, 10)              # the loop is busy with this batch
        io.post(events.append, "earlier")

        def main_thread_put():
            io.add_incref((b"outer", ME))
            io.post(events.append, "set_contains")
        threading.Thread(target=main_thread_put).start()
        poll_for(lambda: len(io._queue) == 2, timeout=10, desc="the put's callback queued behind the batch")
        gate.set()
        _sync(io)
        inc = ("inc", [(b"outer", ME)])
        assert inc in events and "set_contains" in events and "earlier" in events
        assert events.index(inc) < events.index("set_contains")    # early is allowed, late is not
    finally:
        io.stop()


# --- reference table batch operations -----------------------------------------------------------
def test_batch_increments_and_decrements_match_single_ones():
    t = ReferenceTable(ME)
    refs = [_Ref(b"a"), _Ref(b"b"), _Ref(b"a"), _Ref(b"c", OTHER)]
    t.add_local_refs(refs)
    assert (t.entries[b"a"].local, t.entries[b"b"].local, t.entries[b"c"].local) == (2, 1, 1)
    assert t.entries[b"a"].owned and not t.entries[b"c"].owned
    assert t.take_unregistered(refs) == {OTHER: [b"c"]}
    assert t.take_unregistered(refs) == {}          # registered once per owner, not again
    acts = []
    t.remove_locals([b"a", b"b", b"a", b"c"], acts)
    assert acts == [("free", b"b"), ("free", b"a"), ("unborrow", b"c", OTHER)]
    assert t.entries == {}


def test_unregistered_borrowed_ref_is_forgotten_when_dropped():
    t = ReferenceTable(ME)
    t.add_local(b"y", OTHER)                        # deserialized outside any get: never registered
    acts = []
    t.remove_local(b"y", acts)
    assert acts == [("forget", b"y")]               # drop what was fetched, tell nobody


# --- the mapped-object cache --------------------------------------------------------------------
class _Loop:
    def __init__(self):
        self.sent = []

    def post(self, fn, *args):
        fn(*args)

    def call_later(self, delay, fn):
        pass


def _mapping(n=4096):
    mm = mmap.mmap(-1, n)
    mm[:5] = b"hello"
    return mm


def test_mapped_object_is_reused_until_its_owner_frees_it():
    loop = _Loop()
    m = MappedObjects(16 * 4096 * 4, loop.post, loop.call_later, loop.sent.extend)
    mm = _mapping()
    m.add(b"o", mm, 4096)
    del mm
    got = m.get(b"o")                               # kept for reuse though nobody holds a view
    assert got is not None and got[:5] == b"hello"
    del got
    m.forget(b"o")                                  # freed by its owner
    assert m.get(b"o") is None
    gc.collect()
    assert loop.sent == [b"o"]                      # and its pin released exactly once


def test_mapping_too_big_to_keep_lives_only_as_long_as_its_views():
    loop = _Loop()
    m = MappedObjects(16 * 4096, loop.post, loop.call_later, loop.sent.extend)   # keeps <= 4096 bytes
    mm = _mapping(8192)
    m.add(b"big", mm, 8192)
    view = memoryview(mm)
    del mm
    assert m.get(b"big") is not None                # a view still maps it
    view.release()
    gc.collect()
    assert m.get(b"big") is None and loop.sent == [b"big"]


def test_drop_recent_releases_what_only_the_cache_held():
    loop = _Loop()
    m = MappedObjects(1 << 30, loop.post, loop.call_later, loop.sent.extend)
    for oid in (b"a", b"b"):
        m.add(oid, _mapping(), 4096)
    assert m.drop_recent() and not m.drop_recent()
    gc.collect()
    assert sorted(loop.sent) == [b"a", b"b"]


# --- end to end ---------------------------------------------------------------------------------
def test_ten_gets_of_a_mapped_object_make_one_store_get(ray_start):
    cw = state.core
    ref = ray.put(np.arange(20 * MB, dtype=np.uint8))   # over the old 16 MiB keep limit
    calls = []
    real = cw.call_sync

    def counting(target, method, payload, timeout=None):
        calls.append(method)
        return real(target, method, payload, timeout)
    cw.call_sync = counting
    try:
        for _ in range(10):
            arr = ray.get(ref)
            assert arr[4097] == 4097 % 256 and not arr.flags.writeable
            del arr
    finally:
        del cw.call_sync
    assert calls.count("store_get") <= 1
    del ref


def test_freed_object_drops_out_of_the_cache_and_its_pin_is_released(ray_start):
    cw = state.core
    ref = ray.put(np.ones(2 * MB, dtype=np.uint8))
    oid = ref.id
    assert ray.get(ref).sum() == 2 * MB
    assert cw.mapped.get(oid) is not None
    del ref
    poll_for(lambda: cw.mapped.get(oid) is None and oid not in cw.memory.values, desc="freed oid forgotten")


def test_get_after_the_owner_freed_an_object_never_returns_its_old_bytes(ray_start):
    @ray.remote
    class Reader:
        def read(self, blob):
            ref = pickle.loads(blob)        # out of band: the owner does not know about us
            return int(ray.get(ref)[0])

    reader = Reader.remote()
    ref = ray.put(np.full(2 * MB, 7, dtype=np.uint8))
    blob = pickle.dumps(ref)
    assert ray.get(reader.read.remote(blob)) == 7
    oid = ref.id
    del ref                                 # the owner frees it; the reader's copy is gone too
    # (a decrement reaches the I/O thread within a few ms, and a later call may overtake it)
    poll_for(lambda: oid not in state.core.refs.entries, timeout=10, desc="the owner freed the object")
    fresh = ray.put(np.full(2 * MB, 9, dtype=np.uint8))     # likely reuses the same store space
    with pytest.raises(ray.exceptions.ObjectLostError):
        ray.get(reader.read.remote(blob), timeout=30)
    assert ray.get(fresh)[0] == 9


def test_refs_deserialized_in_a_batch_keep_their_objects_and_free_them_when_dropped(ray_start):
    cw = state.core
    inner = [ray.put(i) for i in range(2000)]
    oids = [r.id for r in inner]
    outer = ray.put(inner)
    del inner
    got = ray.get(outer)
    del outer                               # only the deserialized refs hold the objects now
    assert ray.get(got[1234]) == 1234
    poll_for(lambda: cw.refs.entries.get(oids[0]) is not None and cw.refs.entries[oids[0]].local == 1
             and cw.refs.entries[oids[0]].contained == 0, timeout=30, desc="outer freed, inner held by got")
    assert ray.get(got[:3]) == [0, 1, 2]
    del got
    poll_for(lambda: not any(o in cw.refs.entries or o in cw.memory.values for o in oids),
             timeout=30, desc="all 2000 objects freed")


def test_refs_borrowed_in_a_batch_stay_alive_while_the_borrower_holds_them(ray_start):
    cw = state.core

    @ray.remote
    class Holder:
        def hold(self, outer):
            self.refs = ray.get(outer[0])   # 500 refs owned by the driver, registered in one go
            return len(self.refs)

        def total(self):
            return sum(ray.get(self.refs))

        def drop(self):
            self.refs = None

    inner = [ray.put(i) for i in range(500)]
    oids = [r.id for r in inner]
    outer = ray.put(inner)
    h = Holder.remote()
    assert ray.get(h.hold.remote([outer])) == 500
    del inner, outer
    poll_for(lambda: all(cw.refs.entries.get(o) is not None and cw.refs.entries[o].borrowers
                         and not cw.refs.entries[o].local for o in oids[:5]), desc="borrowed only")
    assert ray.get(h.total.remote()) == sum(range(500))
    ray.get(h.drop.remote())
    poll_for(lambda: not any(o in cw.refs.entries for o in oids), desc="freed after the borrower let go")
