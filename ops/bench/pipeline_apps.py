"""The two baselines of pipeline_bench.py, as Faust apps run in their own processes.

    python ops/bench/pipeline_apps.py null|naive --bootstrap H:P --prefix P --app-id A

null:  consume the dispatch inputs -> decode (strictly) -> encode -> produce to
       decision-log; no matching. The floor of any Faust pipeline on our codecs.
naive: a per-event Faust agent: ``async for`` each record, decode, apply it to a
       PoolState, send each decision with ``Topic.send``. No micro-batching, no
       input sequence (and so no replay or crash safety).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dispatcher import core
from dispatcher.codecs.adapt import to_event, to_records
from dispatcher.codecs.codec import Codec, CodecError
from dispatcher.topics import TopicNames
from dispatcher.worker.app import Worker, low_latency


def build(kind: str, bootstrap: str, topics: TopicNames, app_id: str) -> faust.App:
    datadir = Path(tempfile.gettempdir()) / "dispatcher-faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", key_serializer="raw",
                    value_serializer="raw", store="memory://", web_enabled=False,
                    topic_allow_declare=False, topic_disable_leader=True,
                    consumer_auto_offset_reset="earliest",
                    datadir=str(datadir))  # fmt: skip
    low_latency(app)
    codec = Codec()
    t = topics
    inputs = app.topic(t.load_arrival, t.agent_availability, t.task_results, t.ticks)
    out = app.topic(t.decision_log)
    pools: dict[str, core.PoolState] = {}

    if kind == "null":

        @app.agent(inputs)
        async def passthrough(stream: Any) -> None:
            async for batch in stream.take_events(1000, within=0.002):
                for ev in batch:
                    try:
                        record = codec.decode(ev.value)
                    except CodecError:
                        continue
                    await app.producer.send(t.decision_log, ev.key, codec.encode(record),
                                            None, None, None)  # fmt: skip

    else:

        @app.agent(inputs)
        async def naive(stream: Any) -> None:
            async for ev in stream.events():
                try:
                    record = codec.decode(ev.value)
                except CodecError:
                    continue
                pool = record.pool  # type: ignore[attr-defined]  # inputs name their pool
                state = pools.setdefault(pool, core.PoolState(pool))
                for d in state.apply(to_event(record)):
                    rec, _ = to_records(d)
                    await out.send(key=pool.encode(), value=codec.encode(rec))

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["null", "naive"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--app-id", required=True)
    args = parser.parse_args()
    app = build(args.kind, args.bootstrap, TopicNames.prefixed(args.prefix), args.app_id)
    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
