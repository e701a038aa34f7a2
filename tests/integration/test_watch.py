"""`dispatcher run`'s live view counts the records really on each topic."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from dispatcher.watch import watch_topics


def test_watch_counts_records_per_topic_and_reports_growth(
    kafka_bootstrap: str, new_topics: Callable[..., list[str]], unique: Callable[[str], str]
) -> None:
    busy, quiet = new_topics(unique("busy"), unique("quiet"), partitions=3)

    async def scenario() -> tuple[dict[str, int], list[str]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(7):
                await producer.send_and_wait(busy, b"x", key=str(i).encode())
            lines: list[str] = []
            watcher = asyncio.create_task(
                watch_topics(
                    kafka_bootstrap, [busy, quiet], interval=0.3, duration=3, echo=lines.append
                )
            )
            await asyncio.sleep(1)
            for i in range(5):
                await producer.send_and_wait(busy, b"y", key=str(i).encode())
            return await watcher, lines
        finally:
            await producer.stop()

    totals, lines = asyncio.run(scenario())
    assert totals == {busy: 12, quiet: 0}
    assert lines[0] == f"watching: {busy}=7, {quiet}=0"
    grown = [int(n) for line in lines[1:] for n in re.findall(rf"{busy} \+(\d+)", line)]
    assert sum(grown) == 5, lines
    assert all(quiet not in line for line in lines[1:]), lines
