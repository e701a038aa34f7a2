"""Run a scenario through the core on a virtual clock and measure what it decided.

Randomness lives here, seeded, never in the core: the same scenario, seed and
policy give the same events, so the same decisions, byte for byte (the
digest says so).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dispatcher.core import (
    FINAL_OUTCOMES,
    AgentProfile,
    AgentRegistered,
    AgentStatusChanged,
    AgentStatusKind,
    Decision,
    Event,
    LoadArrived,
    LoadSpec,
    Outcome,
    Policy,
    PoolState,
    Priority,
    Sensitivity,
    TaskOutcome,
    TaskReported,
    Tick,
)
from dispatcher.sim.scenarios import Scenario

__all__ = ["SIM_POLICY", "SimReport", "Simulation", "sim_policy", "simulate"]

POOL = "sim"
TICK_MS = 200
HEARTBEAT_MS = 5_000
ACCEPT_DELAY_MS = 20
RUN_NOISE = 0.1  # a run takes duration / speed times lognormal(0, this)
# Timeouts sized to the simulated minutes (the built-in policy is sized for hours).
SIM_POLICY = Policy(ack_timeout_ms=2_000, heartbeat_timeout_ms=15_000, backoff_base_ms=200,
                    backoff_max_ms=5_000, max_pending=50_000, high_watermark=40_000,
                    low_watermark=30_000)  # fmt: skip
# Of a run's wall time, about this share goes to drawing the arrivals before it starts:
# the progress reported while drawing them.
_DRAW_SHARE = 0.2


def sim_policy(sc: Scenario, base: Policy = SIM_POLICY) -> Policy:
    """``base`` with the scenario's tenant weights (over any of its own), so the weights the
    core shares out by are the ones the fairness metrics judge by."""
    return replace(base, tenant_weights=dict(sc.tenants) | dict(base.tenant_weights))


@dataclass
class SimReport:
    scenario: str
    seed: int
    policy_version: int
    digest: str
    decisions: int
    core_seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _World:
    """What the simulator knows about loads, to measure outcomes."""

    arrived: dict[str, tuple[int, Priority, str, int | None]] = field(default_factory=dict)
    first_assigned: dict[str, int] = field(default_factory=dict)
    # When each load was last assigned, while that assignment stands (a requeue drops it).
    assigned: dict[str, int] = field(default_factory=dict)
    finals: dict[str, tuple[Outcome, int, str]] = field(default_factory=dict)  # (.., reason)
    assigned_by_tenant: dict[str, int] = field(default_factory=dict)
    busy_ms: float = 0.0
    decisions: int = 0
    requeues: dict[str, int] = field(default_factory=dict)
    first_score: dict[str, float] = field(default_factory=dict)  # score of each load's first match
    first_history: dict[str, float] = field(default_factory=dict)  # its balance + affinity parts
    retried: set[str] = field(default_factory=set)  # loads requeued (declined, failed, lost, ...)

    def record(self, d: Decision, t: int) -> None:
        """Takes note of decision ``d``, made at ``t``."""
        if d.outcome in FINAL_OUTCOMES:
            self.finals.setdefault(d.load_id, (d.outcome, t, d.reason))
        if d.outcome is Outcome.REQUEUED:
            self.requeues[d.reason] = self.requeues.get(d.reason, 0) + 1
            self.retried.add(d.load_id)
        if d.outcome in (Outcome.REQUEUED, Outcome.DEAD_LETTERED):
            self.assigned.pop(d.load_id, None)  # taken back from its agent: it did not stick
        if d.outcome is not Outcome.ASSIGNED or d.agent_id is None:
            return
        self.assigned[d.load_id] = t
        if d.load_id not in self.first_assigned:  # served once, however often assigned
            self.first_assigned[d.load_id] = t
            self.assigned_by_tenant[d.tenant] = self.assigned_by_tenant.get(d.tenant, 0) + 1
        self.first_score.setdefault(d.load_id, d.score or 0.0)
        parts = dict(d.score_parts)
        self.first_history.setdefault(
            d.load_id, parts.get("balance", 0.0) + parts.get("affinity", 0.0)
        )


def _agents(sc: Scenario, rng: np.random.Generator) -> list[tuple[str, AgentProfile]]:
    vocab = [f"cap{i}" for i in range(sc.capabilities)]
    out = []
    for i in range(sc.agents):
        caps = frozenset(rng.choice(vocab, size=int(rng.integers(3, 7)), replace=False).tolist())
        out.append((f"agent-{i:05d}", AgentProfile(
            capabilities=caps,
            capacity=int(rng.integers(1, 5)),
            personality=tuple(float(x) for x in rng.normal(size=sc.embedding_dim)),
            risk_budget=100.0,
            abstention_threshold=1.0,
            clearance=Sensitivity(int(rng.choice(4, p=[0.1, 0.2, 0.4, 0.3]))),
            regions=frozenset({"eu", "us"}) if rng.random() < 0.9 else frozenset({"eu"}),
            zone=f"z{int(rng.integers(4))}",
            speed=math.exp(rng.normal(0, 0.25)),
        )))  # fmt: skip
    return out


def simulate(
    sc: Scenario,
    seed: int,
    policy: Policy | None = None,
    *,
    progress: Callable[[float], None] | None = None,
) -> SimReport:
    """Runs ``sc`` with ``seed`` under ``policy`` (default ``sim_policy(sc)``); returns the
    metrics and the decision digest. ``progress`` is called with the share of the work done,
    up to 1.0 at the end."""
    return Simulation(sc, seed, sim_policy(sc) if policy is None else policy).run(progress)


_Item = Event | tuple[str, Any]


class Simulation:
    """One run; ``simulate`` is the usual way in, benchmarks look inside."""

    def __init__(self, sc: Scenario, seed: int, policy: Policy) -> None:
        self.sc, self.seed, self.policy = sc, seed, policy
        self.rng = np.random.default_rng(seed)
        self.state = PoolState(POOL, policy)
        self.world = _World()
        self.queue: list[tuple[int, int, _Item]] = []
        self.order = 0
        self.end_ms = int(sc.duration_s * 1000)
        self.agents = _agents(sc, self.rng)
        self.profiles = dict(self.agents)
        self.slots = sum(p.capacity for _, p in self.agents)
        self.crashed: dict[str, int] = {}
        self.warnings: list[str] = []

    def at(self, t: int, item: _Item) -> None:
        heapq.heappush(self.queue, (t, self.order, item))
        self.order += 1

    def run(self, progress: Callable[[float], None] | None) -> SimReport:
        self._schedule_agents()
        for t in range(0, self.end_ms + 1, TICK_MS):
            self.at(t, Tick(t))
        self._schedule_arrivals(progress)
        digest = hashlib.sha256()
        core_s, next_progress = 0.0, 0.0
        while self.queue:
            t, _, item = heapq.heappop(self.queue)
            if t > self.end_ms:
                break
            if progress is not None and t >= next_progress:
                progress(_DRAW_SHARE + (1 - _DRAW_SHARE) * t / self.end_ms)
                next_progress = t + self.end_ms / 100
            event = self._event(t, item)
            if event is None:
                continue
            started = time.perf_counter()
            out = self.state.apply(event)
            core_s += time.perf_counter() - started
            for d in out:
                self.world.decisions += 1
                digest.update(repr(d).encode())
                self._observe(d, t)
        if progress is not None:
            progress(1.0)
        report = SimReport(self.sc.name, self.seed, self.policy.version, digest.hexdigest(),
                           self.world.decisions, core_s, warnings=self.warnings)  # fmt: skip
        report.metrics = _metrics(self, core_s)
        return report

    def live_slot_ms(self) -> int:
        """Slot-time the agents offered: each one's capacity until it crashed, or the end."""
        return sum(p.capacity * min(self.end_ms, self.crashed.get(a, self.end_ms))
                   for a, p in self.agents)  # fmt: skip

    def _schedule_agents(self) -> None:
        for agent_id, profile in self.agents:
            self.at(0, AgentRegistered(f"{agent_id}:reg", agent_id, 1, 0, profile))
            self.at(0, AgentStatusChanged(f"{agent_id}:up", agent_id, 2, 0,
                                          AgentStatusKind.AVAILABLE))  # fmt: skip
            self.at(int(self.rng.integers(HEARTBEAT_MS)), ("heartbeat", (agent_id, 3)))
        # Agents crash in [20%, 60%] of the run, but no later than the heartbeat timeout
        # (and the ticks that notice it) before the end, so the run sees them found.
        end, found_after = self.end_ms, self.policy.heartbeat_timeout_ms + 2 * TICK_MS
        latest = end - found_after
        for agent_id, _ in self.agents:
            if self.rng.random() < self.sc.crash_share:
                u = float(self.rng.uniform(0.2, 0.6))
                if 0.6 * end <= latest or latest <= 0.2 * end:  # (too short: as drawn, and said)
                    self.crashed[agent_id] = int(u * end)
                else:  # squeezed into [20% of the run, latest]
                    lo = 0.2 * end
                    self.crashed[agent_id] = int(lo + (u - 0.2) / 0.4 * (latest - lo))
        if self.crashed and latest <= 0.2 * end:
            self.warnings.append(
                f"{len(self.crashed)} agents crash at 20-60% of the {end / 1000:g} s run, but a "
                f"crashed agent is found only {found_after / 1000:g} s after it goes silent "
                "(the heartbeat timeout, and a tick), so none is found and their work stays "
                f"in flight: simulate at least {math.floor(found_after / 800) + 1} s"
            )

    def _schedule_arrivals(self, progress: Callable[[float], None] | None) -> None:
        """Queues every arrival (their draws come first in the random stream), reporting the
        share drawn as progress (about a fifth of a run's time goes to drawing them)."""
        next_progress = 0.0
        for arrival in self._arrivals():
            self.at(arrival.time_ms, arrival)
            if progress is not None and arrival.time_ms >= next_progress:
                progress(_DRAW_SHARE * arrival.time_ms / self.end_ms)
                next_progress = arrival.time_ms + self.end_ms / 100

    def _arrivals(self) -> Iterator[LoadArrived]:
        sc, rng = self.sc, self.rng
        base_rate = sc.utilisation * self.slots / (sc.mean_duration_ms / 1000)  # loads/s
        shares = np.array(sc.tenant_traffic) / len(sc.tenant_traffic)
        tenants = [name for name, _ in sc.tenants]
        t_ms, n = 0.0, 0
        while True:
            factor = 1.0
            if sc.surge and sc.surge[0] * 1000 <= t_ms < sc.surge[1] * 1000:
                factor = sc.surge[2]
            t_ms += float(rng.exponential(1000.0 / (base_rate * float(shares.sum()) * factor)))
            if t_ms >= self.end_ms:
                return
            tenant = tenants[int(rng.choice(len(tenants), p=shares / shares.sum()))]
            spec = self._load(f"load-{n:07d}", tenant, int(t_ms))
            yield LoadArrived(spec.load_id, spec.created_ms, spec)
            n += 1

    def _load(self, load_id: str, tenant: str, created: int) -> LoadSpec:
        sc, rng = self.sc, self.rng
        duration = int(max(50.0, rng.lognormal(math.log(sc.mean_duration_ms) - 0.125, 0.5)))
        # Required capabilities come from some agent's set, so each load is servable by someone.
        pick = sorted(self.agents[int(rng.integers(len(self.agents)))][1].capabilities)
        k = int(rng.integers(0, 3))
        required = frozenset(rng.choice(pick, size=k, replace=False).tolist()) if k else frozenset()
        deadline = None
        if rng.random() < sc.deadline_share:
            deadline = created + int(duration * rng.uniform(*sc.deadline_slack))
        priority = Priority(int(rng.choice(4, p=sc.priority_mix)))
        return LoadSpec(
            load_id=load_id, tenant=tenant, priority=priority,
            required=required, intent=tuple(float(x) for x in rng.normal(size=sc.embedding_dim)),
            sensitivity=Sensitivity(int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))),
            region="eu" if rng.random() < 0.7 else "us", created_ms=created, deadline_ms=deadline,
            duration_ms=duration, risk=float(rng.uniform(0.1, 2.0)),
            session_id=f"s{int(rng.integers(sc.agents * 2))}" if rng.random() < 0.2 else None,
            zone=f"z{int(rng.integers(4))}",
        )  # fmt: skip

    def _event(self, t: int, item: _Item) -> Event | None:
        if not isinstance(item, tuple):
            if isinstance(item, LoadArrived):
                spec = item.load
                self.world.arrived[spec.load_id] = (t, spec.priority, spec.tenant, spec.deadline_ms)
            return item
        kind, payload = item
        if kind == "heartbeat":
            agent_id, seq = payload
            if self.crashed.get(agent_id, math.inf) <= t:
                return None  # crashed: silence
            self.at(t + HEARTBEAT_MS, ("heartbeat", (agent_id, seq + 1)))
            return AgentStatusChanged(f"{agent_id}:{seq}", agent_id, seq, t,
                                      AgentStatusKind.HEARTBEAT)  # fmt: skip
        report, agent_id = payload
        return None if self.crashed.get(agent_id, math.inf) <= t else report  # vanished mid-task

    def _report(self, t: int, d: Decision, suffix: str, outcome: TaskOutcome) -> None:
        agent = d.agent_id or ""
        report = TaskReported(f"{d.decision_id}:{suffix}", t, d.decision_id, d.load_id, agent,
                              outcome, retryable=True)  # fmt: skip
        self.at(t, ("report", (report, agent)))

    def _observe(self, d: Decision, t: int) -> None:
        sc, rng = self.sc, self.rng
        self.world.record(d, t)
        if d.outcome is not Outcome.ASSIGNED or d.agent_id is None:
            return
        accept_at = t + ACCEPT_DELAY_MS
        if rng.random() >= sc.accept_share:
            self._report(accept_at, d, "no", TaskOutcome.DECLINED)
            return
        self._report(accept_at, d, "ok", TaskOutcome.ACCEPTED)
        ls = self.state.load(d.load_id)  # (it may have finished in the same event)
        assert ls is not None  # noqa: S101 - a load assigned is known for the dedupe window
        spec = ls.spec
        run_ms = int(spec.duration_ms / self.profiles[d.agent_id].speed
                     * rng.lognormal(0, RUN_NOISE))  # fmt: skip
        # Busy within the run, until the agent crashes if it does (its report never comes).
        stop = min(accept_at + run_ms, self.end_ms, self.crashed.get(d.agent_id, math.inf))
        self.world.busy_ms += max(0, stop - accept_at)
        ok = rng.random() < sc.success_share
        self._report(
            accept_at + run_ms, d, "end", TaskOutcome.SUCCESS if ok else TaskOutcome.FAILED
        )


