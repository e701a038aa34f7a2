"""Issue 4's scenario targets, each against its baseline in the same run.

    .venv/bin/python ops/bench/scenario_bench.py [--seeds 1 2 3] [--mode greedy|batched]

For each seed, ``simulate`` runs (the same core, virtual clock, the simulator's
policy):
- tenant-flood (acme sends 10x its share) beside the same scenario without the
  flood (every tenant at its share, the same seed): the small tenants' p99 wait
  in the flood over their p99 without it (target: at most 2x), and Jain's index
  over the weighted shares (target: at least 0.95);
- deadline-crunch (85% utilisation, 90% of loads with a deadline 1.2-2.5x
  their duration): SLA compliance of critical and high loads (target: at least
  99%), beside the same over the loads no agent declined, failed or lost, and
  the requeues by reason (3% of offers are declined and 5% of runs fail, at the
  end of the run: a deadline that left room for one run only is then missed).
Prints each figure and whether it meets its target; exits 0 whatever they are
(a benchmark reports, it does not judge).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dispatcher.sim import SCENARIOS, sim_policy, simulate

SMALL = ("globex", "initech")  # the tenants that do not flood


def run(name: str, seed: int, mode: str, **changes: Any) -> dict[str, Any]:
    sc = dataclasses.replace(SCENARIOS[name], **changes)
    policy = dataclasses.replace(sim_policy(sc), mode=mode)
    return simulate(sc, seed, policy).metrics


def mark(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--mode", choices=("greedy", "batched"), default="greedy")
    args = parser.parse_args()
    for seed in args.seeds:
        started = time.perf_counter()
        flood = run("tenant-flood", seed, args.mode)
        calm = run("tenant-flood", seed, args.mode, tenant_traffic=(1.0, 1.0, 1.0))
        print(f"seed {seed}, {args.mode}: tenant-flood against the same without the flood")
        for tenant in SMALL:
            p99 = flood["tenant_wait_ms"][tenant]["p99"]
            base = calm["tenant_wait_ms"][tenant]["p99"]
            ratio = p99 / base if base else float("inf")
            print(f"  {tenant:<8} p99 wait {p99:>8,.0f} ms, without the flood {base:>8,.0f} ms: "
                  f"{ratio:.2f}x (target <= 2x: {mark(ratio <= 2)})")  # fmt: skip
        jain = flood["jain_weighted"]
        print(f"  Jain over weighted shares {jain:.3f} (target >= 0.95: {mark(jain >= 0.95)})")
        crunch = run("deadline-crunch", seed, args.mode)
        print(f"seed {seed}, {args.mode}: deadline-crunch")
        for cls in ("critical", "high"):
            sla = crunch["sla_compliance_pct"][cls]
            clean = crunch["sla_without_agent_faults_pct"][cls]
            print(f"  {cls:<8} SLA {sla:6.2f}% (target >= 99%: {mark(sla >= 99)}); over the "
                  f"loads no agent declined, failed or lost {clean:6.2f}%")  # fmt: skip
        requeued = crunch["requeued"]
        print(f"  requeued: {', '.join(f'{k} {v:,}' for k, v in requeued.items()) or 'none'}"
              f"   ({time.perf_counter() - started:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
