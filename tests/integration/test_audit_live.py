"""Auditing a live system: decisions of inputs the workers have not committed are pending."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from dispatcher.audit import audit
from dispatcher.codecs import Codec
from dispatcher.codecs.adapt import encode_decision
from dispatcher.demo import policy_update
from dispatcher.errors import BrokerError
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
