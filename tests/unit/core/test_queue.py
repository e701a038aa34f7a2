"""The service queue on its own: classes, escalation once, fair share, lazy deletion."""

from __future__ import annotations

import math
import random

import pytest

from dispatcher.core import (
    Decision,
    Event,
    LoadCancelled,
    Outcome,
    Policy,
    PoolState,
    Priority,
    TaskOutcome,
    queue,
)
from dispatcher.core.queue import ServiceQueue
from tests.unit.core import builders as b


def drain(
    q: ServiceQueue, served: dict[str, float] | None = None, *, tenant_first: bool = True
) -> list[str]:
    out = []
    while (load_id := q.pop(served or {}, tenant_first=tenant_first)) is not None:
        out.append(load_id)
    return out


def test_classes_first_then_latest_start_then_arrival() -> None:
    q = ServiceQueue()
    q.push("low", "t", 3, 0, math.inf)
    q.push("normal-late", "t", 2, 1, math.inf)
    q.push("normal-urgent", "t", 2, 2, 500.0)
    q.push("crit", "t", 0, 3, math.inf)
    assert drain(q) == ["crit", "normal-urgent", "normal-late", "low"]


def test_a_load_past_its_latest_start_moves_up_one_class_once() -> None:
    q = ServiceQueue()
    q.push("high", "t", 1, 0, math.inf)
    q.push("low-urgent", "t", 3, 1, 100.0)
    q.escalate(50)
    assert drain(q) == ["high", "low-urgent"]  # not yet
    q.push("high", "t", 1, 0, math.inf)
    q.push("low-urgent", "t", 3, 1, 100.0)
    q.escalate(100)
    q.escalate(10_000)  # a second call does not move it again
    assert drain(q) == ["high", "low-urgent"]  # LOW -> NORMAL only, still after HIGH
    q.push("normal", "t", 2, 2, math.inf)
    q.push("low-urgent", "t", 3, 1, 100.0)  # pushed back after a failed match: stays moved up
    assert drain(q) == ["low-urgent", "normal"]  # same class now; the earlier latest start first


def test_least_served_tenant_first_and_names_break_ties() -> None:
    q = ServiceQueue()
    for i in range(2):
        q.push(f"a{i}", "a", 2, i, math.inf)
        q.push(f"b{i}", "b", 2, 10 + i, math.inf)
    assert q.pop({"a": 3.0, "b": 1.0}) == "b0"
    assert q.pop({"a": 1.0, "b": 1.0}) == "a0"


def test_discarded_loads_are_skipped() -> None:
    q = ServiceQueue()
    q.push("x", "t", 2, 0, math.inf)
    q.push("y", "t", 2, 1, math.inf)
    q.discard("x")
    assert "x" not in q
    assert len(q) == 1
    assert drain(q) == ["y"]


def test_below_critical_the_least_served_tenant_goes_first_unless_classes_are_strict() -> None:
    def fill() -> ServiceQueue:
        q = ServiceQueue()
        q.push("flood-crit", "flood", 0, 0, math.inf)
        q.push("flood-high", "flood", 1, 1, math.inf)
        q.push("small-low", "small", 3, 2, math.inf)
        return q

    served = {"flood": 50.0, "small": 1.0}
    assert drain(fill(), served) == ["flood-crit", "small-low", "flood-high"]
    assert drain(fill(), served, tenant_first=False) == ["flood-crit", "flood-high", "small-low"]


def test_tenants_at_their_quota_are_passed_over() -> None:
    q = ServiceQueue()
    q.push("a", "full", 0, 0, math.inf)
    q.push("b", "free", 3, 1, math.inf)
    assert q.pop({}, skip=frozenset({"full"})) == "b"
    assert q.pop({}, skip=frozenset({"full"})) is None
    assert q.pop({}) == "a"


def test_the_entries_of_loads_gone_do_not_pile_up_while_their_tenant_has_loads_waiting() -> None:
    q = ServiceQueue()
    for i in range(100):
        q.push(f"keep{i}", "acme", 2, i, math.inf)
    for i in range(10_000):  # in and out again, as evicted or cancelled loads are
        q.push(f"gone{i}", "acme", 2, 100 + i, math.inf)
        q.discard(f"gone{i}")
    heap = q._lanes[None].heaps[False][2]["acme"]
    assert len(heap) <= 2 * 100 + 64 + 1
    assert [q.pop({}) for _ in range(100)] == [f"keep{i}" for i in range(100)]
    assert q.pop({}) is None


