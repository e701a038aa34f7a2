"""Pipeline benchmark: decisions/s through Kafka, latency under load, memory at 100k agents.

    .venv/bin/python ops/bench/pipeline_bench.py [--agents 10000] [--loads 20000] [--rounds 1]

Needs the broker (`dispatcher stack up`). Every contender gets its own fresh
copy of the topics and the same input: the agents' registrations, produced
before it starts and consumed (and, by the workers, applied) before the loads
are produced at full speed; the rate is the number of the loads' output records
over the span of their broker timestamps (so a pool of 10k agents is measured,
not the registration of its agents, which empties the core's caches each time).
In one run, alternating, for ``--rounds`` rounds:

- null:   consume -> decode -> encode -> produce, no matching (pipeline_apps.py): one
          hop and one record out per load;
- worker: ``dispatcher worker`` (sequencer + dispatch: two hops, and two records out
          per load, its decision and its assignment);
- naive:  a per-event Faust agent applying the core (pipeline_apps.py): one hop, one
          decision out per load.

A rate is printed only when every load came out as one assignment (the null: passed
through); the workers get a policy with hour-long heartbeat and ack timeouts first (the
benchmark's agents send no heartbeats, and answer no assignment).

Then the worker alone: arrival -> assignment latency with loads sent on a fixed
schedule at 50% and 70% (``--latency-at``) of the rate it reached, from each load's
scheduled send time (its record's timestamp: a producer running late counts) to the
timestamp of its assignment; loads not assigned 60 s after the last was sent count
with their wait so far, and are reported. Last, its resident memory with 100k agents
after 2,000 loads were assigned (the core's caches for kinds of load are built then;
``--memory-agents 0`` skips this step).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import rss_mb

from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.demo import agent_profile, load_event, policy_update
from dispatcher.reading import committed_offsets, partitions, read_partition
from dispatcher.sdk.producer import now_ms
from dispatcher.settings import Settings
from dispatcher.topics import TopicNames, apply_topics, delete_topics, load_topics

ROOT = Path(__file__).resolve().parents[2]
POOL = "bench"
LOGS = Path(tempfile.gettempdir())
CODEC = Codec()


def inputs(agents: int, loads: int, seed: int = 1) -> tuple[list[bytes], list[bytes]]:
    """Encoded agent events (register + available) and load arrivals, the same every time
    but for the agents' event time: now, so no heartbeat has expired when a contender starts."""
    rng = np.random.default_rng(seed)
    agent_values = []
    now = now_ms()
    for i in range(agents):
        profile = agent_profile(rng, capacity=10).model_copy(update={"zone": "z1"})
        for seq, kind in ((1, m.AgentEventKind.REGISTERED), (2, m.AgentEventKind.AVAILABLE)):
            agent_values.append(CODEC.encode(m.AgentEvent(
                event_id=f"b{i}:{seq}", kind=kind, agent_id=f"bench-{i:06d}", pool=POOL,
                seq=seq, event_time_ms=now, profile=profile if seq == 1 else None)))  # fmt: skip
    load_values = [CODEC.encode(load_event(rng, POOL, f"L{j:07d}", deadline=False))
                   for j in range(loads)]  # fmt: skip
    return agent_values, load_values


