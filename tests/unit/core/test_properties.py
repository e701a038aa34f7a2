"""Properties of the core over random event sequences (hypothesis)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.core import (
    FINAL_OUTCOMES,
    AgentProfile,
    AgentRegistered,
    AgentStatusChanged,
    AgentStatusKind,
    Decision,
    Event,
    LoadArrived,
    LoadCancelled,
    LoadSpec,
    LoadStatus,
    Outcome,
    Policy,
    PoolState,
    Priority,
    Sensitivity,
    TaskOutcome,
    TaskReported,
    Tick,
)

AGENTS = [f"a{i}" for i in range(4)]
LOADS = [f"L{i}" for i in range(12)]
CAPS = ["py", "sql", "go"]
REGIONS = ["eu", "us"]
POLICY = Policy(
    max_attempts=3, backoff_base_ms=10, ack_timeout_ms=500, heartbeat_timeout_ms=800,
    max_pending=6, high_watermark=4, low_watermark=2, tenant_quotas={"t0": 2},
)  # fmt: skip

caps = st.frozensets(st.sampled_from(CAPS), max_size=2)
profiles = st.builds(
    AgentProfile,
    capabilities=st.sampled_from(
        [frozenset(CAPS), frozenset(CAPS), frozenset({"py"}), frozenset()]
    ),
    capacity=st.sampled_from([1, 2, 3, 0]),
    personality=st.tuples(st.floats(-1, 1), st.floats(-1, 1)),
    risk_budget=st.sampled_from([10.0, 10.0, 2.0, 0.5]),
    abstention_threshold=st.sampled_from([1.0, 1.0, 0.2]),
    clearance=st.sampled_from([Sensitivity.RESTRICTED, Sensitivity.RESTRICTED, Sensitivity.PUBLIC]),
    regions=st.sampled_from([frozenset(REGIONS), frozenset(REGIONS), frozenset({"eu"})]),
    zone=st.sampled_from([None, "z1"]),
    speed=st.sampled_from([0.5, 1.0, 2.0]),
)
steps = st.one_of(
    # an agent joins: registered, then available (two events)
    st.tuples(st.just("join"), st.sampled_from(AGENTS), profiles),
    st.tuples(st.just("register"), st.sampled_from(AGENTS), profiles, st.booleans()),
    st.tuples(st.just("status"), st.sampled_from(AGENTS), st.sampled_from(list(AgentStatusKind)),
              st.booleans()),
    st.tuples(st.just("arrive"), st.sampled_from(LOADS), st.sampled_from(["t0", "t1"]),
              st.sampled_from(list(Priority)), caps,
              st.sampled_from([Sensitivity.PUBLIC, Sensitivity.PUBLIC, Sensitivity.RESTRICTED]),
              st.sampled_from(REGIONS), st.sampled_from([0.1, 1.0, 3.0]),
              st.sampled_from([None, 200, 2000])),
    st.tuples(st.just("arrive"), st.sampled_from(LOADS), st.sampled_from(["t0", "t1"]),
              st.sampled_from(list(Priority)), st.just(frozenset()), st.just(Sensitivity.PUBLIC),
              st.just("eu"), st.just(0.1), st.just(None)),
    st.tuples(st.just("cancel"), st.sampled_from(LOADS)),
    st.tuples(st.just("report"), st.sampled_from(LOADS), st.sampled_from(list(TaskOutcome)),
              st.booleans(), st.sampled_from([True, True, True, False])),
    # an agent answers one of the loads it holds
    st.tuples(st.just("settle"), st.integers(0, 20), st.sampled_from(list(TaskOutcome)),
              st.booleans()),
    st.tuples(st.just("tick"), st.integers(1, 700)),
    st.tuples(st.just("repeat"), st.integers(0, 1000)),
)  # fmt: skip


@dataclass
class Model:
    """What the test knows independently of the core: profiles and statuses applied."""

    profiles: dict[str, AgentProfile] = field(default_factory=dict)
    available: dict[str, bool] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    specs: dict[str, LoadSpec] = field(default_factory=dict)


def _events(step: tuple[Any, ...], state: PoolState, now: int, n: int,  # noqa: PLR0911
            history: list[Event]) -> list[Event]:  # fmt: skip
    """The events one step stands for. Agent sequence numbers grow, unless a step asks
    for a stale one (the agent's current number again)."""
    kind, key = step[0], f"e{n}"

    def seq(agent: str, stale: bool = False) -> int:
        row = state.agents.row.get(agent)
        current = -1 if row is None else int(state.agents.seq[row])
        return current if stale and current >= 0 else current + 1

    if kind == "join":
        first = AgentRegistered(key, step[1], seq(step[1]), now, step[2])
        return [first, AgentStatusChanged(key + "b", step[1], first.seq + 1, now,
                                          AgentStatusKind.AVAILABLE)]  # fmt: skip
    if kind == "register":
        return [AgentRegistered(key, step[1], seq(step[1], step[3]), now, step[2])]
    if kind == "status":
        return [AgentStatusChanged(key, step[1], seq(step[1], step[3]), now, step[2])]
    if kind == "arrive":
        _, load_id, tenant, prio, req, sens, region, risk, deadline = step
        spec = LoadSpec(load_id, tenant, prio, req, (1.0, 0.0), sens, region, now,
                        None if deadline is None else now + deadline, 100, risk)  # fmt: skip
        return [LoadArrived(key, now, spec)]
    if kind == "cancel":
        return [LoadCancelled(key, now, step[1])]
    if kind == "report":
        _, load_id, outcome, retryable, honest = step
        ls = state.loads.get(load_id)
        decision = (ls.decision_id if ls else None) if honest else "stale-decision"
        agent = (ls.agent if ls else None) or "a0"
        return [TaskReported(key, now, decision or "none", load_id, agent, outcome, retryable)]
    if kind == "settle" and state.in_flight:
        ls = list(state.in_flight.values())[step[1] % len(state.in_flight)]
        return [TaskReported(key, now, ls.decision_id or "", ls.spec.load_id, ls.agent or "",
                             step[2], step[3])]  # fmt: skip
    if kind == "tick":
        return [Tick(now)]
    return [history[step[1] % len(history)]] if history else [Tick(now)]


def _fingerprint(state: PoolState) -> tuple[Any, ...]:
    t = state.agents
    return (
        tuple((i, ls.status, ls.attempt, ls.agent, ls.final) for i, ls in state.loads.items()),
        t.active[: t.n].tolist(), t.status[: t.n].tolist(), tuple(state.pending),
        state.policy.version,
    )  # fmt: skip


BATCHED = replace(POLICY, mode="batched", batch_window_ms=150)


def _run(
    script: list[tuple[Any, ...]], policy: Policy = POLICY
) -> tuple[list[Decision], PoolState, list[Event]]:
    state, model = PoolState("p", policy), Model()
    history: list[Event] = []
    decisions: list[Decision] = []
    finals: dict[str, Outcome] = {}
    now = 0
    for n, step in enumerate(script):
        now += step[1] if step[0] == "tick" else 1
        events = _events(step, state, now, n, history)
        if policy.mode == "batched" and step[0] != "tick":
            now += 40
            events.append(Tick(now))  # batches run on ticks: give them many
        for event in events:
            before = _fingerprint(state)
            repeat = event in history
            stale = isinstance(event, (AgentRegistered, AgentStatusChanged)) and (
                event.agent_id in model.seq and event.seq <= model.seq[event.agent_id]
            )
            out = state.apply(event)
            history.append(event)
            if repeat or stale:
                assert out == [], f"a {'repeated' if repeat else 'stale'} event decided something"
                assert _fingerprint(state) == before, "a repeated or stale event changed the state"
                continue
            _learn(model, event)
            _check(state, model, out, finals)
            decisions += out
    return decisions, state, history


def _learn(model: Model, event: Event) -> None:
    if isinstance(event, AgentRegistered):
        model.profiles[event.agent_id] = event.profile
        model.seq[event.agent_id] = event.seq
        model.available.setdefault(event.agent_id, False)
    elif isinstance(event, AgentStatusChanged) and event.agent_id in model.profiles:
        model.seq[event.agent_id] = event.seq
        if event.kind is not AgentStatusKind.HEARTBEAT:
            model.available[event.agent_id] = event.kind is AgentStatusKind.AVAILABLE
    elif isinstance(event, LoadArrived) and event.load.load_id not in model.specs:
        model.specs[event.load.load_id] = event.load


def _check(state: PoolState, model: Model, out: list[Decision], finals: dict[str, Outcome]) -> None:
    t = state.agents
    for d in out:
        if d.load_id in finals:
            assert d.outcome is Outcome.REJECTED, (
                f"{d.load_id} decided again after {finals[d.load_id]}"
            )
        if d.outcome in FINAL_OUTCOMES:
            finals[d.load_id] = d.outcome
        if d.outcome is Outcome.SHED:
            assert model.specs[d.load_id].priority is not Priority.CRITICAL
        if d.outcome is Outcome.ASSIGNED:
            assert d.agent_id is not None
            spec, prof = model.specs[d.load_id], model.profiles[d.agent_id]
            row = t.row[d.agent_id]
            assert t.active[row] <= prof.capacity, "over capacity"
            assert spec.required <= prof.capabilities
            assert prof.clearance >= spec.sensitivity
            assert spec.region in prof.regions
            assert spec.risk <= prof.abstention_threshold * prof.risk_budget
            assert t.risk_used[row] <= t.risk_budget[row] + 1e-9, "over the risk budget"
            assert t.status[row] != 0, "assigned to an agent that never became available"
            if d.agent_id in state.loads[d.load_id].tried:  # (only if no other agent passed)
                assert dict(d.excluded)["tried"] == 0, "went back to an agent that had it"
            quota = state.policy.tenant_quotas.get(spec.tenant)
            assert quota is None or state.running[spec.tenant] <= quota, "over the tenant quota"
    in_flight: dict[str, int] = {}
    for ls in state.in_flight.values():
        in_flight[ls.spec.tenant] = in_flight.get(ls.spec.tenant, 0) + 1
    assert {k: v for k, v in state.running.items() if v} == in_flight
    for agent_id, row in t.row.items():  # bookkeeping agrees with itself
        assert t.active[row] == len(state.held.get(agent_id, {}))
        assert t.risk_used[row] <= t.risk_budget[row] + 1e-9 or t.active[row] > 0
    _waiting_books(state)


def _waiting_books(state: PoolState) -> None:
    """The counts and indexes of waiting loads agree with the loads, and every waiting load
    is somewhere it will be tried again from."""
    backlog: Counter[str] = Counter()
    by_class: dict[tuple[str, Priority], set[str]] = {}
    for load_id, ls in state.pending.items():
        backlog[ls.spec.tenant] += 1
        by_class.setdefault((ls.spec.tenant, ls.spec.priority), set()).add(load_id)
    assert {k: v for k, v in state.backlog.items() if v} == dict(backlog)
    assert {k: set(v) for k, v in state.tenant_pending.items() if v} == by_class
    stuck: Counter[str] = Counter()
    for load_id, ls in state.unqualified.items():
        assert state.pending.get(load_id) is ls
        assert load_id not in state.queue
        stuck[ls.spec.tenant] += 1
    assert {k: v for k, v in state.stuck.items() if v} == dict(stuck)
    parked = {ls.spec.load_id for ls in state.parked}
    backing_off = {load_id for _, _, load_id in state.backing_off}
    for load_id, ls in state.pending.items():
        if ls.status is LoadStatus.PENDING:
            assert (
                load_id in state.queue
                or load_id in parked
                or load_id in backing_off
                or (load_id in state.unqualified)
            ), f"{load_id} waits where nothing will try it again"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=1, max_size=80))
