"""The service queue on its own: classes, escalation once, fair share, lazy deletion."""

from __future__ import annotations

import math

from dispatcher.core.queue import ServiceQueue


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
    heap = q._heaps[False][2]["acme"]
    assert len(heap) <= 2 * 100 + 64 + 1
    assert [q.pop({}) for _ in range(100)] == [f"keep{i}" for i in range(100)]
    assert q.pop({}) is None
