"""Signed policies on the real broker: a worker holding policy keys applies only policies
signed by one of them; the rest go to dead-letter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis
import yaml

from dispatcher.codecs import models as m
from dispatcher.codecs.signing import content_hash, sign
from dispatcher.demo import VOCAB, agent_profile, load_event, policy_update
from dispatcher.reading import partitions, read_partition
from dispatcher.sdk.producer import DispatcherProducer, now_ms
from dispatcher.settings import PROJECT_ROOT
from tests.integration.pipeline import CODEC, Pipeline

SECRET = "0123456789abcdef0123456789abcdef"
KEYS = {"DISPATCHER_POLICY_KEYS": f"ops={SECRET}"}
POOL = "pool-s"


def publish_cli(p: Pipeline, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | KEYS | {"KAFKA_BOOTSTRAP_SERVERS": p.bootstrap}
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", "policy", "publish", str(path),
         "--topic-prefix", p.prefix, *args],
        env=env, text=True, capture_output=True, timeout=120, check=False,
    )  # fmt: skip


async def records(p: Pipeline, topic: str, name: str) -> list[m.Record]:
    out = []
    for tp in await partitions(p.bootstrap, topic):
        out += [CODEC.decode(r.value, name) for r in await read_partition(p.bootstrap, tp)]
    return out


async def sequenced_versions(p: Pipeline) -> set[int]:
    """Policy versions the worker appended to the input sequence (applied, in order)."""
    out = set()
    for tp in await partitions(p.bootstrap, p.topics.input_sequence):
        for r in await read_partition(p.bootstrap, tp):
            rec = CODEC.decode(r.value)
            if isinstance(rec, m.PolicyUpdate):
                out.add(rec.version)
    return out


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.5)


async def decided_version(p: Pipeline, producer: DispatcherProducer, load_id: str) -> int:
    """Sends a load; the policy version of its first decision."""
    rng = np.random.default_rng(len(load_id))
    await producer.publish_load(load_event(rng, POOL, load_id, deadline=False))

    async def decided() -> bool:
        return any(isinstance(r, m.DecisionRecord) and r.load_id == load_id
                   for r in await records(p, p.topics.decision_log, "DecisionRecord"))  # fmt: skip

    await until(decided)
    recs = await records(p, p.topics.decision_log, "DecisionRecord")
    return next(r.policy_version for r in recs
                if isinstance(r, m.DecisionRecord) and r.load_id == load_id)  # fmt: skip


def test_only_signed_policies_apply(pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    p.worker_env = dict(KEYS)
    p.start_worker()
    policy_file = yaml.safe_load((PROJECT_ROOT / "ops/policies/example.yaml").read_text())
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_file | {"version": 2}))
    published = publish_cli(p, path)  # signed by the CLI with the key from the environment
    assert published.returncode == 0, published.stderr
    assert "version 2, signed with key 'ops'" in published.stdout

    async def scenario() -> tuple[int, int, list[m.Record]]:
        async with DispatcherProducer(p.bootstrap, topics=p.topics) as producer:
            await producer.publish_policy(policy_update(3))  # unsigned
            genuine = sign(policy_update(4), "ops", SECRET.encode())
            doc = genuine.document.model_copy(update={"batch_window_ms": 7})
            forged = genuine.model_copy(update={"document": doc, "content_hash": content_hash(doc)})
            await producer.publish_policy(forged)  # signed, then its document changed
            await until(lambda: has(p.topics.dead_letter, "DeadLetter", 2))
            assert await sequenced_versions(p) == {2}
            profile = agent_profile(np.random.default_rng(1), capacity=5)
            profile = profile.model_copy(update={"tools": sorted(VOCAB)})
            for seq, kind in ((1, m.AgentEventKind.REGISTERED), (2, m.AgentEventKind.AVAILABLE)):
                await producer.publish_agent_event(m.AgentEvent(
                    event_id=f"s{seq}", kind=kind, agent_id="agent-s", pool=POOL, seq=seq,
                    event_time_ms=now_ms(), profile=profile if seq == 1 else None))  # fmt: skip
            first = await decided_version(p, producer, "L1")
            # The refused versions count as taken: publishing version 3 again is refused.
            path.write_text(yaml.safe_dump(policy_file | {"version": 3}))
            refused = publish_cli(p, path)
            assert refused.returncode == 1
            assert "version 4 is already published" in refused.stderr
            path.write_text(yaml.safe_dump(policy_file | {"version": 5}))
            again = publish_cli(p, path)
            assert again.returncode == 0, again.stderr
            await until(lambda: sequenced(5))
            second = await decided_version(p, producer, "L2")
            # A policy for later applies from its time on; until then pools keep their clocks.
            # (whole seconds, 19-20 s from now: before it, the CLI publishes, the policy is
            # sequenced, a load decided and the read model looked at, 4.5-7.5 s here, more
            # on a loaded machine, which 7-8 s left too little for)
            at = (now_ms() // 1000 + 20) * 1000
            path.write_text(yaml.safe_dump(policy_file | {"version": 6}))
            iso = datetime.fromtimestamp(at / 1000, UTC).isoformat()
            scheduled = publish_cli(p, path, "--at", iso)
            assert scheduled.returncode == 0, scheduled.stderr
            assert f"in effect from {iso}" in scheduled.stdout
            await until(lambda: sequenced(6))
            assert now_ms() < at
            assert await decided_version(p, producer, "L3") == 5
            await until(lambda: waiting(6, at))  # the read model shows it coming
            await asyncio.sleep(max(0.0, (at - now_ms()) / 1000 + 0.5))
            assert await decided_version(p, producer, "L4") == 6
            # An input stamped an hour ahead would move the pool's clock there: refused.
            ahead = load_event(np.random.default_rng(9), POOL, "L5", deadline=False)
            await producer.publish_load(ahead.model_copy(update={"event_time_ms": at + 3_600_000}))
            await until(lambda: has(p.topics.dead_letter, "DeadLetter", 3))
            return first, second, await records(p, p.topics.dead_letter, "DeadLetter")

    async def has(topic: str, name: str, n: int) -> bool:
        return len(await records(p, topic, name)) >= n

    async def waiting(version: int, at: int) -> bool:
        r = redis.Redis.from_url(p.redis_url, decode_responses=True)
        gauges = r.hgetall(f"{p.app_id}:pool:{POOL}")
        return (gauges.get("policy_next_version"), gauges.get("policy_next_ms")) == (
            str(version),
            str(at),
        )

    async def sequenced(version: int) -> bool:
        return version in await sequenced_versions(p)

    first, second, dead = asyncio.run(scenario())
    assert (first, second) == (2, 5)
    errors = sorted(d.error for d in dead if isinstance(d, m.DeadLetter))
    assert len(errors) == 3
    assert "ms ahead of this worker's clock" in errors[0]
    assert "policy dispatch version 3: unsigned" in errors[1]
    assert "policy dispatch version 4: its signature by key 'ops' does not match" in errors[2]
    assert all(isinstance(d, m.DeadLetter) and d.reason is m.DeadLetterReason.INVALID
               for d in dead)  # fmt: skip