def _waits(w: _World, end_ms: int, where: int, value: object) -> tuple[list[int], int]:
    """The waits (arrival to the assignment that stuck: the last, unless the load was taken
    back from it) of the loads whose arrival record holds ``value`` at ``where`` (1:
    priority, 2: tenant): a load waiting at the end (never assigned, or requeued and not
    assigned again) counts as waiting until then (so the figures are lower bounds), one
    that ended without an assignment standing (shed, dead-lettered) not at all; and how
    many were still waiting."""
    ws, left = [], 0
    for load_id, a in w.arrived.items():
        if a[where] != value:
            continue
        if (assigned := w.assigned.get(load_id)) is not None:
            ws.append(assigned - a[0])
        elif load_id not in w.finals:
            ws.append(end_ms - a[0])
            left += 1
    return ws, left


def _pct(values: list[int], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _max_min_fair(
    demand: dict[str, float], weight: dict[str, float], capacity: float
) -> dict[str, float]:
    """Weighted max-min fair allocation of ``capacity`` (water-filling), in the order of
    ``demand`` (so the float sums, and the result, do not depend on hashing)."""
    alloc = dict.fromkeys(demand, 0.0)
    active = [t for t, d in demand.items() if d > 0]
    left = capacity
    while active and left > 1e-9:
        total_w = sum(weight[t] for t in active)
        share = {t: left * weight[t] / total_w for t in active}
        done = [t for t in active if demand[t] - alloc[t] <= share[t]]
        if not done:
            for t in active:
                alloc[t] += share[t]
            break
        for t in done:
            left -= demand[t] - alloc[t]
            alloc[t] = demand[t]
        active = [t for t in active if t not in done]
    return alloc


def _jain(served: dict[str, float], fair: dict[str, float]) -> float | None:
    """Jain's index of each tenant's service over its fair share (1: all got their share)."""
    x = [served[t] / fair[t] for t in served if fair[t] > 0]
    return (sum(x) ** 2) / (len(x) * sum(v * v for v in x)) if x else None


def _metrics(sim: Simulation, core_s: float) -> dict[str, Any]:
    w, state, end_ms = sim.world, sim.state, sim.end_ms
    decisions = w.decisions
    outcomes: dict[str, int] = {}
    for outcome, _, _ in w.finals.values():
        outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
    expired = sum(1 for o, _, why in w.finals.values() if o is Outcome.SHED and why == "EXPIRED")
    shed = outcomes.get(Outcome.SHED.value, 0) - expired
    waits: dict[str, dict[str, float | None]] = {}
    for prio in Priority:
        ws, left = _waits(w, end_ms, 1, prio)
        waits[prio.name.lower()] = {"n": len(ws) - left, "waiting_at_end": left,
                                    "p50": _pct(ws, 50), "p95": _pct(ws, 95),
                                    "p99": _pct(ws, 99)}  # fmt: skip
    sla: dict[str, float | None] = {}
    sla_clean: dict[str, float | None] = {}  # over loads no agent declined, failed or lost
    for prio in Priority:
        met = due = met_clean = due_clean = 0
        for load_id, (_, p, _, deadline) in w.arrived.items():
            if p is not prio or deadline is None or deadline > end_ms:
                continue
            final = w.finals.get(load_id)
            ok = final is not None and final[0] is Outcome.COMPLETED and final[1] <= deadline
            due, met = due + 1, met + ok
            if load_id not in w.retried:
                due_clean, met_clean = due_clean + 1, met_clean + ok
        sla[prio.name.lower()] = 100.0 * met / due if due else None
        sla_clean[prio.name.lower()] = 100.0 * met_clean / due_clean if due_clean else None
    # Fairness by the weights the core shared out by: the policy's.
    tenants = [name for name, _ in sim.sc.tenants]
    weights = {t: sim.policy.tenant_weight(t) for t in tenants}
    demand = {t: float(sum(1 for a in w.arrived.values() if a[2] == t)) for t in tenants}
    served = {t: float(w.assigned_by_tenant.get(t, 0)) for t in tenants}
    fair = _max_min_fair(demand, weights, sum(served.values()))
    tenant_waits = {}
    for t in tenants:
        ws, left = _waits(w, end_ms, 2, t)
        tenant_waits[t] = {"p50": _pct(ws, 50), "p99": _pct(ws, 99), "waiting_at_end": left}
    live = sim.live_slot_ms()  # slots of crashed agents count until they crashed
    return {
        "loads": {"arrived": len(w.arrived), "assigned": len(w.first_assigned),
                  "shed": shed, "expired": expired, "outcomes": dict(sorted(outcomes.items())),
                  "pending_at_end": len(state.pending), "in_flight_at_end": len(state.in_flight)},
        "requeued": dict(sorted(w.requeues.items())),
        "sla_compliance_pct": sla,
        "sla_without_agent_faults_pct": sla_clean,
        "wait_ms": waits,
        "tenant_wait_ms": tenant_waits,
        "utilisation_pct": 100.0 * min(w.busy_ms, live) / live if live else None,
        "tenant_share": {t: served[t] / max(1.0, sum(served.values())) for t in tenants},
        "jain_weighted": _jain(served, fair),
        # Each load's first assignment: a load is worth its match once, however often it
        # was assigned again after a decline, failure or lost agent.
        "total_match_score": sum(w.first_score.values()),
        "decisions": decisions,
        "decisions_per_s": decisions / core_s if core_s else None,
    }  # fmt: skip
