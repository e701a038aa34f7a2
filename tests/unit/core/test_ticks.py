"""A pool wants a tick only when one can change something (``PoolState.wants_tick``): the
worker ticks no other, and every tick is a record of the input sequence.

Before, every pool with an agent available or a load in flight was ticked five times a
second: 300 pools of idle agents made 1,500 ticks a second.
"""

from __future__ import annotations

import copy
import random
from typing import Literal

import pytest

from dispatcher.core import (
    AgentStatusKind,
    Decision,
    Event,
    LoadCancelled,
    Outcome,
    Policy,
    PolicyChanged,
    PoolState,
    Priority,
    TaskOutcome,
)
from tests.unit.core.builders import arrive, available, register, report, status, tick

POLICY = Policy(version=1, heartbeat_timeout_ms=500, ack_timeout_ms=300,
                dedupe_window_ms=2_000, forget_departed_ms=1_000)  # fmt: skip


def _pool() -> PoolState:
    state = PoolState("p")
    state.apply(PolicyChanged(0, POLICY))
    return state


def test_idle_agents_that_speak_want_no_tick_until_one_falls_silent() -> None:
    state = _pool()
    for i, agent in enumerate(("a", "b")):
        state.apply(register(agent, time_ms=0))
        state.apply(available(agent, time_ms=10 + i))
    state.apply(status("a", AgentStatusKind.HEARTBEAT, seq=3, time_ms=2_200))
    state.apply(status("b", AgentStatusKind.HEARTBEAT, seq=3, time_ms=2_400))
    assert not state.wants_tick(2_700)  # (a tick here was one of 1,500 a second)
    assert state.wants_tick(2_701)  # a's heartbeat is over 500 ms old: lost at this tick
    lost = state.apply(tick(2_701))
    assert lost == []  # (it held nothing) ...
    assert state.agents.available_count == 1  # ... but it is lost
    assert not state.wants_tick(2_900)
    assert state.wants_tick(2_901)  # b's turn


def test_a_load_in_flight_wants_a_tick_for_its_ack_and_its_agents_heartbeat_only() -> None:
    state = _pool()
    state.apply(register("a", time_ms=0))
    state.apply(available("a", time_ms=0))
    (assigned,) = [d for d in state.apply(arrive("L1", 100)) if d.outcome is Outcome.ASSIGNED]
    assert not state.wants_tick(400)
    assert state.wants_tick(401)  # its ack is due at 400
    state.apply(report(assigned.decision_id, "L1", "a", TaskOutcome.ACCEPTED, time_ms=350))
    assert state.in_flight
    assert state.wants_tick(401)  # (the ack's entry, left for a tick to drop)
    state.apply(tick(401))
    state.apply(status("a", AgentStatusKind.HEARTBEAT, seq=3, time_ms=450))
    assert not state.wants_tick(950)  # running, answered, heard of: nothing is due
    assert state.wants_tick(951)  # a silent past the timeout: its load goes back


def _policy(rng: random.Random, mode: Literal["greedy", "batched"]) -> Policy:
    """A policy whose every time-driven rule a short run can reach."""
    return Policy(
        version=1, mode=mode, batch_window_ms=rng.choice((20, 300)),
        ack_timeout_ms=300, heartbeat_timeout_ms=500, dedupe_window_ms=2_000,
        forget_departed_ms=1_000, affinity_wait_ms=300, hard_affinity=rng.random() < 0.5,
        expire_after_deadline_ms=rng.choice((None, 0, 300)), drain_limit=rng.choice((1, 2, 256)),
        backoff_base_ms=100, backoff_max_ms=400, max_pending=rng.choice((4, 100)),
        high_watermark=2, low_watermark=1,
        tenant_quotas={"acme": 1} if rng.random() < 0.3 else {},
    )  # fmt: skip


