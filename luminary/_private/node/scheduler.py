"""The local scheduler, as state without sockets.

    lease request ──▶ queue ──(resources fit and a worker is idle)──▶ grant ──▶ lease
                        │                                                      │ return / worker death
                        └─(asks for more than the node has)─▶ infeasible       ▼
                                                                          resources back

A worker blocked in get/wait gives its CPUs back (``block``) and takes them again when it
resumes (``unblock``), even if that briefly oversubscribes the node: this is what keeps nested
tasks from deadlocking a full node.  GPUs are handed out as indices so a task sees which ones.

Quantities are exact (``placement.ResourceSet``, integer units): a request's floats are converted
once when it arrives, so ten 0.1-CPU leases fill one CPU exactly and no epsilon is needed.
"""
from __future__ import annotations

import collections

from ..placement import ResourceSet, fits, missing
from ..placement.resources import UNIT


class LeaseRequest:
    __slots__ = ("lease_id", "resources", "requester", "infeasible_reported", "data", "env")

    def __init__(self, lease_id, resources, requester, data=None, env=""):
        self.lease_id = lease_id
        self.resources = _need(resources)
        self.requester = requester
        self.infeasible_reported = False
        self.data = data
        self.env = env            # the runtime env key: only a worker started in it may take the lease


class Lease:
    __slots__ = ("lease_id", "resources", "worker", "requester", "gpu_ids", "gpu_units", "blocked", "actor",
                 "granted_at")

    def __init__(self, lease_id, resources, worker, requester, gpu_ids, gpu_units=()):
        self.lease_id = lease_id
        self.resources = resources
        self.worker = worker
        self.requester = requester
        self.gpu_ids = gpu_ids
        self.gpu_units = gpu_units      # units taken from each of gpu_ids (given back on release)
        self.blocked = False
        self.actor = False              # leased for an actor (the memory monitor ends those last)
        self.granted_at = 0.0


class LocalScheduler:
    def __init__(self, total):
        self.total = ResourceSet.from_wire(total)
        self.available = self.total.copy()
        # what is left of each GPU device, in units: fractional requests share a device
        # (two num_gpus=0.5 tasks both get GPU 0, as in Ray); whole ones take whole devices
        self.gpu_free = [UNIT] * (self.total.units("GPU") // UNIT)
        self.queue = collections.deque()
        self.leases: dict = {}

    def feasible(self, resources) -> bool:
        return fits(_need(resources), self.total)

    def missing(self, resources) -> dict:
        return missing(_need(resources), self.total)

    def fits(self, resources) -> bool:
        return fits(_need(resources), self.available)

    def submit(self, req: LeaseRequest):
        self.queue.append(req)

    def cancel(self, lease_id) -> bool:
        for req in self.queue:
            if req.lease_id == lease_id:
                self.queue.remove(req)
                return True
        return False

    def drop_requester(self, requester):
        self.queue = collections.deque(r for r in self.queue if r.requester is not requester)
        return [l for l in list(self.leases.values()) if l.requester is requester]

    def schedule(self, idle_workers):
        """Yield requests that fit now, in order, at most ``idle_workers`` of them (plus the number
        of requests that fit but lack a worker, reported as ``need_workers``).  With workers pooled
        per runtime env, ``idle_workers`` is a dict env key -> idle count and ``need_workers`` a
        dict env key -> workers to start."""
        per_env = isinstance(idle_workers, dict)
        idle = dict(idle_workers) if per_env else {"": idle_workers}
        grantable, need, skipped = [], collections.Counter(), collections.deque()
        av = self.available.copy()
        while self.queue:
            req = self.queue.popleft()
            if fits(req.resources, av):
                if idle.get(req.env, 0) > 0:
                    idle[req.env] -= 1
                    av.subtract(req.resources)
                    grantable.append(req)
                    continue
                need[req.env] += 1
            skipped.append(req)
        self.queue = skipped
        return grantable, (need if per_env else need[""])

    def grant(self, req: LeaseRequest, worker) -> Lease:
        self.available.subtract(req.resources)
        gpu_ids, gpu_units = self._take_gpus(req.resources.units("GPU"))
        lease = Lease(req.lease_id, req.resources, worker, req.requester, gpu_ids, gpu_units)
        lease.actor = bool(req.data and req.data.get("actor"))
        self.leases[req.lease_id] = lease
        return lease

    def release(self, lease_id):
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return None
        back = lease.resources
        if lease.blocked and "CPU" in back:
            back = back.copy()
            back.discard("CPU")        # given back already when it blocked
        self.available.add(back)
        for i, u in zip(lease.gpu_ids, lease.gpu_units):
            self.gpu_free[i] += u
        return lease

    def _take_gpus(self, units):
        """Device ids for a GPU request of ``units``: a fraction goes to the lowest device that
        still has that much free (packing, as Ray does); whole GPUs take whole free devices."""
        free = self.gpu_free
        if units <= 0 or not free:
            return [], []
        if units < UNIT:
            for i, f in enumerate(free):
                if f >= units:
                    free[i] -= units
                    return [i], [units]
            return [], []
        want = -(-units // UNIT)
        ids = [i for i, f in enumerate(free) if f == UNIT][:want]
        for i in ids:
            free[i] = 0
        return ids, [UNIT] * len(ids)

    def block(self, lease_id):
        lease = self.leases.get(lease_id)
        if lease is None or lease.blocked:
            return
        lease.blocked = True
        self.available.add(_cpu_of(lease.resources))

    def unblock(self, lease_id):
        lease = self.leases.get(lease_id)
        if lease is None or not lease.blocked:
            return
        lease.blocked = False
        self.available.subtract(_cpu_of(lease.resources))

    # --- reservations and capacity (placement-group bundles) -------------------------------------
    def reserve(self, resources: ResourceSet) -> bool:
        """Take ``resources`` out of availability if they fit now (a prepared bundle)."""
        if not fits(resources, self.available):
            return False
        self.available.subtract(resources)
        return True

    def unreserve(self, resources: ResourceSet):
        self.available.add(resources)

    def add_capacity(self, resources: ResourceSet):
        """New resources on this node (a committed bundle's renamed resources)."""
        self.total.add(resources)
        self.available.add(resources)

    def remove_capacity(self, resources: ResourceSet):
        """Take them away again; a name whose total reaches zero disappears."""
        self.total.subtract(resources)
        self.available.subtract(resources)
        for name in resources.names():
            if self.total.units(name) <= 0:
                self.total.discard(name)
                self.available.discard(name)

    def validate(self):
        for k in self.available:
            assert self.available.units(k) <= self.total.units(k), \
                f"{k} available {self.available.get(k)} above total {self.total.get(k)}"


def _need(resources) -> ResourceSet:
    return resources if isinstance(resources, ResourceSet) else ResourceSet.request(resources)


def _cpu_of(resources: ResourceSet) -> ResourceSet:
    return ResourceSet({"CPU": resources.units("CPU")}) if resources.units("CPU") else ResourceSet()
