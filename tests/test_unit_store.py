"""The object store's state machine, without processes: allocation, pins, spilling."""
import os

import pytest

from luminary._private.node.store import Allocator, ObjectStore, SEALED, SPILLED
from luminary.exceptions import ObjectStoreFullError

pytestmark = pytest.mark.timeout(20)
KB = 4096


def test_allocator_first_fit_reuses_lowest_address_and_coalesces():
    a = Allocator(16 * KB)
    x = a.alloc(KB)
    y = a.alloc(3 * KB)
    z = a.alloc(KB)
    assert (x, y, z) == (0, KB, 4 * KB)
    a.free(y, 3 * KB)
    assert a.alloc(2 * KB) == KB          # first fit: the hole left by y
    a.free(KB, 2 * KB)
    a.free(x, KB)
    a.free(z, KB)
    a.validate()
    assert a.starts == [0] and a.sizes[0] == 16 * KB  # everything merged back


def test_allocator_rounds_to_pages_and_reports_full():
    a = Allocator(4 * KB)
    assert a.alloc(1) == 0
    assert a.used == KB
    assert a.alloc(3 * KB) == KB
    assert a.alloc(1) is None
    a.validate()


def _store(tmp_path, cap=16 * KB):
    arena = memoryview(bytearray(cap))
    return ObjectStore(arena, cap, str(tmp_path / "spill")), arena


def _put(store, arena, oid, data, owner=b"o"):
    off = store.create(oid, len(data), owner)
    arena[off:off + len(data)] = data
    store.seal(oid)
    return off


def test_pinned_object_is_not_freed_until_released(tmp_path):
    store, arena = _store(tmp_path)
    _put(store, arena, b"a", b"x" * 100)
    assert store.pin(b"a") is not None
    store.delete(b"a")
    assert b"a" in store.objects           # a reader still maps it
    used = store.alloc.used
    store.release(b"a")
    assert b"a" not in store.objects
    assert store.alloc.used == used - KB


def test_unsealed_object_cannot_be_read(tmp_path):
    store, arena = _store(tmp_path)
    store.create(b"a", 10, b"o")
    assert store.pin(b"a") is None
    store.seal(b"a")
    assert store.pin(b"a") is not None


def test_full_store_spills_lru_and_restores_on_read(tmp_path):
    store, arena = _store(tmp_path, cap=4 * KB)
    for i in range(4):
        _put(store, arena, bytes([i]), bytes([i]) * KB)
    # a fifth object forces the least recently used one out to disk
    _put(store, arena, b"\x09", b"\x09" * KB)
    assert store.objects[b"\x00"].state == SPILLED
    assert os.path.exists(store.objects[b"\x00"].spill_path)
    off, size = store.pin(b"\x00")     # restoring spills another one
    assert bytes(arena[off:off + size]) == b"\x00" * KB
    assert store.objects[b"\x00"].state == SEALED
    assert store.restore_count == 1 and store.spill_count >= 2
    store.alloc.validate()


def test_store_full_when_everything_is_pinned(tmp_path):
    store, arena = _store(tmp_path, cap=2 * KB)
    store.fallback = False
    _put(store, arena, b"a", b"a" * KB)
    _put(store, arena, b"b", b"b" * KB)
    store.pin(b"a")
    store.pin(b"b")
    with pytest.raises(ObjectStoreFullError, match="spilling cannot help"):
        store.create(b"c", KB, b"o")
    # nothing already stored was lost
    assert store.pin(b"a") is not None and store.pin(b"b") is not None


def test_object_larger_than_capacity_is_a_clear_error_without_fallback(tmp_path):
    store, _ = _store(tmp_path, cap=2 * KB)
    store.fallback = False
    with pytest.raises(ObjectStoreFullError, match="larger than the object store's capacity"):
        store.create(b"big", 3 * KB, b"o")


def test_objects_the_arena_cannot_hold_go_to_fallback_files(tmp_path):
    store, arena = _store(tmp_path, cap=2 * KB)
    path = store.create(b"big", 3 * KB, b"o")           # larger than the whole store
    assert isinstance(path, str) and os.path.getsize(path) == 3 * KB
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    with open(path, "r+b") as f:
        f.write(b"x" * 3 * KB)
    assert store.seal(b"big")
    assert store.pin(b"big") == (path, 3 * KB)
    _put(store, arena, b"a", b"a" * KB)
    _put(store, arena, b"b", b"b" * KB)
    store.pin(b"a")
    store.pin(b"b")
    assert isinstance(store.create(b"c", KB, b"o"), str)  # the rest is pinned: fallback, not failure
    assert store.stats()["fallback_bytes"] == 4 * KB
    store.release(b"big")
    store.delete(b"big")
    assert not os.path.exists(path) and store.stats()["fallback_bytes"] == KB
    store.abort(b"c")
    assert store.stats()["fallback_bytes"] == 0 and not any(n.startswith("fallback-") for n in os.listdir(store.spill_dir))


def test_deleting_spilled_object_removes_its_file(tmp_path):
    store, arena = _store(tmp_path, cap=KB)
    _put(store, arena, b"a", b"a" * 10)
    _put(store, arena, b"b", b"b" * 10)
    path = store.objects[b"a"].spill_path
    assert os.path.exists(path)
    store.delete(b"a")
    assert not os.path.exists(path)
    assert store.spilled_bytes == 0


def test_owner_death_frees_its_objects(tmp_path):
    store, arena = _store(tmp_path)
    _put(store, arena, b"a", b"1", owner=b"w1")
    _put(store, arena, b"b", b"2", owner=b"w2")
    store.delete_owned_by(b"w1")
    assert set(store.objects) == {b"b"}