class _Model:
    """The order of service, spelled out over a plain list (what ServiceQueue does with
    heaps, counts, lanes and lazy deletion)."""

    def __init__(self) -> None:
        self.loads: dict[str, tuple[int, str, tuple[float, int, str]]] = {}  # id -> class, ...
        self.moved: set[str] = set()
        self.lane: dict[str, str] = {}  # load id -> the lane it was held in (else the main one)
        self.closed: set[str] = set()

    def push(self, load_id: str, tenant: str, priority: int, seq: int, start: float) -> None:
        cls = priority - 1 if load_id in self.moved else priority
        self.loads[load_id] = (cls, tenant, (start, seq, load_id))
        self.lane.pop(load_id, None)

    def hold(  # noqa: PLR0917 - as ServiceQueue.hold
        self, load_id: str, tenant: str, priority: int, seq: int, start: float,
        lane: str,
    ) -> None:  # fmt: skip
        self.push(load_id, tenant, priority, seq, start)
        self.lane[load_id] = lane
        self.closed.add(lane)

    def reopen(self, lane: str, kept_open: int) -> None:
        self.closed.discard(lane)
        mine = [i for i, held in self.lane.items() if held == lane]
        if len(mine) <= kept_open:  # (back into the main lane)
            for load_id in mine:
                del self.lane[load_id]

    def discard(self, load_id: str) -> None:
        self.loads.pop(load_id, None)
        self.moved.discard(load_id)
        self.lane.pop(load_id, None)

    def escalate(self, now_ms: int) -> None:
        for load_id, (cls, tenant, entry) in list(self.loads.items()):
            if cls and load_id not in self.moved and entry[0] <= now_ms:
                self.moved.add(load_id)
                self.loads[load_id] = (cls - 1, tenant, entry)

    def pop(self, served: dict[str, float], *, tenant_first: bool, critical_only: bool,
            skip: frozenset[str]) -> str | None:  # fmt: skip
        groups = [(0,)] if critical_only else [(0,), (1, 2, 3)] if tenant_first else [
            (0,), (1,), (2,), (3,)]  # fmt: skip
        shown = {i: v for i, v in self.loads.items() if self.lane.get(i) not in self.closed}
        for classes in groups:
            live = {t for c, t, _ in shown.values() if c in classes} - skip
            if not live:
                continue
            tenant = min(live, key=lambda t: (served.get(t, 0.0), t))
            for cls in classes:
                mine = [e for c, t, e in shown.values() if c == cls and t == tenant]
                if mine:
                    load_id = min(mine)[2]
                    del self.loads[load_id]
                    self.lane.pop(load_id, None)
                    return load_id
        return None


def _another(rng: random.Random, served: dict[str, float], tenants: list[str]) -> dict[str, float]:
    return dict(served) if rng.random() < 0.5 else dict.fromkeys(tenants, 0.0)


