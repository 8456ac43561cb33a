"""Placement decisions, as pure functions of a cluster view.

    node manager: request_lease ──▶ TaskPlacer.choose ──▶ LOCAL (queue here) | Spill(node) | Reject(why)
    GCS:          actor          ──▶ place_actor      ──▶ node id | None (no alive node could ever hold it)
    GCS:          placement group ─▶ plan_bundles     ──▶ node id per bundle | None (not now)

Nothing here reads a clock, touches a socket or sleeps: the caller passes the time in, so every
rule can be unit tested with a hand-made ``ClusterView``.
"""
from __future__ import annotations

import collections

from .cluster import ClusterView, NodeView
from .resources import UNIT, ResourceSet, fits, utilization

LOCAL = None
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
HYBRID_THRESHOLD = 0.5    # stay local while the busiest requested resource is used less than this


class Spill:
    """Ask this node instead (a spillback)."""
    __slots__ = ("node_id", "address")

    def __init__(self, node_id, address):
        self.node_id = node_id
        self.address = address

    def __repr__(self):
        return f"Spill({self.node_id!r})"


class Reject:
    """The request can never be placed as asked (hard node affinity to a node that cannot hold it)."""
    __slots__ = ("message",)

    def __init__(self, message):
        self.message = message


# --- tasks: the node manager's spillback rules -----------------------------------------------------
class TaskPlacer:
    """One per node manager.  Remembers the requests it just spilled (for ``SENT_MEMORY_S``) and
    counts them against their targets' reported room, so a burst spreads over the nodes with room
    instead of piling onto the one that looked best a moment ago; and the SPREAD round robin."""

    SENT_MEMORY_S = 0.2

    def __init__(self, me):
        self.me = me
        self.spread_next = 0
        self.sent = collections.deque()    # (time, node_id, need) of recent spillbacks

    def nodes(self, view: ClusterView, local: NodeView, now: float) -> dict:
        """Alive nodes by id: the view's, less what we spilled there lately; ours exact."""
        sent = self.sent
        cutoff = now - self.SENT_MEMORY_S
        while sent and sent[0][0] < cutoff:
            sent.popleft()
        nodes = {nid: n for nid, n in view.nodes.items() if n.alive}
        taken = {}
        for _, nid, need in sent:
            if nid in nodes:
                taken.setdefault(nid, ResourceSet()).add(need)
        for nid, t in taken.items():
            nodes[nid] = nodes[nid].with_available(nodes[nid].available - t)
        nodes[self.me] = local                 # our own state is exact, not a report
        return nodes

    def choose(self, need: ResourceSet, local: NodeView, view: ClusterView, now: float,
               strategy=None, locality=None, no_spill=False):
        """LOCAL, ``Spill`` or ``Reject`` for a lease request arriving at this node.

        The rules, in order: hard/soft node affinity; ``no_spill`` (a request already spilled
        once) stays if it could ever run here; nothing anywhere could run it: queue here (the
        caller reports it infeasible); SPREAD: round robin over the nodes with room now (else
        over those that could ever run it); locality: the node holding most argument bytes;
        the hybrid rule: stay here while it fits now and the busiest requested resource is
        under half used, else the least-loaded node with room now (ties: here), else wait here
        if it can ever run here, else the first node that could."""
        me = self.me
        nodes = self.nodes(view, local, now)
        strategy = strategy or {}
        kind = strategy.get("type", "DEFAULT")
        here_ok = local.feasible(need)

        def spill(nid):
            if nid == me:
                return LOCAL
            self.sent.append((now, nid, need))
            return Spill(nid, nodes[nid].address)

        if kind == "NODE_AFFINITY":
            nid = strategy["node_id"]
            if nid == me and here_ok:
                return LOCAL
            if nid in nodes and nodes[nid].feasible(need):
                return spill(nid)
            if not strategy.get("soft"):
                return Reject(
                    f"NodeAffinitySchedulingStrategy(soft=False) names node {nid.hex()}, which is dead, unknown "
                    "or lacks the resources; use soft=True to fall back to other nodes.")
        if no_spill and here_ok:
            return LOCAL
        candidates = [nid for nid, n in nodes.items() if n.feasible(need)]
        if not candidates:
            return LOCAL
        if kind == "SPREAD":
            ready = sorted(nid for nid in candidates if nodes[nid].fits(need)) or sorted(candidates)
            self.spread_next += 1
            return spill(ready[self.spread_next % len(ready)])
        if locality:
            best = max(locality.items(), key=lambda kv: kv[1])[0]
            if best in nodes and nodes[best].feasible(need):
                return spill(best)      # wait there rather than move the bytes
        if here_ok and local.fits(need) and utilization(need, local.total, local.available) < HYBRID_THRESHOLD:
            return LOCAL
        ready = [nid for nid in candidates if nodes[nid].fits(need)]
        if ready:
            best = min(ready, key=lambda nid: (node_load(nodes[nid], need), nid != me))
            return spill(best)
        return LOCAL if here_ok else spill(sorted(candidates)[0])


def node_load(node: NodeView, need: ResourceSet) -> float:
    """How busy a node is for ``need``: the used fraction of its busiest requested resource or CPU."""
    return utilization(need, node.total, node.available, extra=("CPU",))


