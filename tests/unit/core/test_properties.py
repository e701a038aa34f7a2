"""Properties of the core over random event sequences (hypothesis).

The scripts are drawn to reach what the properties are about: bursts of
arrivals with no agent free fill the queue past its high watermark and its
limit (critical ones too), agents decline, fail and let offers time out until
loads are dead-lettered, answers come late or from the wrong agent, and every
script ends with a drain phase in which every load must end. A model the test
keeps from the events and the decisions alone (never from the core's state)
checks each decision at the moment it is made, and agrees with the core's
books after each event. ``test_the_scripts_reach_what_the_properties_are_about``
fails if the strategies stop reaching shedding, deferral or dead letters, which
would leave the properties about them true of nothing.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, Phase, event, given, seed, settings
from hypothesis import strategies as st

from dispatcher.core import (
    CONSTRAINTS,
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
from dispatcher.core.agents import AgentStatus

AGENTS = [f"a{i}" for i in range(4)]
DRAINER = "z"  # joins in the drain phase: takes any load, denied to no tenant
TENANTS = ["t0", "t1"]
CAPS = ["py", "sql", "go"]
REGIONS = ["eu", "us"]
# A small queue (a burst of 4 waiting loads fills it), short timeouts (a tick of 520 ms
# times an offer out, one of 900 ms an agent), t0 held to 2 loads in flight.
POLICY = Policy(
    max_attempts=3, backoff_base_ms=10, ack_timeout_ms=500, heartbeat_timeout_ms=800,
    max_pending=4, high_watermark=2, low_watermark=1, tenant_quotas={"t0": 2},
)  # fmt: skip
# "gone" never registers: a deny rule may name an agent the pool does not know.
DENY = replace(POLICY, tenant_deny={"t0": frozenset({"a1"}), "t1": frozenset({"a0", "a2", "gone"})})
# Two attempts; loads waiting 300 ms past their deadline are shed.
TWO_TRIES = replace(POLICY, max_attempts=2, expire_after_deadline_ms=300)
# Half the open agents kept from a tenant above its share; t1 weighs twice; denials and
# expiry as above.
SHARES = replace(DENY, fair_share_reserve=0.5, tenant_weights={"t1": 2.0},
                 expire_after_deadline_ms=300)  # fmt: skip
# One attempt: every requeue ends in a dead letter at once.
ONE_TRY = replace(POLICY, max_attempts=1, expire_after_deadline_ms=300)
GREEDY = [POLICY, DENY, TWO_TRIES, SHARES, ONE_TRY]
BATCHED = [replace(p, mode="batched", batch_window_ms=150) for p in GREEDY]
# Requeue reasons that make the agent "tried" for the load (README, Hard constraints).
REFUSED = ("DECLINED", "FAILED_RETRYABLE", "ACK_TIMEOUT")
CRITICAL = Priority.CRITICAL
UNIVERSAL = AgentProfile(
    capabilities=frozenset(CAPS), capacity=64, personality=(1.0, 0.0), risk_budget=1000.0,
    abstention_threshold=1.0, clearance=Sensitivity.RESTRICTED, regions=frozenset(REGIONS),
)  # fmt: skip

profiles = st.builds(
    AgentProfile,
    capabilities=st.sampled_from(
        [frozenset(CAPS), frozenset(CAPS), frozenset({"py"}), frozenset()]
    ),
    capacity=st.sampled_from([1, 1, 2, 3, 0]),
    personality=st.tuples(st.floats(-1, 1), st.floats(-1, 1)),
    risk_budget=st.sampled_from([10.0, 10.0, 2.0, 0.5]),
    abstention_threshold=st.sampled_from([1.0, 1.0, 0.2]),
    clearance=st.sampled_from([Sensitivity.RESTRICTED, Sensitivity.RESTRICTED, Sensitivity.PUBLIC]),
    regions=st.sampled_from([frozenset(REGIONS), frozenset(REGIONS), frozenset({"eu"})]),
    zone=st.sampled_from([None, "z1"]),
    speed=st.sampled_from([0.5, 1.0, 2.0]),
)
# (tenant, priority, required, sensitivity, region, risk, deadline in ms from now)
needs = st.tuples(
    st.sampled_from(TENANTS), st.sampled_from(list(Priority)),
    st.sampled_from([frozenset(), frozenset(), frozenset({"py"}), frozenset({"sql", "go"})]),
    st.sampled_from([Sensitivity.PUBLIC, Sensitivity.PUBLIC, Sensitivity.RESTRICTED]),
    st.sampled_from(["eu", "eu", "us"]), st.sampled_from([0.1, 1.0, 3.0]),
    st.sampled_from([None, 200, 2000]),
)  # fmt: skip
steps = st.one_of(
    # an agent joins: registered, then available (two events)
    st.tuples(st.just("join"), st.sampled_from(AGENTS), profiles),
    st.tuples(st.just("register"), st.sampled_from(AGENTS), profiles, st.booleans()),
    st.tuples(st.just("status"), st.sampled_from(AGENTS), st.sampled_from(list(AgentStatusKind)),
              st.booleans()),
    # one arrival; now and then under a load id seen before (a duplicate)
    st.tuples(st.just("arrive"), needs, st.sampled_from([False] * 5 + [True])),
    # several arrivals at once, before any agent answers: all critical, all low, or mixed
    st.tuples(st.just("burst"), st.sampled_from([None, CRITICAL, CRITICAL, Priority.LOW]),
              st.lists(needs, min_size=3, max_size=7)),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),
    # a result naming the load's current assignment, an earlier one, the right decision
    # from another agent, or a decision that never was
    st.tuples(st.just("report"), st.integers(0, 1000), st.sampled_from(list(TaskOutcome)),
              st.booleans(), st.sampled_from(["current", "current", "old", "other", "bogus"])),
    # an agent answers one of the loads it holds
    st.tuples(st.just("settle"), st.integers(0, 1000), st.sampled_from(list(TaskOutcome)),
              st.booleans()),
    # ... and says no (declines it, or fails it retryably) to the load with the most
    # attempts: the way to a dead letter (listed twice: drawn twice as often)
    st.tuples(st.just("refuse"), st.booleans()),
    st.tuples(st.just("refuse"), st.booleans()),
    st.tuples(st.just("tick"), st.integers(1, 300)),
    # past the ack timeout, or the heartbeat timeout too (twice as often)
    st.tuples(st.just("tick"), st.sampled_from([520, 900])),
    st.tuples(st.just("tick"), st.sampled_from([520, 900])),
    st.tuples(st.just("repeat"), st.integers(0, 1000)),
    # an event of another content under a key seen before (a producer's mistake)
    st.tuples(st.just("reuse"), st.integers(0, 1000)),
)  # fmt: skip
scripts = st.lists(steps, min_size=20, max_size=60)


@dataclass
class Offer:
    """A load's current assignment, as its decision said."""

    decision_id: str
    agent: str
    ack_by: int
    accepted: bool = False


