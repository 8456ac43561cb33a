"""Resource quantities in exact arithmetic.

Every quantity is an integer count of ``1 / UNIT`` of a resource (a ten-thousandth), converted
from the user's or the wire's floats once, at the edge (``from_wire`` / ``request``), and back
to floats only for the wire (``to_wire``).  Sums and differences are integer operations, so ten
requests of 0.1 CPU fill exactly one CPU and an eleventh does not fit: no epsilon anywhere.

    wire {"CPU": 0.1}  ──from_wire──▶  ResourceSet {CPU: 1000}  ──to_wire──▶  {"CPU": 0.1}
"""
from __future__ import annotations

import math

UNIT = 10_000   # units per whole resource: quantities are exact to 0.0001


def to_units(x) -> int:
    """A float (or int) quantity as whole units, rounded half up.  A positive quantity never
    rounds to nothing: 0.00001 CPU still asks for one unit."""
    if isinstance(x, int):
        return x * UNIT
    u = math.floor(float(x) * UNIT + 0.5)
    if u == 0 and x > 0:
        return 1
    return u


def from_units(u: int) -> float:
    return u / UNIT


class ResourceSet:
    """A mapping of resource name to an exact quantity (integer units).

    Used both for a need (only positive entries: build it with ``request``) and for a node's
    totals and availability (entries may briefly go negative when a blocked worker resumes)."""

    __slots__ = ("units_by_name",)

    def __init__(self, units_by_name=None):
        self.units_by_name: dict[str, int] = dict(units_by_name) if units_by_name else {}

    # --- the edge: floats in, floats out ------------------------------------------------------
    @classmethod
    def from_wire(cls, d) -> "ResourceSet":
        """A totals/availability dict of floats; zero entries are dropped, negatives kept."""
        if isinstance(d, ResourceSet):
            return d.copy()
        out = {}
        for k, v in (d or {}).items():
            u = to_units(v)
            if u:
                out[k] = u
        return cls(out)

    @classmethod
    def request(cls, d) -> "ResourceSet":
        """A need: only positive entries count (a zero or negative ask needs nothing)."""
        if isinstance(d, ResourceSet):
            return cls({k: u for k, u in d.units_by_name.items() if u > 0})
        out = {}
        for k, v in (d or {}).items():
            if v > 0:
                out[k] = to_units(v)
        return cls(out)

    def to_wire(self) -> dict:
        return {k: u / UNIT for k, u in self.units_by_name.items()}

    # --- reading ---------------------------------------------------------------------------------
    def units(self, name) -> int:
        return self.units_by_name.get(name, 0)

    def get(self, name, default=0.0) -> float:
        u = self.units_by_name.get(name)
        return default if u is None else u / UNIT

    def __getitem__(self, name) -> float:
        return self.units_by_name[name] / UNIT

    def __contains__(self, name):
        return name in self.units_by_name

    def __iter__(self):
        return iter(self.units_by_name)

    def __len__(self):
        return len(self.units_by_name)

    def names(self):
        return self.units_by_name.keys()

    def items(self):
        """(name, float quantity) pairs, for messages and logs."""
        return ((k, u / UNIT) for k, u in self.units_by_name.items())

    def total_units(self) -> int:
        return sum(self.units_by_name.values())

    def __eq__(self, other):
        if isinstance(other, ResourceSet):
            return {k: u for k, u in self.units_by_name.items() if u} == \
                   {k: u for k, u in other.units_by_name.items() if u}
        return NotImplemented

    def __repr__(self):
        return f"ResourceSet({self.to_wire()!r})"

    def copy(self) -> "ResourceSet":
        return ResourceSet(self.units_by_name)

    # --- arithmetic --------------------------------------------------------------------------------
    def __add__(self, other: "ResourceSet") -> "ResourceSet":
        return self.copy().add(other)

    def __sub__(self, other: "ResourceSet") -> "ResourceSet":
        return self.copy().subtract(other)

    def add(self, other: "ResourceSet") -> "ResourceSet":
        """In place; returns self."""
        u = self.units_by_name
        for k, v in other.units_by_name.items():
            u[k] = u.get(k, 0) + v
        return self

    def subtract(self, other: "ResourceSet") -> "ResourceSet":
        """In place; returns self.  The result may be negative (oversubscription)."""
        u = self.units_by_name
        for k, v in other.units_by_name.items():
            u[k] = u.get(k, 0) - v
        return self

    def discard(self, name):
        self.units_by_name.pop(name, None)


def fits(need: ResourceSet, available: ResourceSet) -> bool:
    """Whether every positive entry of ``need`` is covered by ``available`` (exactly)."""
    av = available.units_by_name
    return all(av.get(k, 0) >= v for k, v in need.units_by_name.items() if v > 0)


def missing(need: ResourceSet, total: ResourceSet) -> dict:
    """The entries of ``need`` that ``total`` cannot cover, as wire floats (for messages)."""
    tot = total.units_by_name
    return {k: v / UNIT for k, v in need.units_by_name.items() if v > 0 and tot.get(k, 0) < v}


def utilization(need: ResourceSet, total: ResourceSet, available: ResourceSet, extra=()) -> float:
    """The used fraction of the busiest resource among those ``need`` names (plus ``extra``)."""
    util = 0.0
    tot, av = total.units_by_name, available.units_by_name
    for k in list(need.units_by_name) + list(extra):
        t = tot.get(k, 0)
        if t > 0:
            util = max(util, (t - av.get(k, 0)) / t)
    return util


def ceil_whole(rs: ResourceSet, name) -> int:
    """How many whole resources a (possibly fractional) quantity occupies: GPU 0.5 -> 1."""
    return -(-rs.units(name) // UNIT)
