"""Records go through the real broker and come back, keyed, ordered, committed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from dispatcher.reading import read_chunks


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, v, key=k) for k, v in records])
    finally:
        await producer.stop()


async def _consume(
    bootstrap: str, topic: str, group: str, want: int
) -> list[tuple[int, bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    got: list[tuple[int, bytes, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < want:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got += [(r.partition, r.key or b"", r.value or b"") for r in records]
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def _committed(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await consumer.stop()
    return sum(o or 0 for o in offsets)


def test_produce_and_consume_through_the_real_broker(
    kafka_bootstrap: str, new_topics: Callable[..., list[str]], unique: Callable[[str], str]
) -> None:
    (topic,) = new_topics(unique("roundtrip"), partitions=3)
    records = [(f"pool-{i % 5}".encode(), f"load-{i}".encode()) for i in range(300)]
    asyncio.run(_produce(kafka_bootstrap, topic, records))

    group = unique("group")
    got = asyncio.run(_consume(kafka_bootstrap, topic, group, len(records)))

    assert sorted(v for _, _, v in got) == sorted(v for _, v in records)
    # One key, one partition, in the order produced: what pool-keyed dispatch rests on.
    for key in {k for k, _ in records}:
        assert len({p for p, k, _ in got if k == key}) == 1
        assert [v for _, k, v in got if k == key] == [v for k2, v in records if k2 == key]
    assert asyncio.run(_committed(kafka_bootstrap, topic, group, 3)) == len(records)


def test_a_reader_cancelled_while_its_consumer_stops_is_cancelled(
    kafka_bootstrap: str,
    new_topics: Callable[..., list[str]],
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's consumer, stopping, awaits its fetcher's task with CancelledError
    suppressed, so a cancellation of the reader that comes meanwhile was lost: an audit
    interrupted there by Ctrl-C went on to its end, said OK and exited 0."""
    (topic,) = new_topics(unique("cancelled"), partitions=1)
    asyncio.run(_produce(kafka_bootstrap, topic, [(b"k", b"v")] * 3))
    stop = AIOKafkaConsumer.stop

    async def cancelled_while_stopping(consumer: AIOKafkaConsumer) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # (as Ctrl-C does, at the next await: in the consumer's stop)
        await stop(consumer)

    monkeypatch.setattr(AIOKafkaConsumer, "stop", cancelled_while_stopping)

    async def read() -> int:
        return sum(
            [len(chunk) async for chunk in read_chunks(kafka_bootstrap, TopicPartition(topic, 0))]
        )

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(read())