@pytest.mark.parametrize("seed", range(40))
def test_the_queue_serves_in_the_order_its_definition_gives(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random pushes, pops, discards and escalations, with some loads pushed again (as after
    a failed match) or held in lanes that close and reopen, against ``_Model``."""
    rng = random.Random(seed)  # noqa: S311 - a test's reproducible draws
    kept_open = rng.choice([0, 2, 64])  # (lanes reopened go back into the main one, or not)
    monkeypatch.setattr(queue, "_KEPT_OPEN", kept_open)
    # (tenants ranked in a heap from 0, 2 or 16 of them: both ways, and the switches)
    monkeypatch.setattr(queue, "_RANKED_FROM", rng.choice([0, 2, 16]))
    q, model = ServiceQueue(), _Model()
    tenants = [f"t{i}" for i in range(rng.choice([1, 3, 12, 20, 40]))]
    served = dict.fromkeys(tenants[: len(tenants) // 2], 0.0)  # (the others: 0, missing)
    out: list[str] = []
    known: dict[str, tuple[str, int, int, float]] = {}
    gone: set[str] = set()  # discarded for good: their ids may come back as new loads
    now = 0
    for step in range(600):
        r = rng.random()
        if r < 0.4 or not known:
            load_id = f"L{step}"
            args = (rng.choice(tenants), rng.randint(0, 3), step,
                    rng.choice([math.inf, float(now + rng.randint(0, 400))]))  # fmt: skip
            known[load_id] = args
        elif r < 0.5:  # pushed again (popped before), or discarded for good
            load_id = rng.choice(sorted(known))
            if load_id in q or rng.random() < 0.3:
                q.discard(load_id)
                model.discard(load_id)
                gone.add(load_id)
                continue
            if load_id in gone:  # the id again: a new load (after the dedupe window)
                gone.discard(load_id)
                start = rng.choice([math.inf, float(now + rng.randint(0, 400))])
                known[load_id] = (rng.choice(tenants), rng.randint(0, 3), step, start)
            args = known[load_id]
        elif r < 0.65:
            now += rng.randint(0, 120)
            q.escalate(now)
            model.escalate(now)
            continue
        elif r < 0.75:  # held in a lane (as a load of a kind no agent can take), or reopened
            lanes = sorted(str(lane) for lane in q.closed())
            if lanes and rng.random() < 0.4:
                lane = rng.choice(lanes)
                q.reopen(lane)
                model.reopen(lane, kept_open)
                continue
            load_id = rng.choice(sorted(known))
            if load_id in q or load_id in gone:
                continue
            lane = rng.choice(["K1", "K2", "K3"])
            q.hold(load_id, *known[load_id], lane, None)
            model.hold(load_id, *known[load_id], lane)
            assert lane in q.closed()
            continue
        else:
            first, critical = rng.random() < 0.7, rng.random() < 0.1
            skip = frozenset(rng.sample(tenants, rng.randint(0, min(3, len(tenants)))))
            # Now and then another mapping (as a batch's copy, given up after): ranked anew.
            served = _another(rng, served, tenants) if rng.random() < 0.05 else served
            got = q.pop(served, tenant_first=first, critical_only=critical, skip=skip)
            want = model.pop(served, tenant_first=first, critical_only=critical, skip=skip)
            assert got == want, (step, first, critical, skip)
            if got is not None:
                out.append(got)
                tenant = known[got][0]
                served[tenant] = served.get(tenant, 0.0) + rng.choice([0.0, 0.5, 1.0])
            continue
        if load_id not in q:
            q.push(load_id, *args)
            model.push(load_id, *args)
    assert len(out) > 50


def test_the_deadlines_of_loads_gone_do_not_pile_up_and_those_waiting_still_move_up() -> None:
    q = ServiceQueue()
    q.push("waits", "t", 3, 0, 50_000.0)  # LOW, latest start at 50 s
    q.push("other", "t", 2, 1, math.inf)  # NORMAL, no deadline
    for i in range(2, 2_000):  # served long before their latest start
        q.push(f"L{i}", "u", 1, i, 10_000.0 + i)
        assert q.pop({"t": 1.0, "u": 0.0}) == f"L{i}"
        assert len(q._due) <= 2 * (len(q) + 1) + 64  # (entries of loads gone are dropped)
    q.escalate(50_000)
    assert drain(q) == ["waits", "other"]  # LOW moved up to NORMAL, and started earlier


def test_an_id_seen_again_is_a_new_load_that_the_old_ones_deadline_does_not_move() -> None:
    q = ServiceQueue()
    q.push("L1", "a", 2, 1, 99_000.0)  # NORMAL, latest start at 99 s
    q.discard("L1")  # (cancelled)
    q.push("L1", "b", 2, 7, math.inf)  # the id again, after the dedupe window: no deadline
    q.push("L2", "b", 1, 8, math.inf)  # HIGH
    q.escalate(99_500)
    assert not q.escalated("L1")
    assert drain(q) == ["L2", "L1"]


def test_the_entries_loads_leave_behind_when_they_move_up_do_not_pile_up() -> None:
    """A tenant keeps a load waiting in a class for good, and its other loads of that class
    move up and go: the entries they left in the class's heap are dropped."""
    q = ServiceQueue()
    q.push("keep", "t", 2, 0, math.inf)
    for i in range(1, 5_000):
        q.push(f"L{i}", "t", 2, i, float(i))
        q.escalate(i)
        q.discard(f"L{i}")  # (from the class it moved to)
        assert len(q._lanes[None].heaps[False][2]["t"]) <= 2 * 1 + 64 + 1
    assert drain(q) == ["keep"]


def _many_tenants(rng: random.Random) -> list[Event]:
    """Ten busy agents and loads of 40 tenants (some weighted), arriving and finishing."""
    events: list[Event] = [b.register(f"a{i}") for i in range(10)]
    events += [b.available(f"a{i}") for i in range(10)]
    for j in range(400):
        tenant = f"t{rng.randrange(40)}" if rng.random() < 0.8 else f"new{j}"  # (from idle)
        deadline = rng.choice([None, 5_000 + 10 * j])
        events.append(b.arrive(f"L{j}", 10 * j, tenant=tenant, deadline_ms=deadline,
                               priority=Priority(rng.choice([0, 1, 2, 3, 3]))))  # fmt: skip
    return events


@pytest.mark.parametrize("seed", range(3))
def test_a_pool_ranks_many_tenants_as_it_would_look_at_each(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same events give the same decisions with the queue's tenants ranked in heaps
    from the first one (0) as with each looked at; the least service among the tenants
    waiting (where one back from idle starts) is theirs, looked at one by one."""
    policy = Policy(high_watermark=30, tenant_weights={"t3": 2.0, "t7": 0.5})

    def run(ranked_from: int) -> list[tuple[object, ...]]:
        monkeypatch.setattr(queue, "_RANKED_FROM", ranked_from)
        rng = random.Random(seed)  # noqa: S311 - a test's reproducible draws
        state = PoolState("p", policy)
        out: list[tuple[object, ...]] = []
        flight: list[Decision] = []
        for event in _many_tenants(rng):
            decided = state.apply(event)
            flight += [d for d in decided if d.outcome is Outcome.ASSIGNED]
            if flight and rng.random() < 0.6:  # (a result frees an agent)
                d = flight.pop(0)
                done = b.report(d.decision_id, d.load_id, str(d.agent_id), TaskOutcome.SUCCESS,
                                time_ms=event.time_ms)  # fmt: skip
                decided += state.apply(done)
                flight += [x for x in decided[-1:] if x.outcome is Outcome.ASSIGNED]
            out += [(d.decision_id, d.outcome, d.reason, d.agent_id) for d in decided]
            waits = [t for t, n in state.backlog.items() if n > state.stuck.get(t, 0)]
            if waits:
                assert state._least_served() == min(state.served.get(t, 0.0) for t in waits)
        return out

    ranked, looked = run(0), run(10**9)
    assert ranked == looked
    assert sum(1 for _, outcome, _, _ in ranked if outcome is Outcome.ASSIGNED) > 100


def test_the_rankings_of_tenants_gone_do_not_pile_up() -> None:
    """Tenants whose loads were cancelled while others waited (their entries never surface:
    they rank above the tenants still waiting) are dropped once they are most of a ranking,
    in the queue and in the pool."""
    q, served = ServiceQueue(), {}
    for k in range(20):  # (ranked in a heap: more than _RANKED_FROM tenants)
        q.push(f"s{k}", f"stays{k}", 2, k, math.inf)
    state = PoolState("p", Policy(high_watermark=10**6, max_pending=10**6))
    state.apply(b.register("a"))
    state.apply(b.available("a"))
    state.apply(b.arrive("busy"))  # (the only agent's)
    state.apply(b.arrive("waits", tenant="stays"))
    for i in range(5_000):
        q.push(f"g{i}", f"gone{i}", 2, 100 + i, math.inf)
        served[f"gone{i}"] = 1.0 + i  # (served more than the others: never at the top)
        load_id = q.pop(served)
        assert load_id is not None
        assert load_id.startswith("s")
        q.push(load_id, f"stays{load_id[1:]}", 2, 100 + i, math.inf)  # (back in line)
        q.discard(f"g{i}")
        state.served[f"gone{i}"] = 1.0 + i
        state.apply(b.arrive(f"L{i}", tenant=f"gone{i}"))  # (back from idle: ranked)
        state.apply(LoadCancelled(b.key(), 0, f"L{i}"))
        assert len(q._order[1, 2, 3][1]) <= 2 * (len(q) + 1) + 64 + 1  # (as at its last pop)
        assert state.ranked is not None
        assert len(state.ranked) <= 2 * len(state.backlog) + 64 + 1


def test_the_rankings_of_tenants_gone_stay_bounded_while_nothing_pops() -> None:
    """(As with no agent free, or with a group of classes the policy no longer serves
    together: a review saw 20,020 entries for 19 loads waiting.)"""
    q = ServiceQueue()
    for k in range(20):
        q.push(f"s{k}", f"stays{k}", 2, k, math.inf)
    q.push("first", "first", 2, 20, math.inf)
    assert q.pop({"first": -1.0}) == "first"  # (ranked: 21 tenants)
    for i in range(5_000):
        q.push(f"g{i}", f"gone{i}", 2, 100 + i, math.inf)
        q.discard(f"g{i}")
        ranked = q._order.get((1, 2, 3), ([], {}))
        assert len(ranked[1]) <= 2 * (len(q) + 1) + 64 + 1  # (as at its last push)
        assert len(ranked[0]) == len(ranked[1])
