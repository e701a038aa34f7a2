"""Codec benchmark: encode + decode microseconds per message, per event type.

    .venv/bin/python ops/bench/codec_bench.py [--rounds 7] [--n 20000]

Side by side in one run, alternating rounds, on the same records:
- baseline: fastavro's schemaless writer and reader alone on a prepared dict
  (no framing, no validation, no checks): the floor of this machine;
- ours: Codec.encode (model -> framed bytes) and Codec.decode (framed bytes
  -> validated model, with the size cap, trailing-bytes and canonical checks).
Prints the median of the rounds and our cost as a ratio to the baseline.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fastavro import schemaless_reader, schemaless_writer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dispatcher.codecs import Codec
from dispatcher.codecs.models import Record
from tests.samples import SAMPLES


def per_call_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def bench_one(codec: Codec, name: str, record: Record, rounds: int, n: int) -> None:
    framed = codec.encode(record)
    body = framed[5:]
    schema = codec._current[name]  # the same parsed schema, for the floor
    # The baseline writes the same dict, with the same union-branch hints.
    hinted = record.model_dump()
    for field, branch in codec.hints(schema).items():
        if hinted[field] is not None:
            hinted[field] = (branch, hinted[field])
    runs: dict[str, list[float]] = {k: [] for k in ("be", "bd", "oe", "od")}
    for _ in range(rounds):  # alternate, so drift hits both sides alike
        runs["be"].append(per_call_us(lambda: schemaless_writer(io.BytesIO(), schema, hinted), n))
        runs["oe"].append(per_call_us(lambda: codec.encode(record), n))
        runs["bd"].append(per_call_us(lambda: schemaless_reader(io.BytesIO(body), schema, None), n))
        runs["od"].append(per_call_us(lambda: codec.decode(framed, name), n))
    med = {k: statistics.median(v) for k, v in runs.items()}
    fields = len(type(record).model_fields)
    ours, base = med["oe"] + med["od"], med["be"] + med["bd"]
    print(f"{name:<15} {fields:>6} {len(framed):>6} {med['be']:>9.1f} {med['bd']:>9.1f} "
          f"{med['oe']:>8.1f} {med['od']:>8.1f} {ours:>8.1f} {ours / base:>5.1f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    codec = Codec()
    print(f"{'record':<15} {'fields':>6} {'bytes':>6} {'base enc':>9} {'base dec':>9} "
          f"{'our enc':>8} {'our dec':>8} {'our e+d':>8} {'ratio':>6}")  # fmt: skip
    for name, records in SAMPLES.items():
        bench_one(codec, name, records[0], args.rounds, args.n)
    print("microseconds per message, median of rounds; ratio = our e+d / baseline e+d")


if __name__ == "__main__":
    main()
