"""Restart cost: folding a partition's input sequence from the start, or from a snapshot.

    .venv/bin/python ops/bench/restart_bench.py [--agents 10000] [--loads 20000]

Records one partition's input sequence the way the worker does (the audit
benchmark's recording, no broker), folds it from the start, writes a
snapshot of the fold as the worker does (a forked child writes it while the
parent goes on: the parent's pause is the fork) and restores it. Prints the
time of each and the ratio. A fold from the start grows with the log, for
ever; a restore with the state (agents, loads still remembered).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench import CODEC, recording

from dispatcher.worker.fold import PartitionFold
from dispatcher.worker.snapshots import Snapshots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=20_000)
    args = parser.parse_args()
    inputs, _ = recording("input-sequence", args.agents, args.loads)
    start = time.perf_counter()
    fold = PartitionFold("input-sequence", 0, CODEC)
    for offset, value in enumerate(inputs):
        fold.apply(value, offset)
    fold_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        snaps = Snapshots(Path(tmp), "input-sequence", every=1)
        start = time.perf_counter()
        snaps.maybe_write(fold)
        pause_s = time.perf_counter() - start
        snaps.wait()
        write_s = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.snap"))
        start = time.perf_counter()
        restored = Snapshots(Path(tmp), "input-sequence", every=1).load(0, len(inputs), CODEC)
        restore_s = time.perf_counter() - start
    if restored is None or restored.next_offset != len(inputs):
        raise SystemExit("the snapshot did not restore")
    print(f"{args.agents:,} agents, {len(inputs):,} records: fold from the start {fold_s:.2f} s "
          f"({len(inputs) / fold_s:,.0f} records/s); snapshot {size / 1e6:.1f} MB written in "
          f"{write_s:.2f} s (the worker paused {pause_s * 1e3:.1f} ms); restore {restore_s:.2f} s "
          f"({fold_s / restore_s:.1f}x faster)")  # fmt: skip


if __name__ == "__main__":
    main()
