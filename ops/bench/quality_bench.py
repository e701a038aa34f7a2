"""Decision quality: greedy and batched total match score against the offline optimum.

    .venv/bin/python ops/bench/quality_bench.py [--agents 1000] [--duration 20] [--seed 1]

Both modes see the same agents and the same arrivals (the simulator draws them
before the run). The reference is the hindsight optimum of the same arrivals,
solved as a linear program (scipy's HiGHS): every load may go to any agent its
hard constraints allow (its best ``--candidates`` of them), scored as it would
be at its arrival time with the agent idle (balance term 1, affinity not
counted); each agent's slots carry at most capacity x (the run + the longest
piece of work) of work (duration / speed) over the whole run. That LP is a
relaxation (fractional, work is fluid), so it is an upper bound; so is the
looser "bound" printed beside it, each load with its best agent, capacity
ignored. (With ``--window-ms``, the capacity applies per window of arrivals
instead: tighter, but no longer a bound, since work spills from one window
into the next; it is reported as a heuristic reference.)

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
from dispatcher.sim.engine import Simulation, _agents
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
    table: AgentTable, specs: list[LoadSpec], policy: Policy, *, k: int, window_ms: int
) -> tuple[float, float, float]:
    """The LP optimum: (full score, pair score, loads assigned) of the hindsight assignment."""
    rows_l, cols, pair_v, work_v = [], [], [], []
    for li, spec in enumerate(specs):
        agents, pair = pairs(table, spec, policy, k)
        rows_l.append(np.full(len(agents), li))
        cols.append(agents)
        pair_v.append(pair)
        work_v.append(spec.duration_ms / table.speed[agents])
    load_of, agent_of = np.concatenate(rows_l), np.concatenate(cols)
    pair_s, work = np.concatenate(pair_v), np.concatenate(work_v)
    window = np.array([s.created_ms // window_ms if window_ms else 0 for s in specs])[load_of]
    windows = int(window.max()) + 1
    n_vars, n_loads = len(load_of), len(specs)
    # Rows: one per load (at most one agent), then one per (agent, window) (work within capacity).
    slot_row = n_loads + agent_of * windows + window
    a = coo_array(
        (np.concatenate([np.ones(n_vars), work]),
         (np.concatenate([load_of, slot_row]), np.concatenate([np.arange(n_vars)] * 2))),
        shape=(n_loads + table.n * windows, n_vars),
    ).tocsr()  # fmt: skip
    span = window_ms or max(s.created_ms for s in specs) + float(work.max())  # (see above)
    cap = np.repeat(table.capacity[: table.n].astype(float) * span, windows)
    b = np.concatenate([np.ones(n_loads), cap])
    full = pair_s + policy.weight("balance")
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
                                        window_ms=args.window_ms)  # fmt: skip
    lp_s = time.perf_counter() - t0
    bound_full, bound_pair = best_pairs(table, specs, policy)
    kind = (
        f"per {args.window_ms} ms window: a heuristic, not a bound" if args.window_ms else "bound"
    )
    print(f"\n{label}: steady, {args.agents} agents, {args.duration:g}s, seed {args.seed}, "
          f"{len(specs)} loads; LP optimum ({kind}) {opt_full:.1f} (pair {opt_pair:.1f}, "
          f"{opt_n:.0f} loads) in {lp_s:.1f}s; each load its best agent {bound_full:.1f} "
          f"(pair {bound_pair:.1f})")  # fmt: skip
    header = ("mode", "assigned", "score", "vs LP", "vs best", "pair", "vs LP", "vs best",
              "wall s")  # fmt: skip
    print("{:<8} {:>9} {:>10} {:>7} {:>7} {:>10} {:>7} {:>7} {:>7}".format(*header))
    for name, (sim, wall) in runs.items():
        full = sum(sim.world.first_score.values())
        pair = full - sum(sim.world.first_history.values())
        print(f"{name:<8} {len(sim.world.first_score):>9} {full:>10.1f} {full / opt_full:>7.2%} "
              f"{full / bound_full:>7.2%} {pair:>10.1f} {pair / opt_pair:>7.2%} "
              f"{pair / bound_pair:>7.2%} {wall:>7.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--window-ms", type=int, default=0,
                        help="Capacity per window of arrivals (0: the whole run).")  # fmt: skip
    args = parser.parse_args()
    compare("the simulator's policy", SIM_POLICY, args)
    pair_only = dict(SIM_POLICY.weights) | dict.fromkeys(HISTORY_TERMS, 0.0)
    compare("the same without history terms (score = pair score)",
            dataclasses.replace(SIM_POLICY, weights=pair_only), args)  # fmt: skip
    print("\nscore: each load's first match; pair: the same less its balance and affinity parts")


if __name__ == "__main__":
    main()
