"""A worker restoring a snapshot checks that it is of the log in the topic now."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from dispatcher import core
from dispatcher.codecs import Codec
from dispatcher.demo import policy_update
from dispatcher.worker.app import Dispatcher, WorkerConfig
from dispatcher.worker.fold import PartitionFold
from dispatcher.worker.snapshots import Snapshots
from tests.integration.pipeline import Pipeline
from tests.unit.test_policy_whatif import recorded_run

pytestmark = pytest.mark.integration
CODEC = Codec()
CUT, UPTO = 60, 100


def snapshot_of(records: list[tuple[int, bytes]], root: Path, topic: str) -> None:
    fold = PartitionFold(topic, 0, CODEC)
    for offset, value in records[:CUT]:
        fold.apply(value, offset)
    snaps = Snapshots(root, topic, every=CUT)
    assert snaps.maybe_write(fold)
    snaps.wait()


def later(fold: PartitionFold, records: list[tuple[int, bytes]]) -> list[core.Decision]:
    return [d for offset, value in records[UPTO:] for d in fold.apply(value, offset)]


def test_a_snapshot_of_another_log_under_the_same_topic_name_is_not_used(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = pipeline.topics.input_sequence
    log = recorded_run(policy_update(2), steps=30)  # what the topic holds now
    gone = recorded_run(policy_update(1), steps=30)  # a log deleted with the topic before

    async def write() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap)
        await producer.start()
        for _, value in log:
            await producer.send(topic, value, key=b"p", partition=0)
        await producer.stop()

    asyncio.run(write())
    truth = PartitionFold(topic, 0, CODEC)
    for offset, value in log[:UPTO]:
        truth.apply(value, offset)
    expected = later(truth, log)
    assert len(expected) > 20

    for source, root in ((gone, tmp_path / "gone"), (log, tmp_path / "same")):
        snapshot_of(source, root, topic)
        cfg = WorkerConfig(pipeline.bootstrap, topics=pipeline.topics, snapshot_dir=root,
                           snapshot_every=CUT)  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dispatcher.worker"):
            fold = asyncio.run(Dispatcher(cfg).catch_up(0, UPTO))
        assert later(fold, log) == expected, source is gone
        assert ("is of another log" in caplog.text) is (source is gone)
        assert f"starts from the snapshot at offset {CUT}" in caplog.text
