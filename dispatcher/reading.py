"""Reading whole topics from the broker: what audit, what-if, explain, policy tools and the
demo share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    KafkaError,
    NotCoordinatorForGroupError,
)

from dispatcher.errors import BrokerError, ConfigError
from dispatcher.patience import patient

__all__ = [
    "PROGRESS_EVERY",
    "bounds",
    "closing",
    "committed_offsets",
    "end_offsets",
    "partitions",
    "read_chunks",
    "read_partition",
    "replay_consumer",
]

PROGRESS_EVERY = 20_000  # replays report their progress every this many inputs
CHUNK = 20_000  # records a read hands over at a time, at most
_UNKNOWN_TOPIC = 3  # Kafka's UNKNOWN_TOPIC_OR_PARTITION
_INVALID_TOPIC = 17  # Kafka's INVALID_TOPIC_EXCEPTION: a name no topic can have
_NO_COORDINATOR = (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError,
                   NotCoordinatorForGroupError)  # fmt: skip


async def partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, from fresh metadata.

    Raises:
        BrokerError: the broker cannot be reached, or has no such topic (after 3 s,
            for one created just now), or its partitions have no leader after 30 s.
        ConfigError: ``topic`` is no valid topic name (asking again will not help).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        for attempt in range(100):
            (found,) = await admin.describe_topics([topic])
            parts = [p for p in found["partitions"] if p["leader"] >= 0]
            if found["error_code"] == 0 and parts and len(parts) == len(found["partitions"]):
                return [TopicPartition(topic, p["partition"]) for p in
                        sorted(parts, key=lambda p: p["partition"])]  # fmt: skip
            if found["error_code"] == _UNKNOWN_TOPIC and attempt >= 10:
                break
            if found["error_code"] == _INVALID_TOPIC:
                raise ConfigError(f"{topic!r} is no valid topic name: at most 249 characters, "
                                  "each an ASCII letter or digit, '.', '_' or '-' (is the "
                                  "topic prefix right?)")  # fmt: skip
            await asyncio.sleep(0.3)
    except KafkaError as exc:
        raise BrokerError(f"reading the partitions of {topic!r} at {bootstrap}: {exc!r}") from exc
    finally:
        await closing(admin.close())
    raise BrokerError(f"no topic {topic!r} with partitions at {bootstrap} (is the topic "
                      "prefix right?)")  # fmt: skip


async def end_offsets(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The end offset of each of ``tps``: how many records were ever written to it.

    Raises:
        BrokerError: the broker cannot be reached or fails the request.
    """
    consumer = replay_consumer(bootstrap)
    try:
        await consumer.start()
        return dict(await consumer.end_offsets(tps))
    except KafkaError as exc:
        raise BrokerError(f"reading end offsets at {bootstrap}: {exc!r}") from exc
    finally:
        await closing(consumer.stop())


async def bounds(bootstrap: str, tp: TopicPartition) -> tuple[int, int]:
    """The first offset ``tp`` still holds (retention deletes the oldest records) and its end
    offset: equal, it holds no record.

    Raises:
        BrokerError: the broker cannot be reached or fails the request.
    """
    consumer = replay_consumer(bootstrap)
    try:
        await consumer.start()
        return (await consumer.beginning_offsets([tp]))[tp], (await consumer.end_offsets([tp]))[tp]
    except KafkaError as exc:
        raise BrokerError(f"reading the offsets of {tp.topic}[{tp.partition}] at {bootstrap}: "
                          f"{exc!r}") from exc  # fmt: skip
    finally:
        await closing(consumer.stop())


async def closing(stop: Awaitable[None]) -> None:
    """Awaits ``stop`` (an aiokafka client's ``stop()`` or ``close()``), then raises again a
    cancellation of this task that it swallowed.

    aiokafka 0.14 closes its fetcher and client by cancelling their tasks and awaiting
    them with CancelledError suppressed: a Ctrl-C that came meanwhile was lost, and an
    audit interrupted went on to its end, said OK and exited 0. (A task that means to go
    on after a cancellation says so with ``uncancel()``, as the demo's summary does.)
    """
    await stop
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        # (from None: a Ctrl-C through nested clients printed each's cancellation in turn,
        # "during handling of the above", some 80 lines for the README's SDK example)
        raise asyncio.CancelledError from None


def replay_consumer(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer (not started, no group) for reading a log up to a known offset.

    The broker may hold a fetch only briefly: with aiokafka's 500 ms default
    the first fetch after a seek waited that long (most of the time of reading
    25k records). A fetch brings up to 4 MB.
    """
    return patient(AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=5, max_partition_fetch_bytes=4 << 20,
                                    fetch_max_bytes=4 << 20))  # fmt: skip


async def read_partition(bootstrap: str, tp: TopicPartition) -> list[Any]:
    """Every record of ``tp`` from the start up to its end when called."""
    return [r async for chunk in read_chunks(bootstrap, tp) for r in chunk]


async def committed_offsets(
    bootstrap: str, group: str, topic: str, *, timeout_s: float = 30.0
) -> dict[int, int]:
    """The offsets consumer group ``group`` last committed on the partitions of ``topic``
    (a partition it never committed is left out: none, for a group that never did).

    A group coordinator not yet there (as on a broker whose offsets topic this very
    request has it create) is asked again, for up to ``timeout_s``.

    Raises:
        BrokerError: the broker cannot be reached, or fails the request.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            offsets = await admin.list_consumer_group_offsets(group)
            break
        except KafkaError as exc:
            if not isinstance(exc, _NO_COORDINATOR) or asyncio.get_running_loop().time() > deadline:
                raise BrokerError(f"offsets of group {group} at {bootstrap}: {exc!r}") from exc
        finally:
            await closing(admin.close())
        await asyncio.sleep(0.3)
    return {tp.partition: om.offset for tp, om in offsets.items()
            if tp.topic == topic and om.offset >= 0}  # fmt: skip


async def read_chunks(bootstrap: str, tp: TopicPartition) -> AsyncGenerator[list[Any], None]:
    """The records of ``tp`` from the start up to its end when first read, a fetch at a time
    (a reader that keeps nothing holds one fetch in memory, whatever the log's length).

    Raises:
        BrokerError: the broker cannot be reached or fails a request.
    """
    consumer = replay_consumer(bootstrap)
    try:
        await consumer.start()
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, start)  # (seek_to_beginning is lazy: position() may not see it)
        nxt = start
        while nxt < end:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=CHUNK)
            records = batch.get(tp, [])
            yield [r for r in records if r.offset < end]
            nxt = records[-1].offset + 1 if records else await consumer.position(tp)
    except KafkaError as exc:
        raise BrokerError(f"reading {tp.topic}[{tp.partition}] at {bootstrap}: {exc!r}") from exc
    finally:
        await closing(consumer.stop())
