"""Decision quality: greedy and batched total match score against the offline optimum.

    .venv/bin/python ops/bench/quality_bench.py [--agents 1000] [--duration 20] [--seed 1]

Both modes see the same agents and the same arrivals (the simulator draws them
before the run; here every agent accepts and finishes every load, so each load
runs once and the score measures the matching alone). The reference is the
hindsight optimum of the same arrivals as a linear program (scipy's HiGHS),
time-indexed: every load may go to any agent its hard constraints allow (its
best ``--candidates`` of them), scored as at its arrival with the agent idle
(balance term 1, affinity not counted), and at every instant ``--step-ms``
apart no agent runs more loads than its capacity. (Bounding the balance term
better, with one variable per slot of an agent, took 10x longer and lowered
the bound by under 2%.) Each load is counted as
running over the part of its run every schedule of this class shares: one
that starts it within ``--start-within-ms`` of its arrival (the online modes'
loads that started later are counted and printed), on a run no shorter than
exp(-4 x the simulator's run noise) of duration / speed (all but about 1 in
30,000 runs). The LP is a relaxation (fractional, and a sample of instants), so
its optimum is an upper bound on any such schedule's score; "best" is the
looser bound of each load with its best agent, capacity ignored.

Two ratios are printed per mode: on the full score (the online modes pay the
balance term at the agents' real utilisation, the reference never does), and
on the pair score, the full score less the terms that depend on earlier
decisions (balance, affinity): what the pairing itself is worth. A second run
sets those terms' weights to 0, so the online modes optimise exactly what the
reference does.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_array

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dispatcher.core import Event, LoadArrived, LoadSpec, Policy
from dispatcher.core.agents import AgentStatus, AgentTable
from dispatcher.sim import SCENARIOS, SIM_POLICY
from dispatcher.sim.engine import ACCEPT_DELAY_MS, RUN_NOISE, Simulation, _agents
from dispatcher.sim.scenarios import Scenario

# Terms that depend on what was decided before (the agent's load, the session's last
# agent), not on the pair: left out of the pair score.
HISTORY_TERMS = ("balance", "affinity")


def pairs(
    table: AgentTable, spec: LoadSpec, policy: Policy, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` agents for ``spec`` at its arrival, by the pair score."""
    loose = dataclasses.replace(policy, disabled_constraints=frozenset({"status", "capacity"}))
    scored = table.evaluate(spec, loose, spec.created_ms)
    pair = scored.total - sum(scored.weighted.get(t, 0.0) for t in HISTORY_TERMS)
    keep = np.argsort(-pair, kind="stable")[:k]
    return scored.rows[keep], pair[keep]


