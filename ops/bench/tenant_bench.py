"""Tenant benchmark: the core's cost per event as the tenants with loads waiting grow.

    .venv/bin/python ops/bench/tenant_bench.py [--tenants 10 100 1000] [--results 3000]

A pool of 100 agents of capacity 1, all busy, with 5 loads per tenant waiting
(of every class below critical, half with a deadline far ahead): each task
result frees an agent, which takes the next load in the order of service
(least-served tenant first; the fair-share reserve is in force, every agent
being busy). Prints microseconds per result and the ratio to the fewest
tenants, measured in the same run.
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


def per_result_us(tenants: int, results: int) -> float:
    """Microseconds per task result, with ``tenants`` tenants' loads waiting."""
    huge = 10**9
    state = PoolState("bench", Policy(max_pending=huge, high_watermark=huge, low_watermark=huge,
                                      ack_timeout_ms=huge, heartbeat_timeout_ms=huge))  # fmt: skip
    profile = AgentProfile(
        capabilities=frozenset({"x"}), capacity=1, personality=(1.0, 0.0), risk_budget=1e9,
        abstention_threshold=1.0, clearance=Sensitivity.RESTRICTED, regions=frozenset({"eu"}),
    )  # fmt: skip
    for i in range(AGENTS):
        state.apply(AgentRegistered(f"r{i}", f"a{i}", 1, 0, profile))
        state.apply(AgentStatusChanged(f"u{i}", f"a{i}", 2, 0, AgentStatusKind.AVAILABLE))
    running: list[Decision] = []
    for j in range(AGENTS + tenants * WAITING_PER_TENANT + results):
        spec = LoadSpec(
            load_id=f"L{j}", tenant=f"t{j % tenants}", priority=Priority(1 + j % 3),
            required=frozenset({"x"}), intent=(1.0, 0.0), sensitivity=Sensitivity.PUBLIC,
            region="eu", created_ms=0, deadline_ms=huge if j % 2 else None, duration_ms=10,
            risk=0.0,
        )  # fmt: skip
        running += [d for d in state.apply(LoadArrived(f"k{j}", 0, spec))
                    if d.outcome is Outcome.ASSIGNED]  # fmt: skip
    start = time.perf_counter()
    for k in range(results):
        d = running[k]
        done = TaskReported(f"res{k}", 1, d.decision_id, d.load_id, str(d.agent_id),
                            TaskOutcome.SUCCESS, False)  # fmt: skip
        running += [x for x in state.apply(done) if x.outcome is Outcome.ASSIGNED]
    return (time.perf_counter() - start) / results * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--results", type=int, default=3000)
    args = parser.parse_args()
    base = None
    print(f"{'tenants':>8} {'us/result':>10} {'x fewest':>9}")
    for tenants in args.tenants:
        us = per_result_us(tenants, args.results)
        base = base or us
        print(f"{tenants:>8} {us:>10.0f} {us / base:>8.1f}x")


if __name__ == "__main__":
    main()
