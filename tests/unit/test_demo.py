"""The demo's producers, agents and tally, on fakes of aiokafka's clients (no broker)."""

from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from dispatcher import demo
from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.errors import BrokerError
from dispatcher.sdk import producer
from dispatcher.topics import TopicNames
from tests.samples import SAMPLES
from tests.unit.test_sdk_producer import FakeKafkaProducer

CODEC = Codec()
TOPICS = TopicNames()
TP = TopicPartition(TOPICS.decision_log, 0)


@pytest.fixture(autouse=True)
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer, "AIOKafkaProducer", FakeKafkaProducer)


class _Reader:
    """A reader_at_end of one partition: hands out ``batches`` one per read, then nothing
    (``stall``: nothing at all)."""

    def __init__(self, batches: list[list[bytes | None]], *, stall: bool = False) -> None:
        self.batches, self.stall = batches, stall
        self.offset = 0
        self.stopped = False

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.stall or not self.batches:
            return {}
        records = []
        for value in self.batches.pop(0):
            records.append(types.SimpleNamespace(value=value, timestamp=1_000 + self.offset))
            self.offset += 1
        return {TP: records}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {TP: self.offset + sum(len(b) for b in self.batches)}

    async def position(self, tp: TopicPartition) -> int:
        return self.offset

    async def stop(self) -> None:
        self.stopped = True


def _reading(monkeypatch: pytest.MonkeyPatch, reader: _Reader) -> None:
    async def reader_at_end(bootstrap: str, topic: str) -> _Reader:
        return reader

    monkeypatch.setattr(demo, "reader_at_end", reader_at_end)


def _decision(i: int, outcome: m.DecisionOutcome = m.DecisionOutcome.COMPLETED) -> bytes:
    record = SAMPLES["DecisionRecord"][0].model_copy(
        update={"decision_id": f"d{i}", "load_id": f"load-{i}", "outcome": outcome}
    )
    return CODEC.encode(record)


def _tally(monkeypatch: pytest.MonkeyPatch, reader: _Reader) -> demo.DecisionTally:
    _reading(monkeypatch, reader)
    tally = demo.DecisionTally("b:1")
    asyncio.run(tally.start())
    return tally


# -- refused records are errors, not successes (the producer's flush raises for them) --


def test_loads_the_broker_refuses_are_not_counted_and_stop_the_driver_soon() -> None:
    async def run(driver: demo.LoadDriver, count: int, *, refuse: bool = False) -> None:
        await driver.producer.start()
        if refuse:
            driver.producer.kafka.refuse.add(TOPICS.load_arrival)
        async with asyncio.timeout(10):  # a run without --duration does not go on regardless
            await driver.run(count, rate=2_000)

    fine = demo.LoadDriver("b:1", ["pool-a", "pool-b"])
    asyncio.run(run(fine, 20))
    assert fine.sent == 20
    refused = demo.LoadDriver("b:1", ["pool-a", "pool-b"])
    with pytest.raises(BrokerError, match=r"record\(s\) not delivered.*load-arrival"):
        asyncio.run(run(refused, 10**9, refuse=True))
    assert refused.sent == 0


def test_answers_the_broker_refuses_are_not_counted_and_stop_the_fleet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = SAMPLES["Assignment"][0]
    assert isinstance(mine, m.Assignment)
    _reading(monkeypatch, _Reader([[CODEC.encode(mine)]]))
    profile = demo.agent_profile(np.random.default_rng(0))
    fleet = demo.Fleet("b:1", {mine.agent_id: (mine.pool, profile)}, behaviour=demo.Behaviour(
        accept_ms=0, work_ms=(1, 2), decline=0, fail=0, heartbeat_ms=100))  # fmt: skip

    async def scenario() -> None:
        await fleet.start()
        fleet.producer.kafka.refuse.add(TOPICS.task_results)
        try:
            until = time.monotonic() + 2
            await fleet.run(lambda: time.monotonic() > until)
        finally:
            fleet.producer.kafka.refuse.clear()
            await fleet.stop()

    with pytest.raises(BrokerError, match=r"record\(s\) not delivered.*task-results"):
        asyncio.run(scenario())
    assert fleet.stats.received == 1
    assert fleet.stats.answered == {}


# -- the tally ------------------------------------------------------------------------


def test_a_poll_reads_until_nothing_more_has_arrived(monkeypatch: pytest.MonkeyPatch) -> None:
    tally = _tally(monkeypatch, _Reader([[_decision(0)], [_decision(1), _decision(2)], []]))
    asyncio.run(tally.poll())
    assert len(tally.ids) == 3


def test_an_undecodable_decision_record_is_counted_and_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tally = _tally(monkeypatch, _Reader([[_decision(0), b"\x00junk", None, _decision(1)]]))
    asyncio.run(tally.poll())
    assert (tally.decisions, tally.undecodable) == (2, 2)
    assert tally.outcomes == {"COMPLETED": 2}


