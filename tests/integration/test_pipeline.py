"""The whole pipeline on the real broker and Redis: worker processes, SDK clients, audit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dispatcher import core
from dispatcher.audit import PartitionAudit, audit
from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.codecs.signing import content_hash
from dispatcher.demo import (
    VOCAB,
    Behaviour,
    DecisionTally,
    Fleet,
    LoadDriver,
    agent_profile,
    load_event,
    policy_update,
    reader_at_end,
)
from dispatcher.errors import BrokerError
from dispatcher.sdk import DispatcherProducer
from dispatcher.sdk.producer import now_ms
from dispatcher.settings import PROJECT_ROOT
from dispatcher.topics import TopicNames
from tests.integration.pipeline import (
    Pipeline,
    Poison,
    assert_audit_clean,
    assignment_problems,
    free_port,
    over_capacity,
    sequence_problems,
    wait_sequenced,
    wait_until,
)

pytestmark = pytest.mark.integration
# The end-to-end test's timeouts: an agent's answer, or its silence, is seen by the pool's
# clock, which the worker's ticks move with the wall clock; so these are wall-clock budgets
# for a round trip (worker, agent, input sequence) that a loaded machine stretches. At 1.5 s
# and 4 s, an agent that answered could be found silent or lost. (Silent agents still time
# out: ACK_TIMEOUT is still asserted.)
ACK_MS, HEARTBEAT_MS = 5_000, 15_000
HOUR_MS = 3_600_000
CODEC = Codec()
R = m.DeadLetterReason
# Bytes that are no record at all, refused on any input topic.
GARBAGE = [(b"", R.BAD_FRAME), (b"\x00\x00\x00\x00\x63garbage", R.UNKNOWN_SCHEMA),
           (b"not avro at all", R.BAD_FRAME)]  # fmt: skip
SLOW = "agent-slow"  # the one agent of pool-c, driven by the test itself


def refused_records(t: TopicNames) -> dict[str, list[tuple[bytes, m.DeadLetterReason]]]:
    """Per input topic, what its sequencer must refuse: garbage; a record of the topic's own
    kind cut short, or with a byte after it; a well-formed record of another kind; for
    policies, one whose content hash is wrong. (Each would change decisions, were it let
    through: a heartbeat from far ahead in an agent's sequence, a load, a policy.)"""
    rng = np.random.default_rng(0)
    own = {
        t.load_arrival: CODEC.encode(load_event(rng, "pool-a", "poison")),
        t.agent_availability: CODEC.encode(m.AgentEvent(
            event_id="poison", kind=m.AgentEventKind.HEARTBEAT, agent_id="agent-00",
            pool="pool-a", seq=10**9, event_time_ms=now_ms())),
        t.task_results: CODEC.encode(m.TaskResult(
            event_id="poison", decision_id="d", load_id="first-0000001", agent_id="agent-01",
            pool="pool-b", outcome=m.TaskOutcome.SUCCESS, event_time_ms=now_ms())),
        t.ticks: CODEC.encode(m.Tick(pool="pool-a", event_time_ms=now_ms())),
        t.policy_update: CODEC.encode(policy_update(2)),
    }  # fmt: skip
    topics = list(own)
    out = {}
    for i, topic in enumerate(topics):
        other = own[topics[(i + 1) % len(topics)]]
        out[topic] = [*GARBAGE, (own[topic][:-3], R.MALFORMED),
                      (own[topic] + b"\x00", R.TRAILING_BYTES),
                      (other, R.WRONG_SCHEMA)]  # fmt: skip
    # (version 2 at most: `policy publish` counts refused versions too, and publishes 3)
    wrong_hash = policy_update(2).model_copy(update={"content_hash": "0" * 64})
    out[t.policy_update].append((CODEC.encode(wrong_hash), R.INVALID))
    return out


async def drip_poison(p: Pipeline, kafka: Any, poison: Poison, stop: asyncio.Event) -> None:
    """Sends one refused record to every input topic every 0.25 s, among the traffic, on
    varying partitions, every kind at least once."""
    kinds = refused_records(p.topics)
    keys = [b"pool-a", b"pool-b", b"pool-c", None]
    rounds = 0
    while not stop.is_set() or rounds < max(map(len, kinds.values())):
        for topic, refused in kinds.items():
            value, reason = refused[rounds % len(refused)]
            await poison.send(kafka, topic, value, reason, key=keys[rounds % len(keys)])
        rounds += 1
        await asyncio.sleep(0.25)


def policy_v2(deny: list[str]) -> m.PolicyUpdate:
    """Version 2: acme may no longer use the agents ``deny``, and locality no longer scores."""
    base = policy_update(2, ack_ms=ACK_MS, heartbeat_ms=HEARTBEAT_MS)
    doc = base.document.model_copy(update={"weights": base.document.weights | {"locality": 0.0},
                                           "tenant_deny": {"acme": deny}})  # fmt: skip
    return base.model_copy(update={"document": doc, "content_hash": content_hash(doc)})


async def next_assignment(watch: AIOKafkaConsumer, load_id: str, timeout_s: float) -> m.Assignment:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for records in (await watch.getmany(timeout_ms=100)).values():
            for r in records:
                a = CODEC.decode(r.value, "Assignment")
                assert isinstance(a, m.Assignment)
                if a.load_id == load_id:
                    return a
    raise AssertionError(f"{load_id} was not assigned")


async def cancel_held_loads(
    p: Pipeline, producer: DispatcherProducer, profile: m.AgentProfile
) -> None:
    """In pool-c, one agent of capacity 1 accepts held-1 and keeps it; held-2 then waits.
    Both are cancelled: held-2 waiting, held-1 in flight (its agent freed). The agent then
    leaves."""
    rng = np.random.default_rng(9)
    watch = await reader_at_end(p.bootstrap, p.topics.assignments)
    try:
        for seq, kind in enumerate((m.AgentEventKind.REGISTERED, m.AgentEventKind.AVAILABLE), 1):
            await producer.publish_agent_event(m.AgentEvent(
                event_id=f"{SLOW}:{seq}", kind=kind, agent_id=SLOW, pool="pool-c", seq=seq,
                event_time_ms=now_ms(),
                profile=profile if kind is m.AgentEventKind.REGISTERED else None))  # fmt: skip
        load = "held-1"
        await producer.publish_load(load_event(rng, "pool-c", load, tenant="globex",
                                               deadline=False))  # fmt: skip
        a = await next_assignment(watch, load, 30)
        assert a.agent_id == SLOW
        # Accepted (no ack timeout), and alive (no heartbeat timeout): in flight until cancelled.
        await producer.publish_result(m.TaskResult(
            event_id=f"{a.decision_id}:ACCEPTED", decision_id=a.decision_id, load_id=load,
            agent_id=SLOW, pool="pool-c", outcome=m.TaskOutcome.ACCEPTED,
            event_time_ms=now_ms()))  # fmt: skip
        await producer.heartbeat(SLOW, "pool-c", 3)
        await producer.publish_load(load_event(rng, "pool-c", "held-2", tenant="globex",
                                               deadline=False))  # fmt: skip
        await producer.cancel_load("held-2", "pool-c", "globex")
        await producer.cancel_load("held-1", "pool-c", "globex")
        await producer.publish_agent_event(m.AgentEvent(
            event_id=f"{SLOW}:4", kind=m.AgentEventKind.OFFLINE, agent_id=SLOW, pool="pool-c",
            seq=4, event_time_ms=now_ms()))  # fmt: skip
    finally:
        await watch.stop()


def test_end_to_end_against_the_core_offline(pipeline: Pipeline, redis_url: str) -> None:
    """Three pools, three tenants, declines, failures, silent agents (ack timeouts), cancels
    (of loads done, in flight and waiting), an agent leaving mid-task, a policy update
    mid-stream and poison among the traffic on every input topic. Checked against what the
    test itself sent: the input topics, not only the worker's own input sequence."""
    p = pipeline
    p.start_worker()
    rng = np.random.default_rng(7)
    pools = ["pool-a", "pool-b"]
    every_tool = {"tools": sorted(VOCAB)}  # an agent leaving cannot strand a load
    agents = {f"agent-{i:02d}": (pools[i % 2],
                                 agent_profile(rng, capacity=2).model_copy(update=every_tool))
              for i in range(10)}  # fmt: skip
    slow = agent_profile(rng, capacity=1).model_copy(update=every_tool)
    poison = Poison()
    denied: list[str] = []

    async def scenario() -> tuple[DecisionTally, Fleet, LoadDriver]:
        producer = DispatcherProducer(p.bootstrap, topics=p.topics)
        await producer.start()
        await producer.publish_policy(policy_update(1, ack_ms=ACK_MS, heartbeat_ms=HEARTBEAT_MS))
        tally = DecisionTally(p.bootstrap, p.topics)
        await tally.start()
        driver = LoadDriver(p.bootstrap, pools, topics=p.topics, seed=3, duration_ms=150)
        fleet = Fleet(p.bootstrap, agents, topics=p.topics, seed=5, published=driver.published,
                      behaviour=Behaviour(decline=0.1, fail=0.05, silent=0.05,
                                          work_ms=(100, 300), heartbeat_ms=500))  # fmt: skip
        await fleet.start()
        await driver.producer.start()
        done, no_more_poison = asyncio.Event(), asyncio.Event()
        fleet_task = asyncio.create_task(fleet.run(done.is_set))
        dripping = asyncio.create_task(drip_poison(p, producer.kafka, poison, no_more_poison))
        first = asyncio.create_task(driver.run(150, rate=60, prefix="first"))
        await asyncio.sleep(1.0)
        for i in range(0, 20, 4):  # cancels of loads most likely done already
            await producer.cancel_load(f"first-{i:07d}", pools[i % 2], "acme")
        await cancel_held_loads(p, producer, slow)
        await first
        second = asyncio.create_task(driver.run(150, rate=60, prefix="second"))
        await asyncio.sleep(1.0)
        await wait_until(lambda: any(fleet.running.values()), 30, lambda: asyncio.sleep(0.05))
        busy = sorted(a for a, running in fleet.running.items() if running)
        await fleet.go_offline(busy[0])  # mid-task: its loads are requeued elsewhere
        # acme loses one agent per pool (one that stays), and locality stops counting.
        denied.extend(next(a for a, (pool, _) in agents.items() if pool == x and a != busy[0])
                      for x in pools)  # fmt: skip
        await producer.publish_policy(policy_v2(denied))
        await second
        no_more_poison.set()
        await dripping
        await fleet.producer.flush()
        arrived = driver.sent + 2  # and pool-c's two
        # Every load reaches its end (the silent agents' loads after their ack timeouts).
        await wait_until(lambda: len(tally.finals) >= arrived, 120, tally.poll)
        # Two of acme's loads when every agent is idle, its denied ones too: their decisions
        # count the agents the deny list excluded (under a backlog, a load is decided when an
        # agent frees a slot, with the denied ones likely full, so those counts may stay 0).
        for pool in pools:
            await producer.publish_load(load_event(rng, pool, f"idle-{pool}", tenant="acme"))
        await wait_until(lambda: len(tally.finals) >= arrived + len(pools), 60, tally.poll)
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
    assert driver.sent == 300
    assert len(tally.finals) == driver.sent + 2 + len(pools)
    assert all(len(ids) == 1 for ids in tally.finals.values()), "a load with two final decisions"
    assert tally.outcomes["REQUEUED"] > 0  # declines, failures, timeouts, the agent that left

    # Every input the test sent is in the input sequence once, as sent, and every poison
    # record on dead-letter (not only the worker's own log agrees with itself).
    asyncio.run(wait_sequenced(p))
    assert asyncio.run(sequence_problems(p, poison)) == []
    assert {(where[0], reason) for where, reason in poison.sent.items()} == {
        (topic, reason) for topic, refused in refused_records(p.topics).items()
        for _, reason in refused
    }  # fmt: skip

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
    assert over_capacity(results, agents | {SLOW: ("pool-c", slow)}) == []
    assert asyncio.run(assignment_problems(p, results)) == []
    decisions = [d for r in results for d in r.decisions]
    assigned = [d for d in decisions if d.outcome is core.Outcome.ASSIGNED]
    assert fleet.stats.received == len(assigned) - 1  # (pool-c's one is the test's)
    reasons = {d.reason for d in decisions}
    assert {"ACK_TIMEOUT", "DECLINED", "FAILED_RETRYABLE", "AGENT_OFFLINE"} <= reasons

    # Cancels: of a load in flight (its agent named), of one waiting, of loads likely done.
    def trail(load_id: str, *outcomes: core.Outcome) -> list[tuple[str, str | None]]:
        return [(d.outcome.value, d.agent_id) for d in decisions
                if d.load_id == load_id and d.outcome in outcomes]  # fmt: skip

    # (held-1 may also wait for its agent's registration, and its acceptance may come after
    # the cancel, rejected then: other topics, either order)
    in_flight = trail("held-1", core.Outcome.ASSIGNED, core.Outcome.REQUEUED, *core.FINAL_OUTCOMES)
    assert in_flight == [("ASSIGNED", SLOW), ("CANCELLED", SLOW)]
    assert trail("held-2", *core.Outcome) == [("QUEUED", None), ("CANCELLED", None)]
    early = [d for d in decisions if d.reason in ("CANCELLED", "ALREADY_FINAL")
             and d.load_id.startswith("first-")]  # fmt: skip
    assert sorted(d.load_id for d in early) == [f"first-{i:07d}" for i in range(0, 20, 4)]

    # The policy update mid-stream: decisions after it are version 2's, and do what it says.
    v1 = [d for d in assigned if d.policy_version == 1]
    v2 = [d for d in assigned if d.policy_version == 2]
    assert len(v1) > 50
    assert len(v2) > 50
    assert any(dict(d.score_parts)["locality"] > 0 for d in v1)
    assert all(dict(d.score_parts)["locality"] == 0 for d in v2)
    assert [d for d in v2 if d.tenant == "acme" and d.agent_id in denied] == []
    assert [dict(d.excluded)["tenant_deny"] for d in decisions if d.load_id.startswith("idle-")
            and d.outcome is core.Outcome.ASSIGNED and d.attempt == 1] == [1, 1]  # fmt: skip

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
    assert (
        f"no decision about load {assigned.load_id} in the decision log of pool no-such-pool"
        in elsewhere.stderr
    )
    typo = cli(p, "audit", "--pool", "pool-x")
    assert typo.returncode == 2
    assert (
        "no decision is about pool 'pool-x'; the pools decided about: pool-a, pool-b, pool-c"
        in typo.stderr
    )

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
    report = json.loads(whatif.stdout)
    loads = 300 + 2 + 2  # the driver's, pool-c's and acme's at idle time
    assert report["recorded"]["loads"] == report["alternative"]["loads"] == loads
    assert report["changed"] > 0  # (its ack timeout alone, 30 s, keeps the silent agents' loads)
    # Its tenant weights (acme 2, globex 1, initech 1 by default) favour acme: against the
    # same file with acme at 0.25, a larger share of the loads assigned goes to acme. (Not
    # against the recorded run: there every load was assigned, so the shares are those of
    # the loads; what-if runs assign fewer, its longer timeouts leaving loads stuck, and
    # which ones come first moves the shares too. Against acme at 1, the margin went down
    # to 0.012 in 25 runs here; against 0.5, it stayed within 0.05-0.09 in 8; 0.25 widens
    # it, as a run's speed moves what waits.)
    control_file = Path(p.logs) / "control.yaml"
    control_doc = doc["document"] | {"tenant_weights": {"acme": 0.25, "globex": 1.0}}
    control_file.write_text(yaml.safe_dump(doc | {"version": 3, "document": control_doc}))
    control = cli(p, "whatif", "--policy", str(control_file), "--json")
    assert control.returncode == 0, control.stderr
    shares = [json.loads(out)["alternative"]["tenants"]["acme"]["share"]
              for out in (whatif.stdout, control.stdout)]  # fmt: skip
    assert shares[0] > shares[1], shares

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
        async with DispatcherProducer(p.bootstrap, topics=p.topics) as producer:
            # (no ack or heartbeat timeout within the test: nothing else is decided after
            # the 6 assignments, else the assignments read at the end could be ahead of
            # the decisions the audit read)
            await producer.publish_policy(policy_update(1, ack_ms=HOUR_MS, heartbeat_ms=HOUR_MS))
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
    # (the first worker sent the assignments, not the decisions: they come again, identical)
    assert asyncio.run(assignment_problems(p, results, repeats=True)) == []