def optimum(
    table: AgentTable, specs: list[LoadSpec], policy: Policy, *, k: int, step_ms: int,
    start_within_ms: int,
) -> tuple[float, float, float]:  # fmt: skip
    """The time-indexed LP optimum: (full score, pair score, loads assigned)."""
    rows_l, cols, pair_v, begin_v, end_v = [], [], [], [], []
    shortest = math.exp(-4 * RUN_NOISE)
    for li, spec in enumerate(specs):
        agents, pair = pairs(table, spec, policy, k)
        rows_l.append(np.full(len(agents), li))
        cols.append(agents)
        pair_v.append(pair)
        # Running surely: from the latest start to the earliest end of the class.
        start = spec.created_ms + ACCEPT_DELAY_MS
        begin_v.append(np.full(len(agents), start + start_within_ms))
        end_v.append(start + shortest * spec.duration_ms / table.speed[agents])
    load_of, agent_of, pair_s = (np.concatenate(x) for x in (rows_l, cols, pair_v))
    first = np.ceil(np.concatenate(begin_v) / step_ms).astype(np.int64)  # the instants
    last = np.ceil(np.concatenate(end_v) / step_ms).astype(np.int64)  # [first, last) of a pair
    spans = np.maximum(last - first, 0)
    var = np.repeat(np.arange(len(load_of)), spans)
    instant = np.repeat(first - np.cumsum(spans) + spans, spans) + np.arange(spans.sum())
    # Rows: one per load (at most one agent), then one per (agent, instant) in use.
    instants = int(last.max()) + 1
    used, row = np.unique(agent_of[var] * instants + instant, return_inverse=True)
    a = coo_array(
        (np.ones(len(load_of) + len(var)),
         (np.concatenate([load_of, len(specs) + row]),
          np.concatenate([np.arange(len(load_of)), var]))),
        shape=(len(specs) + len(used), len(load_of)),
    ).tocsr()  # fmt: skip
    cap = table.capacity[used // instants].astype(float)
    b = np.concatenate([np.ones(len(specs)), cap])
    full = pair_s + policy.weight("balance")  # (as if each agent were idle)
    res = linprog(-full, A_ub=a, b_ub=b, bounds=(0, 1), method="highs")
    if res.status != 0:
        raise SystemExit(f"the LP did not solve: {res.message}")
    x = res.x
    return float(full @ x), float(pair_s @ x), float(x.sum())


def best_pairs(table: AgentTable, specs: list[LoadSpec], policy: Policy) -> tuple[float, float]:
    """The upper bound with no capacity at all: (full, pair) score of each load with its
    best agent."""
    best = [float(pairs(table, spec, policy, 1)[1].max(initial=0.0)) for spec in specs]
    return sum(best) + policy.weight("balance") * len(specs), sum(best)


class _Recording(Simulation):
    """The simulation, keeping each load's spec as it arrived (the pool keeps only what
    decisions name of a finished load)."""

    def __init__(self, sc: Scenario, seed: int, policy: Policy) -> None:
        super().__init__(sc, seed, policy)
        self.specs: dict[str, LoadSpec] = {}

    def _event(self, t: int, item: Any) -> Event | None:
        event = super()._event(t, item)
        if isinstance(event, LoadArrived):
            self.specs.setdefault(event.load.load_id, event.load)
        return event


def compare(label: str, policy: Policy, args: argparse.Namespace) -> None:
    sc = SCENARIOS["steady"].scaled(agents=args.agents, duration_s=args.duration)
    runs: dict[str, tuple[_Recording, float]] = {}
    sc = dataclasses.replace(sc, accept_share=1.0, success_share=1.0)  # each load runs once
    for name, p in (("greedy", policy),
                    ("batched", dataclasses.replace(policy, mode="batched",
                                                    batch_window_ms=200))):  # fmt: skip
        sim = _Recording(sc, args.seed, p)
        t0 = time.perf_counter()
        sim.run(None)
        runs[name] = (sim, time.perf_counter() - t0)
    table = AgentTable()  # the same agents, all available, nothing running
    for agent_id, profile in _agents(sc, np.random.default_rng(args.seed)):
        row = table.upsert(agent_id, 1, 0, profile)
        table.set_status(row, AgentStatus.AVAILABLE)
    specs = list(runs["greedy"][0].specs.values())
    if not specs:  # (the LP and its bounds need at least one load)
        raise SystemExit(
            f"no load arrived in {args.duration:g}s on {args.agents} agents: "
            "nothing to compare; give a longer --duration or more --agents"
        )
    t0 = time.perf_counter()
    opt_full, opt_pair, opt_n = optimum(table, specs, policy, k=args.candidates,
                                        step_ms=args.step_ms,
                                        start_within_ms=args.start_within_ms)  # fmt: skip
    lp_s = time.perf_counter() - t0
    bound_full, bound_pair = best_pairs(table, specs, policy)
    print(f"\n{label}: steady, {args.agents} agents, {args.duration:g}s, seed {args.seed}, "
          f"{len(specs)} loads; time-indexed LP bound {opt_full:.1f} (pair {opt_pair:.1f}, "
          f"{opt_n:.0f} loads) in {lp_s:.1f}s; each load its best agent {bound_full:.1f} "
          f"(pair {bound_pair:.1f})")  # fmt: skip
    header = ("mode", "assigned", "score", "vs LP", "vs best", "pair", "vs LP", "vs best",
              "late", "wall s")  # fmt: skip
    print("{:<8} {:>9} {:>10} {:>7} {:>7} {:>10} {:>7} {:>7} {:>5} {:>7}".format(*header))
    created = {s.load_id: s.created_ms for s in specs}
    for name, (sim, wall) in runs.items():
        w = sim.world
        full = sum(w.first_score.values())
        pair = full - sum(w.first_history.values())
        late = sum(t - created[i] > args.start_within_ms for i, t in w.first_assigned.items())
        print(f"{name:<8} {len(w.first_score):>9} {full:>10.1f} {full / opt_full:>7.2%} "
              f"{full / bound_full:>7.2%} {pair:>10.1f} {pair / opt_pair:>7.2%} "
              f"{pair / bound_pair:>7.2%} {late:>5} {wall:>7.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--step-ms", type=int, default=100,
                        help="Instants at which the LP bounds the agents' capacity.")  # fmt: skip
    parser.add_argument("--start-within-ms", type=int, default=200,
                        help="The class of schedules bounded: each load started within this "
                        "of its arrival (the batch window).")  # fmt: skip
    args = parser.parse_args()
    compare("the simulator's policy", SIM_POLICY, args)
    pair_only = dict(SIM_POLICY.weights) | dict.fromkeys(HISTORY_TERMS, 0.0)
    compare("the same without history terms (score = pair score)",
            dataclasses.replace(SIM_POLICY, weights=pair_only), args)  # fmt: skip
    print("\nscore: each load's first match; pair: the same less its balance and affinity "
          "parts; late: loads started later than --start-within-ms after arrival (outside the "
          "class the LP bounds)")  # fmt: skip


if __name__ == "__main__":
    main()
