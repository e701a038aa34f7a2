"""Loads that found no agent are parked by kind until an agent of their kind changes: over
random event sequences of both modes, none stays parked while an agent could take it.

The sequences are those of a review that found a parked kind judged by a load that had
ended (its spec stripped) and never woken again (seeds 162, 191 and 194 hit that), and loads
held for a session that moved to another agent left waiting for their timer (193, 327).
"""

from __future__ import annotations

import random

import pytest

from dispatcher.core import (
    AgentProfile,
    AgentRegistered,
    AgentStatusChanged,
    AgentStatusKind,
    Decision,
    Event,
    LoadArrived,
    LoadCancelled,
    LoadSpec,
    Outcome,
    Policy,
    PolicyChanged,
    PoolState,
    Priority,
    Sensitivity,
    TaskOutcome,
    TaskReported,
    Tick,
)
from tests.unit.core.test_properties import _parked_only_without_an_agent

CAPS, REGIONS = ["py", "go", "sql"], ["eu", "us"]
TENANTS, AGENTS = ["t0", "t1", "t2"], ["a0", "a1", "a2", "a3"]


def _policy(rng: random.Random, version: int) -> Policy:
    return Policy(
        version=version, mode=rng.choice(["greedy", "batched"]), hard_affinity=rng.random() < 0.5,
        max_pending=rng.choice([4, 50]), high_watermark=rng.choice([2, 40]), low_watermark=1,
        ack_timeout_ms=rng.choice([500, 2000]), heartbeat_timeout_ms=rng.choice([800, 5000]),
        backoff_base_ms=10, affinity_wait_ms=rng.choice([200, 3000]),
        fair_share_reserve=rng.choice([0.0, 0.3]), tenant_quotas=rng.choice([{}, {"t0": 1}]),
        tenant_deny=rng.choice([{}, {"t1": frozenset({"a0"})}, {"t0": frozenset({"a1", "a2"})}]),
        batch_window_ms=rng.choice([50, 400]),
    )  # fmt: skip


def _run(seed: int, n: int = 300) -> None:
    rng = random.Random(seed)  # noqa: S311 - a test's reproducible draws
    state = PoolState("p")
    t = loads = version = 0
    seqs = dict.fromkeys(AGENTS, 0)
    for k in range(1, n + 1):
        t += rng.choice([0, 1, 5, 50, 300, 700])
        r = rng.random()
        event: Event
        if r < 0.12:
            a = rng.choice(AGENTS)
            seqs[a] += 1
            profile = AgentProfile(
                frozenset(rng.sample(CAPS, rng.randint(1, 3))), rng.randint(1, 2),
                (rng.random(), rng.random()), rng.choice([2.0, 5.0, 10.0]), rng.choice([0.5, 1.0]),
                Sensitivity(rng.randint(0, 3)), frozenset(rng.sample(REGIONS, rng.randint(1, 2))),
            )  # fmt: skip
            event = AgentRegistered(f"r{k}", a, seqs[a], t, profile)
        elif r < 0.3:
            a = rng.choice(AGENTS)
            seqs[a] += 1
            kind = rng.choice([AgentStatusKind.AVAILABLE] * 3 + [AgentStatusKind.HEARTBEAT] * 2
                              + [AgentStatusKind.DRAINING, AgentStatusKind.OFFLINE])  # fmt: skip
            event = AgentStatusChanged(f"s{k}", a, seqs[a], t, kind)
        elif r < 0.6:
            loads += 1
            event = LoadArrived(f"k{k}", t, LoadSpec(
                f"L{loads}", rng.choice(TENANTS), Priority(rng.randint(0, 3)),
                frozenset(rng.sample(CAPS, rng.randint(0, 2))), (rng.random(), rng.random()),
                Sensitivity(rng.randint(0, 3)), rng.choice(REGIONS), t - rng.choice([0, 0, 100]),
                rng.choice([None, t + 2000]), 500, rng.choice([0.5, 1.0, 3.0, 6.0]),
                rng.choice([None, "s1", "s2", "s3"]),
            ))  # fmt: skip
        elif r < 0.66 and loads:
            event = LoadCancelled(f"c{k}", t, f"L{rng.randint(1, loads)}")
        elif r < 0.85 and state.in_flight:
            ls = rng.choice(list(state.in_flight.values()))
            outcome = rng.choice([TaskOutcome.ACCEPTED, TaskOutcome.DECLINED, TaskOutcome.SUCCESS,
                                  TaskOutcome.SUCCESS, TaskOutcome.FAILED])  # fmt: skip
            event = TaskReported(f"t{k}", t, ls.decision_id or "", ls.spec.load_id,
                                 ls.agent or "", outcome, retryable=rng.random() < 0.7)  # fmt: skip
        elif 0.85 <= r < 0.88:
            version += 1
            event = PolicyChanged(t + rng.choice([0, 0, 500]), _policy(rng, version))
        else:
            event = Tick(t)
        state.apply(event)
        _parked_only_without_an_agent(state)


@pytest.mark.parametrize("seed", [162, 191, 193, 194, 327, *range(40)])
def test_no_load_stays_parked_while_an_agent_could_take_it(seed: int) -> None:
    _run(seed)


def test_a_load_held_for_its_sessions_agent_goes_once_the_window_forgets_the_session() -> None:
    # (An invariant hunt: it stayed parked, another agent free, until its affinity wait ended.)
    state = PoolState("p", Policy(hard_affinity=True, affinity_wait_ms=5000,
                                  dedupe_window_ms=1000))  # fmt: skip
    for i, (agent, personality) in enumerate((("A", (1.0, 0.0)), ("B", (0.0, 1.0)))):
        profile = AgentProfile(frozenset(), 1, personality, 10.0, 1.0, Sensitivity.RESTRICTED,
                               frozenset({"eu"}))  # fmt: skip
        state.apply(AgentRegistered(f"r{i}", agent, 1, 0, profile))
        state.apply(AgentStatusChanged(f"s{i}", agent, 2, 0, AgentStatusKind.AVAILABLE))

    def arrive(load_id: str, t: int) -> list[Decision]:
        return state.apply(LoadArrived(load_id, t, LoadSpec(
            load_id, "t", Priority.NORMAL, frozenset(), (1.0, 0.0), Sensitivity.PUBLIC, "eu", t,
            None, 100, 0.0, session_id="s")))  # fmt: skip

    assert [(d.outcome, d.agent_id) for d in arrive("L1", 0)] == [(Outcome.ASSIGNED, "A")]
    assert [d.reason for d in arrive("L2", 900)] == ["AFFINITY_WAIT"]  # A is full
    out = state.apply(Tick(1500))  # the session is older than the window: forgotten
    assert [(d.outcome, d.load_id, d.agent_id) for d in out] == [(Outcome.ASSIGNED, "L2", "B")]
    assert state.sessions["s"] == ("B", 1500)
    _parked_only_without_an_agent(state)
