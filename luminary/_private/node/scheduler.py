"""The local scheduler, as state without sockets.

    lease request ──▶ queue ──(resources fit and a worker is idle)──▶ grant ──▶ lease
                        │                                                      │ return / worker death
                        └─(asks for more than the node has)─▶ infeasible       ▼
                                                                          resources back

A worker blocked in get/wait gives its CPUs back (``block``) and takes them again when it
resumes (``unblock``), even if that briefly oversubscribes the node: this is what keeps nested
tasks from deadlocking a full node.  GPUs are handed out as indices so a task sees which ones.
"""
from __future__ import annotations

import collections

EPS = 1e-9


class LeaseRequest:
    __slots__ = ("lease_id", "resources", "requester", "infeasible_reported", "data")

    def __init__(self, lease_id, resources, requester, data=None):
        self.lease_id = lease_id
        self.resources = resources
        self.requester = requester
        self.infeasible_reported = False
        self.data = data


class Lease:
    __slots__ = ("lease_id", "resources", "worker", "requester", "gpu_ids", "blocked")

    def __init__(self, lease_id, resources, worker, requester, gpu_ids):
        self.lease_id = lease_id
        self.resources = resources
        self.worker = worker
        self.requester = requester
        self.gpu_ids = gpu_ids
        self.blocked = False


class LocalScheduler:
    def __init__(self, total: dict):
        self.total = {k: float(v) for k, v in total.items() if v}
        self.available = dict(self.total)
        self.free_gpus = list(range(int(self.total.get("GPU", 0))))
        self.queue = collections.deque()
        self.leases: dict = {}

    def feasible(self, resources) -> bool:
        return all(self.total.get(k, 0.0) + EPS >= v for k, v in resources.items() if v > 0)

    def missing(self, resources) -> dict:
        return {k: v for k, v in resources.items() if v > 0 and self.total.get(k, 0.0) + EPS < v}

    def fits(self, resources) -> bool:
        av = self.available
        return all(av.get(k, 0.0) + EPS >= v for k, v in resources.items() if v > 0)

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

    def schedule(self, idle_workers: int):
        """Yield requests that fit now, in order, at most ``idle_workers`` of them (plus the number
        of requests that fit but lack a worker, reported as ``need_workers``)."""
        grantable, need_workers, skipped = [], 0, collections.deque()
        av = dict(self.available)
        while self.queue:
            req = self.queue.popleft()
            if all(av.get(k, 0.0) + EPS >= v for k, v in req.resources.items() if v > 0):
                if len(grantable) < idle_workers:
                    for k, v in req.resources.items():
                        av[k] = av.get(k, 0.0) - v
                    grantable.append(req)
                    continue
                need_workers += 1
            skipped.append(req)
        self.queue = skipped
        return grantable, need_workers

    def grant(self, req: LeaseRequest, worker) -> Lease:
        for k, v in req.resources.items():
            self.available[k] = self.available.get(k, 0.0) - v
        n_gpu = int(req.resources.get("GPU", 0) + 0.999) if req.resources.get("GPU") else 0
        gpu_ids = [self.free_gpus.pop(0) for _ in range(min(n_gpu, len(self.free_gpus)))]
        lease = Lease(req.lease_id, req.resources, worker, req.requester, gpu_ids)
        self.leases[req.lease_id] = lease
        return lease

    def release(self, lease_id):
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return None
        for k, v in lease.resources.items():
            if lease.blocked and k == "CPU":
                continue
            self.available[k] = self.available.get(k, 0.0) + v
        self.free_gpus.extend(lease.gpu_ids)
        self.free_gpus.sort()
        return lease

    def block(self, lease_id):
        lease = self.leases.get(lease_id)
        if lease is None or lease.blocked:
            return
        lease.blocked = True
        cpu = lease.resources.get("CPU", 0.0)
        if cpu:
            self.available["CPU"] = self.available.get("CPU", 0.0) + cpu

    def unblock(self, lease_id):
        lease = self.leases.get(lease_id)
        if lease is None or not lease.blocked:
            return
        lease.blocked = False
        cpu = lease.resources.get("CPU", 0.0)
        if cpu:
            self.available["CPU"] = self.available.get("CPU", 0.0) - cpu

    def validate(self):
        for k, v in self.available.items():
            assert v <= self.total.get(k, 0.0) + EPS, f"{k} available {v} above total"