def test_invariants_hold_over_random_event_sequences(script: list[tuple[Any, ...]]) -> None:
    _run(script)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=1, max_size=80))
def test_invariants_hold_in_batched_mode(script: list[tuple[Any, ...]]) -> None:
    _run(script, BATCHED)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=1, max_size=80), st.sampled_from([POLICY, BATCHED]))
def test_the_same_events_give_the_same_decisions(
    script: list[tuple[Any, ...]], policy: Policy
) -> None:
    decisions, _, history = _run(script, policy)
    fresh = PoolState("p", policy)
    replayed = [d for e in history for d in fresh.apply(e)]
    assert replayed == decisions


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(steps, min_size=1, max_size=80),
    # max_attempts 1: every requeue ends in a dead letter at once
    st.sampled_from([POLICY, BATCHED, replace(POLICY, max_attempts=1)]),
)
def test_the_decisions_alone_account_for_every_agent_hold(
    script: list[tuple[Any, ...]], policy: Policy
) -> None:
    """Readers of the log (audit, capacity checks) see each hold taken and given back."""
    decisions, state, _ = _run(script, policy)
    held: dict[str, int] = {}
    for d in decisions:
        if d.agent_id is None or d.outcome is Outcome.REJECTED:
            continue
        held[d.agent_id] = held.get(d.agent_id, 0) + (1 if d.outcome is Outcome.ASSIGNED else -1)
        assert held[d.agent_id] >= 0, f"{d.decision_id} releases a hold never taken"
    t = state.agents
    assert {a: n for a, n in held.items() if n} == {
        a: int(t.active[row]) for a, row in t.row.items() if t.active[row]
    }
