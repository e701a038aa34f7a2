"""Core benchmark: decisions/s of the matching core at 1k, 10k and 100k agents.

    .venv/bin/python ops/bench/core_bench.py [--sizes 1000 10000 100000] [--loads 4096]

Side by side in one run, on the same agents and loads: the core (numpy
columns, vectorised filters and score) and a naive baseline, a per-agent
Python loop over the same profiles doing the same hard filters and the same
weighted score. Agents get capacity enough that every load is assigned, so
each load is one full match. Prints loads/s for each and the ratio.

Loads need ``--required`` of 32 capabilities (default 1) at one of 3
sensitivities: the core resolves the profile-only constraints once per such
kind of load and keeps it (the naive loop keeps nothing), so the number of
kinds is printed too; ``--required 2`` gives about 750 kinds in 1,024 loads.

The garbage collector runs as in the worker: what is alive before the timed runs
(modules, the generated agents and loads) is frozen out of its walks
(``frozen_harness``), and what the pools create is collected as usual.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dispatcher.core import (
    AgentProfile,
    AgentRegistered,
    AgentStatusChanged,
    AgentStatusKind,
    LoadArrived,
    LoadSpec,
    Outcome,
    Policy,
    PoolState,
    Priority,
    Sensitivity,
    Tick,
)

DIM = 8
VOCAB = [f"cap{i}" for i in range(32)]


def world(
    n: int, loads: int, seed: int = 1, required: int = 1
) -> tuple[list[tuple[str, AgentProfile]], list[LoadSpec]]:
    rng = np.random.default_rng(seed)
    agents = []
    for i in range(n):
        agents.append((f"a{i}", AgentProfile(
            capabilities=frozenset(rng.choice(VOCAB, size=8, replace=False).tolist()),
            capacity=10**6, personality=tuple(rng.normal(size=DIM).tolist()), risk_budget=1e9,
            abstention_threshold=1.0, clearance=Sensitivity(int(rng.integers(4))),
            regions=frozenset({"eu", "us"}) if rng.random() < 0.8 else frozenset({"eu"}),
            zone=f"z{int(rng.integers(4))}", speed=float(np.exp(rng.normal(0, 0.2))),
        )))  # fmt: skip
    specs = []
    for j in range(loads):
        specs.append(LoadSpec(
            load_id=f"L{j}", tenant="t", priority=Priority.NORMAL,
            # (with replacement for 1: the same draws, so the same world as before)
            required=frozenset(rng.choice(VOCAB, size=required, replace=required == 1).tolist()),
            intent=tuple(rng.normal(size=DIM).tolist()),
            sensitivity=Sensitivity(int(rng.integers(3))),
            region="eu", created_ms=0, deadline_ms=None, duration_ms=1000, risk=1.0, zone="z1",
        ))  # fmt: skip
    return agents, specs


def pool(agents: list[tuple[str, AgentProfile]], mode: str = "greedy") -> PoolState:
    policy = Policy(mode=mode, max_pending=10**9, high_watermark=10**9, low_watermark=10**9)
    state = PoolState("bench", policy)
    for i, (agent_id, profile) in enumerate(agents):
        state.apply(AgentRegistered(f"r{i}", agent_id, 1, 0, profile))
        state.apply(AgentStatusChanged(f"u{i}", agent_id, 2, 0, AgentStatusKind.AVAILABLE))
    return state


def bench_core(
    agents: list[tuple[str, AgentProfile]], specs: list[LoadSpec]
) -> tuple[float, list[str | None]]:
    """Greedy: each arrival is matched at once."""
    state = pool(agents)
    chosen: list[str | None] = []
    start = time.perf_counter()
    for spec in specs:
        out = state.apply(LoadArrived(spec.load_id, 0, spec))
        chosen.append(out[-1].agent_id if out[-1].outcome is Outcome.ASSIGNED else None)
    return len(specs) / (time.perf_counter() - start), chosen


def bench_batched(agents: list[tuple[str, AgentProfile]], specs: list[LoadSpec]) -> float:
    """Batched: arrivals queue; each tick solves up to batch_max_loads of them together."""
    state = pool(agents, "batched")
    size, window = state.policy.batch_max_loads, state.policy.batch_window_ms
    assigned = 0
    start = time.perf_counter()
    for i in range(0, len(specs), size):
        now = i // size * window
        for spec in specs[i : i + size]:
            state.apply(LoadArrived(spec.load_id, now, replace(spec, created_ms=now)))
        out = state.apply(Tick(now + window))
        assigned += sum(d.outcome is Outcome.ASSIGNED for d in out)
    elapsed = time.perf_counter() - start
    if assigned != len(specs):
        raise SystemExit(f"batched mode assigned {assigned} of {len(specs)} loads")
    return len(specs) / elapsed


def bench_naive(
    agents: list[tuple[str, AgentProfile]], specs: list[LoadSpec]
) -> tuple[float, list[str | None]]:
    """The same filters and score, one agent at a time, in plain Python."""
    w = Policy().weights
    active = dict.fromkeys((a for a, _ in agents), 0)
    norm = {a: math.sqrt(sum(x * x for x in p.personality)) or 1.0 for a, p in agents}
    chosen: list[str | None] = []
    start = time.perf_counter()
    for spec in specs:
        inorm = math.sqrt(sum(x * x for x in spec.intent)) or 1.0
        best, best_score = None, -math.inf
        for agent_id, p in agents:
            if active[agent_id] >= p.capacity or not spec.required <= p.capabilities:
                continue
            if p.clearance < spec.sensitivity or spec.region not in p.regions:
                continue
            cos = sum(a * b for a, b in zip(p.personality, spec.intent, strict=True)) / (
                norm[agent_id] * inorm
            )
            score = (w["embedding"] * (cos + 1) / 2
                     + w["capability_fit"] * (1 + len(spec.required)) / (1 + len(p.capabilities))
                     + w["balance"] * (1 - active[agent_id] / p.capacity)
                     + w["locality"] * (p.zone == spec.zone))  # fmt: skip
            if score > best_score:
                best, best_score = agent_id, score
        if best is not None:
            active[best] += 1
        chosen.append(best)
    return len(specs) / (time.perf_counter() - start), chosen


@contextlib.contextmanager
def frozen_harness() -> Iterator[None]:
    """Keeps the objects alive now (the modules, the agents and loads generated) out of the
    garbage collector's walks while the pools are timed, as the worker freezes what it
    holds at start-up (``dispatcher.worker.app``); what a pool creates is collected as
    usual. (A full collection over the 10k agents' profiles the harness holds took about
    40 ms, and whether one fell in the timed window moved the figure by 15-20%.)"""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--loads", type=int, default=4096)
    parser.add_argument("--required", type=int, default=1,
                        help="Capabilities each load needs (more kinds of load).")  # fmt: skip
    args = parser.parse_args()
    header = ("agents", "greedy/s", "batched/s", "naive/s", "greedy x", "batched x", "same")
    print("{:>8} {:>10} {:>10} {:>9} {:>9} {:>10} {:>6}".format(*header))
    for n in args.sizes:
        loads = args.loads
        agents, specs = world(n, loads, required=args.required)
        with frozen_harness():
            greedy, core_pick = bench_core(agents, specs)
            batched = bench_batched(agents, specs)
            naive_n = max(20, loads // max(1, n // 1000) // 4)
            naive, naive_pick = bench_naive(agents, specs[:naive_n])
        same = sum(a == b for a, b in zip(core_pick, naive_pick, strict=False)) / len(naive_pick)
        print(f"{n:>8} {greedy:>10,.0f} {batched:>10,.0f} {naive:>9,.0f} {greedy / naive:>8.0f}x "
              f"{batched / naive:>9.0f}x {same:>6.0%}")  # fmt: skip
    kinds = len(
        {(s.required, s.sensitivity) for s in world(1, args.loads, required=args.required)[1]}
    )
    print(f"{kinds} kinds of load in {args.loads:,} loads (needs x sensitivity)")
    print("loads/s, one decision per load. greedy: matched at arrival; batched: 512 loads per "
          "tick, solved together (16 candidates each); naive: a per-agent Python loop with the "
          "same filters and score; same: the naive loop chose greedy's agent")  # fmt: skip


if __name__ == "__main__":
    main()
