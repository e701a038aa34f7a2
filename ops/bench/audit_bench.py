"""Audit speed: decisions re-derived and checked per second, reading from the broker.

    .venv/bin/python ops/bench/audit_bench.py [--agents 1000] [--loads 20000] [--pools 4]

Records a run the way the worker does (an input sequence, and the decision
log it produced) into fresh topics, one pool of ``--agents`` agents per
partition and the loads shared among them, then times, in the same run,
alternating:
- read:  reading both topics from the broker, nothing else (the floor);
- audit: ``dispatcher.audit.audit``: read, decode, fold through the core,
         encode, compare byte for byte, one partition after the other;
- audit --jobs N: the same with N partitions at a time, each in its own process.
Prints decisions/s for each and the ratio to the read floor; then the peak
RSS of a process auditing the recording (one partition after the other),
beside that of a process that only imports the audit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dispatcher import core
from dispatcher.audit import audit
from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import to_records
from dispatcher.demo import agent_profile, load_event, policy_update
from dispatcher.reading import partitions, read_partition
from dispatcher.settings import Settings
from dispatcher.topics import TopicNames, apply_topics, delete_topics, load_topics
from dispatcher.worker.fold import PartitionFold

CODEC = Codec()


def recording(
    topic: str, agents: int, loads: int, partition: int = 0
) -> tuple[list[bytes], list[bytes]]:
    """One partition's input sequence and decision log (pool ``p<partition>``): agents answer
    each assignment at once."""
    rng = np.random.default_rng(1 + partition)
    pool = f"p{partition}"
    fold = PartitionFold(topic, partition, CODEC)
    inputs: list[bytes] = []
    log: list[bytes] = []

    def add(record: m.Record) -> list[core.Decision]:
        inputs.append(CODEC.encode(record))
        out = fold.apply(inputs[-1], len(inputs) - 1)
        log.extend(CODEC.encode(to_records(d)[0]) for d in out)  # the validated path
        return out

    add(policy_update(1, ack_ms=60_000, heartbeat_ms=3_600_000, effective_from_ms=0))
    for i in range(agents):
        profile = agent_profile(rng, capacity=2)
        for seq, kind in ((1, m.AgentEventKind.REGISTERED), (2, m.AgentEventKind.AVAILABLE)):
            add(m.AgentEvent(event_id=f"a{i}:{seq}", kind=kind, agent_id=f"a{i}", pool=pool,
                             seq=seq, event_time_ms=1_000,
                             profile=profile if seq == 1 else None))  # fmt: skip
    t = 2_000
    for j in range(loads):
        t += 1
        ev = load_event(rng, pool, f"L{j}", deadline=False)
        ev = ev.model_copy(update={"event_time_ms": t})
        for d in add(ev):
            if d.outcome is core.Outcome.ASSIGNED:
                for outcome in (m.TaskOutcome.ACCEPTED, m.TaskOutcome.SUCCESS):
                    add(m.TaskResult(event_id=f"{d.decision_id}:{outcome.value}",
                                     decision_id=d.decision_id, load_id=d.load_id,
                                     agent_id=d.agent_id or "", pool=pool, outcome=outcome,
                                     retryable=False, event_time_ms=t))  # fmt: skip
    return inputs, log


# Run in a process of its own: prints its peak RSS (kB) after auditing, or after the imports.
# (VmHWM: ru_maxrss would count the RSS of the process that started it.)
PEAK_RSS = """
import asyncio, re, sys
from pathlib import Path
from dispatcher.audit import audit
from dispatcher.topics import TopicNames
if sys.argv[1] != "-":
    asyncio.run(audit(sys.argv[1], TopicNames.prefixed(sys.argv[2])))
print(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1])
"""


def peak_rss_mb(bootstrap: str, prefix: str) -> float:
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, bootstrap, prefix], cwd=root,
                         capture_output=True, text=True, check=True, timeout=1800)  # fmt: skip
    return int(out.stdout.split()[-1]) / 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000, help="agents per pool")
    parser.add_argument("--loads", type=int, default=20_000, help="loads over all pools")
    parser.add_argument("--pools", type=int, default=4, help="pools, one per partition (<= 4)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    s = Settings.from_env()
    bootstrap = s.kafka_bootstrap or s.local_bootstrap
    prefix = f"ab{uuid.uuid4().hex[:6]}-"
    topics = TopicNames.prefixed(prefix)
    declared = load_topics().prefixed(prefix)
    await apply_topics(declared, bootstrap)
    try:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all",
                                    max_batch_size=1 << 20)  # fmt: skip
        await producer.start()
        recorded = logged = 0
        for part in range(args.pools):
            inputs, log = recording(topics.input_sequence, args.agents, args.loads // args.pools,
                                    part)  # fmt: skip
            for topic, values in ((topics.input_sequence, inputs), (topics.decision_log, log)):
                for v in values:
                    await producer.send(topic, v, key=f"p{part}".encode(), partition=part)
            recorded, logged = recorded + len(inputs), logged + len(log)
        await producer.flush()
        await producer.stop()
        print(f"{args.pools} pools of {args.agents:,} agents, one per partition: {recorded:,} "
              f"inputs, {logged:,} decisions recorded")  # fmt: skip
        for r in range(args.rounds):
            t0 = time.perf_counter()
            for topic in (topics.input_sequence, topics.decision_log):
                for tp in await partitions(bootstrap, topic):
                    await read_partition(bootstrap, tp)
            read_s = time.perf_counter() - t0
            line = f"round {r + 1}: read {logged / read_s:>8,.0f}/s"
            for jobs in (1, args.jobs) if r % 2 == 0 else (args.jobs, 1):
                t0 = time.perf_counter()
                results = await audit(bootstrap, topics, jobs=jobs)
                audit_s = time.perf_counter() - t0
                checked = sum(x.matched for x in results)
                problems = sum(len(x.mismatches) + len(x.missing) + len(x.unexplained)
                               for x in results)  # fmt: skip
                if checked != logged or problems:
                    raise SystemExit(
                        f"audit checked {checked:,} of {logged:,}, {problems} problems"
                    )
                line += (f"   audit --jobs {jobs} {checked / audit_s:>7,.0f}/s "
                         f"({read_s / audit_s:.2f}x read)")  # fmt: skip
            print(line + " decisions", flush=True)
        audit_mb, bare_mb = peak_rss_mb(bootstrap, prefix), peak_rss_mb("-", prefix)
        print(f"peak RSS of an audit process: {audit_mb:,.0f} MB "
              f"({bare_mb:,.0f} MB of it the imports alone)")  # fmt: skip
    finally:
        await delete_topics(list(declared.topics), bootstrap)


if __name__ == "__main__":
    asyncio.run(main())
