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
import math
import pickle
import sys
import tempfile
import time
from collections import deque
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench import CODEC, recording

from dispatcher.worker.fold import PartitionFold
from dispatcher.worker.snapshots import Snapshots, record_digest


def _same(a: Any, b: Any) -> bool:
    """Whether two fold states are equal as far as a snapshot keeps them: an object
    compares by what it pickles (AgentTable leaves out caches it rebuilds). Not by
    comparing pickles: a set unpickled may iterate in another order, so two equal states
    (the fold's and its restored copy, or the fold's and itself unpickled) pickle to
    different bytes."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        )
    if isinstance(a, (dict, MappingProxyType)):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple, deque)):
        return len(a) == len(b) and all(map(_same, a, b))
    # Plain values, and (callable) the classes and functions that rebuild objects:
    if (
        isinstance(a, (str, bytes, int, float, set, frozenset, Enum, np.generic))
        or a is None
        or callable(a)
    ):
        nan = isinstance(a, (float, np.floating)) and math.isnan(a) and math.isnan(b)
        return bool(a == b) or nan
    return _same(a.__reduce_ex__(pickle.HIGHEST_PROTOCOL), b.__reduce_ex__(pickle.HIGHEST_PROTOCOL))


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
    if restored is None or restored.fold.next_offset != len(inputs):
        raise SystemExit("the snapshot did not restore")
    # The same state, not only the same offset: what the worker would go on deciding from.
    if not _same(restored.fold.pools, fold.pools):
        raise SystemExit("the restored pools differ from the folded ones")
    if not _same((restored.fold.policy, restored.fold.policies), (fold.policy, fold.policies)):
        raise SystemExit("the restored policies differ from the folded ones")
    if restored.last != record_digest(inputs[-1]):
        raise SystemExit("the restored snapshot does not name the last record folded")
    print(f"{args.agents:,} agents, {len(inputs):,} records: fold from the start {fold_s:.2f} s "
          f"({len(inputs) / fold_s:,.0f} records/s); snapshot {size / 1e6:.1f} MB written in "
          f"{write_s:.2f} s (the worker paused {pause_s * 1e3:.1f} ms); restore {restore_s:.2f} s "
          f"({fold_s / restore_s:.1f}x faster)")  # fmt: skip


if __name__ == "__main__":
    main()
