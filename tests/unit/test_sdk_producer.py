"""The SDK's producer reports what the broker refused, and keeps derived ids valid (no broker)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.errors import BrokerError
from dispatcher.sdk import DispatcherProducer, producer
from tests.samples import SAMPLES

CODEC = Codec()


class FakeKafkaProducer:
    """aiokafka's producer as the SDK uses it. A broker's answer comes soon after a send,
    and refuses a record the way aiokafka 0.14 reports it: on its delivery future only,
    while flush() just waits."""

    def __init__(self, **_: Any) -> None:
        self.refuse: set[str] = set()  # topics whose records the broker refuses
        self.lose: set[str] = set()  # topics whose records are never acknowledged
        self.delivered: list[tuple[str, bytes, bytes]] = []  # (topic, key, value)

    async def start(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if topic not in self.lose:
            asyncio.get_running_loop().call_soon(self._answer, future, topic, key, value)
        return future

    def _answer(self, future: asyncio.Future[Any], topic: str, key: bytes, value: bytes) -> None:
        if topic in self.refuse:
            future.set_exception(MessageSizeTooLargeError())
            return
        self.delivered.append((topic, key, value))
        future.set_result(types.SimpleNamespace(partition=0, offset=len(self.delivered) - 1))

    async def flush(self) -> None:
        await asyncio.sleep(0)  # the answers to every send so far

    async def stop(self) -> None:
        await self.flush()


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer, "AIOKafkaProducer", FakeKafkaProducer)


def _load(i: int, pool: str) -> m.LoadEvent:
    load = SAMPLES["LoadEvent"][0]
    assert isinstance(load, m.LoadEvent)
    return load.model_copy(update={"load_id": f"load-{i}", "pool": pool})


@pytest.mark.usefixtures("fake_kafka")
def test_flush_raises_once_for_the_records_the_broker_refused_and_lets_them_go() -> None:
    async def scenario() -> None:
        async with DispatcherProducer("b:1") as p:
            kafka = p.kafka
            kafka.refuse.add(p.topics.agent_availability)
            await p.send_load(_load(1, "pool-a"))
            await p.send(p.topics.agent_availability, "pool-b", SAMPLES["AgentEvent"][0])
            await p.send_load(_load(2, "pool-a"))
            await p.send(p.topics.agent_availability, "pool-c", SAMPLES["AgentEvent"][0])
            with pytest.raises(BrokerError, match=(
                r"flushing to b:1: 2 record\(s\) not delivered; the first, to "
                r"agent-availability \(key 'pool-b'\): MessageSizeTooLargeError"
            )) as raised:  # fmt: skip
                await p.flush()
            assert isinstance(raised.value.__cause__, MessageSizeTooLargeError)
            await p.flush()  # each refusal is reported once
            assert [t for t, _, _ in kafka.delivered] == [p.topics.load_arrival] * 2
            assert p._unacked == {}  # delivered or not, nothing is held any more
            for i in range(1000):
                await p.send_load(_load(i, "pool-a"))
            await p.flush()
            assert p._unacked == {}

    asyncio.run(scenario())


@pytest.mark.usefixtures("fake_kafka")
def test_leaving_async_with_raises_for_records_refused_or_never_acknowledged() -> None:
    async def refused() -> None:
        async with DispatcherProducer("b:1") as p:
            p.kafka.refuse.add(p.topics.task_results)
            await p.send(p.topics.task_results, "pool-a", SAMPLES["TaskResult"][0])

    async def lost() -> None:
        async with DispatcherProducer("b:1") as p:
            p.kafka.lose.add(p.topics.load_arrival)
            await p.send_load(_load(1, "pool-a"))
            await p.send_load(_load(2, "pool-b"))

    with pytest.raises(BrokerError, match=r"stopping .* 1 record\(s\).*MessageSizeTooLarge"):
        asyncio.run(refused())
    with pytest.raises(BrokerError, match=r"2 record\(s\).*\(key 'pool-a'\): never ackn"):
        asyncio.run(lost())


@pytest.mark.usefixtures("fake_kafka")
def test_a_publish_the_broker_refused_is_raised_there_and_not_again_by_flush() -> None:
    async def scenario() -> None:
        async with DispatcherProducer("b:1") as p:
            p.kafka.refuse.add(p.topics.load_arrival)
            with pytest.raises(BrokerError, match="publishing to load-arrival"):
                await p.publish_load(_load(1, "pool-a"))
            await p.flush()

    asyncio.run(scenario())


def _derived_id(r: m.Record) -> str:
    if isinstance(r, m.AgentEvent):
        return r.event_id
    assert isinstance(r, m.LoadEvent)
    return r.idempotency_key


@pytest.mark.usefixtures("fake_kafka")
def test_heartbeat_and_cancel_ids_stay_valid_unique_and_stable_for_the_longest_ids() -> None:
    longest = "a" * 256  # a valid Id

    async def scenario() -> tuple[list[m.Record], list[m.Record]]:
        async with DispatcherProducer("b:1") as p:
            for attempt in range(2):  # a retry derives the same ids
                await p.heartbeat(longest, "pool", seq=1)
                await p.heartbeat(longest, "pool", seq=2)
                await p.heartbeat(longest[:-1] + "b", "pool", seq=1)
                await p.heartbeat("agent-1", "pool", seq=7)
                await p.cancel_load(longest, "pool", "acme")
                await p.cancel_load(longest[:-1] + "b", "pool", "acme")
                await p.cancel_load("load-1", "pool", "acme")
                assert len(p.kafka.delivered) == 7 * (attempt + 1)
            delivered = [CODEC.decode(value) for _, _, value in p.kafka.delivered]
        return delivered[:7], delivered[7:]

    first, retried = asyncio.run(scenario())
    ids = [_derived_id(r) for r in first]
    assert [_derived_id(r) for r in retried] == ids
    assert len(set(ids)) == 7
    assert all(len(i) <= 256 for i in ids)
    assert ids[3] == "agent-1:7"  # short ones as before
    assert ids[6] == "cancel:load-1"
    assert ids[0].startswith(longest[:200])  # still readable
