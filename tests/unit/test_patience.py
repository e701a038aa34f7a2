"""A patient Kafka client pauses after each failed metadata update, longer the more fail in a
row, and not after one that succeeds; every client the project makes is patient; aiokafka's
repeated messages are let through once every 10 s, with a count of those held back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient

from dispatcher.patience import MAX_PAUSE_S, Repeats, patient
from dispatcher.reading import replay_consumer
from dispatcher.sdk.consumer import DecodingConsumer
from dispatcher.sdk.producer import DispatcherProducer
from dispatcher.worker.app import WorkerConfig, build_app

# Nothing listens there: nothing is sent (no client here is started).
NOWHERE = "127.0.0.1:9"


def _client(kafka: Any) -> AIOKafkaClient:
    return kafka.client if isinstance(kafka, AIOKafkaProducer) else kafka._client


def _pauses(make: Callable[[], Any], answers: list[bool], monkeypatch: Any) -> list[float]:
    """The pauses of the client of the producer or consumer ``make`` gives, over metadata
    updates that succeed or fail as ``answers`` say (aiokafka's own update stood in for: no
    broker is asked)."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def update(self: Any, cluster: Any, topics: Any) -> bool:
        return answers.pop(0)

    monkeypatch.setattr(AIOKafkaClient, "_metadata_update", update)
    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    paused: list[float] = []

    async def run() -> None:
        kafka = make()  # (aiokafka's clients are made in a running loop)
        client = _client(kafka)
        while answers:
            await client._metadata_update(client.cluster, set())
        paused.extend(slept)
        await kafka.stop()

    asyncio.run(run())
    return paused


def test_pauses_double_from_the_retry_backoff_up_to_a_second(monkeypatch: Any) -> None:
    def make() -> Any:
        return patient(AIOKafkaConsumer(bootstrap_servers=NOWHERE, retry_backoff_ms=100))

    slept = _pauses(make, [False] * 7, monkeypatch)
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.8, MAX_PAUSE_S, MAX_PAUSE_S, MAX_PAUSE_S])


def test_an_update_that_succeeds_is_not_paused_after_and_starts_the_count_again(
    monkeypatch: Any,
) -> None:
    def make() -> Any:
        return patient(AIOKafkaProducer(bootstrap_servers=NOWHERE, retry_backoff_ms=50))

    slept = _pauses(make, [False, False, True, False, True, True], monkeypatch)
    assert slept == pytest.approx([0.05, 0.1, 0.05])


def test_aiokafka_alone_does_not_pause(monkeypatch: Any) -> None:
    """What the patience is for: aiokafka's own client answers a failed update at once (if
    this fails, aiokafka pauses by itself now, and the patient client may go)."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)

    async def run() -> list[bool]:
        consumer = AIOKafkaConsumer(bootstrap_servers=NOWHERE)
        plain = consumer._client
        updated = [await plain._metadata_update(plain.cluster, set()) for _ in range(3)]
        await consumer.stop()
        return updated

    assert asyncio.run(run()) == [False, False, False]  # (no broker known: none asked)
    assert slept == []


def _worker_producer() -> Any:
    """The aiokafka producer a worker's Faust producer makes."""
    faust_producer: Any = build_app(WorkerConfig(bootstrap=NOWHERE)).producer
    return faust_producer._new_producer()


def test_the_project_makes_patient_clients() -> None:
    async def run() -> list[AIOKafkaClient]:
        consumer = DecodingConsumer(NOWHERE, "t", "LoadEvent", group_id="g")
        made = [
            replay_consumer(NOWHERE),
            DispatcherProducer(NOWHERE).kafka,
            consumer._consumer,
            consumer._producer,
            _worker_producer(),
        ]
        for kafka in made:
            await kafka.stop()
        return [_client(kafka) for kafka in made]

    clients = asyncio.run(run())
    assert [type(c).__name__ for c in clients] == ["_PatientClient"] * len(clients)


def test_aiokafka_repeats_are_let_through_every_10_s_with_a_count() -> None:
    now = [100.0]
    repeats = Repeats(clock=lambda: now[0])

    def say(name: str, msg: str, *args: object) -> str | None:
        record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)
        return record.getMessage() if repeats.filter(record) else None

    unable = "Unable connect to node with id %s: %s"
    said = [say("aiokafka.client", unable, 1, "refused")]
    for t in (0.5, 3.0, 9.9):  # held back, as repeats of the first
        now[0] = 100.0 + t
        said.append(say("aiokafka.client", unable, 1, "refused again"))
    said.append(say("aiokafka.consumer.fetcher", "Failed fetch messages from %s", 1))  # another
    said.append(say("dispatcher.worker", unable, 1, "ours"))  # not aiokafka's: as it is
    joined = logging.LogRecord("aiokafka.consumer.group_coordinator", logging.INFO, __file__,
                               1, "Joined group %s (generation %s)", ("g", 2), None)  # fmt: skip
    assert [repeats.filter(joined) for _ in range(3)] == [True] * 3  # (info: each is said)
    now[0] = 111.0
    said.append(say("aiokafka.client", unable, 1, "refused"))
    said.append(say("aiokafka.client", unable, 1, "refused"))
    assert said == [
        "Unable connect to node with id 1: refused",
        None, None, None,
        "Failed fetch messages from 1",
        "Unable connect to node with id 1: ours",
        "Unable connect to node with id 1: refused [3 more like it in the last 11 s]",
        None,
    ]  # fmt: skip
