"""`dispatcher run`'s live view counts the records really on each topic."""

from __future__ import annotations

import asyncio
import re
import time
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
            while not lines:  # (its first count taken: connecting may take a while)
                assert not watcher.done(), "the watch ended before it counted"
                await asyncio.sleep(0.05)
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


def test_watch_stops_when_its_duration_ends_not_at_the_next_interval(
    kafka_bootstrap: str, new_topics: Callable[..., list[str]], unique: Callable[[str], str]
) -> None:
    """Before, it slept a whole interval (2 s by default) past a --duration of 0.5 s."""
    (topic,) = new_topics(unique("short"))

    async def scenario() -> float:
        counted: list[float] = []  # when its first count was shown (connected by then)
        await watch_topics(kafka_bootstrap, [topic], interval=3, duration=0.5,
                           echo=lambda _: counted.append(time.monotonic()))  # fmt: skip
        return time.monotonic() - counted[0]

    assert asyncio.run(scenario()) < 2.5  # (one interval is 3 s)