# --- actors: the GCS's rules -----------------------------------------------------------------------
def actor_load(placed):
    """From ``(node_id, need, reported)`` of every actor alive or being placed: actors per node, and
    per node the resources of those placed but not yet reflected in the node's reports."""
    counts, pending = {}, {}
    for nid, need, reported in placed:
        if nid is None:
            continue
        counts[nid] = counts.get(nid, 0) + 1
        if not reported:
            pending.setdefault(nid, ResourceSet()).add(need)
    return counts, pending


def place_actor(need: ResourceSet, view: ClusterView, strategy=None, counts=None, pending=None):
    """The node to lease the actor's worker from, or None when no alive node could hold it (or the
    hard affinity target cannot).  Prefers nodes with room now (after the actors being placed),
    then, for SPREAD, the fewest actors, then the most free CPU; ties go to the earlier node.
    A node without room now is still chosen if it is the only kind left: the lease waits there."""
    strategy = strategy or {}
    counts = counts or {}
    pending = pending or {}
    if strategy.get("type") == "NODE_AFFINITY":
        n = view.get(strategy["node_id"])
        if n is not None and n.feasible(need):
            return n.node_id
        if not strategy.get("soft"):
            return None
    spread = strategy.get("type") == "SPREAD"
    best = None
    for n in view.alive():
        if not n.feasible(need):
            continue
        taken = pending.get(n.node_id)
        avail = n.available - taken if taken is not None else n.available
        score = (fits(need, avail), -counts.get(n.node_id, 0) if spread else 0, avail.units("CPU"))
        if best is None or score > best[0]:
            best = (score, n.node_id)
    return best[1] if best else None


# --- placement groups: bundle plans ------------------------------------------------------------------
def plan_bundles(bundles, strategy, nodes):
    """Choose a node per bundle, or None when the cluster cannot hold the group now.
    ``bundles``: resource dicts or sets; ``nodes``: {node_id: available (dict or ResourceSet)}.

    STRICT_PACK: all on one node (the one with most room that holds them all).  PACK: the same if
    possible, else fill the nodes already used first.  SPREAD: each bundle on the node used least
    so far.  STRICT_SPREAD: a different node per bundle; largest bundle first on the first node
    that holds it, re-seating earlier bundles when that is the only way to seat a later one."""
    needs = [ResourceSet.request(b) for b in bundles]
    avail = {nid: ResourceSet.from_wire(a) for nid, a in nodes.items()}
    order = sorted(avail)
    if strategy in ("STRICT_PACK", "PACK"):
        total = ResourceSet()
        for b in needs:
            total.add(b)
        for nid in sorted(order, key=lambda n: -avail[n].total_units()):
            if fits(total, avail[nid]):
                return [nid] * len(needs)
        if strategy == "STRICT_PACK":
            return None
    if strategy == "STRICT_SPREAD":
        return _strict_spread(needs, avail, order)
    result, used = [], collections.Counter()
    for b in needs:
        if strategy == "SPREAD":
            candidates = sorted(order, key=lambda n: used[n])            # stable: ties in id order
        else:  # PACK fallback: fill the nodes already used first
            candidates = sorted(order, key=lambda n: n not in used)
        choice = next((n for n in candidates if fits(b, avail[n])), None)
        if choice is None:
            return None
        avail[choice].subtract(b)
        used[choice] += 1
        result.append(choice)
    return result


def _strict_spread(needs, avail, order):
    """One bundle per node: a bipartite matching of bundles to nodes that can hold them (greedy
    first, then augmenting paths, so a group is refused only when no assignment exists)."""
    if len(needs) > len(order):
        return None
    seat = {}                                   # node -> bundle index

    def augment(i, seen):
        for n in order:
            if n in seen or not fits(needs[i], avail[n]):
                continue
            seen.add(n)
            if n not in seat or augment(seat[n], seen):
                seat[n] = i
                return True
        return False

    for i in sorted(range(len(needs)), key=lambda i: -needs[i].total_units()):
        free = next((n for n in order if n not in seat and fits(needs[i], avail[n])), None)
        if free is not None:
            seat[free] = i
        elif not augment(i, set()):
            return None
    result = [None] * len(needs)
    for n, i in seat.items():
        result[i] = n
    return result


BUNDLE_MARKER = 1000 * UNIT     # ``bundle_group_*``: lets any number of zero-resource tasks into a bundle


def group_resources(bundle: ResourceSet, index: int, pg_hex: str) -> ResourceSet:
    """What a committed bundle adds to its node: each resource renamed for the bundle
    (``CPU_group_<i>_<pg>``) and for the group (``CPU_group_<pg>``), plus the bundle markers."""
    out = {}
    for k, u in bundle.units_by_name.items():
        if u <= 0:
            continue
        for name in (f"{k}_group_{index}_{pg_hex}", f"{k}_group_{pg_hex}"):
            out[name] = out.get(name, 0) + u
    out[f"bundle_group_{index}_{pg_hex}"] = BUNDLE_MARKER
    out[f"bundle_group_{pg_hex}"] = BUNDLE_MARKER
    return ResourceSet(out)