@dataclass
class Model:
    """What the test knows independently of the core: the events applied and the decisions
    made, nothing read from the core's state."""

    policy: Policy
    now: int = 0  # the pool's clock: the newest event time
    issued: int = 0  # load ids handed out to arrivals (L0, L1, ...)
    profiles: dict[str, AgentProfile] = field(default_factory=dict)
    status: dict[str, AgentStatus] = field(default_factory=dict)
    last_seen: dict[str, int] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    risk_used: dict[str, float] = field(default_factory=dict)
    specs: dict[str, LoadSpec] = field(default_factory=dict)  # first arrival of each id
    waiting: set[str] = field(default_factory=set)  # pending, deferred ones too
    deferred: set[str] = field(default_factory=set)
    current: dict[str, Offer] = field(default_factory=dict)  # in flight, in assignment order
    past: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # (decision, agent)
    tried: dict[str, list[str]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    running: Counter[str] = field(default_factory=Counter)  # tenant -> loads in flight
    finals: dict[str, Outcome] = field(default_factory=dict)
    reached: Counter[str] = field(default_factory=Counter)  # what the script got to

    def fresh_seq(self, agent: str, stale: bool = False) -> int:
        current = self.seq.get(agent, -1)
        return current if stale and current >= 0 else current + 1

    def fits(self, agent: str, spec: LoadSpec) -> bool:
        """Whether ``agent`` passes every hard constraint but ``tried`` for ``spec`` now."""
        prof = self.profiles[agent]
        # (the core's arithmetic: budget less what is used, capped by the abstention)
        room = min(prof.risk_budget - self.risk_used[agent],
                   prof.abstention_threshold * prof.risk_budget)  # fmt: skip
        return (
            self.status[agent] is AgentStatus.AVAILABLE
            and self.active[agent] < prof.capacity
            and spec.required <= prof.capabilities
            and prof.clearance >= spec.sensitivity
            and spec.region in prof.regions
            and room >= spec.risk
            and agent not in self.policy.tenant_deny.get(spec.tenant, frozenset())
        )

    def hold(self, agent: str, spec: LoadSpec, sign: int) -> None:
        self.active[agent] += sign
        used = self.risk_used[agent] + sign * spec.risk
        self.risk_used[agent] = used if used > 1e-12 else 0.0  # (as the core rounds)
        self.running[spec.tenant] += sign


def _events(step: tuple[Any, ...], m: Model, now: int, n: int,  # noqa: PLR0911, PLR0912
            history: list[Event]) -> list[Event]:  # fmt: skip
    """The events one step stands for. Agent sequence numbers grow, unless a step asks
    for a stale one (the agent's current number again)."""
    kind, key = step[0], f"e{n}"

    def load(i: int) -> str:
        return f"L{i % m.issued}" if m.issued else "L0"

    def arrival(i: int, needs: tuple[Any, ...], dup: bool = False) -> LoadArrived:
        tenant, prio, req, sens, region, risk, deadline = needs
        if dup and m.issued:
            load_id = load(n)
        else:
            load_id, m.issued = f"L{m.issued}", m.issued + 1
        spec = LoadSpec(load_id, tenant, prio, req, (1.0, 0.0), sens, region, now,
                        None if deadline is None else now + deadline, 100, risk)  # fmt: skip
        return LoadArrived(f"{key}.{i}", now, spec)

    def answer(i: int, outcome: TaskOutcome, retryable: bool) -> list[Event]:
        if not m.current:
            return [Tick(now)]
        load_id, offer = list(m.current.items())[i % len(m.current)]
        return [TaskReported(key, now, offer.decision_id, load_id, offer.agent, outcome,
                             retryable)]  # fmt: skip

    if kind == "join":
        first = AgentRegistered(key, step[1], m.fresh_seq(step[1]), now, step[2])
        return [first, AgentStatusChanged(key + "b", step[1], first.seq + 1, now,
                                          AgentStatusKind.AVAILABLE)]  # fmt: skip
    if kind == "register":
        return [AgentRegistered(key, step[1], m.fresh_seq(step[1], step[3]), now, step[2])]
    if kind == "status":
        return [AgentStatusChanged(key, step[1], m.fresh_seq(step[1], step[3]), now, step[2])]
    if kind == "arrive":
        return [arrival(0, step[1], step[2])]
    if kind == "burst":
        prio = step[1]
        return [arrival(i, x if prio is None else (x[0], prio, *x[2:]))
                for i, x in enumerate(step[2])]  # fmt: skip
    if kind == "cancel":
        return [LoadCancelled(key, now, load(step[1]))]
    if kind == "report":
        _, i, outcome, retryable, which = step
        load_id = load(i)  # mostly one that has (or had) an offer to name
        if which == "old" and m.past:
            load_id = list(m.past)[i % len(m.past)]
        elif which in ("current", "other") and m.current and i % 4:
            load_id = list(m.current)[i % len(m.current)]
        offer, past = m.current.get(load_id), m.past.get(load_id, [])
        decision, agent = "stale-decision", offer.agent if offer else "a0"
        if which == "current" and offer:
            decision = offer.decision_id
        elif which == "old" and past:
            decision, agent = past[i % len(past)]
        elif which == "other" and offer:
            decision = offer.decision_id
            agent = AGENTS[(AGENTS.index(offer.agent) + 1) % len(AGENTS)]
        return [TaskReported(key, now, decision, load_id, agent, outcome, retryable)]
    if kind == "settle":
        return answer(step[1], step[2], step[3])
    if kind == "refuse":
        if not m.current:
            return [Tick(now)]
        most = max(m.current, key=lambda i: m.attempts[i])  # (the first of them)
        offer, outcome = m.current[most], TaskOutcome.FAILED if step[1] else TaskOutcome.DECLINED
        return [TaskReported(key, now, offer.decision_id, most, offer.agent, outcome, True)]
    if kind == "tick":
        return [Tick(now)]
    if kind == "reuse":
        keyed = [e for e in history if isinstance(e, (LoadArrived, LoadCancelled, TaskReported))]
        if not keyed:
            return [Tick(now)]
        match keyed[step[1] % len(keyed)]:
            case LoadArrived() as e:  # a cancel under its arrival's key
                return [LoadCancelled(e.key, now, e.load.load_id)]
            case LoadCancelled() as e:
                return [LoadCancelled(e.key, now, e.load_id + "-other")]
            case TaskReported() as e:
                other = (
                    TaskOutcome.SUCCESS
                    if e.outcome is not TaskOutcome.SUCCESS
                    else TaskOutcome.FAILED
                )
                return [replace(e, time_ms=now, outcome=other)]
    return [history[step[1] % len(history)]] if history else [Tick(now)]


def _fingerprint(state: PoolState) -> tuple[Any, ...]:
    """Everything an event that decides nothing (or only rejections) must leave as it was;
    not the decision counts (a rejection is a decision about the load) nor the clock."""
    t = state.agents
    return (
        tuple((i, ls.status, ls.attempt, ls.agent, ls.decision_id, ls.final, ls.tried,
               ls.not_before_ms) for i, ls in state.loads.items()),
        t.active[: t.n].tolist(), t.status[: t.n].tolist(), t.risk_used[: t.n].tolist(),
        t.seq[: t.n].tolist(), tuple(state.pending), tuple(state.in_flight), len(state.queue),
        dict(state.running), dict(state.backlog), state.deferred, state.policy.version,
    )  # fmt: skip


def _run(
    script: list[tuple[Any, ...]], policy: Policy = GREEDY[0], *, drain: bool = True
) -> tuple[list[Decision], PoolState, list[Event], Model]:
    """Runs ``script``, checking every event and decision against the model; then, with
    ``drain``, serves every load to its end (``_drain``)."""
    state, m = PoolState("p", policy), Model(policy)
    history: list[Event] = []
    decisions: list[Decision] = []
    now = 0
    for n, step in enumerate(script):
        now += step[1] if step[0] == "tick" else 1
        events = _events(step, m, now, n, history)
        if policy.mode == "batched" and step[0] != "tick":
            now += 40
            events.append(Tick(now))  # batches run on ticks: give them many
        for e in events:
            decisions += _apply(state, m, e, history)
    if drain:
        decisions += _drain(state, m, now, history)
    for what in sorted(m.reached):
        event(what)
    return decisions, state, history, m


def _drain(state: PoolState, m: Model, now: int, history: list[Event]) -> list[Decision]:
    """Every agent available and answering SUCCESS to everything, an agent that can take any
    load joining, time moving past every backoff and batch window: then every load that
    arrived ends, each in exactly one final decision."""
    out: list[Decision] = []
    joined = AgentRegistered("drain", DRAINER, m.fresh_seq(DRAINER), now, UNIVERSAL)
    out += _apply(state, m, joined, history)
    for r in range(200):
        if not m.waiting and not m.current:
            break
        now += 1
        for agent in list(m.profiles):  # (a sign of life each round: none is lost)
            back = AgentStatusChanged(f"d{r}{agent}", agent, m.fresh_seq(agent), now,
                                      AgentStatusKind.AVAILABLE)  # fmt: skip
            out += _apply(state, m, back, history)
        for load_id, offer in list(m.current.items()):
            out += _apply(state, m, TaskReported(f"d{r}{load_id}", now, offer.decision_id,
                                                 load_id, offer.agent, TaskOutcome.SUCCESS),
                          history)  # fmt: skip
        now += 200
        out += _apply(state, m, Tick(now), history)
    assert not m.waiting, f"still waiting after the drain: {sorted(m.waiting)}"
    assert not m.current, f"still in flight after the drain: {sorted(m.current)}"
    assert not state.pending
    assert not state.in_flight
    assert set(m.finals) == set(m.specs), "a load that arrived never ended"
    return out


def _apply(state: PoolState, m: Model, e: Event, history: list[Event]) -> list[Decision]:
    """Applies one event, checks what it did, and teaches the model."""
    before = _fingerprint(state)
    keyed = isinstance(e, (LoadArrived, LoadCancelled, TaskReported))
    # The first event under its key (a tick again is a tick now: no repeat). Keys are kept
    # an hour: never pruned here.
    first = next((x for x in history if _key_of(x) == _key_of(e)), None) if keyed else None
    repeat = first is not None and _says(first) == _says(e)
    reused = first is not None and not repeat
    ignored = isinstance(e, (AgentRegistered, AgentStatusChanged)) and (
        e.seq <= m.seq.get(e.agent_id, -1)
        or (isinstance(e, AgentStatusChanged) and e.agent_id not in m.profiles)
    )
    out = state.apply(e)
    history.append(e)
    if reused:  # refused, as it came (so, like a repeat, without moving the clock)
        m.reached["key reused, refused"] += 1
        assert [(d.outcome, d.reason) for d in out] == [(Outcome.REJECTED, "KEY_REUSED")], out
        assert _fingerprint(state) == before, f"a reused key's event changed the state: {out}"
        return out
    if not repeat:  # (the pool's clock is the newest time of any event but a duplicate's)
        m.now = max(m.now, e.time_ms)
    if repeat or ignored:
        what = "repeated" if repeat else "stale or unknown agent's"
        assert out == [], f"a {what} event decided something: {out}"
        assert _fingerprint(state) == before, f"a {what} event changed the state"
        return []
    waiting_before = {i: m.specs[i].priority for i in m.waiting}  # (as the event came)
    expected = _learn(m, e)
    if isinstance(e, TaskReported) and expected is None:  # not the load's current offer
        m.reached["stale report rejected"] += 1
        assert [(d.outcome, d.load_id) for d in out] == [(Outcome.REJECTED, e.load_id)], (
            f"a stale result ({e.decision_id} from {e.agent_id}) decided {out}"
        )
    elif isinstance(e, TaskReported):
        assert expected is not None
        if expected == ("", ""):  # accepted: nothing to say
            assert out == [], out
        else:
            assert out, f"{e.outcome} from {e.agent_id} decided nothing"
            assert (out[0].load_id, out[0].outcome, out[0].reason) == (e.load_id, *expected)
    if out and all(d.outcome is Outcome.REJECTED for d in out):
        assert len(out) == 1, out
        assert _fingerprint(state) == before, f"a rejected input changed the state: {out}"
    if (isinstance(e, LoadArrived) and e.load.priority is Priority.CRITICAL
            and len(waiting_before) >= m.policy.max_pending):  # fmt: skip
        # (the case that shows critical loads are never shed: no other load to evict)
        only = all(p is Priority.CRITICAL for p in waiting_before.values())
        m.reached[f"critical arrival, queue full{' of critical loads' if only else ''}"] += 1
    for d in out:
        _decided(m, d, e, waiting_before)
    _agrees(state, m, e)
    return out


def _key_of(e: Event) -> tuple[str, str] | None:
    """An event's key in its key space (load events share one, results have theirs)."""
    if isinstance(e, (LoadArrived, LoadCancelled)):
        return ("load", e.key)
    return ("result", e.key) if isinstance(e, TaskReported) else None


def _says(e: Event) -> Event:
    """What an event with a key says, as its repeats must say it too: all but its time (a
    producer's retry may stamp it anew) and a result's retryable flag."""
    return (
        replace(e, time_ms=0, retryable=False)
        if isinstance(e, TaskReported)
        else replace(e, time_ms=0)
    )


def _learn(m: Model, e: Event) -> tuple[Outcome | str, str] | None:
    """Applies ``e`` to the model before its decisions are looked at; for a result naming
    the load's current offer, returns the first decision the lifecycle table calls for
    (("", "") for none), else None."""
    if isinstance(e, AgentRegistered):
        if e.agent_id not in m.profiles:
            m.status[e.agent_id] = AgentStatus.REGISTERED
            m.active[e.agent_id], m.risk_used[e.agent_id] = 0, 0.0
        m.profiles[e.agent_id] = e.profile
        m.seq[e.agent_id] = e.seq
        m.last_seen[e.agent_id] = max(m.last_seen.get(e.agent_id, e.time_ms), e.time_ms)
    elif isinstance(e, AgentStatusChanged):
        a = e.agent_id
        m.seq[a] = e.seq
        m.last_seen[a] = max(m.last_seen[a], e.time_ms)
        lost = m.status[a] is AgentStatus.LOST
        if e.kind is AgentStatusKind.AVAILABLE or (e.kind is AgentStatusKind.HEARTBEAT and lost):
            m.status[a] = AgentStatus.AVAILABLE
        elif e.kind is AgentStatusKind.DRAINING:
            m.status[a] = AgentStatus.DRAINING
        elif e.kind is AgentStatusKind.OFFLINE:
            m.status[a] = AgentStatus.OFFLINE
    elif isinstance(e, Tick):  # silent agents: a draining one has left, others are lost
        for a, s in m.status.items():
            alive = s in (AgentStatus.AVAILABLE, AgentStatus.DRAINING)
            if alive and m.last_seen[a] + m.policy.heartbeat_timeout_ms < m.now:
                m.status[a] = AgentStatus.OFFLINE if s is AgentStatus.DRAINING else AgentStatus.LOST
    elif isinstance(e, LoadArrived) and e.load.load_id not in m.specs:
        m.specs[e.load.load_id] = e.load
        m.attempts[e.load.load_id] = 1
        m.waiting.add(e.load.load_id)
    elif isinstance(e, TaskReported):
        offer = m.current.get(e.load_id)
        if offer is None or (offer.decision_id, offer.agent) != (e.decision_id, e.agent_id):
            return None
        return _lifecycle(m, e, offer)
    return None


def _lifecycle(m: Model, e: TaskReported, offer: Offer) -> tuple[Outcome | str, str]:
    """The first decision a result about the current offer calls for (README, Lifecycle)."""
    o, accepted = e.outcome, offer.accepted
    if o in (TaskOutcome.ACCEPTED, TaskOutcome.DECLINED) and accepted:
        return Outcome.REJECTED, f"ILLEGAL_RUNNING_{o.value}"
    if o is TaskOutcome.ACCEPTED:
        offer.accepted = True
        return "", ""
    if o is TaskOutcome.SUCCESS:
        return Outcome.COMPLETED, "SUCCESS"
    if (o is TaskOutcome.FAILED and e.retryable) or o is TaskOutcome.DECLINED:
        reason = "DECLINED" if o is TaskOutcome.DECLINED else "FAILED_RETRYABLE"
        if m.attempts[e.load_id] >= m.policy.max_attempts:
            return Outcome.DEAD_LETTERED, f"MAX_ATTEMPTS_{reason}"
        return Outcome.REQUEUED, reason
    return Outcome.FAILED, "FAIL" if o is TaskOutcome.FAILED else o.value


def _decided(m: Model, d: Decision, e: Event, waiting_before: dict[str, Priority]) -> None:
    """Checks one decision at the moment it was made (the model holds what the decisions
    before it in the same event did), then applies it to the model."""
    if d.excluded:  # constraints in order, each counting the agents it removed
        assert tuple(name for name, _ in d.excluded) == CONSTRAINTS
        assert sum(c for _, c in d.excluded) + d.candidates == len(m.profiles), d
    if d.outcome is Outcome.REJECTED:
        return
    load_id = d.load_id
    assert load_id not in m.finals, f"{load_id} decided {d.outcome} after {m.finals[load_id]}"
    spec = m.specs[load_id]
    if d.outcome is Outcome.ASSIGNED:
        _check_assignment(m, d, spec)
        assert d.agent_id is not None
        assert d.ack_by_ms is not None
        m.waiting.remove(load_id)
        m.current[load_id] = Offer(d.decision_id, d.agent_id, d.ack_by_ms)
        m.past.setdefault(load_id, []).append((d.decision_id, d.agent_id))
        m.hold(d.agent_id, spec, 1)
    elif d.outcome is Outcome.QUEUED:
        assert load_id in m.waiting
        if d.reason == "READMITTED":
            m.deferred.remove(load_id)
        else:  # said of an arrival only
            assert isinstance(e, LoadArrived), d
            assert e.load.load_id == load_id, d
    elif d.outcome is Outcome.DEFERRED:
        assert isinstance(e, LoadArrived)
        assert e.load.load_id == load_id
        assert spec.priority is Priority.LOW
        assert len(waiting_before) >= m.policy.high_watermark, "deferred below the watermark"
        m.reached["DEFERRED"] += 1
        m.deferred.add(load_id)
    elif d.outcome is Outcome.SHED:
        _check_shed(m, d, e, spec, waiting_before)
    _ends(m, d, e, spec)
    assert d.attempt == m.attempts[load_id], d


def _ends(m: Model, d: Decision, e: Event, spec: LoadSpec) -> None:
    """An offer taken back (requeued or ended) or a load ended: checked, and applied."""
    load_id, offer = d.load_id, m.current.get(d.load_id)
    if d.outcome is Outcome.REQUEUED or (d.outcome in FINAL_OUTCOMES and offer is not None):
        # The decision names the offer's agent, and gives its hold back.
        assert offer is not None, f"{d.outcome} {d.reason} of {load_id}, which was not in flight"
        assert d.agent_id == offer.agent, d
        _check_taken_back(m, d, e, offer)
        del m.current[load_id]
        m.hold(offer.agent, spec, -1)
        if d.reason.removeprefix("MAX_ATTEMPTS_") in REFUSED:
            m.tried.setdefault(load_id, [])
            if offer.agent not in m.tried[load_id]:
                m.tried[load_id].append(offer.agent)
    if d.outcome is Outcome.REQUEUED:
        m.attempts[load_id] += 1
        assert m.attempts[load_id] <= m.policy.max_attempts
        m.waiting.add(load_id)
    elif d.outcome is Outcome.DEAD_LETTERED:
        assert m.attempts[load_id] == m.policy.max_attempts, d
        assert d.reason.startswith("MAX_ATTEMPTS_")
        m.reached[f"DEAD_LETTERED {d.reason}"] += 1
    elif d.outcome is Outcome.CANCELLED:
        assert isinstance(e, LoadCancelled)
        assert e.load_id == load_id
    if d.outcome in FINAL_OUTCOMES:
        m.finals[load_id] = d.outcome
        m.waiting.discard(load_id)
        m.deferred.discard(load_id)
        m.tried.pop(load_id, None)


def _check_assignment(m: Model, d: Decision, spec: LoadSpec) -> None:
    """An assignment goes to an agent AVAILABLE now, passing every hard constraint with the
    loads it holds at this moment, and back to one the load was taken from only when no
    other agent could take it."""
    agent, p = d.agent_id, m.policy
    assert agent is not None
    assert d.load_id in m.waiting, f"{d.load_id} assigned while not waiting"
    assert d.load_id not in m.deferred, f"{d.load_id} assigned while deferred"
    assert m.status[agent] is AgentStatus.AVAILABLE, (
        f"{d.load_id} assigned to {agent}, which is {m.status[agent].name}"
    )
    prof = m.profiles[agent]
    assert m.active[agent] < prof.capacity, "over capacity"
    assert spec.required <= prof.capabilities
    assert prof.clearance >= spec.sensitivity
    assert spec.region in prof.regions
    assert agent not in p.tenant_deny.get(spec.tenant, frozenset()), "to a denied agent"
    assert m.fits(agent, spec), "over the risk budget or the abstention threshold"
    quota = p.tenant_quotas.get(spec.tenant)
    assert quota is None or m.running[spec.tenant] < quota, "over the tenant quota"
    assert d.ack_by_ms == m.now + p.ack_timeout_ms
    feasible = [a for a in m.profiles if m.fits(a, spec)]
    tried = m.tried.get(d.load_id, [])
    untried = [a for a in feasible if a not in tried]
    if untried:
        assert agent in untried, f"back to {agent}, which had it, while {untried} could take it"
    else:
        if agent in tried:
            m.reached["back to a tried agent"] += 1
        assert dict(d.excluded)["tried"] == 0
    if d.reason != "BATCH_OPTIMAL":  # (a batch counts its candidates before it assigns)
        assert d.candidates == len(untried or feasible), (d, feasible, tried)
    if dict(d.excluded)["tenant_deny"]:
        m.reached["a deny rule excluded an agent"] += 1


def _check_shed(m: Model, d: Decision, e: Event, spec: LoadSpec,
                waiting_before: dict[str, Priority]) -> None:  # fmt: skip
    """Shedding at the limit (README, Backpressure): the newcomer itself when no load of a
    less important class waits, else the victim of the least important class; never
    critical, never one more important than the newcomer. Or a load waiting past its
    deadline by the policy's time (never critical either)."""
    assert spec.priority is not Priority.CRITICAL, f"shed critical load {d.load_id}"
    assert d.load_id not in m.current, "shed a load in flight"
    m.reached[f"SHED {d.reason}"] += 1
    if d.reason == "EXPIRED":
        after = m.policy.expire_after_deadline_ms
        assert isinstance(e, Tick), f"expired on {type(e).__name__}"
        assert d.load_id in m.waiting  # (maybe requeued by the same tick)
        assert after is not None
        assert spec.deadline_ms is not None
        assert spec.deadline_ms + after < m.now, "expired before its time"
        return
    assert isinstance(e, LoadArrived), f"shed on {type(e).__name__}"
    assert len(waiting_before) >= m.policy.max_pending or d.load_id != e.load.load_id, (
        "the newcomer was shed below the limit"
    )
    newcomer = e.load.priority
    less = [i for i in m.waiting if m.specs[i].priority > max(newcomer, spec.priority)]
    if d.reason == "QUEUE_FULL":
        assert d.load_id == e.load.load_id
        assert not less, f"shed the newcomer while {less} (less important) wait"
    else:
        assert d.reason == "QUEUE_FULL_EVICTED", d.reason
        assert d.load_id in waiting_before, "evicted a load that was not waiting"
        assert spec.priority >= newcomer, "evicted a load more important than the newcomer"
        assert not less, f"evicted {d.load_id} while {less} (less important) wait"


def _check_taken_back(m: Model, d: Decision, e: Event, offer: Offer) -> None:
    """Each reason to take an offer back holds when it is given."""
    reason = d.reason.removeprefix("MAX_ATTEMPTS_")
    if reason == "ACK_TIMEOUT":
        assert isinstance(e, Tick)
        assert not offer.accepted, "an accepted offer timed out"
        assert offer.ack_by < m.now, "timed out before its time"
    elif reason == "AGENT_LOST":
        assert isinstance(e, Tick)
        assert m.status[offer.agent] in (AgentStatus.LOST, AgentStatus.OFFLINE)
    elif reason == "AGENT_OFFLINE":
        assert isinstance(e, AgentStatusChanged)
        assert e.agent_id == offer.agent
    elif reason in ("DECLINED", "FAILED_RETRYABLE", "SUCCESS", "FAIL", "BLOCKED", "NEED_INPUT"):
        assert isinstance(e, TaskReported)
        assert e.load_id == d.load_id
    else:
        assert reason == "CANCELLED", d.reason


def _agrees(state: PoolState, m: Model, e: Event) -> None:
    """After each event, the core's books agree with the model and with themselves."""
    t = state.agents
    assert set(state.pending) == m.waiting
    assert set(state.in_flight) == set(m.current)
    assert {i for i, ls in state.pending.items() if ls.status is LoadStatus.DEFERRED} == m.deferred
    assert {k: v for k, v in state.running.items() if v} == +m.running
    for agent, row in t.row.items():
        assert AgentStatus(int(t.status[row])) is m.status[agent], agent
        assert int(t.active[row]) == m.active[agent], agent
        assert float(t.risk_used[row]) == m.risk_used[agent], agent
        assert t.active[row] == len(state.held.get(agent, {}))
    if isinstance(e, Tick):  # every offer past its time was taken back
        late = [i for i, o in m.current.items() if not o.accepted and o.ack_by < m.now]
        assert not late, f"offers of {late} outlived their ack timeout"
    if len(m.waiting) >= state.policy.max_pending:
        m.reached["queue at its limit"] += 1
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
    waits = {t for t, n in backlog.items() if n > stuck[t]}
    assert state.contending == waits | {t for t, n in state.running.items() if n}
    ranked = state.ranked or {}  # (None: not ranked now)
    assert state.ranked is None or waits <= ranked.keys()  # (others go as they surface)
    assert sorted(state.by_service) == sorted((v, t) for t, v in ranked.items())
    for t, v in ranked.items():
        assert v <= state.served.get(t, 0.0)  # (service only grows: a rank is a floor)
    assert sum(state.running.values()) == len(state.in_flight)
    for extra in (None, {"t1": 1}, {"t1": 1, "t9": 1}, {"t0": 2, "t9": 1}):  # (as a batch)
        held = state._held(0, extra, also=frozenset({"t8"}))
        asked = {t for t in (*TENANTS, "t8", "t9", 0) if t in held}
        assert asked == _held_by_definition(state, extra) | {"t8"}, extra
    p = state.policy
    for extra in (None, {"t0": 1}, {"t0": 1, "t9": 1}):  # (tenants at their quota, kept)
        at = {t for t, q in p.tenant_quotas.items()
              if state.running.get(t, 0) + (extra or {}).get(t, 0) >= q}  # fmt: skip
        assert set(state._at_quota(extra)) == at, extra
    for cls in (Priority.LOW, Priority.NORMAL, Priority.HIGH):  # (whose load a full queue sheds)
        shares = [(backlog[t] / p.tenant_weight(t), t) for t, c in by_class if c is cls]
        assert state._heaviest(cls) == max(shares, default=None), cls
    for tenant in ("t0", "t1", "t9"):  # (the weighted share a low arrival is deferred at)
        weights = math.fsum(p.tenant_weight(t) for t in {*backlog, tenant})
        hog = (backlog[tenant] + 1) * weights >= (len(state.pending) + 1) * p.tenant_weight(tenant)
        assert state._queue_hog(tenant) == hog, tenant
    parked = {ls.spec.load_id for _, loads in state.parked.values() for ls in loads}
    _parked_only_without_an_agent(state)
    parked |= {ls.spec.load_id for ls in state.aside}  # (the next batch looks at them again)
    backing_off = {load_id for _, _, load_id in state.backing_off}
    for load_id, ls in state.pending.items():
        if ls.status is LoadStatus.PENDING:
            assert (
                load_id in state.queue
                or load_id in parked
                or load_id in backing_off
                or (load_id in state.unqualified)
            ), f"{load_id} waits where nothing will try it again"


def _held_by_definition(state: PoolState, extra: dict[str, int] | None) -> frozenset[str]:
    """``PoolState._held`` with no agent open, over every tenant (what it keeps counts of)."""
    p = state.policy
    if not p.fair_share_reserve * state.agents.available_count:
        return frozenset()
    running = Counter(state.running) + Counter(extra or {})
    waits = {t for t, n in state.backlog.items() if n > state.stuck.get(t, 0)}
    active = running.keys() | waits | (extra or {}).keys()
    if len(active) < 2:
        return frozenset()
    weights = math.fsum(p.tenant_weight(t) for t in active) / 1.25
    total = sum(running.values())
    return frozenset(t for t, n in running.items() if n * weights > total * p.tenant_weight(t))


def _parked_only_without_an_agent(state: PoolState) -> None:
    """No load waits parked while an open agent passes its hard constraints (held by hard
    affinity: its session's agent), but for one whose backoff or affinity wait just ended
    (it goes back at the next event). A kind's parked loads woke only with their first
    load's kind, and a cancelled first load left the others parked for ever (review)."""
    p, t = state.policy, state.agents
    due = {load_id for at, _, load_id in state.backing_off if at <= state.now_ms}
    for _, loads in state.parked.values():
        for ls in loads:
            load_id = ls.spec.load_id
            if (state.pending.get(load_id) is not ls or ls.status is not LoadStatus.PENDING
                    or load_id in state.queue or load_id in due):  # fmt: skip
                continue
            kept = ls.affinity_row
            row, waiting = state._affinity(ls)
            ls.affinity_row = kept  # (explain's; the check changes nothing)
            rows, _ = t.feasible(ls.spec, p, p.tenant_deny.get(ls.spec.tenant, frozenset()),
                                 ls.tried)  # fmt: skip
            if waiting:
                rows = rows[rows == row]
            assert not rows.size, f"{load_id} is parked while {t.ids[int(rows[0])]} can take it"
    # Set aside with its kind (the queue's closed lanes): no open agent is of its kind.
    closed = state.queue.closed()
    for load_id, ls in state.pending.items():
        if ls.status is LoadStatus.PENDING and state.queue.lane(load_id) in closed:
            _, excluded = t.feasible(ls.spec, p)
            of_kind = t.n - sum(n for _, n in excluded[:5])  # (status to region)
            assert not of_kind, f"{load_id} is set aside while an open agent is of its kind"
    # Set aside, open lane or closed: some agent could take it (else it is unqualified).
    for load_id in state.queue.held():
        spec = state.pending[load_id].spec
        denied = p.tenant_deny.get(spec.tenant, frozenset())
        assert t.qualified(spec, p, denied).size, f"{load_id}: no agent could take it"


SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(SETTINGS, max_examples=600)
@given(scripts, st.sampled_from(GREEDY))
def test_invariants_hold_over_random_event_sequences(
    script: list[tuple[Any, ...]], policy: Policy
) -> None:
    _run(script, policy)


@settings(SETTINGS, max_examples=400)
@given(scripts, st.sampled_from(BATCHED))
def test_invariants_hold_in_batched_mode(script: list[tuple[Any, ...]], policy: Policy) -> None:
    _run(script, policy)


@settings(SETTINGS, max_examples=50)
@given(scripts, st.sampled_from([GREEDY[0], BATCHED[0]]))
def test_the_same_events_give_the_same_decisions(
    script: list[tuple[Any, ...]], policy: Policy
) -> None:
    decisions, _, history, _ = _run(script, policy)
    fresh = PoolState("p", policy)
    replayed = [d for e in history for d in fresh.apply(e)]
    assert replayed == decisions


@settings(SETTINGS, max_examples=50)
@given(scripts, st.sampled_from([GREEDY[0], SHARES, BATCHED[0]]))
def test_a_pool_pickled_between_events_decides_as_one_never_pickled(
    script: list[tuple[Any, ...]], policy: Policy
) -> None:
    """(A worker's snapshots pickle its pools: one whose queue had filled did not pickle, a
    review of 94a4d96 found.)"""
    decisions, _, history, _ = _run(script, policy)
    pool, replayed = PoolState("p", policy), []
    for i, e in enumerate(history):
        if i % 7 == 3:
            pool = pickle.loads(pickle.dumps(pool, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301 - its own
        replayed += pool.apply(e)
    assert replayed == decisions


@settings(SETTINGS, max_examples=150)
@given(scripts, st.sampled_from([GREEDY[0], BATCHED[0], ONE_TRY]))
def test_the_decisions_alone_account_for_every_agent_hold(
    script: list[tuple[Any, ...]], policy: Policy
) -> None:
    """Readers of the log (audit, capacity checks) see each hold taken and given back."""
    decisions, state, _, _ = _run(script, policy, drain=False)  # (holds left at the end too)
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


# What the scripts must reach, and in at least what share of examples: without it, the
# properties about shedding, deferral and dead letters would hold of nothing. The shares
# are about half the least seen in 15 draws of the examples below (the mean is 2-4 times
# that): about 3% of the examples end in a dead letter after ack timeouts, 8% after
# declines, 30% shed a newcomer at the limit.
COVERAGE_RUNS, COVERAGE_EXAMPLES = 6, 50
COVERAGE_SETTINGS = settings(
    max_examples=COVERAGE_EXAMPLES, database=None, deadline=None, phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
REACHED = {
    "SHED QUEUE_FULL": 0.3,
    "SHED QUEUE_FULL_EVICTED": 0.15,
    "SHED EXPIRED": 0.07,
    "DEFERRED": 0.12,
    "critical arrival, queue full": 0.15,
    "critical arrival, queue full of critical loads": 0.12,
    "DEAD_LETTERED MAX_ATTEMPTS_DECLINED": 0.02,
    "DEAD_LETTERED MAX_ATTEMPTS_FAILED_RETRYABLE": 0.02,
    "DEAD_LETTERED MAX_ATTEMPTS_ACK_TIMEOUT": 0.01,
    "DEAD_LETTERED MAX_ATTEMPTS_AGENT_LOST": 0.04,
    "queue at its limit": 0.5,
    "stale report rejected": 0.5,
    "back to a tried agent": 0.1,
    "a deny rule excluded an agent": 0.05,
}


def test_the_scripts_reach_what_the_properties_are_about() -> None:
    """The same strategies, drawn the same way every run: a few runs of hypothesis from
    fixed seeds (the examples of one run are much alike, so one run alone sometimes
    misses what most runs reach), no database."""
    reached: Counter[str] = Counter()

    def run(script: list[tuple[Any, ...]], policy: Policy) -> None:
        reached.update(set(_run(script, policy)[3].reached))

    for k in range(COVERAGE_RUNS):
        test = given(scripts, st.sampled_from([*GREEDY, *BATCHED]))(run)
        seed(k)(COVERAGE_SETTINGS(test))()
    total = COVERAGE_RUNS * COVERAGE_EXAMPLES
    short = {what: reached[what] for what, share in REACHED.items()
             if reached[what] < share * total}  # fmt: skip
    assert not short, f"reached in too few of {total} examples: {short} (all: {reached})"
