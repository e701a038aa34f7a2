"""A busy kind: the cost of each result while loads of a kind every agent of is busy wait.

    .venv/bin/python ops/bench/busy_kind_bench.py [--agents 20] [--waiting 20 1000 10000]
                                                  [--results 2000]

One pool: ``agents`` python agents and as many go agents, one slot each. Python
loads arrive until every python agent has one and ``waiting`` more wait; the go
agents stay idle. Then ``results`` python results come in, one at a time: each
frees an agent, which takes the next python load (with fewer waiting than that,
the pool is built again until they are done). Printed per ``waiting``: the time
and the matches per result, and what happens to a go load that arrives behind
the python loads after them (assigned at once to an idle go agent, or left
waiting). The first ``waiting`` (20: as many as the agents) is the baseline of
the ratio: a dispatcher pays for what it assigns, not for what waits (the
first results of a new pool cost a little more: it has less in its caches).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

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


def _profile(kind: str) -> AgentProfile:
    return AgentProfile(
        capabilities=frozenset({kind}), capacity=1, personality=(1.0, 0.0), risk_budget=1e9,
        abstention_threshold=1.0, clearance=Sensitivity.RESTRICTED, regions=frozenset({"eu"}),
    )  # fmt: skip


def _load(load_id: str, kind: str, time_ms: int) -> LoadArrived:
    return LoadArrived(f"k{load_id}", time_ms, LoadSpec(
        load_id=load_id, tenant="t", priority=Priority.NORMAL, required=frozenset({kind}),
        intent=(1.0, 0.0), sensitivity=Sensitivity.PUBLIC, region="eu", created_ms=time_ms,
        deadline_ms=None, duration_ms=1000, risk=1.0,
    ))  # fmt: skip


def run(agents: int, waiting: int, results: int) -> tuple[float, int, int, str]:
    """One pool: the seconds and the matches its python results (at most ``results``, and
    at most ``waiting``) took, how many, and the go load's decision."""
    policy = Policy(max_pending=10**9, high_watermark=10**9, low_watermark=10**9)
    state = PoolState("bench", policy)
    for i in range(agents):
        for kind in ("py", "go"):
            state.apply(AgentRegistered(f"r{kind}{i}", f"{kind}{i}", 1, 0, _profile(kind)))
            state.apply(AgentStatusChanged(f"u{kind}{i}", f"{kind}{i}", 2, 0,
                                           AgentStatusKind.AVAILABLE))  # fmt: skip
    offers: dict[str, tuple[str, str]] = {}  # load id -> (decision id, agent)

    def note(out: list[Decision]) -> None:
        for d in out:
            if d.outcome is Outcome.ASSIGNED and d.agent_id is not None:
                offers[d.load_id] = (d.decision_id, d.agent_id)

    for j in range(agents + waiting):
        note(state.apply(_load(f"L{j}", "py", 1)))
    matched = [0]
    match = state.agents.match

    def counted(*args: Any, **kw: Any) -> Any:
        matched[0] += 1
        return match(*args, **kw)

    state.agents.match = counted  # type: ignore[method-assign]
    done = min(results, waiting)
    start = time.perf_counter()
    for r in range(done):
        load_id = next(iter(offers))
        decision_id, agent = offers.pop(load_id)
        note(state.apply(TaskReported(f"d{r}", 2 + r, decision_id, load_id, agent,
                                      TaskOutcome.SUCCESS)))  # fmt: skip
    elapsed = time.perf_counter() - start
    (go,) = state.apply(_load("G", "go", 3 + results))
    return elapsed, matched[0], done, f"{go.outcome.value} {go.agent_id or ''}".strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--waiting", type=int, nargs="+", default=[20, 1000, 10000])
    ap.add_argument("--results", type=int, default=2000)
    args = ap.parse_args()
    print(f"{args.agents} python agents busy, {args.agents} go agents idle; "
          f"{args.results} python results")  # fmt: skip
    print(f"{'waiting':>8} {'ms/result':>10} {'x base':>7} {'matches/result':>15}  go load")
    base = None
    for waiting in args.waiting:
        elapsed = matches = done = 0.0
        while done < args.results:  # (fewer waiting than results: pools over again)
            secs, m, n, go = run(args.agents, waiting, args.results - int(done))
            elapsed, matches, done = elapsed + secs, matches + m, done + n
        ms = elapsed / done * 1e3
        base = base or ms
        print(f"{waiting:>8} {ms:>10.3f} {ms / base:>6.1f}x {matches / done:>15.1f}  {go}")


if __name__ == "__main__":
    main()