def test_the_summary_reads_the_log_to_its_end_or_says_it_may_be_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[list[bytes | None]] = [[_decision(i)] for i in range(30)]  # > one poll
    tally = _tally(monkeypatch, _Reader(batches))
    assert asyncio.run(tally.catch_up())
    assert tally.decisions == 30

    stalled = _tally(monkeypatch, _Reader([[_decision(0)]], stall=True))
    assert not asyncio.run(stalled.catch_up(timeout_s=0.2))
    report = demo.DemoReport(published=1, outcomes={}, decisions=0, decisions_per_s=0.0,
                             latency_p50_ms=None, latency_p99_ms=None, repeats=0, seconds=1.0,
                             undecodable=2, complete=False)  # fmt: skip
    assert report.lines()[-2:] == [
        "undecodable decision records skipped: 2",
        "the decision log was not read to its end: the figures may be short",
    ]


@pytest.mark.parametrize(("published", "decisions", "hint"), [(5, 0, True), (5, 3, False),
                                                              (0, 0, False)])  # fmt: skip
def test_the_summary_asks_for_a_worker_when_no_decision_came(
    published: int, decisions: int, hint: bool
) -> None:
    """Before, a demo without a worker ended with "decisions 0" and nothing more."""
    report = demo.DemoReport(published=published, outcomes={}, decisions=decisions,
                             decisions_per_s=0.0, latency_p50_ms=None, latency_p99_ms=None,
                             repeats=0, seconds=1.0, undecodable=0, complete=True,
                             decision_log="x-decision-log")  # fmt: skip
    said = "no decisions in 'x-decision-log': is a worker running on these topics " \
           "(`dispatcher worker` with the demo's --topic-prefix)?"  # fmt: skip
    assert (report.lines()[-1] == said) is hint
    assert sum("worker" in line for line in report.lines()) == hint


@pytest.mark.parametrize("fails", ["start", "partitions"])
def test_a_reader_that_cannot_start_reading_is_stopped(
    monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """Before, a consumer that could not connect (``start`` raised) was left unclosed and
    its KafkaConnectionError reached the user as a traceback."""
    started: list[Any] = []

    class Consumer:
        def __init__(self, **_: Any) -> None:
            self.stopped = False
            started.append(self)

        async def start(self) -> None:
            if fails == "start":
                raise KafkaConnectionError("Unable to bootstrap from b:1")

        async def stop(self) -> None:
            self.stopped = True

    async def no_topic(bootstrap: str, topic: str) -> list[TopicPartition]:
        raise BrokerError(f"no topic {topic}")

    monkeypatch.setattr(demo, "AIOKafkaConsumer", Consumer)
    monkeypatch.setattr(demo, "partitions", no_topic)
    says = "no topic" if fails == "partitions" else "'decisions' at b:1: KafkaConnectionError"
    with pytest.raises(BrokerError, match=says):
        asyncio.run(demo.reader_at_end("b:1", "decisions"))
    assert [c.stopped for c in started] == [True]


# -- what a run without --duration keeps is bounded --------------------------------------


def test_what_the_demo_remembers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "REMEMBER", 3)
    tally = _tally(monkeypatch, _Reader([[_decision(i) for i in range(10)]]))
    asyncio.run(tally.poll())
    assert (tally.decisions, len(tally.ids), len(tally.finals)) == (10, 3, 3)
    assert list(tally.finals) == ["load-7", "load-8", "load-9"]  # the latest

    driver = demo.LoadDriver("b:1", ["pool-a"])

    async def send() -> None:
        await driver.producer.start()
        await driver.run(10, rate=10_000)

    asyncio.run(send())
    assert list(driver.published) == ["load-0000007", "load-0000008", "load-0000009"]

    sample = SAMPLES["Assignment"][0]
    assert isinstance(sample, m.Assignment)
    profile = demo.agent_profile(np.random.default_rng(0))
    fleet = demo.Fleet("b:1", {sample.agent_id: (sample.pool, profile)},
                       published=driver.published)  # fmt: skip
    fleet.offline.add(sample.agent_id)  # (it answers nothing)
    for i in range(7, 10):
        fleet._on_assignment(CODEC.encode(sample.model_copy(
            update={"decision_id": f"d{i}", "load_id": f"load-{i:07d}"})))  # fmt: skip
    assert driver.published == {}  # let go at its first assignment
    assert fleet.stats.measured == 3
    for i in range(10):
        fleet._on_assignment(CODEC.encode(sample.model_copy(update={"decision_id": f"x{i}"})))
    assert len(fleet._seen) == 3
    assert fleet.stats.received == 13


def test_latencies_are_a_bounded_uniform_sample_and_the_latest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo, "LATENCY_SAMPLE", 500)

    def measured() -> demo.FleetStats:
        stats = demo.FleetStats()
        for ms in range(100_000):
            stats.add_latency(float(ms))
        return stats

    stats = measured()
    assert (len(stats.latency_ms), stats.measured) == (500, 100_000)
    assert 40_000 < np.percentile(stats.latency_ms, 50) < 60_000
    assert np.percentile(stats.latency_ms, 99) > 95_000
    assert list(stats.recent_latency_ms) == [float(ms) for ms in range(98_000, 100_000)]
    assert measured().latency_ms == stats.latency_ms  # seeded: runs repeat