async def produce(
    bootstrap: str, topic: str, values: list[bytes], rate: float | None = None
) -> None:
    """Sends ``values``; at ``rate``, on a schedule, each stamped with its scheduled time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        start, wall = time.monotonic(), time.time()
        for i, v in enumerate(values):
            stamp = None
            if rate is not None:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                stamp = int((wall + i / rate) * 1000)
            await producer.send(topic, v, key=POOL.encode(), timestamp_ms=stamp)
        await producer.flush()
    finally:
        await producer.stop()


async def timestamps(bootstrap: str, topic: str) -> list[tuple[int, Any]]:
    out = []
    for tp in await partitions(bootstrap, topic):
        out += [(r.timestamp, r) for r in await read_partition(bootstrap, tp)]
    return sorted(out, key=lambda x: x[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Contender:
    def __init__(self, kind: str, bootstrap: str) -> None:
        self.kind, self.bootstrap = kind, bootstrap
        self.prefix = f"pb{uuid.uuid4().hex[:6]}-"
        self.topics = TopicNames.prefixed(self.prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.state_dir = LOGS / f"{self.prefix}state"  # the worker's Faust data

    async def create_topics(self) -> None:
        """Its topics, and a policy with hour-long heartbeat and ack timeouts (the agents
        send no heartbeats, and answer nothing)."""
        await apply_topics(load_topics().prefixed(self.prefix), self.bootstrap)
        hour = 3_600_000
        update = policy_update(1, ack_ms=hour, heartbeat_ms=hour, effective_from_ms=0)
        await produce(self.bootstrap, self.topics.policy_update, [CODEC.encode(update)])

    async def remove(self) -> None:
        """Stops the process and deletes its topics, files and read-model keys."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(LOGS / "dispatcher-faust" / f"{self.prefix}app", ignore_errors=True)
        client = redis.Redis.from_url(Settings.from_env().local_redis_url)
        try:
            keys = list(client.scan_iter(f"{self.prefix}app:*"))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass  # (the null and naive baselines write none)
        finally:
            client.close()
        await delete_topics(list(load_topics().prefixed(self.prefix).topics), self.bootstrap)

    def start(self) -> None:
        env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                            "DISPATCHER_STATE_DIR": str(self.state_dir)}  # fmt: skip
        app_id = f"{self.prefix}app"
        if self.kind == "worker":
            cmd = [sys.executable, "-m", "dispatcher", "worker", "--topic-prefix", self.prefix,
                   "--app-id", app_id, "--web-port", str(free_port()),
                   "--tick-ms", "1000"]  # fmt: skip
        else:
            cmd = [sys.executable, str(ROOT / "ops/bench/pipeline_apps.py"), self.kind,
                   "--bootstrap", self.bootstrap, "--prefix", self.prefix,
                   "--app-id", app_id]  # fmt: skip
        self.log = LOGS / f"{self.prefix}{self.kind}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def wait_agents(self, n: int, timeout_s: float = 300) -> None:
        """Until the worker's read model counts ``n`` agents in the pool (all applied)."""
        client = redis.Redis.from_url(Settings.from_env().local_redis_url)
        deadline = time.monotonic() + timeout_s
        key = f"{self.prefix}app:pool:{POOL}"
        while int(client.hget(key, "agents") or 0) < n:  # type: ignore[arg-type]
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker applied {client.hget(key, 'agents')} of {n} agents")
            await asyncio.sleep(0.5)
        client.close()

    async def wait_consumed(self, topic: str, n: int, timeout_s: float = 300) -> None:
        """Until the contender's consumer group has committed ``n`` records of ``topic``."""
        group = f"{self.prefix}app"
        deadline = time.monotonic() + timeout_s
        while sum((await committed_offsets(self.bootstrap, group, topic)).values()) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.kind} did not consume {topic} in {timeout_s}s")
            await asyncio.sleep(0.5)

    def rss_mb(self) -> float:
        assert self.proc is not None  # noqa: S101
        return rss_mb(self.proc.pid)


