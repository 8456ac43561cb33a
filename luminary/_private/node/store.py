"""The node's shared-memory object store, as state without sockets.

The arena is one memfd (no name in /dev/shm, so nothing can leak there, even after SIGKILL)
mapped by every process on the node.  This class decides where objects live inside it:

    create(oid, size) ──▶ CREATED ── seal ──▶ SEALED ──(spill when space is needed)──▶ SPILLED
                                                 ▲                                       │
                                                 └────────── restore on get ◀───────────┘
    delete: at once when nobody has it mapped, else when the last reader releases it.

Readers pin what they map (``get``/``release``); pinned objects are never moved or reused, so a
numpy view of an object stays valid as long as the reader holds it.  Space is first fit at the
lowest address, so freed memory is reused while its pages are still warm: writing into warm
pages runs near memory-copy speed, fresh pages fault at a tenth of it.
"""
from __future__ import annotations

import bisect
import heapq
import os
import time

from ..config import STORE_ALIGN
from ...exceptions import ObjectStoreFullError

CREATED, SEALED, SPILLED = "created", "sealed", "spilled"


def _round(n):
    return max(STORE_ALIGN, (n + STORE_ALIGN - 1) // STORE_ALIGN * STORE_ALIGN)


class Allocator:
    """First-fit over a sorted free list; neighbours coalesce on free."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.starts = [0]           # sorted offsets of free blocks
        self.sizes = {0: capacity}  # offset -> size
        self.used = 0

    def alloc(self, size: int):
        size = _round(size)
        for start in self.starts:
            free = self.sizes[start]
            if free >= size:
                i = bisect.bisect_left(self.starts, start)
                del self.starts[i]
                del self.sizes[start]
                if free > size:
                    rest = start + size
                    self.starts.insert(i, rest)
                    self.sizes[rest] = free - size
                self.used += size
                return start
        return None

    def free(self, offset: int, size: int):
        size = _round(size)
        self.used -= size
        i = bisect.bisect_left(self.starts, offset)
        # merge with the next block
        if i < len(self.starts) and self.starts[i] == offset + size:
            size += self.sizes.pop(self.starts[i])
            del self.starts[i]
        # merge with the previous block
        if i > 0:
            prev = self.starts[i - 1]
            if prev + self.sizes[prev] == offset:
                self.sizes[prev] += size
                return
        self.starts.insert(i, offset)
        self.sizes[offset] = size

    def largest_free(self):
        return max(self.sizes.values(), default=0)

    def validate(self):
        assert self.starts == sorted(self.starts)
        total = 0
        for a, b in zip(self.starts, self.starts[1:]):
            assert a + self.sizes[a] < b, "free blocks overlap or are not coalesced"
        for s in self.starts:
            total += self.sizes[s]
        assert total + self.used == self.capacity


class StoredObject:
    __slots__ = ("oid", "offset", "size", "state", "pins", "owner", "spill_path", "last_use", "doomed", "primary",
                 "path")

    def __init__(self, oid, offset, size, owner, primary=True):
        self.primary = primary
        self.oid = oid
        self.offset = offset
        self.size = size
        self.state = CREATED
        self.pins = 0
        self.owner = owner
        self.spill_path = None
        self.last_use = time.monotonic()
        self.doomed = False
        self.path = None        # a fallback object lives in this file instead of the arena


class ObjectStore:
    """``arena`` is a writable memoryview of the shared memory (a bytearray in unit tests)."""

    def __init__(self, arena: memoryview, capacity: int, spill_dir: str, fallback: bool = True):
        self.arena = arena
        self.capacity = capacity
        self.alloc = Allocator(capacity)
        self.objects: dict[bytes, StoredObject] = {}
        self.spill_dir = spill_dir
        self.spilled_bytes = 0
        self.fallback_bytes = 0
        self.fallback = fallback      # objects the arena cannot hold go to files instead of failing
        self.spill_count = 0
        self.restore_count = 0

    # --- writers -----------------------------------------------------------------------------
    def create(self, oid: bytes, size: int, owner: bytes, primary=True):
        """Room for a new object: its offset in the arena, or, when the arena cannot hold it even
        after spilling (larger than the store, or the rest pinned), the path of a disk-backed
        fallback file of that size (as Ray's plasma falls back).  ``primary=False`` marks a copy
        fetched from another node, which is evicted (not spilled) when space is needed."""
        if oid in self.objects:
            raise ValueError(f"object {oid.hex()} already exists in the store")
        try:
            offset = self._allocate(size)
        except ObjectStoreFullError:
            if not self.fallback:
                raise
            obj = StoredObject(oid, -1, size, owner, primary)
            obj.path = self._fallback_file(oid, size)
            self.objects[oid] = obj
            self.fallback_bytes += size
            return obj.path
        self.objects[oid] = StoredObject(oid, offset, size, owner, primary)
        return offset

    def _fallback_file(self, oid, size):
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.spill_dir, f"fallback-{oid.hex()}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.ftruncate(fd, max(size, 1))
        finally:
            os.close(fd)
        return path

    def seal(self, oid: bytes) -> bool:
        obj = self.objects.get(oid)
        if obj is None or obj.state != CREATED:
            return False
        obj.state = SEALED
        return True

    def abort(self, oid: bytes):
        obj = self.objects.get(oid)
        if obj is not None and obj.state == CREATED:
            self._drop(obj)

    # --- readers -----------------------------------------------------------------------------
    def contains(self, oid):
        obj = self.objects.get(oid)
        return obj is not None and obj.state != CREATED and not obj.doomed

    def pin(self, oid: bytes):
        """Return (offset, size) pinned for a reader, restoring a spilled object; (path, size)
        for a fallback object; None if unsealed."""
        obj = self.objects.get(oid)
        if obj is None or obj.state == CREATED:
            return None
        if obj.state == SPILLED:
            self._restore(obj)
        obj.pins += 1
        obj.last_use = time.monotonic()
        return (obj.path if obj.path is not None else obj.offset), obj.size

    def release(self, oid: bytes):
        obj = self.objects.get(oid)
        if obj is None:
            return
        obj.pins -= 1
        if obj.pins <= 0:
            obj.pins = 0
            if obj.doomed:
                self._drop(obj)

    # --- lifetime ----------------------------------------------------------------------------
    def delete(self, oid: bytes):
        obj = self.objects.get(oid)
        if obj is None:
            return
        if obj.pins > 0:
            obj.doomed = True
        else:
            self._drop(obj)

    def delete_owned_by(self, owner: bytes):
        for oid in [o.oid for o in self.objects.values() if o.owner == owner]:
            self.delete(oid)

    def _drop(self, obj):
        self.objects.pop(obj.oid, None)
        if obj.path is not None:
            self.fallback_bytes -= obj.size
            try:
                os.unlink(obj.path)
            except OSError:
                pass
        elif obj.state == SPILLED:
            self.spilled_bytes -= obj.size
            try:
                os.unlink(obj.spill_path)
            except OSError:
                pass
        else:
            self.alloc.free(obj.offset, obj.size)

    # --- space -------------------------------------------------------------------------------
    def _allocate(self, size):
        if _round(size) > self.capacity:
            raise ObjectStoreFullError(
                f"Object of {size} bytes is larger than the object store's capacity of {self.capacity} "
                "bytes. Start the cluster with a larger object_store_memory.")
        offset = self.alloc.alloc(size)
        if offset is None:
            self._spill_for(size)
            offset = self.alloc.alloc(size)
        if offset is None:
            pinned = sum(o.size for o in self.objects.values() if o.pins and o.state != SPILLED)
            raise ObjectStoreFullError(
                f"The object store is full: {size} bytes requested, {self.capacity - self.alloc.used} free "
                f"of {self.capacity}, and spilling cannot help ({pinned} bytes are in use by readers "
                "or still being written). Release references to objects you no longer need, or "
                "start the cluster with a larger object_store_memory.")
        return offset

    def _spill_for(self, size):
        """Spill unpinned sealed objects, least recently used first, until ``size`` fits."""
        need = _round(size)
        victims = sorted((o for o in self.objects.values() if o.state == SEALED and o.pins == 0 and o.path is None),
                         key=lambda o: (o.primary, o.last_use))   # fetched copies go first
        for obj in victims:
            if self.alloc.largest_free() >= need:
                return
            if obj.primary:
                self._spill(obj)
            else:
                self._drop(obj)

    def _spill(self, obj):
        os.makedirs(self.spill_dir, exist_ok=True)
        path = os.path.join(self.spill_dir, obj.oid.hex())
        with open(path, "wb") as f:
            f.write(self.arena[obj.offset:obj.offset + obj.size])
        self.alloc.free(obj.offset, obj.size)
        obj.state = SPILLED
        obj.spill_path = path
        obj.offset = -1
        self.spilled_bytes += obj.size
        self.spill_count += 1

    def _restore(self, obj):
        try:
            offset = self._allocate(obj.size)
        except ObjectStoreFullError:
            if not self.fallback:
                raise
            # no room in the arena: readers map the spill file itself (it holds the same bytes)
            obj.path = obj.spill_path
            obj.spill_path = None
            obj.state = SEALED
            self.spilled_bytes -= obj.size
            self.fallback_bytes += obj.size
            return
        with open(obj.spill_path, "rb") as f:
            f.readinto(self.arena[offset:offset + obj.size])
        os.unlink(obj.spill_path)
        obj.offset = offset
        obj.state = SEALED
        obj.spill_path = None
        self.spilled_bytes -= obj.size
        self.restore_count += 1

    def largest(self, n):
        """[[oid, size, where, owner, primary]] of the ``n`` largest sealed objects, largest
        first; where: "shared_memory", "spilled" or "fallback_file" (for the history's object
        samples, gcs/events.py)."""
        objs = heapq.nlargest(n, (o for o in self.objects.values() if o.state != CREATED), key=lambda o: o.size)
        return [[o.oid, o.size, "spilled" if o.state == SPILLED else "fallback_file" if o.path else "shared_memory",
                 o.owner, o.primary] for o in objs]

    def stats(self):
        return {"capacity": self.capacity, "used": self.alloc.used, "objects": len(self.objects),
                "fallback_bytes": self.fallback_bytes,
                "spilled_bytes": self.spilled_bytes, "spilled": self.spill_count, "restored": self.restore_count}
