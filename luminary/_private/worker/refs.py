"""Distributed reference counting, as state without sockets (runs on the I/O thread).

Every process keeps one entry per object id it holds.  An entry stays while any of these is
non-zero; when all are zero the table emits an action:

    local        ObjectRef instances alive in this process
    submitted    tasks this process submitted that take the object as an argument
    contained    objects this process holds that contain a ref to it
    borrowers    (owner only) other processes that registered as holding a ref

    owner, all zero      ──▶ ("free", oid)            drop the value, tell the store, release
                                                      the refs it contains
    borrower, all zero   ──▶ ("unborrow", oid, owner) tell the owner we no longer hold it
    never registered     ──▶ ("forget", oid)          drop what we fetched or mapped of it

A process that receives a ref it does not own registers with the owner before user code sees
it (``needs_registration``), so the owner can never free an object someone still holds.
"""
from __future__ import annotations


class RefEntry:
    __slots__ = ("local", "submitted", "contained", "borrowers", "owned", "owner", "registered",
                 "contains", "pending_free")

    def __init__(self, owned, owner):
        self.local = 0
        self.submitted = 0
        self.contained = 0
        self.borrowers = None
        self.owned = owned
        self.owner = owner
        self.registered = owned
        self.contains = None        # list of (oid) refs inside this object's value
        self.pending_free = False

    def in_use(self):
        return self.local or self.submitted or self.contained or self.borrowers


class ReferenceTable:
    def __init__(self, my_address: str):
        self.me = my_address
        self.entries: dict[bytes, RefEntry] = {}

    def _entry(self, oid, owner):
        e = self.entries.get(oid)
        if e is None:
            e = RefEntry(owner == self.me, owner)
            self.entries[oid] = e
        return e

    def add_owned(self, oid):
        """A new object this process owns (a put or a task return); starts with no refs."""
        return self._entry(oid, self.me)

    def add_local(self, oid, owner):
        e = self._entry(oid, owner)
        e.local += 1

    def add_local_refs(self, refs):
        """One local reference for each ObjectRef in ``refs`` (a deserialized batch)."""
        entries, me = self.entries, self.me
        for r in refs:
            e = entries.get(r.id)
            if e is None:
                owner = r.owner
                e = entries[r.id] = RefEntry(owner == me, owner)
            e.local += 1

    def remove_locals(self, oids, actions):
        """``remove_local`` for each oid in order (a batch of dropped ObjectRefs)."""
        entries = self.entries
        for oid in oids:
            e = entries.get(oid)
            if e is None:
                continue
            e.local -= 1
            if not (e.local or e.submitted or e.contained or e.borrowers):
                self._release(oid, e, actions)

    def take_unregistered(self, refs):
        """Mark the borrowed refs among ``refs`` registered; return {owner: [oid, ...]} of those
        that were not yet (the owners to tell, one request each)."""
        entries, me = self.entries, self.me
        by_owner = {}
        for r in refs:
            owner = r.owner
            if owner == me:
                continue
            e = entries.get(r.id)
            if e is not None and not e.registered:
                e.registered = True
                lst = by_owner.get(owner)
                if lst is None:
                    by_owner[owner] = [r.id]
                else:
                    lst.append(r.id)
        return by_owner

    def remove_local(self, oid, actions):
        e = self.entries.get(oid)
        if e is None:
            return
        e.local -= 1
        if not e.in_use():
            self._release(oid, e, actions)

    def add_submitted(self, oids, owners):
        for oid, owner in zip(oids, owners):
            self._entry(oid, owner).submitted += 1

    def remove_submitted(self, oids, actions):
        for oid in oids:
            e = self.entries.get(oid)
            if e is None:
                continue
            e.submitted -= 1
            if not e.in_use():
                self._release(oid, e, actions)

    def set_contains(self, outer, inner):
        """``outer`` (held here) contains refs ``inner`` [(oid, owner)]: they live as long as it does."""
        e = self.entries.get(outer)
        if e is None:
            return
        e.contains = [oid for oid, _ in inner]
        for oid, owner in inner:
            ie = self._entry(oid, owner)
            ie.contained += 1

    def mark_registered(self, oid):
        e = self.entries.get(oid)
        if e is not None:
            e.registered = True

    def needs_registration(self, oid):
        e = self.entries.get(oid)
        return e is not None and not e.registered

    def add_borrower(self, oid, addr):
        e = self.entries.get(oid)
        if e is None or not e.owned:
            return False
        if e.borrowers is None:
            e.borrowers = set()
        e.borrowers.add(addr)
        return True

    def remove_borrower(self, oid, addr, actions):
        e = self.entries.get(oid)
        if e is None or not e.borrowers:
            return
        e.borrowers.discard(addr)
        if not e.in_use():
            self._release(oid, e, actions)

    def _release(self, oid, e, actions):
        del self.entries[oid]
        if e.owned:
            actions.append(("free", oid))
        elif e.registered:
            actions.append(("unborrow", oid, e.owner))
        else:
            actions.append(("forget", oid))
        if e.contains:
            for inner in e.contains:
                ie = self.entries.get(inner)
                if ie is None:
                    continue
                ie.contained -= 1
                if not ie.in_use():
                    self._release(inner, ie, actions)

    def validate(self):
        for oid, e in self.entries.items():
            assert e.local >= 0 and e.submitted >= 0 and e.contained >= 0, (oid, e.local, e.submitted, e.contained)
