"""Memory under a flood: the core's state while loads arrive at 10x the steady 70% load.

    .venv/bin/python ops/bench/flood_bench.py [--agents 200] [--factor 10] [--minutes 3]
                                              [--window-s 60]

Drives one pool through the core on a virtual clock: agents with 2 slots,
each load taking 1 s, loads arriving at ``factor`` x 70% of what the agents
can serve (7x what they can do, by default), a tick every 200 ms, and a
heartbeat from each agent every 5 s. Prints the resident memory after set-up
(the pool and its agents: the baseline), then, every tenth of the run: loads
arrived and assigned, loads waiting (bounded by the policy's max_pending; the rest are shed
with a decision), loads and event keys remembered for duplicates (for the
policy's dedupe window, ``window_s``), and the process's resident memory.
Nothing else grows: the benchmark keeps only the loads in flight. Once the
window has passed, what is forgotten balances what arrives and memory stays
flat, at about the arrival rate x the window x the bytes per load.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from core_bench import pool, world
from procstat import rss_mb

from dispatcher.core import (
    AgentStatusChanged,
    AgentStatusKind,
    Event,
    LoadArrived,
    Outcome,
    Policy,
    TaskOutcome,
    TaskReported,
    Tick,
)

SLOTS, RUN_MS, TICK_MS, BEAT_MS = 2, 1_000, 200, 5_000


class _Pool:
    """The pool, and the agents' side: accept each assignment at once, finish it
    ``RUN_MS`` later, beat every ``BEAT_MS``."""

    def __init__(self, agents: int, window_s: float) -> None:
        profiles, self.specs = world(agents, 512)
        self.agents = [(a, dataclasses.replace(p, capacity=SLOTS)) for a, p in profiles]
        self.state = pool(self.agents)
        self.state.policy = Policy(
            max_pending=50_000, high_watermark=40_000, low_watermark=30_000,
            dedupe_window_ms=int(window_s * 1000),
        )  # fmt: skip
        self.due: list[tuple[int, int, TaskReported]] = []  # (time, order, report)
        self.assigned = self.shed = self.order = 0
        self.beats = 2  # agent events so far (core_bench.pool sent 2 per agent)

    def apply(self, event: Event, now: int) -> None:
        for d in self.state.apply(event):
            self.shed += d.outcome is Outcome.SHED
            if d.outcome is not Outcome.ASSIGNED:
                continue
            self.assigned += 1
            for at, outcome in ((now, TaskOutcome.ACCEPTED), (now + RUN_MS, TaskOutcome.SUCCESS)):
                report = TaskReported(f"{d.decision_id}:{outcome.value}", at, d.decision_id,
                                      d.load_id, d.agent_id or "", outcome, False)  # fmt: skip
                heapq.heappush(self.due, (at, self.order, report))
                self.order += 1

    def beat(self, now: int) -> None:
        """A heartbeat from every agent (else all are lost after the heartbeat timeout)."""
        self.beats += 1
        for agent_id, _ in self.agents:
            self.apply(AgentStatusChanged(f"b{agent_id}:{self.beats}", agent_id, self.beats, now,
                                          AgentStatusKind.HEARTBEAT), now)  # fmt: skip


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=_count, default=200)
    parser.add_argument("--factor", type=_positive, default=10.0)
    parser.add_argument("--minutes", type=_positive, default=3.0)
    parser.add_argument("--window-s", type=_positive, default=60.0)
    args = parser.parse_args()
    # A row says no load was assigned in its tenth of the run if none ended meanwhile: the
    # first loads end RUN_MS after the agents are full.
    if args.minutes * 60_000 < 10 * RUN_MS:
        parser.error(f"--minutes must be at least {10 * RUN_MS / 60_000:.2f} "
                     f"(a row every tenth of the run, of {RUN_MS} ms at least)")  # fmt: skip
    return args


def main() -> None:
    args = _args()
    p = _Pool(args.agents, args.window_s)
    state = p.state
    rate = args.factor * 0.7 * args.agents * SLOTS / (RUN_MS / 1000)  # loads/s
    end_ms = int(args.minutes * 60_000)
    print(f"{args.agents} agents x {SLOTS} slots, loads of {RUN_MS} ms arriving at {rate:,.0f}/s "
          f"({args.factor:g}x 70% of what they serve) for {args.minutes:g} min (virtual); dedupe "
          f"window {args.window_s:g} s, max_pending {state.policy.max_pending:,}; RSS after "
          f"set-up {rss_mb():.0f} MB (the flood's is compared with it)")  # fmt: skip
    print(f"{'virtual s':>9} {'arrived':>9} {'assigned':>9} {'waiting':>8} {'remembered':>10} "
          f"{'keys':>9} {'RSS MB':>7}")  # fmt: skip
    rng = np.random.default_rng(3)
    arrived = printed = 0
    rows, next_print = 1, end_ms // 10

    def row(now: int) -> None:
        nonlocal printed, rows, next_print
        if p.assigned == printed:
            raise SystemExit(f"no load was assigned in the {now / 1000:.0f} s before")
        printed = p.assigned
        known = len(state.loads) + len(state.done)  # (the finished ones are kept apart)
        print(f"{now / 1000:>9.0f} {arrived:>9,} {p.assigned:>9,} {len(state.pending):>8,} "
              f"{known:>10,} {len(state.seen):>9,} {rss_mb():>7.0f}")  # fmt: skip
        rows += 1
        next_print = end_ms * rows // 10

    next_arrival, next_tick = 0.0, 0
    while True:
        now = min(int(next_arrival), next_tick, p.due[0][0] if p.due else end_ms)
        if now >= end_ms:
            row(end_ms)  # the last tenth's row: no event of the run comes at or after its end
            break
        if p.due and p.due[0][0] == now:
            p.apply(heapq.heappop(p.due)[2], now)
        elif next_tick == now:
            if now and now % BEAT_MS == 0:
                p.beat(now)
            p.apply(Tick(now), now)
            next_tick += TICK_MS
        else:
            spec = p.specs[arrived % len(p.specs)]
            spec = dataclasses.replace(spec, load_id=f"L{arrived}", created_ms=now)
            p.apply(LoadArrived(f"e{arrived}", now, spec), now)
            arrived += 1
            next_arrival += float(rng.exponential(1000.0 / rate))
        if now >= next_print:
            row(now)
    print(f"assigned {p.assigned:,}, shed {p.shed:,}")


if __name__ == "__main__":
    main()
