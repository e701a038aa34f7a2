"""Decision quality: greedy and batched total match score against an upper bound.

    .venv/bin/python ops/bench/quality_bench.py [--agents 1000] [--duration 20] [--seed 1]

Both modes see the same agents and the same arrivals (the simulator draws them
before the run). The reference is an upper bound on what any assignment could
score for each load: its best score against idle, available agents (balance
term 1), with the speed term at full tightness and the affinity term granted.
The offline optimum under real capacity is at most this bound, so each
ratio printed is a lower bound on the ratio to the optimum.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dispatcher.core import CONSTRAINTS, LoadSpec, Policy
from dispatcher.core.agents import AgentStatus, AgentTable
from dispatcher.sim import SCENARIOS, SIM_POLICY
from dispatcher.sim.engine import Simulation, _agents


def bound(table: AgentTable, spec: LoadSpec, policy: Policy) -> float:
    loose = dataclasses.replace(policy, disabled_constraints=frozenset({"status", "capacity"}))
    when = spec.deadline_ms if spec.deadline_ms is not None else spec.created_ms
    scored = table.evaluate(spec, loose, when)
    best = float(scored.total.max()) if len(scored.rows) else 0.0
    return best + (policy.weight("affinity") if spec.session_id else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sc = SCENARIOS["steady"].scaled(agents=args.agents, duration_s=args.duration)
    runs = {}
    for name, policy in (("greedy", SIM_POLICY),
                         ("batched", dataclasses.replace(SIM_POLICY, mode="batched",
                                                         batch_window_ms=200))):  # fmt: skip
        sim = Simulation(sc, args.seed, policy)
        t0 = time.perf_counter()
        report = sim.run(None)
        runs[name] = (sim, report, time.perf_counter() - t0)
    # The idle table: the same agents, all available, nothing running.
    table = AgentTable()
    for agent_id, profile in _agents(sc, np.random.default_rng(args.seed)):
        row = table.upsert(agent_id, 1, 0, profile)
        table.set_status(row, AgentStatus.AVAILABLE)
    specs = {ls.spec.load_id: ls.spec for ls in runs["greedy"][0].state.loads.values()}
    bounds = {i: bound(table, spec, SIM_POLICY) for i, spec in specs.items()}
    common = set(runs["greedy"][0].world.first_score) & set(runs["batched"][0].world.first_score)
    print(f"steady, {args.agents} agents, {args.duration:g}s, seed {args.seed}; "
          f"constraints {', '.join(CONSTRAINTS)}")  # fmt: skip
    header = ("mode", "assigned", "score", "bound", "ratio", "common", "wall s")
    print("{:<8} {:>9} {:>10} {:>10} {:>7} {:>9} {:>7}".format(*header))
    for name, (sim, _, wall) in runs.items():
        got = sim.world.first_score
        total, ref = sum(got.values()), sum(bounds[i] for i in got)
        on_common = sum(got[i] for i in common) / sum(bounds[i] for i in common)
        print(f"{name:<8} {len(got):>9} {total:>10.1f} {ref:>10.1f} {total / ref:>7.2%} "
              f"{on_common:>9.2%} {wall:>7.1f}")  # fmt: skip
    print(
        "ratio = total score / upper bound over the loads each mode assigned; "
        "common = the same over loads both assigned"
    )


if __name__ == "__main__":
    main()
