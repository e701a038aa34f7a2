"""A live view of the declared topics: records in each, and the rate.

``dispatcher watch`` (beside ``dispatcher run``, with the run's
``--topic-prefix``); it reads end offsets only and joins no consumer group,
so it never disturbs other consumers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from dispatcher.errors import BrokerError
from dispatcher.patience import patient
from dispatcher.reading import closing

__all__ = ["topic_totals", "watch_topics"]


async def topic_totals(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], topics: list[str]
) -> dict[str, int]:
    """Records ever written to each topic (the sum of its partitions' end offsets)."""
    ends = await consumer.end_offsets(tps)
    totals = dict.fromkeys(topics, 0)
    for tp, end in ends.items():
        totals[tp.topic] += end
    return totals


async def watch_topics(
    bootstrap_servers: str,
    topics: list[str],
    *,
    interval: float = 2.0,
    duration: float | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, int]:
    """Every ``interval`` seconds, prints a line of the topics that grew (by how many
    records, and at what rate per second), until cancelled or ``duration`` ends.

    Returns:
        The last totals per topic.

    Raises:
        BrokerError: the broker cannot be reached.
    """
    consumer = patient(
        AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        described = await admin.describe_topics(topics)
        missing = [t["topic"] for t in described if t["error_code"]]
        if missing:
            echo("not found (counted as 0): " + ", ".join(sorted(missing)))
        tps = [
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if not t["error_code"]
            for p in t["partitions"]
        ]
        await consumer.start()
        last = await topic_totals(consumer, tps, topics)
        echo("watching: " + ", ".join(f"{t}={n}" for t, n in last.items()))
        started = last_time = time.monotonic()
        while duration is None or (left := started + duration - time.monotonic()) > 0:
            await asyncio.sleep(interval if duration is None else min(interval, left))
            now_totals, now = await topic_totals(consumer, tps, topics), time.monotonic()
            grown = {t: n - last[t] for t, n in now_totals.items() if n != last[t]}
            if grown:
                rates = ", ".join(
                    f"{t} +{d} ({d / (now - last_time):.0f}/s)" for t, d in grown.items()
                )
                echo(f"{time.strftime('%H:%M:%S')} {rates}")
            last, last_time = now_totals, now
        return last
    except KafkaError as exc:
        raise BrokerError(f"watching topics at {bootstrap_servers} failed: {exc!r}") from exc
    finally:
        try:
            await closing(consumer.stop())
        finally:
            await closing(admin.close())