async def drain_rate(
    kind: str, bootstrap: str, agent_values: list[bytes], load_values: list[bytes], *,
    want: int, timeout_s: float,
) -> float:  # fmt: skip
    """Output records/s while ``kind`` drains the same loads, its agents applied first."""
    c = Contender(kind, bootstrap)
    await c.create_topics()
    await produce(bootstrap, c.topics.agent_availability, agent_values)
    c.start()
    try:
        await c.wait_consumed(c.topics.agent_availability, len(agent_values))
        if kind == "worker":
            await c.wait_agents(len(agent_values) // 2)
        await produce(bootstrap, c.topics.load_arrival, load_values)
        deadline = time.monotonic() + timeout_s
        out = c.topics.decision_log
        while True:
            await asyncio.sleep(2.0)
            ends = await _end_offsets(bootstrap, out)
            if ends >= want:
                break
            if time.monotonic() > deadline or c.proc.poll() is not None:  # type: ignore[union-attr]
                raise SystemExit(f"{kind}: {ends:,} of {want:,} records out when it "
                                 f"{'stopped' if c.proc.poll() is not None else 'timed out'}"
                                 f" (log {c.log})")  # type: ignore[union-attr]  # fmt: skip
        records = await timestamps(bootstrap, out)
    finally:
        await c.remove()
    outs = records[-len(load_values) :]  # the loads' outputs (null also passed the agents on)
    if kind != "null":  # each load's one decision: its assignment
        decided = [CODEC.decode(r.value, "DecisionRecord") for _, r in outs]
        assigned = {d.load_id for d in decided if d.outcome is m.DecisionOutcome.ASSIGNED}  # type: ignore[attr-defined]
        if len(records) != want or len(assigned) != len(load_values):
            raise SystemExit(f"{kind}: {len(assigned):,} of {len(load_values):,} loads assigned "
                             f"in {len(records):,} decisions")  # fmt: skip
    stamps = [t for t, _ in outs]
    return (len(stamps) - 1) / max(1e-3, (stamps[-1] - stamps[0]) / 1000)


async def _end_offsets(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = await partitions(bootstrap, topic)
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def _until(bootstrap: str, topic: str, n: int, *, timeout_s: float) -> int:
    """The records in ``topic`` once there are ``n``, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        ends = await _end_offsets(bootstrap, topic)
        if ends >= n or time.monotonic() > deadline:
            return ends
        await asyncio.sleep(1.0)


async def latency(bootstrap: str, agent_values: list[bytes], load_values: list[bytes],
                  rate: float) -> tuple[float, float, int, float, float, int]:  # fmt: skip
    """p50 and p99 arrival -> assignment (ms) with loads sent at ``rate`` on a schedule,
    the number of loads, the p50 of the first and of the last quarter of them (a worker
    that cannot keep up shows a backlog growing from one to the other), and how many were
    not assigned 60 s after the last was sent (counted with their wait until then)."""
    c = Contender("worker", bootstrap)
    await c.create_topics()
    await produce(bootstrap, c.topics.agent_availability, agent_values)
    c.start()
    try:
        await c.wait_agents(len(agent_values) // 2)
        await produce(bootstrap, c.topics.load_arrival, load_values, rate=rate)
        await _until(bootstrap, c.topics.assignments, len(load_values), timeout_s=60)
        cutoff = now_ms()
        sent = {CODEC.decode(r.value).load_id: t  # type: ignore[attr-defined]
                for t, r in await timestamps(bootstrap, c.topics.load_arrival)}  # fmt: skip
        got: dict[str, int] = {}
        for t, r in await timestamps(bootstrap, c.topics.assignments):
            got.setdefault(CODEC.decode(r.value).load_id, t)  # type: ignore[attr-defined]
    finally:
        await c.remove()
    order = sorted(sent, key=lambda k: sent[k])
    lat = [got.get(k, cutoff) - sent[k] for k in order]
    q = max(1, len(lat) // 4)
    return (float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), len(lat),
            float(np.percentile(lat[:q], 50)), float(np.percentile(lat[-q:], 50)),
            sum(k not in got for k in order))  # fmt: skip


async def memory(bootstrap: str, agents: int, loads: int = 2_000) -> float:
    """The worker's RSS with ``agents`` agents, once ``loads`` loads were assigned."""
    agent_values, load_values = inputs(agents, loads, seed=2)
    c = Contender("worker", bootstrap)
    await c.create_topics()
    await produce(bootstrap, c.topics.agent_availability, agent_values)
    c.start()
    try:
        await c.wait_agents(agents, timeout_s=900)
        await produce(bootstrap, c.topics.load_arrival, load_values)
        if await _until(bootstrap, c.topics.assignments, loads, timeout_s=300) < loads:
            raise SystemExit(f"memory: fewer than {loads:,} loads assigned in 300 s")
        return c.rss_mb()
    finally:
        await c.remove()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--memory-agents", type=int, default=100_000,
                        help="Agents of the memory step (0: skip it).")  # fmt: skip
    parser.add_argument("--worker-rate", type=float, default=None,
                        help="Skip the drain rounds; take this as the worker's rate.")  # fmt: skip
    parser.add_argument("--latency-at", type=float, nargs="+", default=[0.5, 0.7],
                        help="Shares of the worker's rate to measure latency at.")  # fmt: skip
    args = parser.parse_args()
    s = Settings.from_env()
    bootstrap = s.kafka_bootstrap or s.local_bootstrap
    # The worker logs one decision per load (all are assigned at once: capacity is ample).
    rates: dict[str, list[float]] = {"null": [], "worker": [], "naive": []}
    for r in range(0 if args.worker_rate else args.rounds):
        for kind in ("null", "worker", "naive"):
            agent_values, load_values = inputs(args.agents, args.loads)
            rate = await drain_rate(kind, bootstrap, agent_values, load_values,
                                    want=args.loads + (2 * args.agents if kind == "null" else 0),
                                    timeout_s=600)  # fmt: skip
            rates[kind].append(rate)
            print(f"round {r + 1}: {kind:<6} {rate:>9,.0f} records/s", flush=True)
    best = {k: max(v) for k, v in rates.items() if v} or {"worker": args.worker_rate}
    if "null" in best:
        print(f"\n{args.agents:,} agents, {args.loads:,} loads, best of {args.rounds} round(s):")
        for kind, rate in best.items():
            print(f"  {kind:<6} {rate:>9,.0f}/s  ({rate / best['null']:.2f}x null pass-through)")
    for share in args.latency_at:
        # Fresh inputs each time: the agents' events carry the time they were made, and
        # agents silent for longer than the heartbeat timeout are (rightly) lost.
        agent_values, load_values = inputs(args.agents, args.loads)
        target = share * best["worker"]
        n = min(len(load_values), int(target * 20))
        p50, p99, seen, early, late, lost = await latency(bootstrap, agent_values,
                                                          load_values[:n], target)  # fmt: skip
        behind = "; the backlog grew: the worker fell behind" if late > 2 * early + 20 else ""
        unassigned = f"; {lost:,} not assigned after 60 s" if lost else ""
        print(f"latency at {target:,.0f} loads/s ({share:.0%} of the worker's): p50 {p50:.0f} ms,"
              f" p99 {p99:.0f} ms over {seen:,} loads (p50 of the first quarter {early:.0f} ms,"
              f" of the last {late:.0f} ms{behind}{unassigned})", flush=True)  # fmt: skip
    if args.memory_agents:  # (with none, no load could be assigned: it waited 300 s, failed)
        rss = await memory(bootstrap, args.memory_agents)
        print(f"worker RSS with {args.memory_agents:,} agents, after 2,000 loads: {rss:.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
