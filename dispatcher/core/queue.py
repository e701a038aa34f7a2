"""The order of service: strict classes, weighted fair share, urgency, arrival.

Per class and tenant, loads wait in a heap keyed by their latest start
(deadline minus duration, which does not move with time; no deadline sorts
last) and then arrival order. Critical loads are served first, across
tenants; below critical, the tenant with the least weighted service goes
first and then its most important load (policy ``tenant_first``, the
default), or classes stay strict across tenants. Tenant ties go by name. A
load whose latest start has come moves up one class, once (critical is the
top); moved loads wait in a second heap of their new class, so each load is
looked at once when it moves, and one heap of the loads below critical with a
deadline, by latest start, says which are due (a pass over every tenant's heaps
at every event cost 0.5 ms with 1,000 tenants waiting). Entries of loads that
left the queue are skipped when they surface (lazy deletion). So are those of
the tenants, which wait in a heap by service per group of classes served
together, and are put right when they surface (served since, or with no load
left there): the choice of a tenant costs O(log tenants) (with a look at every
tenant, and the dispatcher's own, a task result cost 0.3 ms with 1,000 tenants
waiting, 3.4 ms with 10,000).

Loads wait in lanes: the main one, and lanes the caller opens for loads to be
passed over until it reopens them (``hold``: the dispatcher holds there the
loads of a kind no open agent can take, until an agent of that kind changes).
The loads of the open lanes are served together, in the one order above.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Container, Hashable, Mapping

__all__ = ["ServiceQueue", "latest_start"]

_Entry = tuple[float, int, str]  # (latest start, arrival seq, load id)
_Place = tuple[int, str, bool, Hashable]  # (class, tenant, moved up, lane; None: the main one)
# Per group of classes served together: a heap of (service, tenant), one entry per tenant
# with loads there (the service it had then, or less), and tenant -> its entry's service.
_Order = tuple[list[tuple[float, str]], dict[str, float]]
# The classes served together, in turn: critical, then the rest by tenant or class by class.
_TENANT_FIRST = ((0,), (1, 2, 3))
_STRICT = ((0,), (1,), (2,), (3,))
_CRITICAL = ((0,),)
# A lane reopened with more loads than this stays a lane of its own, served with the main
# one; one with fewer goes back into it (in a surge, ~200 kinds reopened with 1-15 loads
# each: every pop looked at each lane).
_KEPT_OPEN = 64
_SPARE = 64  # empty lanes kept for reuse
# Tenants with loads in a group of classes from which they are kept in a heap by service
# (``_least``; fewer are looked at one by one, until more than this wait there again).
_RANKED_FROM = 16


def latest_start(deadline_ms: int | None, duration_ms: int) -> float:
    """When a load must start to meet its deadline (infinity without one)."""
    return math.inf if deadline_ms is None else float(deadline_ms - duration_ms)


class _Lane:
    """One lane's heaps ([moved up?][class] -> tenant -> heap) and live loads (class ->
    tenant -> how many; so choosing a tenant scans no heap)."""

    __slots__ = ("count", "heaps", "size", "tag")

    def __init__(self, tag: object = None) -> None:
        self.tag = tag
        self.heaps: tuple[list[dict[str, list[_Entry]]], ...] = (
            [{} for _ in range(4)],
            [{} for _ in range(4)],
        )
        self.count: list[dict[str, int]] = [{} for _ in range(4)]
        self.size = 0


class ServiceQueue:
    """Pending loads in the order they are served."""

    def __init__(self) -> None:
        main = _Lane()
        self._lanes: dict[Hashable, _Lane] = {None: main}
        self._open: dict[Hashable, _Lane] = {None: main}  # the lanes served, main first
        self._closed: dict[Hashable, object] = {}  # lane -> the tag ``hold`` was given
        self._spare: list[_Lane] = []
        self._where: dict[str, _Place] = {}
        self._moved: set[str] = set()
        self._seq: dict[str, int] = {}  # load id -> the seq it was pushed with (ids come back)
        # The entries of loads below critical with a latest start, pushed to their own
        # class, by latest start: ``escalate`` moves up those due.
        self._due: list[_Entry] = []
        # The tenants in order of service, per group of classes (``_least``), and the service
        # they are ranked by (the mapping ``pop`` was given: another one ranks them anew).
        self._order: dict[tuple[int, ...], _Order] = {}
        self._by: Mapping[str, float] | None = None

    def _add(self, key: Hashable, lane: _Lane, cls: int, tenant: str, delta: int) -> None:
        counts = lane.count[cls]
        left = counts.get(tenant, 0) + delta
        lane.size += delta
        if left:
            counts[tenant] = left
            if left == delta and self._order and key in self._open:  # (its first load here)
                self._rank(cls, tenant)
        else:  # no live entry of the tenant's in this class: its heaps go, stale entries too
            counts.pop(tenant, None)
            lane.heaps[False][cls].pop(tenant, None)
            lane.heaps[True][cls].pop(tenant, None)
            if not lane.size and key is not None:  # (a lane opened for loads goes with them)
                self._drop(key)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, load_id: str) -> bool:
        return load_id in self._where

    def push(  # noqa: PLR0917 - the entry's parts, and the lane
        self, load_id: str, tenant: str, priority: int, seq: int, start: float,
        lane: Hashable = None,
    ) -> None:  # fmt: skip
        """Adds a load to the main lane (or to ``lane``, one ``hold`` opened)."""
        into, moved = self._lanes[lane], load_id in self._moved
        cls = priority - 1 if moved else priority
        entry = (start, seq, load_id)
        heapq.heappush(into.heaps[moved][cls].setdefault(tenant, []), entry)
        self._where[load_id] = (cls, tenant, moved, lane)
        self._seq[load_id] = seq
        self._add(lane, into, cls, tenant, 1)
        if not moved and cls and start != math.inf:
            heapq.heappush(self._due, entry)
            if len(self._due) > 2 * len(self._where) + 64:  # (entries of loads gone since)
                live = {e for e in self._due if self._native(e)}  # (one per load)
                self._due = sorted(live)  # (sorted: a heap)

    def hold(  # noqa: PLR0917 - push's arguments, and the lane's tag
        self, load_id: str, tenant: str, priority: int, seq: int, start: float,
        lane: Hashable, tag: object,
    ) -> None:  # fmt: skip
        """Adds a load to ``lane`` (not None), which is closed (passed over) until
        ``reopen``; a lane opened anew keeps ``tag`` (``closed``)."""
        if lane not in self._lanes:
            self._lanes[lane] = self._spare.pop() if self._spare else _Lane()
            self._lanes[lane].tag = tag
        self._open.pop(lane, None)
        self._closed[lane] = self._lanes[lane].tag
        self.push(load_id, tenant, priority, seq, start, lane)

    def closed(self) -> Mapping[Hashable, object]:
        """The closed lanes that hold loads, and their tags."""
        return self._closed

    def reopen(self, lane: Hashable) -> None:
        """Serves the loads of a closed ``lane`` again, in order with the others (a few go
        back into the main lane: each open lane costs every ``pop`` a look)."""
        if lane not in self._closed:
            return
        del self._closed[lane]
        into = self._lanes[lane]
        if into.size > _KEPT_OPEN:
            self._open[lane] = into
            for cls, counts in enumerate(into.count):
                for tenant in counts:
                    self._rank(cls, tenant)
            return
        main = self._lanes[None]
        for moved, by_class in enumerate(into.heaps):
            for cls, heaps in enumerate(by_class):
                for tenant, heap in heaps.items():
                    place = (cls, tenant, bool(moved), lane)
                    for entry in heap:
                        if self._live(entry, place):
                            heapq.heappush(main.heaps[moved][cls].setdefault(tenant, []), entry)
                            self._where[entry[2]] = (cls, tenant, bool(moved), None)
                            self._add(None, main, cls, tenant, 1)
                heaps.clear()
        for counts in into.count:
            counts.clear()
        into.size = 0
        self._drop(lane)

    def _drop(self, key: Hashable) -> None:
        """Forgets an empty lane (kept for the next one: lanes come and go at every event)."""
        lane = self._lanes.pop(key)
        self._open.pop(key, None)
        self._closed.pop(key, None)
        if len(self._spare) < _SPARE:
            lane.tag = None
            self._spare.append(lane)

    def next_due(self) -> float:
        """When ``escalate`` may next move a load up (infinity: none waits for that; an
        entry of a load gone since may make it early)."""
        return self._due[0][0] if self._due else math.inf

    def holds(self) -> bool:
        """Whether loads wait in lanes other than the main one (a lane goes with its last)."""
        return len(self._lanes) > 1

    def held(self) -> list[str]:
        """The loads in lanes other than the main one, open or closed."""
        out: dict[str, None] = {}
        for key, lane in self._lanes.items():
            if key is None:
                continue
            for moved, by_class in enumerate(lane.heaps):
                for cls, heaps in enumerate(by_class):
                    for tenant, heap in heaps.items():
                        place = (cls, tenant, bool(moved), key)
                        out.update((e[2], None) for e in heap if self._live(e, place))
        return list(out)

    def lane(self, load_id: str) -> Hashable:
        """The lane ``load_id`` waits in (None: the main one, or it does not wait)."""
        place = self._where.get(load_id)
        return None if place is None else place[3]

    def escalated(self, load_id: str) -> bool:
        """Whether ``load_id`` was moved up a class (its latest start came) since it was
        pushed."""
        return load_id in self._moved

    def discard(self, load_id: str) -> None:
        """Forgets a load for good; its heap entry is skipped when it surfaces, or dropped
        with the others once they are most of its heap."""
        self.take(load_id)
        self._moved.discard(load_id)

    def take(self, load_id: str) -> None:
        """Takes a load out, as ``pop`` does (pushed again, it keeps the class it moved up
        to); its heap entry is skipped when it surfaces."""
        place = self._where.pop(load_id, None)
        self._seq.pop(load_id, None)
        if place is not None:
            cls, tenant, _, key = place
            self._add(key, self._lanes[key], cls, tenant, -1)
            self._compact(key, cls, tenant)

    def _compact(self, key: Hashable, cls: int, tenant: str) -> None:
        """Drops the entries of loads gone from ``tenant``'s heaps of class ``cls`` once they
        outnumber the live ones (a tenant that always has loads waiting never empties its
        heaps: the entries of its evicted and cancelled loads stayed, ids and all, 110k
        entries for 10k live loads after 100k evictions)."""
        lane = self._lanes.get(key)
        if lane is None:  # (gone with its last load)
            return
        live = lane.count[cls].get(tenant, 0)
        for moved in (False, True):
            heap = lane.heaps[moved][cls].get(tenant)
            if heap is not None and len(heap) > 2 * live + 64:
                place = (cls, tenant, moved, key)
                heap[:] = [e for e in heap if self._live(e, place)]
                heapq.heapify(heap)

    def _native(self, entry: _Entry) -> bool:
        """Whether ``entry``'s load waits, below critical, in the class it was pushed to
        (and is the load the entry was pushed for: an id seen again is a new load)."""
        place = self._where.get(entry[2])
        return place is not None and place[0] > 0 and not place[2] and self._live(entry, place)

    def _live(self, entry: _Entry, place: _Place) -> bool:
        """Whether ``entry`` is that of a load waiting at ``place`` (an id seen again is a
        new load: the seq tells them apart)."""
        return self._where.get(entry[2]) == place and self._seq.get(entry[2]) == entry[1]

    def escalate(self, now_ms: int) -> None:
        """Moves up one class every load whose latest start has come (closed lanes too)."""
        due = self._due
        while due and due[0][0] <= now_ms:
            entry = heapq.heappop(due)
            load_id = entry[2]
            if not self._native(entry):
                continue  # gone, moved up already, or an older entry of it
            cls, tenant, _, key = self._where[load_id]
            lane = self._lanes[key]
            # (its entry in its class's heap stays, stale, until it surfaces or is compacted)
            self._moved.add(load_id)
            heapq.heappush(lane.heaps[True][cls - 1].setdefault(tenant, []), entry)
            self._where[load_id] = (cls - 1, tenant, True, key)
            self._add(key, lane, cls - 1, tenant, 1)  # (first: the lane stays)
            self._add(key, lane, cls, tenant, -1)
            self._compact(key, cls, tenant)  # (its native entry, stale now, is dropped in time)

    def pop(  # noqa: PLR0912 - the look at a few tenants is inline: most pops make it
        self,
        served: Mapping[str, float],
        *,
        tenant_first: bool = True,
        critical_only: bool = False,
        skip: Container[str] = frozenset(),
    ) -> str | None:
        """Removes and returns the next load to serve from the open lanes, or None when none
        waits there.

        Critical loads always go first, across tenants. Below that, with
        ``tenant_first`` the least-served tenant is chosen first and then its
        most important load (one tenant's flood cannot starve another's lower
        classes); without it, classes are strict across tenants too. Tenants
        tie by name. ``served`` (a tenant's service; 0 if missing) may only
        grow from one pop to the next given the same mapping: the tenants are
        kept ranked by it (another mapping ranks them anew).
        """
        if not self._where:
            return None
        if served is not self._by:
            self._order.clear()
            self._by = served
        groups = _CRITICAL if critical_only else _TENANT_FIRST if tenant_first else _STRICT
        for classes in groups:
            order = self._order.get(classes) if self._order else None
            if order is not None and len(order[1]) > 2 * len(self._where) + 64:
                del self._order[classes]  # (most of its entries are of tenants gone: anew)
                order = None
            if order is not None:
                tenant = self._least(classes, served, skip)
            else:  # (each looked at: a few cost less so than a heap kept; many are ranked)
                live: set[str] = set()
                for lane in self._open.values():
                    for cls in classes:
                        live.update(lane.count[cls])
                if len(live) > _RANKED_FROM:
                    tenant = self._least(classes, served, skip, live)
                else:
                    live = {t for t in live if t not in skip} if skip else live
                    if len(live) == 1:
                        (tenant,) = live
                    else:
                        tenant = min(live, key=lambda t: (served.get(t, 0.0), t), default=None)
            if tenant is None:
                continue
            for cls in classes:
                found = self._first(tenant, cls)
                if found is None:
                    continue
                head, heap, key, lane = found
                heapq.heappop(heap)
                load_id = head[2]
                del self._where[load_id]
                del self._seq[load_id]
                self._add(key, lane, cls, tenant, -1)
                return load_id
        return None

    def _least(
        self, classes: tuple[int, ...], served: Mapping[str, float], skip: Container[str],
        live: set[str] | None = None,
    ) -> str | None:  # fmt: skip
        """The tenant with loads of ``classes`` in the open lanes that was served least
        (``served``; ties by name), of those not in ``skip``, from the heap of the
        group (made of ``live``, the tenants with loads there, if there is none)."""
        if live is not None:
            at = {t: served.get(t, 0.0) for t in live}
            heap = [(v, t) for t, v in at.items()]
            heapq.heapify(heap)
            self._order[classes] = (heap, at)
        heap, at = self._order[classes]
        if len(at) <= _RANKED_FROM // 4:  # (few left: looked at one by one again after)
            del self._order[classes]
        passed, found = [], None
        while heap:
            value, tenant = heap[0]
            if not any(tenant in lane.count[c] for lane in self._open.values() for c in classes):
                heapq.heappop(heap)  # (none of its loads waits there now)
                del at[tenant]
            elif (now := served.get(tenant, 0.0)) != value and not math.isnan(now):
                heapq.heapreplace(heap, (now, tenant))  # (served since: ranked again)
                at[tenant] = now
            elif tenant in skip:
                passed.append(heapq.heappop(heap))
            else:
                found = tenant
                break
        for entry in passed:
            heapq.heappush(heap, entry)
        return found

    def _rank(self, cls: int, tenant: str) -> None:
        """Ranks ``tenant``, which has loads of class ``cls`` in an open lane now, in the
        orders of the groups of classes with ``cls`` (below all: ``_least`` finds its place
        when it surfaces)."""
        for classes, (heap, at) in list(self._order.items()):
            if cls in classes and tenant not in at:
                if len(at) > 2 * len(self._where) + 64:  # (of tenants gone, most: a group no
                    del self._order[classes]  # pop looks at, or none pops: made anew if asked)
                    continue
                at[tenant] = -math.inf
                heapq.heappush(heap, (-math.inf, tenant))

    def _first(self, tenant: str, cls: int) -> tuple[_Entry, list[_Entry], Hashable, _Lane] | None:
        """The entry of ``tenant``'s next load of class ``cls`` in the open lanes, the heap
        it heads, and its lane."""
        best: tuple[_Entry, list[_Entry], Hashable, _Lane] | None = None
        for key, lane in self._open.items():
            if tenant not in lane.count[cls]:
                continue  # (none of its loads waits there: it has no heaps there)
            for moved in (False, True):
                heap = lane.heaps[moved][cls].get(tenant)
                if not heap:
                    continue
                head = self._head(heap, (cls, tenant, moved, key))
                if head is not None and (best is None or head < best[0]):
                    best = (head, heap, key, lane)
        return best

    def _head(self, heap: list[_Entry], place: _Place) -> _Entry | None:
        while heap and not self._live(heap[0], place):
            heapq.heappop(heap)
        return heap[0] if heap else None
