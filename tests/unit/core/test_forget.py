"""Departed agents are forgotten: a pool whose agents come and go keeps only the living.

An agent not available (registered only, offline or lost), holding no load, and not
heard of for the policy's ``forget_departed_ms`` is dropped from the agent table once
such agents are an eighth of it (at least 64). The pool then decides exactly as one
that never knew them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from dispatcher.core import (
    AgentStatusKind,
    Decision,
    Event,
    Outcome,
    Policy,
    PolicyChanged,
    PoolState,
    Sensitivity,
    TaskOutcome,
    explain,
)
from tests.unit.core.builders import arrive, available, register, report, status, tick

POLICY = Policy(version=1, forget_departed_ms=1_000, heartbeat_timeout_ms=10**9,
                ack_timeout_ms=10**9)  # fmt: skip
CAPS = ["py", "go", "sql", "rust"]


def _pool() -> PoolState:
    state = PoolState("p")
    state.apply(PolicyChanged(0, POLICY))
    return state


def _agent(rng: random.Random, agent_id: str) -> Event:
    return register(
        agent_id, capabilities=frozenset(rng.sample(CAPS, rng.randint(1, 3))),
        capacity=rng.randint(1, 3), personality=(rng.gauss(0, 1), rng.gauss(0, 1)),
        clearance=Sensitivity(rng.randint(0, 3)), zone=rng.choice(["z0", "z1"]),
        regions=frozenset(rng.sample(["eu", "us"], rng.randint(1, 2))),
    )  # fmt: skip


def _work(rng: random.Random, start_ms: int, n: int) -> list[Event]:
    """Loads of every kind, some finished again, in time order from ``start_ms``."""
    events: list[Event] = []
    for i in range(n):
        at = start_ms + 10 * i
        events.append(arrive(
            f"L{i}", at, required=frozenset(rng.sample(CAPS, rng.randint(1, 2))),
            intent=(rng.gauss(0, 1), rng.gauss(0, 1)), zone=rng.choice(["z0", "z1"]),
            sensitivity=Sensitivity(rng.randint(0, 2)), region=rng.choice(["eu", "us"]),
        ))  # fmt: skip
    return events


def _decide(state: PoolState, events: list[Event]) -> list[Decision]:
    """The decisions ``events`` cause, every third assignment finished at once."""
    out: list[Decision] = []
    for e in events:
        for d in state.apply(e):
            out.append(d)
            if d.outcome is Outcome.ASSIGNED and len(out) % 3 == 0:
                done = report(d.decision_id, d.load_id, str(d.agent_id), TaskOutcome.SUCCESS,
                              time_ms=state.now_ms)  # fmt: skip
                out += state.apply(done)
    return out


def test_a_pool_that_forgot_its_departed_agents_decides_as_one_that_never_knew_them() -> None:
    rng = random.Random(7)  # noqa: S311 - a test's reproducible draws
    known, fresh = _pool(), _pool()
    living: list[str] = []
    for i in range(400):
        agent_id = f"a{i:03d}"
        joins = _agent(rng, agent_id)
        known.apply(joins)
        known.apply(available(agent_id, time_ms=0))
        if i % 3 == 0:  # a third stay
            living.append(agent_id)
            fresh.apply(replace(joins))
            fresh.apply(available(agent_id, time_ms=0))
        else:
            gone = AgentStatusKind.OFFLINE if i % 2 else AgentStatusKind.HEARTBEAT
            known.apply(status(agent_id, gone, seq=3, time_ms=0))
    work = _work(rng, 3_000, 300)
    for e in work:  # (the caches for kinds of load filled, as traffic before would have)
        known.agents.match(e.load, known.policy, 0)  # type: ignore[union-attr]
    # The silent ones are lost at the first tick after their heartbeats time out.
    lost = replace(POLICY, version=2, heartbeat_timeout_ms=500)
    for state in (known, fresh):
        state.apply(PolicyChanged(0, lost))
        # (the living speak in time; the others do not)
        for agent_id in living:
            state.apply(status(agent_id, AgentStatusKind.HEARTBEAT, seq=4, time_ms=900))
        state.apply(tick(1_000))
        state.apply(PolicyChanged(1_000, replace(lost, version=3, heartbeat_timeout_ms=10**9)))
        state.apply(tick(2_001))
    assert known.forgotten == 400 - len(living)
    assert known.agents.ids == living == fresh.agents.ids
    assert all(known.agents.row[a] == r for r, a in enumerate(known.agents.ids))

    decided, expected = _decide(known, work), _decide(fresh, work)
    assert len(decided) > 300
    assert decided == expected


def test_a_forgotten_agent_is_unknown_until_it_registers_again() -> None:
    state = _pool()
    for i in range(64):
        state.apply(register(f"g{i}", time_ms=0))
        state.apply(available(f"g{i}", time_ms=0))
        state.apply(status(f"g{i}", AgentStatusKind.OFFLINE, seq=3, time_ms=0))
    state.apply(tick(999))
    assert state.agents.n == 64  # (not yet past the window)
    state.apply(tick(1_001))
    assert state.agents.n == 0
    assert state.forgotten == 64

    state.apply(available("g5", seq=9, time_ms=1_100))  # an unknown agent's: nothing
    assert state.apply(arrive("L1", 1_200))[-1].outcome is Outcome.QUEUED
    out = state.apply(register("g5", seq=10, time_ms=1_300)) + state.apply(
        available("g5", seq=11, time_ms=1_300)
    )
    assert [(d.load_id, d.outcome, d.agent_id) for d in out] == [("L1", Outcome.ASSIGNED, "g5")]


def _come_and_go(
    n: int, capabilities: Callable[[int], frozenset[str]]
) -> tuple[PoolState, int, int]:
    """``n`` agents, each for one load, a new id each time (``capabilities(i)`` the i-th's):
    the pool, the most agents its table held at once, and the loads done."""
    state, now, biggest, done = _pool(), 0, 0, 0
    for i in range(n):
        now += 10
        agent_id = f"run-{i}"
        state.apply(register(agent_id, time_ms=now, capabilities=capabilities(i)))
        state.apply(available(agent_id, time_ms=now))
        (d,) = [d for d in state.apply(arrive(f"L{i}", now)) if d.outcome is Outcome.ASSIGNED]
        assert d.agent_id == agent_id  # (the only one available)
        finished = state.apply(report(d.decision_id, d.load_id, agent_id, TaskOutcome.SUCCESS,
                                      time_ms=now))  # fmt: skip
        done += sum(x.outcome is Outcome.COMPLETED for x in finished)
        state.apply(status(agent_id, AgentStatusKind.OFFLINE, seq=3, time_ms=now))
        state.apply(tick(now))
        biggest = max(biggest, state.agents.n)
    return state, biggest, done


def test_agents_that_come_and_go_do_not_pile_up() -> None:
    """2,000 agents, each for one load, a new id each time: the table keeps the recent
    ones only, and every load is assigned and done."""
    state, biggest, done = _come_and_go(2_000, lambda _: frozenset({"python"}))
    assert done == 2_000
    assert state.forgotten > 1_700
    # The window holds 100 of them (1 s at one per 10 ms), forgotten 64 or more at a time.
    assert biggest <= 100 + 64 + 1


def test_capabilities_of_agents_gone_take_no_room() -> None:
    """Before, every capability ever declared widened each agent's row by a bit (a column
    of bitmasks nothing read): 30,000 agents with a tool of their own each took 150 MB."""

    def columns(state: PoolState) -> int:
        return sum(v.nbytes for v in vars(state.agents).values() if isinstance(v, np.ndarray))

    shared, _, _ = _come_and_go(2_000, lambda _: frozenset({"python"}))
    own, _, done = _come_and_go(2_000, lambda i: frozenset({"python", f"tool-{i}"}))
    assert done == 2_000
    assert own.agents.n == shared.agents.n
    assert columns(own) == columns(shared)
    # The index of capabilities to agents keeps those of the agents still known only.
    assert len(own.agents._cap_rows) == own.agents.n + 1


def _departed(state: PoolState, k: int = 64) -> None:
    for i in range(k):
        state.apply(register(f"d{i}", time_ms=0))
        state.apply(available(f"d{i}", time_ms=0))
        state.apply(status(f"d{i}", AgentStatusKind.OFFLINE, seq=3, time_ms=0))


def test_an_agent_freed_in_the_tick_that_forgets_takes_the_loads_parked_for_it() -> None:
    """Agents woken by row before the forget are woken again after it (rows moved)."""
    state = PoolState("p")
    state.apply(PolicyChanged(0, replace(POLICY, ack_timeout_ms=500)))
    _departed(state)
    state.apply(register("A", time_ms=0, capabilities=frozenset({"rare"})))
    state.apply(available("A", time_ms=0))
    state.apply(register("B", time_ms=0))  # open, but not for "rare"
    state.apply(available("B", time_ms=0))
    (first,) = state.apply(arrive("L0", 100, required=frozenset({"rare"})))
    assert first.outcome is Outcome.ASSIGNED  # never accepted: its ack times out
    state.apply(arrive("L1", 200, required=frozenset({"rare"}), priority=0))  # A is full
    assert state.queue.lane("L1") in state.queue.closed()  # (set aside with its kind)
    state.apply(status("A", AgentStatusKind.HEARTBEAT, seq=3, time_ms=1_100))
    out = state.apply(tick(1_100))  # L0's ack times out (A is free), d0..d63 go
    assert state.forgotten == 64
    assert [(d.load_id, d.outcome) for d in out] == [
        ("L0", Outcome.REQUEUED), ("L1", Outcome.ASSIGNED)]  # fmt: skip


def test_what_the_pool_kept_per_agent_goes_with_it() -> None:
    state = _pool()
    for i in range(64):  # each holds a load, then leaves (its load goes back)
        state.apply(register(f"d{i}", time_ms=0))
        state.apply(available(f"d{i}", time_ms=0))
        state.apply(arrive(f"L{i}", 0))
    for i in range(64):
        state.apply(status(f"d{i}", AgentStatusKind.OFFLINE, seq=3, time_ms=0))
    assert len(state.held) == 64
    state.apply(tick(1_001))
    assert state.forgotten == 64
    assert state.held == {}


def test_explain_credits_the_sessions_agent_after_rows_moved() -> None:
    state = _pool()
    _departed(state)
    state.apply(register("S", time_ms=0, capacity=5))
    state.apply(available("S", time_ms=0))
    for i in range(70):  # (registered later: after the forget, one sits on S's old row)
        state.apply(register(f"k{i}", time_ms=0))
    state.apply(arrive("L0", 10, session_id="s1"))  # to S: the session's agent is S now
    state.apply(arrive("L1", 20, session_id="s1"))
    for i in range(70):
        state.apply(available(f"k{i}", seq=2, time_ms=1_100))
    state.apply(status("S", AgentStatusKind.HEARTBEAT, seq=3, time_ms=1_100))
    state.apply(tick(1_100))
    assert state.forgotten == 64
    verdicts = explain(state, "L1", ("S", "k63")).verdicts
    assert {v.agent_id: dict(v.parts)["affinity"] for v in verdicts} == {"S": 0.5, "k63": 0.0}


def test_agents_that_never_became_available_go_too_and_an_idle_pool_is_ticked_for_them() -> None:
    state = _pool()
    for i in range(64):
        state.apply(register(f"r{i}", time_ms=0))  # and nothing more
    assert not state.wants_tick(1_000)
    assert state.wants_tick(1_001)  # (nothing else to do: no load, no agent available)
    state.apply(tick(1_001))
    assert (state.agents.n, state.forgotten) == (0, 64)
    assert not state.wants_tick(5_000)


def test_a_departed_agent_that_speaks_within_the_horizon_is_kept() -> None:
    state = _pool()
    _departed(state, 63)
    state.apply(register("x", time_ms=0))
    state.apply(status("x", AgentStatusKind.HEARTBEAT, seq=2, time_ms=900))  # registered only
    state.apply(tick(1_001))  # 63 departed past the horizon: fewer than 64, none goes
    assert state.forgotten == 0
    state.apply(register("y", time_ms=0))
    state.apply(tick(1_002))
    assert state.forgotten == 64  # d0..d62 and y; x was heard of at 900
    assert state.agents.ids == ["x"]
    assert state.unknown_agent_events == 0
    state.apply(available("y", seq=9, time_ms=1_003))
    assert state.unknown_agent_events == 1


def test_capabilities_an_agent_no_longer_has_take_no_room() -> None:
    """An agent whose tools change (a new version each time) leaves no trace of the old."""
    state = _pool()
    for version in range(1_000):
        state.apply(register("a", seq=version + 1, capabilities=frozenset({"py", f"v{version}"})))
    assert len(state.agents._cap_rows) == 2
