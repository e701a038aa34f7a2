"""reading.committed_offsets waits out a group coordinator that is not there yet; partitions
does not wait for a topic whose name no topic can have."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError, UnknownTopicOrPartitionError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from dispatcher import reading
from dispatcher.errors import BrokerError, ConfigError


class _Admin:
    """Stands in for the admin client: answers with ``errors`` first, one per call."""

    errors: list[Exception]
    closed = 0
    described = 0

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        type(self).closed += 1

    async def list_consumer_group_offsets(self, group: str) -> dict[Any, Any]:
        if self.errors:
            raise self.errors.pop(0)
        return {TopicPartition("t", 0): OffsetAndMetadata(7, ""),
                TopicPartition("t", 1): OffsetAndMetadata(-1, ""),
                TopicPartition("u", 0): OffsetAndMetadata(3, "")}  # fmt: skip

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        type(self).described += 1
        return [{"topic": t, "error_code": 17, "partitions": []} for t in topics]  # INVALID_TOPIC


def test_a_missing_coordinator_is_asked_again_and_other_errors_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reading, "AIOKafkaAdminClient", _Admin)
    _Admin.errors, _Admin.closed = [GroupCoordinatorNotAvailableError()] * 2, 0
    assert asyncio.run(reading.committed_offsets("b:1", "g", "t")) == {0: 7}
    assert _Admin.closed == 3  # (every client it opened)

    _Admin.errors = [UnknownTopicOrPartitionError()]
    with pytest.raises(BrokerError, match="offsets of group g"):
        asyncio.run(reading.committed_offsets("b:1", "g", "t"))

    _Admin.errors = [GroupCoordinatorNotAvailableError()] * 100
    with pytest.raises(BrokerError, match="GroupCoordinatorNotAvailable"):
        asyncio.run(reading.committed_offsets("b:1", "g", "t", timeout_s=0.5))


def test_a_topic_name_no_topic_can_have_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, only an unknown topic stopped the asking: this one was asked 100 times (30 s).
    monkeypatch.setattr(reading, "AIOKafkaAdminClient", _Admin)
    _Admin.described = 0
    with pytest.raises(ConfigError, match="'a b' is no valid topic name"):
        asyncio.run(reading.partitions("b:1", "a b"))
    assert _Admin.described == 1
