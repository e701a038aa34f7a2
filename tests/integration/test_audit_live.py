"""Auditing a live system (decisions of inputs the workers have not committed are pending),
and topics as retention, tombstones or a half-made system leave them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from dispatcher.audit import audit, explain_load
from dispatcher.codecs import Codec
from dispatcher.codecs.adapt import encode_decision
from dispatcher.demo import policy_update
from dispatcher.errors import BrokerError
from dispatcher.topics import TopicNames
from dispatcher.worker.fold import PartitionFold
from tests.integration.pipeline import Pipeline
from tests.unit.test_policy_whatif import recorded_run

pytestmark = pytest.mark.integration
CODEC = Codec()


def test_decisions_of_inputs_after_the_workers_commit_are_pending_not_missing(
    pipeline: Pipeline,
) -> None:
    """As a worker leaves it between two commits: inputs sequenced, decisions sent for those
    below the committed offset only. Before, such an audit failed with them all missing.
    A decision lost below the commit is still missing."""
    p, sequence = pipeline, pipeline.topics.input_sequence
    inputs = recorded_run(policy_update(2), steps=20)
    fold = PartitionFold(sequence, 0, CODEC)
    decided = [(offset, d) for offset, value in inputs for d in fold.apply(value, offset)]
    cut = len(inputs) // 2
    sent = [d for offset, d in decided if offset < cut]
    pending = [d for offset, d in decided if offset >= cut]
    assert len(sent) > 10
    assert len(pending) > 10
    lost = sent.pop()  # below the commit, yet not in the log

    async def record() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=p.bootstrap)
        await producer.start()
        for _, value in inputs:
            await producer.send(sequence, value, key=b"p", partition=0)
        for d in sent:
            record = encode_decision(CODEC, d, assignment=False)[0]
            await producer.send(p.topics.decision_log, record, key=b"p", partition=0)
        await producer.stop()
        workers = AIOKafkaConsumer(bootstrap_servers=p.bootstrap, group_id=p.app_id,
                                   enable_auto_commit=False)  # fmt: skip
        await workers.start()
        tp = TopicPartition(sequence, 0)
        workers.assign([tp])
        await workers.commit({tp: cut})
        await workers.stop()

    asyncio.run(record())
    (live, *_) = asyncio.run(audit(p.bootstrap, p.topics, group=p.app_id))
    assert (live.matched, live.pending, live.missing) == (
        len(sent),
        len(pending),
        [lost.decision_id],
    )
    assert not live.mismatches
    assert not live.unexplained
    (strict, *_) = asyncio.run(audit(p.bootstrap, p.topics))
    assert strict.pending == 0
    assert strict.missing == [d.decision_id for d in [lost, *pending]]
    with pytest.raises(BrokerError, match="has committed no offset"):
        asyncio.run(audit(p.bootstrap, p.topics, group=p.app_id + "-nobody"))


async def _send(bootstrap: str, topic: str, values: list[bytes | None]) -> None:
    """Appends ``values`` to partition 0 of ``topic``, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value, key=b"p", partition=0)
    finally:
        await producer.stop()


def _recorded(p: Pipeline, steps: int = 5) -> tuple[list[bytes | None], list[bytes | None]]:
    """An input sequence and the log of its decisions, as a worker records them."""
    fold = PartitionFold(p.topics.input_sequence, 0, CODEC)
    inputs: list[bytes | None] = [v for _, v in recorded_run(policy_update(2), steps=steps)]
    log: list[bytes | None] = [encode_decision(CODEC, d, assignment=False)[0]
                               for offset, value in enumerate(inputs)
                               for d in fold.apply(value, offset)]  # fmt: skip
    return inputs, log


def test_a_decision_log_retention_emptied_has_every_decision_expired(pipeline: Pipeline) -> None:
    # Before, with no first record to tell that retention cut the log, all were missing.
    p = pipeline
    inputs, log = _recorded(p)
    asyncio.run(_send(p.bootstrap, p.topics.input_sequence, inputs))
    asyncio.run(_send(p.bootstrap, p.topics.decision_log, log))

    async def delete_all() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=p.bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(p.topics.decision_log, 0):
                                        RecordsToDelete(len(log))})  # fmt: skip
        finally:
            await admin.close()

    asyncio.run(delete_all())
    (res, *_) = asyncio.run(audit(p.bootstrap, p.topics))
    assert (res.expired, res.missing, res.checked, res.matched) == (len(log), [], 0, 0)
    assert res.ok


def test_records_with_no_value_are_skipped_as_inputs_and_undecodable_as_logged(
    pipeline: Pipeline,
) -> None:
    # Before, a tombstone in either topic crashed the audit with a TypeError.
    p = pipeline
    inputs, log = _recorded(p)
    asyncio.run(_send(p.bootstrap, p.topics.input_sequence, [*inputs, None]))
    asyncio.run(_send(p.bootstrap, p.topics.decision_log, [*log[:3], None, *log[3:]]))
    (res, *_) = asyncio.run(audit(p.bootstrap, p.topics))
    assert (res.inputs, res.matched, res.missing) == (len(inputs) + 1, len(log), [])
    assert [(x.field, x.input) for x in res.mismatches] == [
        ("(undecodable)", (p.topics.decision_log, 0, 3))
    ]


def test_an_audit_of_a_half_made_system_names_what_it_lacks_at_once(
    kafka_bootstrap: str, new_topics: Callable[..., list[str]], unique: Callable[[str], str]
) -> None:
    # Before, an audit without its decision log waited ~40 s for it, then failed with a
    # KafkaTimeoutError naming no topic.
    topics = TopicNames.prefixed(unique("half") + "-")
    new_topics(topics.input_sequence, partitions=2)
    took = []  # (the audits alone: making topics on a loaded broker may take a while)
    started = time.monotonic()
    with pytest.raises(BrokerError, match=f"no topic '{topics.decision_log}'"):
        asyncio.run(audit(kafka_bootstrap, topics))
    took.append(time.monotonic() - started)
    new_topics(topics.decision_log, partitions=1)
    started = time.monotonic()
    with pytest.raises(BrokerError, match=f"{topics.decision_log} at .* has no partition 1 "):
        asyncio.run(audit(kafka_bootstrap, topics))
    took.append(time.monotonic() - started)
    assert max(took) < 15, took


def test_explain_without_its_input_sequence_says_so_at_once(
    kafka_bootstrap: str, new_topics: Callable[..., list[str]], unique: Callable[[str], str]
) -> None:
    # Before, explain waited ~40 s for the missing input-sequence partition, then failed.
    topics = TopicNames.prefixed(unique("noinputs") + "-")
    new_topics(topics.decision_log, partitions=1)
    fold = PartitionFold(topics.input_sequence, 0, CODEC)
    decided = [d for offset, value in recorded_run(policy_update(1), steps=2)
               for d in fold.apply(value, offset)]  # fmt: skip
    assigned = next(d for d in decided if d.agent_id is not None)

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for d in decided:
                value = encode_decision(CODEC, d, assignment=False)[0]
                await producer.send_and_wait(topics.decision_log, value, b"p", partition=0)
        finally:
            await producer.stop()
        started = time.monotonic()
        try:
            await explain_load(kafka_bootstrap, topics, assigned.load_id,
                               (assigned.agent_id or "",))  # fmt: skip
        finally:
            took.append(time.monotonic() - started)

    took: list[float] = []
    with pytest.raises(BrokerError, match=f"no topic '{topics.input_sequence}'"):
        asyncio.run(scenario())
    assert took[0] < 15, took
