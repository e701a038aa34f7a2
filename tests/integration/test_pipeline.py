"""The whole pipeline on the real broker and Redis: worker processes, SDK clients, audit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dispatcher.audit import PartitionAudit, audit
from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.demo import (
    VOCAB,
    Behaviour,
    DecisionTally,
    Fleet,
    LoadDriver,
    agent_profile,
    policy_update,
)
from dispatcher.errors import BrokerError
from dispatcher.reading import partitions, read_partition
from dispatcher.sdk import DispatcherProducer
from dispatcher.settings import PROJECT_ROOT
from tests.integration.pipeline import (
    Pipeline,
    assert_audit_clean,
    assignments_ids,
    free_port,
    over_capacity,
    wait_until,
)

pytestmark = pytest.mark.integration
CODEC = Codec()
POISON = [b"", b"\x00\x00\x00\x00\x63garbage", b"not avro at all"]


def test_end_to_end_against_the_core_offline(pipeline: Pipeline, redis_url: str) -> None:
    """Two pools, three tenants, declines, failures, silent agents (ack timeouts), cancels, an
    agent leaving mid-task, a policy update mid-stream and poison on every input topic."""
    p = pipeline
    p.start_worker()
    rng = np.random.default_rng(7)
    pools = ["pool-a", "pool-b"]
    every_tool = {"tools": sorted(VOCAB)}  # an agent leaving cannot strand a load
    agents = {f"agent-{i:02d}": (pools[i % 2],
                                 agent_profile(rng, capacity=2).model_copy(update=every_tool))
              for i in range(10)}  # fmt: skip

    async def scenario() -> tuple[DecisionTally, Fleet, LoadDriver]:
        producer = DispatcherProducer(p.bootstrap, topics=p.topics)
        await producer.start()
        await producer.publish_policy(policy_update(1, ack_ms=1500, heartbeat_ms=4000))
        tally = DecisionTally(p.bootstrap, p.topics)
        await tally.start()
        driver = LoadDriver(p.bootstrap, pools, topics=p.topics, seed=3, duration_ms=150)
        fleet = Fleet(p.bootstrap, agents, topics=p.topics, seed=5, published=driver.published,
                      behaviour=Behaviour(decline=0.1, fail=0.05, silent=0.05,
                                          work_ms=(100, 300), heartbeat_ms=500))  # fmt: skip
        await fleet.start()
        await driver.producer.start()
        done = asyncio.Event()
        fleet_task = asyncio.create_task(fleet.run(done.is_set))
        for topic in (p.topics.load_arrival, p.topics.agent_availability, p.topics.task_results,
                      p.topics.ticks, p.topics.policy_update):  # fmt: skip
            for junk in POISON:
                await producer.kafka.send_and_wait(topic, junk, key=b"pool-a")
        first = asyncio.create_task(driver.run(150, rate=60, prefix="first"))
        await asyncio.sleep(1.0)
        for i in range(0, 20, 4):  # cancels: some still queued, some already assigned
            await producer.cancel_load(f"first-{i:07d}", pools[i % 2], "acme")
        await first
        second = asyncio.create_task(driver.run(150, rate=60, prefix="second"))
        await asyncio.sleep(1.0)
        busy = sorted(a for a, running in fleet.running.items() if running)
        await fleet.go_offline(busy[0])  # mid-task: its loads are requeued elsewhere
        await producer.publish_policy(policy_update(2, ack_ms=1500, heartbeat_ms=4000,
                                                    tenant_weights={"acme": 3.0}))  # fmt: skip
        await second
        await fleet.producer.flush()
        arrived = driver.sent
        # Every load reaches its end (the silent agents' loads after their ack timeouts).
        await wait_until(lambda: len(tally.finals) >= arrived, 120, tally.poll)
        await asyncio.sleep(1.0)  # repeats, if any, would land now
        await tally.poll()
        done.set()
        await fleet_task
        await fleet.stop()
        await driver.producer.stop()
        await producer.stop()
        await tally.stop()
        return tally, fleet, driver

    tally, fleet, driver = asyncio.run(scenario())
    assert len(tally.finals) == driver.sent == 300
    assert all(len(ids) == 1 for ids in tally.finals.values()), "a load with two final decisions"
    assert tally.outcomes["REQUEUED"] > 0  # declines, failures, timeouts, the agent that left
    assert fleet.stats.received == tally.outcomes["ASSIGNED"]

    # The log, the assignments and the core run offline on the recorded sequence agree.
    counted: list[int] = []
    results = asyncio.run(audit(p.bootstrap, p.topics, progress=counted.append, keep=True))
    checked = assert_audit_clean(results)
    assert checked == sum(tally.outcomes.values())
    assert counted[-1] == sum(r.inputs for r in results)
    # Partitions replayed in processes of their own reach the same verdicts and decisions.
    counted.clear()
    apart = asyncio.run(audit(p.bootstrap, p.topics, jobs=2, progress=counted.append, keep=True))
    assert [(r.partition, r.matched, r.decisions) for r in apart] == [
        (r.partition, r.matched, r.decisions) for r in results
    ]
    assert counted[-1] == sum(r.inputs for r in apart)  # (ticks kept coming meanwhile)
    assert sum(1 for r in results if r.decisions) > 1  # more than one partition to share
    assert over_capacity(results, agents) == []
    assigned = {rec.decision_id for r in results for rec in r.records
                if rec.outcome is m.DecisionOutcome.ASSIGNED}  # fmt: skip
    logged_assignments = asyncio.run(assignments_ids(p))
    assert set(logged_assignments) == assigned
    reasons = {rec.reason_code for r in results for rec in r.records}
    assert {"ACK_TIMEOUT", "DECLINED", "FAILED_RETRYABLE", "AGENT_OFFLINE"} <= reasons
    versions = {rec.policy_version for r in results for rec in r.records}
    assert {1, 2} <= versions
    cancels = [rec for r in results for rec in r.records
               if rec.reason_code in ("CANCELLED", "ALREADY_FINAL")]  # fmt: skip
    # Each cancel ended its load, or found it ended already (which of the two is timing; the
    # core's cancel paths are unit-tested).
    assert len(cancels) == 5

    # Poison on every input topic went to dead-letter, with where it came from.
    async def dead() -> list[m.DeadLetter]:
        out = []
        for tp in await partitions(p.bootstrap, p.topics.dead_letter):
            for r in await read_partition(p.bootstrap, tp):
                rec = CODEC.decode(r.value, "DeadLetter")
                assert isinstance(rec, m.DeadLetter)
                out.append(rec)
        return out

    letters = asyncio.run(dead())
    per_topic = {t: sum(1 for d in letters if d.source_topic == t) for t in
                 (p.topics.load_arrival, p.topics.agent_availability, p.topics.task_results,
                  p.topics.ticks, p.topics.policy_update)}  # fmt: skip
    assert all(n == len(POISON) for n in per_topic.values()), per_topic

    # The read model in Redis.
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    gauges = {k: int(v) for k, v in r.hgetall(f"{p.app_id}:pool:pool-a").items()}
    assert gauges.get("decided_COMPLETED", 0) > 0
    assert r.llen(f"{p.app_id}:recent") > 0
    assert gauges["agents"] == 5

    # The operator's tools on the same recorded topics (issue: audit, what-if, explain).
    p.stop_all()
    operator_tools(p, results)


def cli(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": p.bootstrap, "REDIS_URL": p.redis_url}
    command = [sys.executable, "-m", "dispatcher", *args, "--topic-prefix", p.prefix]
    return subprocess.run(command, env=env, text=True, capture_output=True, timeout=180,
                          check=False)  # fmt: skip


def operator_tools(p: Pipeline, results: list[PartitionAudit]) -> None:
    audited = cli(p, "audit", "--json")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    report = json.loads(audited.stdout)
    assert report["problems"] == 0
    assert report["checked"] == sum(len(r.records) for r in results)
    one = json.loads(cli(p, "audit", "--json", "--pool", "pool-a").stdout)
    assert one["checked"] == sum(rec.pool == "pool-a" for r in results for rec in r.records) > 0
    assert one["checked"] < report["checked"]

    assigned = next(rec for r in results for rec in r.records
                    if rec.outcome is m.DecisionOutcome.ASSIGNED and rec.runner_up)  # fmt: skip
    explained = cli(p, "explain", assigned.load_id, "--agent", assigned.runner_up or "",
                    "--pool", assigned.pool)  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    assert f"pool {assigned.pool} attempt 1" in explained.stdout
    assert f"agent {assigned.agent_id}" in explained.stdout
    assert f"why not {assigned.runner_up}" in explained.stdout
    elsewhere = cli(p, "explain", assigned.load_id, "--pool", "no-such-pool")
    assert elsewhere.returncode == 1
    assert f"no decision about load {assigned.load_id}" in elsewhere.stderr

    policy_file = Path(p.logs) / "p3.yaml"
    doc = yaml.safe_load((PROJECT_ROOT / "ops/policies/example.yaml").read_text())
    policy_file.write_text(yaml.safe_dump(doc | {"version": 2}))
    refused = cli(p, "policy", "publish", str(policy_file))
    assert refused.returncode == 1
    assert "version 2 is already published" in refused.stderr
    policy_file.write_text(yaml.safe_dump(doc | {"version": 3}))
    assert cli(p, "policy", "publish", str(policy_file)).returncode == 0
    whatif = cli(p, "whatif", "--policy", str(policy_file), "--json")
    assert whatif.returncode == 0, whatif.stderr
    assert json.loads(whatif.stdout)["recorded"]["loads"] == 300

    # Tamper with one decision: a copy naming another agent. Audit fails and names it.
    part = next(r for r in results if r.records)
    victim = part.records[-1]
    forged = victim.model_copy(update={"agent_id": "agent-99", "score": 9.0})
    stranger = victim.model_copy(update={"decision_id": "f" * 32})  # no input decides it

    async def forge() -> None:
        async with DispatcherProducer(p.bootstrap, topics=p.topics) as producer:
            await producer.kafka.send_and_wait(
                p.topics.decision_log, CODEC.encode(forged), key=victim.pool.encode(),
                partition=part.partition,
            )  # fmt: skip

            # and a record that is no decision at all, and a decision no input explains
            await producer.kafka.send_and_wait(p.topics.decision_log, b"\x00garbage",
                                               partition=part.partition)  # fmt: skip
            await producer.kafka.send_and_wait(
                p.topics.decision_log, CODEC.encode(stranger), key=victim.pool.encode(),
                partition=part.partition,
            )  # fmt: skip

    asyncio.run(forge())
    tampered = cli(p, "audit")
    assert tampered.returncode == 1
    assert victim.decision_id in tampered.stdout
    assert "conflicting repeat" in tampered.stdout
    assert f"unexplained: {'f' * 32}" in tampered.stdout
    by_partition = {
        x["partition"]: x for x in json.loads(cli(p, "audit", "--json").stdout)["partitions"]
    }
    assert by_partition[part.partition]["mismatches"] == 2  # the forged copy, the garbage
    assert by_partition[part.partition]["unexplained_ids"] == ["f" * 32]


def test_without_redis_the_worker_says_so_and_keeps_deciding(pipeline: Pipeline) -> None:
    p = pipeline
    p.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    p.start_worker()
    rng = np.random.default_rng(1)
    every_tool = {"tools": sorted(VOCAB)}  # so no load waits for a capability nobody has
    agents = {f"agent-{i}": ("pool-r", agent_profile(rng, capacity=5).model_copy(update=every_tool))
              for i in range(4)}  # fmt: skip

    async def scenario() -> DecisionTally:
        tally = DecisionTally(p.bootstrap, p.topics)
        await tally.start()
        driver = LoadDriver(p.bootstrap, ["pool-r"], topics=p.topics, seed=1, duration_ms=50)
        fleet = Fleet(p.bootstrap, agents, topics=p.topics, published=driver.published,
                      behaviour=Behaviour(decline=0, fail=0, work_ms=(20, 50)))  # fmt: skip
        await fleet.start()
        await driver.producer.start()
        done = asyncio.Event()
        task = asyncio.create_task(fleet.run(done.is_set))
        await driver.run(40, rate=40, prefix="r")
        await wait_until(lambda: len(tally.finals) >= 40, 60, tally.poll)
        done.set()
        await task
        await fleet.stop()
        await driver.producer.stop()
        await tally.stop()
        return tally

    tally = asyncio.run(scenario())
    assert tally.outcomes["COMPLETED"] == 40
    assert "redis unavailable, read model paused (deciding goes on)" in p.log_text()
    assert p.workers[0].poll() is None  # still running


async def _max_message_bytes(p: Pipeline, topic: str, value: int | None) -> None:
    """Sets (or, with None, resets) the largest record ``topic`` takes."""
    admin = AIOKafkaAdminClient(bootstrap_servers=p.bootstrap)
    await admin.start()
    try:
        configs = {} if value is None else {"max.message.bytes": str(value)}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


def test_a_record_the_broker_refuses_is_not_committed_past(pipeline: Pipeline) -> None:
    """A decision the broker refuses for good (here: the decision log takes 100 bytes at
    most) stops the worker before it commits the inputs behind it; restarted once the log
    takes records again, the worker decides them again. Before, the worker went on, and
    the decisions were lost: none in the log, inputs committed, nothing said."""
    p = pipeline
    asyncio.run(_max_message_bytes(p, p.topics.decision_log, 100))
    first = p.start_worker()
    rng = np.random.default_rng(2)
    every_tool = {"tools": sorted(VOCAB)}
    agents = {f"agent-{i}": ("pool-d", agent_profile(rng, capacity=5).model_copy(update=every_tool))
              for i in range(2)}  # fmt: skip

    async def publish() -> None:
        fleet = Fleet(p.bootstrap, agents, topics=p.topics)
        driver = LoadDriver(p.bootstrap, ["pool-d"], topics=p.topics, seed=2, duration_ms=50)
        await fleet.start()  # registers the agents, who then take no assignment
        await driver.producer.start()
        await driver.run(6, rate=50, prefix="d")
        await driver.producer.stop()
        await fleet.stop()

    asyncio.run(publish())
    assert first.wait(timeout=60) != 0
    assert "a record was not sent (MessageSizeTooLargeError" in p.log_text()
    asyncio.run(_max_message_bytes(p, p.topics.decision_log, None))
    p.start_worker()

    async def decided() -> list[PartitionAudit]:
        """The audit of the live worker, once it has sent the 6 assignments."""
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            with contextlib.suppress(BrokerError):  # (until the worker's first commit)
                results = await audit(p.bootstrap, p.topics, keep=True, group=p.app_id)
                records = [r for res in results for r in res.records]
                assigned = sum(r.outcome is m.DecisionOutcome.ASSIGNED for r in records)
                if assigned >= 6 and all(r.ok and not r.pending for r in results):
                    return results
            assert asyncio.get_running_loop().time() < deadline, "not decided again"
            await asyncio.sleep(1)

    results = asyncio.run(decided())
    assert assert_audit_clean(results) >= 6
    logged = {r.decision_id for res in results for r in res.records
              if r.outcome is m.DecisionOutcome.ASSIGNED}  # fmt: skip
    assert set(asyncio.run(assignments_ids(p))) == logged
