"""The node manager's object-store and transfer handlers (a mixin of ``NodeManager``, manager.py).

Local processes create, seal, read (pinned while mapped) and delete objects in the node's
shared-memory ``ObjectStore``; another node's object is pulled in CHUNK-sized pieces, at most
IN_FLIGHT at once, straight into a store allocation, from the node manager that holds it.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import mmap
import os

from ..rpc import messages, protocol

logger = logging.getLogger(__name__)


class ObjectService:
    # --- object store ----------------------------------------------------------------------------
    def store_create(self, conn, p):
        try:
            return self.store.create(p["oid"], p["size"], p["owner"])
        except Exception as e:
            return {"error": f"{type(e).__name__}", "message": str(e)}

    def store_seal(self, conn, p):
        oid = p["oid"]
        self.store.seal(oid)
        for fut, c in self.store_waiters.pop(oid, ()):
            if not fut.done():
                fut.set_result(self._pin(c, oid))

    def store_abort(self, conn, p):
        self.store.abort(p["oid"])

    def _pin(self, conn, oid):
        try:
            loc = self.store.pin(oid)
        except Exception as e:
            return {"error": type(e).__name__, "message": str(e)}
        if loc is None:
            return None
        pins = conn.state.setdefault("pins", collections.Counter())
        pins[oid] += 1
        return list(loc)

    def store_get(self, conn, p):
        oid = p["oid"]
        if oid in self.store.objects:
            loc = self._pin(conn, oid)
            if loc is not None:
                return loc
        if p.get("pull_from"):
            return self._pull_then_pin(conn, oid, p["pull_from"])
        if not p.get("wait"):
            return None
        fut = asyncio.get_event_loop().create_future()
        self.store_waiters[oid].append((fut, conn))
        return fut

    # --- transfers between nodes (pull, in chunks, bounded in flight) ------------------------------
    CHUNK = 4 << 20
    IN_FLIGHT = 4

    async def _peer(self, address):
        conn = self.peers.get(address)
        if conn is None or conn.closed:
            conn = await protocol.connect(address, self.secret, self.handlers.accepting(messages.NODE_MANAGER),
                                          name=f"peer {address}")
            self.peers[address] = conn
        return conn

    async def _pull_then_pin(self, conn, oid, address):
        fut = self.pulls.get(oid)
        if fut is None:
            fut = self.pulls[oid] = asyncio.ensure_future(self._pull(oid, address))
            fut.add_done_callback(lambda f, oid=oid: self.pulls.pop(oid, None))
        err = await asyncio.shield(fut)
        if err:
            return err
        loc = self._pin(conn, oid)
        if loc is None:
            return {"error": "ObjectLostError", "message": f"object {oid.hex()} vanished after its transfer"}
        return loc

    async def _pull(self, oid, address):
        if oid in self.store.objects:
            return None
        try:
            peer = await self._peer(address)
            size = await peer.call("transfer_begin", {"oid": oid})
        except Exception as e:  # noqa: BLE001
            return {"error": "ObjectLostError", "message": f"the node at {address} that held object "
                    f"{oid.hex()} cannot be reached ({type(e).__name__}: {e})"}
        if size is None:
            return {"error": "ObjectLostError", "message": f"object {oid.hex()} is no longer on the node at {address}"}
        try:
            offset = self.store.create(oid, size, b"", primary=False)
        except Exception as e:  # noqa: BLE001
            peer.notify("transfer_end", {"oid": oid})
            return {"error": type(e).__name__, "message": str(e)}
        sem = asyncio.Semaphore(self.IN_FLIGHT)
        if isinstance(offset, str):         # no room in the arena: the copy lands in a fallback file
            mm = _map_file(offset, size, writable=True)
            offset = 0
        else:
            mm = self.arena_mm

        dest = memoryview(mm)

        async def chunk(start):
            async with sem:
                n = min(self.CHUNK, size - start)
                fut = asyncio.get_event_loop().create_future()

                def done(ok, res):
                    if not fut.done():
                        fut.set_result(None) if ok else fut.set_exception(
                            res if isinstance(res, BaseException) else RuntimeError(str(res)))
                peer.request_into("fetch_chunk", {"oid": oid, "offset": start, "length": n},
                                  dest[offset + start:offset + start + n], done)
                await fut

        try:
            await asyncio.gather(*(chunk(s) for s in range(0, size, self.CHUNK)))
        except Exception as e:  # noqa: BLE001
            self.store.abort(oid)
            return {"error": "ObjectLostError", "message": f"transfer of object {oid.hex()} from {address} failed: {e}"}
        finally:
            if not peer.closed:
                peer.notify("transfer_end", {"oid": oid})
        self.store.seal(oid)
        for fut, c in self.store_waiters.pop(oid, ()):
            if not fut.done():
                fut.set_result(self._pin(c, oid))
        return None

    def transfer_begin(self, conn, p):
        oid = p["oid"]
        loc = self._pin(conn, oid) if oid in self.store.objects else None
        if not isinstance(loc, list):
            return None
        self.copies.setdefault(oid, set()).add(conn)     # this peer will hold a copy
        return loc[1]

    def fetch_chunk(self, conn, p):
        obj = self.store.objects.get(p["oid"])
        if obj is not None and obj.path is not None:
            mm = self._fallback_maps.get(obj.oid)
            if mm is None:
                mm = self._fallback_maps[obj.oid] = _map_file(obj.path, obj.size, writable=False)
            return protocol.RawReply(memoryview(mm)[p["offset"]:p["offset"] + p["length"]])
        if obj is None or obj.offset < 0:
            raise ValueError("object not here")
        start = obj.offset + p["offset"]
        return protocol.RawReply(memoryview(self.arena_mm)[start:start + p["length"]])

    def transfer_end(self, conn, p):
        self._fallback_maps.pop(p["oid"], None)
        self.store_release(conn, {"oids": [p["oid"]]})

    def store_release(self, conn, p):
        pins = conn.state.get("pins")
        for oid in p["oids"]:
            if pins is not None and pins.get(oid):
                pins[oid] -= 1
                if not pins[oid]:
                    del pins[oid]
                self.store.release(oid)

    def _release_pins(self, conn):
        pins = conn.state.pop("pins", None)
        if pins:
            for oid, n in pins.items():
                for _ in range(n):
                    self.store.release(oid)

    def store_delete(self, conn, p):
        """The owner freed these objects: drop them here and tell the nodes that copied them, so
        their memory is reused (warm) instead of waiting for eviction."""
        forward = {}
        for oid in p["oids"]:
            self.store.delete(oid)
            for peer in self.copies.pop(oid, ()):
                forward.setdefault(peer, []).append(oid)
        for peer, oids in forward.items():
            if not peer.closed:
                peer.notify("drop_copies", {"oids": oids})

    def drop_copies(self, conn, p):
        for oid in p["oids"]:
            obj = self.store.objects.get(oid)
            if obj is not None and not obj.primary:
                self.store.delete(oid)


def _map_file(path, size, writable):
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        return mmap.mmap(fd, max(size, 1), mmap.MAP_SHARED,
                         mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
    finally:
        os.close(fd)
