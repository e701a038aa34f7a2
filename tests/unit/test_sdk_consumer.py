"""The SDK's dead-lettering consumer, on fakes of aiokafka's clients (no broker)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError

from dispatcher.codecs import Codec
from dispatcher.errors import BrokerError
from dispatcher.sdk import consumer
from tests.samples import SAMPLES

TP = TopicPartition("assignments", 0)
GOOD = Codec().encode(SAMPLES["Assignment"][0])
LOG = [b"poison" if offset == 7 else GOOD for offset in range(10)]


class _Consumer:
    """One partition of LOG, of a group that never committed."""

    def __init__(self, **_: Any) -> None:
        self.position = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.position = 0

    async def commit(self, offsets: object) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        records = [types.SimpleNamespace(topic=TP.topic, partition=0, offset=o, value=LOG[o],
                                         key=b"agent-1", timestamp=1)
                   for o in range(self.position, len(LOG))]  # fmt: skip
        self.position = len(LOG)
        return {TP: records} if records else {}


class _Producer:
    """The first dead letter is refused, the others delivered."""

    sent = 0

    async def send(self, *_: Any, **__: Any) -> asyncio.Future[None]:
        self.sent += 1
        delivery = asyncio.get_running_loop().create_future()
        if self.sent == 1:
            delivery.set_exception(KafkaTimeoutError("the dead letter was not acknowledged"))
        else:
            delivery.set_result(None)
        return delivery


def test_a_failed_dead_letter_goes_back_to_where_a_resumed_partition_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new group never committed; it started where the old group had got to (7), so a
    dead letter that failed sends it back there, not to the oldest record kept."""

    async def old_group(bootstrap: str, group: str, topic: str) -> dict[int, int]:
        return {0: 7}

    monkeypatch.setattr(consumer, "AIOKafkaConsumer", _Consumer)
    monkeypatch.setattr(consumer, "committed_offsets", old_group)

    async def scenario() -> list[int]:
        dc = consumer.DecodingConsumer("b:1", TP.topic, "Assignment", group_id="agent-new",
                                       partitions=[0], resume_from="agent-old",
                                       producer=_Producer())  # fmt: skip
        offsets = []
        async with dc:
            offsets += [(await anext(dc)).offset for _ in range(2)]
            with pytest.raises(BrokerError, match="come again"):
                await anext(dc)
            offsets += [(await anext(dc)).offset for _ in range(2)]
        return offsets

    assert asyncio.run(scenario()) == [8, 9, 8, 9]  # (before: 8, 9, then 0, 1 again)


class _Rebalanced(_Consumer):
    """Five good records; its first commit comes after the group moved on without it."""

    commits = 0

    async def commit(self, offsets: object) -> None:
        self.commits += 1
        if self.commits == 1:
            raise CommitFailedError("the group has already rebalanced")

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(timeout_ms / 1000)  # (nothing more comes)
        records = [types.SimpleNamespace(topic=TP.topic, partition=0, offset=o, value=GOOD,
                                         key=b"agent-1", timestamp=1)
                   for o in range(self.position, 5)]  # fmt: skip
        self.position = 5
        return {TP: records} if records else {}


def test_a_commit_the_group_refuses_after_a_rebalance_does_not_stop_the_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, it raised BrokerError and the reader stopped (a CI run on a loaded machine,
    tests/integration/test_sdk.py's rebalance test); the records since the last commit come
    again to whoever holds the partition now, and this reader reads on."""
    monkeypatch.setattr(consumer, "AIOKafkaConsumer", _Rebalanced)

    async def scenario() -> tuple[list[int], int]:
        dc = consumer.DecodingConsumer("b:1", TP.topic, "Assignment", group_id="g",
                                       partitions=[0], producer=_Producer())  # fmt: skip
        async with dc:
            offsets = [(await anext(dc)).offset for _ in range(5)]
            with pytest.raises(TimeoutError):  # (it reads on: nothing more comes)
                await asyncio.wait_for(anext(dc), 1.0)
            return offsets, dc._consumer.commits

    offsets, commits = asyncio.run(scenario())
    assert offsets == [0, 1, 2, 3, 4]
    assert commits == 1  # (refused; what it held is not committed again later)