def _run(
    seed: int, mode: Literal["greedy", "batched"], every_tick: bool
) -> tuple[list[Decision], int]:
    """A random pool's decisions, given a tick after every event (``every_tick``) or only
    those it wants; and how many ticks it did not want."""
    rng = random.Random(seed)  # noqa: S311 - a test's reproducible draws
    state = PoolState("p")
    state.apply(PolicyChanged(0, _policy(rng, mode)))
    caps = ("py", "go", "sql")
    agents = [f"a{i}" for i in range(rng.randint(1, 4))]
    seq = dict.fromkeys(agents, 1)
    out: list[Decision] = []

    def apply(event: Event) -> None:
        out.extend(state.apply(event))

    def agent_says(agent: str, kind: AgentStatusKind, at: int) -> None:
        seq[agent] += 1
        apply(status(agent, kind, seq=seq[agent], time_ms=at))

    def register_anew(agent: str, at: int) -> None:
        seq[agent] += 1
        apply(register(agent, seq=seq[agent], time_ms=at, capacity=rng.randint(1, 2),
                       capabilities=frozenset(rng.sample(caps, rng.randint(1, 2)))))  # fmt: skip

    for agent in agents:
        register_anew(agent, 0)
        agent_says(agent, AgentStatusKind.AVAILABLE, 0)
    now, unwanted = 0, 0
    for step in range(250):
        now += rng.choice((1, 30, 90, 200, 600))
        roll = rng.random()
        if roll < 0.3:
            agent_says(rng.choice(agents), AgentStatusKind.HEARTBEAT, now)
        elif roll < 0.5:
            deadline = now + rng.choice((200, 1_500)) if rng.random() < 0.5 else None
            apply(arrive(
                f"L{step}", now, tenant=rng.choice(("acme", "globex")),
                priority=Priority(rng.randint(0, 3)), deadline_ms=deadline, duration_ms=100,
                required=frozenset(rng.sample(caps, rng.randint(0, 1))),
                session_id=rng.choice((None, "s1", "s2")),
            ))  # fmt: skip
        elif roll < 0.7:
            given = [d for d in out if d.outcome is Outcome.ASSIGNED]
            if given:
                d = rng.choice(given[-8:])
                outcome = rng.choice(list(TaskOutcome))
                apply(report(d.decision_id, d.load_id, d.agent_id or "", outcome, time_ms=now,
                             retryable=rng.random() < 0.7))  # fmt: skip
        elif roll < 0.75:
            kind = rng.choice((AgentStatusKind.AVAILABLE, AgentStatusKind.OFFLINE,
                               AgentStatusKind.DRAINING))  # fmt: skip
            agent_says(rng.choice(agents), kind, now)
        elif roll < 0.78:
            register_anew(rng.choice(agents), now)
        elif roll < 0.8 and step:
            apply(LoadCancelled(f"c{step}", now, f"L{rng.randrange(step)}"))
        if every_tick or state.wants_tick(now):
            if every_tick and not state.wants_tick(now):
                unwanted += 1
            apply(tick(now))
    return out, unwanted


@pytest.mark.parametrize("seed", range(40))
def test_the_ticks_a_pool_does_not_want_change_no_decision(seed: int) -> None:
    """Random greedy pools with every time-driven rule in reach (timeouts, backoff,
    affinity waits, escalation, expiry, watermarks, quotas, a drain cut short): the same
    decisions with a tick after every event as with only the ticks the pool wants. (Event
    times never go back here; one that did would be decided at its own time.)"""
    every, unwanted = _run(seed, "greedy", every_tick=True)
    wanted, _ = _run(seed, "greedy", every_tick=False)
    assert wanted == every
    assert unwanted  # (some were not wanted: the test compared something)


@pytest.mark.parametrize("seed", range(20))
def test_a_batched_pool_decides_nothing_at_a_tick_it_does_not_want(seed: int) -> None:
    """Batched mode: a tick not wanted decides nothing then (after it, batches may come at
    other times: one with nothing waiting moves the batches' time too)."""
    rng = random.Random(seed)  # noqa: S311 - a test's reproducible draws
    state = PoolState("p")
    state.apply(PolicyChanged(0, _policy(rng, "batched")))
    for i in range(3):
        state.apply(register(f"a{i}", time_ms=0, capacity=2))
        state.apply(available(f"a{i}", time_ms=0))
    now, skipped = 0, 0
    for step in range(200):
        now += rng.choice((1, 30, 90, 200, 600))
        if rng.random() < 0.4:
            state.apply(arrive(f"L{step}", now, deadline_ms=now + 400 if step % 2 else None))
        if not state.wants_tick(now):
            skipped += 1
            assert copy.deepcopy(state).apply(tick(now)) == []
        state.apply(tick(now))
    assert skipped
