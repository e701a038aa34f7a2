"""Tenant benchmark: the core's cost per event as the tenants with loads waiting grow.

    .venv/bin/python ops/bench/tenant_bench.py [--tenants 10 100 1000 10000] [--results 3000]
                                               [--agents 100] [--named]

A pool of 100 (``--agents``) agents of capacity 1, all busy, with 5 loads per tenant waiting
(of every class below critical, half with a deadline far ahead). Prints, in
microseconds per event, and as a ratio to the fewest tenants, measured in the
same run:
- result: each task result frees an agent, which takes the next load in the
  order of service (least-served tenant first; the fair-share reserve is in
  force, every agent being busy);
- return: a load of a tenant with none waiting arrives (it starts at the least
  service of the tenants waiting) and waits;
- low: a low-priority load of a waiting tenant arrives above the high watermark
  (it is deferred if its tenant holds its weighted share of the waiting loads);
- full: a load arrives at a full queue (the newest load of the tenant holding the
  most waiting loads for its weight is shed for it).

With ``--named`` the policy names every tenant: a weight (1, 2 or 3) and a quota (more
loads than it ever runs here), so what goes over the tenants a policy names is in the
figures too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dispatcher.core import (
    AgentProfile,
    AgentRegistered,
    AgentStatusChanged,
    AgentStatusKind,
    Decision,
    LoadArrived,
    LoadSpec,
    Outcome,
    Policy,
    PoolState,
    Priority,
    Sensitivity,
    TaskOutcome,
    TaskReported,
)

AGENTS, WAITING_PER_TENANT = 100, 5
HUGE = 10**9


def busy_pool(
    tenants: int, agents: int, extra: int = 0, *, named: bool = False, **policy: int
) -> tuple[PoolState, list[Decision]]:
    """A pool of ``agents`` busy agents of capacity 1 and ``WAITING_PER_TENANT`` loads of each
    of ``tenants`` tenants waiting (plus ``extra`` more loads, in the same turn), and the
    decisions that assigned the loads in flight; ``named``: the policy gives each tenant a
    weight and a quota."""
    limits = {"max_pending": HUGE, "high_watermark": HUGE, "low_watermark": HUGE} | policy
    names = [f"t{i}" for i in range(tenants)] if named else []
    state = PoolState("bench", Policy(
        ack_timeout_ms=HUGE, heartbeat_timeout_ms=HUGE, **limits,
        tenant_weights={t: 1.0 + i % 3 for i, t in enumerate(names)},
        tenant_quotas=dict.fromkeys(names, HUGE),
    ))  # fmt: skip
    profile = AgentProfile(
        capabilities=frozenset({"x"}), capacity=1, personality=(1.0, 0.0), risk_budget=1e9,
        abstention_threshold=1.0, clearance=Sensitivity.RESTRICTED, regions=frozenset({"eu"}),
    )  # fmt: skip
    for i in range(agents):
        state.apply(AgentRegistered(f"r{i}", f"a{i}", 1, 0, profile))
        state.apply(AgentStatusChanged(f"u{i}", f"a{i}", 2, 0, AgentStatusKind.AVAILABLE))
    running: list[Decision] = []
    for j in range(agents + tenants * WAITING_PER_TENANT + extra):
        running += [d for d in state.apply(LoadArrived(f"k{j}", 0, load(j, f"t{j % tenants}")))
                    if d.outcome is Outcome.ASSIGNED]  # fmt: skip
    return state, running


def load(j: int, tenant: str, priority: Priority | None = None) -> LoadSpec:
    return LoadSpec(
        load_id=f"L{j}", tenant=tenant, priority=priority or Priority(1 + j % 3),
        required=frozenset({"x"}), intent=(1.0, 0.0), sensitivity=Sensitivity.PUBLIC,
        region="eu", created_ms=0, deadline_ms=HUGE if j % 2 else None, duration_ms=10, risk=0.0,
    )  # fmt: skip


def per_result_us(
    tenants: int, results: int, agents: int = AGENTS, *, named: bool = False
) -> float:
    """Microseconds per task result, with ``tenants`` tenants' loads waiting: each frees an
    agent, which takes the next load in the order of service."""
    state, running = busy_pool(tenants, agents, results, named=named)
    start = time.perf_counter()
    for k in range(results):
        d = running[k]
        done = TaskReported(f"res{k}", 1, d.decision_id, d.load_id, str(d.agent_id),
                            TaskOutcome.SUCCESS, False)  # fmt: skip
        running += [x for x in state.apply(done) if x.outcome is Outcome.ASSIGNED]
    return (time.perf_counter() - start) / results * 1e6


def per_return_us(
    tenants: int, arrivals: int, agents: int = AGENTS, *, named: bool = False
) -> float:
    """Microseconds per arrival of a load of a tenant with none waiting (it starts at the
    least service of those waiting), with ``tenants`` tenants' loads waiting."""
    state, _ = busy_pool(tenants, agents, named=named)
    start = time.perf_counter()
    for k in range(arrivals):
        state.apply(LoadArrived(f"new{k}", 1, load(HUGE + k, f"new{k}")))
    return (time.perf_counter() - start) / arrivals * 1e6


def per_low_us(tenants: int, arrivals: int, agents: int = AGENTS, *, named: bool = False) -> float:
    """Microseconds per low-priority arrival above the high watermark (deferred if its
    tenant holds its weighted share of the waiting loads), with ``tenants`` tenants'
    loads waiting."""
    state, _ = busy_pool(tenants, agents, high_watermark=0, low_watermark=0, named=named)
    start = time.perf_counter()
    for k in range(arrivals):
        spec = load(HUGE + k, f"t{k % tenants}", Priority.LOW)
        state.apply(LoadArrived(f"low{k}", 1, spec))
    return (time.perf_counter() - start) / arrivals * 1e6


def per_full_us(tenants: int, arrivals: int, agents: int = AGENTS, *, named: bool = False) -> float:
    """Microseconds per arrival at a full queue (the newest load of the tenant holding the
    most waiting loads for its weight is shed for it), with ``tenants`` tenants' loads
    waiting."""
    state, _ = busy_pool(tenants, agents, max_pending=tenants * WAITING_PER_TENANT, named=named)
    start = time.perf_counter()
    for k in range(arrivals):
        spec = load(HUGE + k, f"new{k % 7}", Priority.NORMAL)
        state.apply(LoadArrived(f"full{k}", 1, spec))
    return (time.perf_counter() - start) / arrivals * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--results", type=int, default=3000)
    parser.add_argument("--agents", type=int, default=AGENTS, help="busy agents")
    parser.add_argument("--named", action="store_true",
                        help="the policy names each tenant: a weight and a quota")  # fmt: skip
    args = parser.parse_args()
    base: list[float] = []
    columns = {"result": per_result_us, "return": per_return_us, "low": per_low_us,
               "full": per_full_us}  # fmt: skip
    print(f"{'tenants':>8}" + "".join(f" {'us/' + c:>10} {'x fewest':>9}" for c in columns))
    for tenants in args.tenants:
        row = [measure(tenants, args.results, args.agents, named=args.named)
               for measure in columns.values()]  # fmt: skip
        base = base or row
        print(
            f"{tenants:>8}"
            + "".join(f" {us:>10.0f} {us / b:>8.1f}x" for us, b in zip(row, base, strict=True))
        )


if __name__ == "__main__":
    main()
