"""A policy takes effect from its effective time (event time), and naming a time moves no clock.

A policy published for later used to apply at once and move the pool's clock
to its time: at the next tick every agent had missed its heartbeats.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.core import (
    DEFAULT_POLICY,
    AgentStatusKind,
    Event,
    Outcome,
    PolicyChanged,
    PoolState,
)
from dispatcher.worker.fold import PartitionFold
from tests.unit.core.builders import arrive, available, register, status, tick

DAY = 86_400_000


def policy(version: int, at: int) -> PolicyChanged:
    return PolicyChanged(at, replace(DEFAULT_POLICY, version=version))


def working_pool(capacity: int = 1) -> PoolState:
    s = PoolState("p")
    for e in (register("a1", time_ms=1_000, capacity=capacity), available("a1", time_ms=1_000)):
        s.apply(e)
    (d,) = s.apply(arrive("L1", time_ms=1_500))
    assert (d.outcome, d.policy_version) == (Outcome.ASSIGNED, 0)
    return s


def test_a_policy_for_later_waits_for_its_time_and_moves_no_clock() -> None:
    s = working_pool()
    assert s.apply(policy(2, 1_500 + DAY)) == []
    assert (s.now_ms, s.policy.version) == (1_500, 0)
    assert s.apply(tick(2_000)) == []  # the agent is not lost
    (queued,) = s.apply(arrive("L2", time_ms=2_100))  # capacity 1: waits, under version 0
    assert (queued.outcome, queued.policy_version) == (Outcome.QUEUED, 0)
    s.apply(tick(1_500 + DAY - 1))
    assert s.policy.version == 0
    s.apply(tick(1_500 + DAY))
    assert s.policy.version == 2
    (d,) = s.apply(arrive("L3", time_ms=1_500 + DAY + 1))
    assert d.policy_version == 2


def test_a_policy_whose_time_has_come_applies_at_once_and_drains() -> None:
    s = working_pool(capacity=2)
    (queued,) = s.apply(arrive("L2", time_ms=1_600, required=frozenset({"cobol"})))
    assert (queued.outcome, queued.reason) == (Outcome.QUEUED, "NO_CANDIDATE")
    lenient = replace(DEFAULT_POLICY, version=3, disabled_constraints=frozenset({"capability"}))
    (d,) = s.apply(PolicyChanged(1_000, lenient))
    assert (d.outcome, d.load_id, d.policy_version, d.time_ms) == (Outcome.ASSIGNED, "L2", 3, 1_600)


def test_a_scheduled_policy_a_newer_version_overtook_changes_nothing() -> None:
    s = working_pool()
    s.apply(policy(2, 5_000))
    s.apply(policy(3, 1_500))  # due now
    assert s.policy.version == 3
    s.apply(tick(6_000))
    assert s.policy.version == 3
    assert s.scheduled == []


def test_a_pool_that_appears_later_gets_the_policies_at_their_times() -> None:
    fold = PartitionFold("t", 0, Codec())
    for version, at in ((2, 1_000), (3, DAY), (4, DAY), (4, DAY)):  # 4 makes 3 moot; a copy
        fold.apply_event(m.Tick(pool="p", event_time_ms=0), policy(version, at))
    assert [(p.time_ms, p.policy.version) for p in fold.policies] == [(1_000, 2), (DAY, 4)]  # type: ignore[attr-defined]
    for pool, at, version in (("q", 2_000, 2), ("r", DAY, 4)):  # (an agent: the pool stays)
        fold.apply_event(m.Tick(pool=pool, event_time_ms=at), register("a", time_ms=at))
        assert fold.pools[pool].policy.version == version
    fold.apply_event(m.Tick(pool="q", event_time_ms=DAY), tick(DAY))
    assert fold.pools["q"].policy.version == 4


@pytest.mark.parametrize("then", ["offline", "smaller", "lost"])
def test_a_policy_that_comes_due_with_an_event_serves_the_queue_after_it(then: str) -> None:
    """Before, the loads a policy let go were served before the event that brought the
    policy's time was applied: to an agent that event took offline, lost at that tick, or
    whose new profile had no room left (one over its capacity)."""
    s = working_pool(capacity=2)  # a1 runs L1
    (waits,) = s.apply(arrive("L2", time_ms=1_600, required=frozenset({"gpu"})))  # a1 has none
    assert waits.outcome is Outcome.QUEUED
    loose = replace(DEFAULT_POLICY, version=2, disabled_constraints=frozenset({"capability"}))
    s.apply(PolicyChanged(5_000, loose))  # lets L2 go to a1, from then on
    events: dict[str, Event] = {
        "offline": status("a1", AgentStatusKind.OFFLINE, seq=3, time_ms=5_000),
        "smaller": register("a1", seq=3, time_ms=5_000, capacity=1),
        "lost": tick(5_000 + DEFAULT_POLICY.heartbeat_timeout_ms),
    }
    event = events[then]
    if then != "lost":
        s.apply(status("a1", AgentStatusKind.HEARTBEAT, seq=2, time_ms=4_999))  # (not lost)
    out = s.apply(event)
    assert s.policy.version == 2
    assert [d for d in out if d.load_id == "L2" and d.outcome is Outcome.ASSIGNED] == []
    t = s.agents
    assert int(t.active[t.row["a1"]]) <= int(t.capacity[t.row["a1"]])
