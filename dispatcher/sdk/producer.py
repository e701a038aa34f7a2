"""Publish loads, agent events, task results and policies with the project's codec."""

from __future__ import annotations

import asyncio
import hashlib
import time
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from dispatcher.codecs import Codec
from dispatcher.codecs.models import (
    AgentEvent,
    AgentEventKind,
    LoadEvent,
    LoadEventKind,
    PolicyUpdate,
    Record,
    TaskResult,
)
from dispatcher.errors import BrokerError
from dispatcher.patience import patient
from dispatcher.reading import closing
from dispatcher.topics import TopicNames

__all__ = ["DispatcherProducer"]


_MAX_ID = 256  # the max_length of dispatcher.codecs.models.Id


def now_ms() -> int:
    """Wall-clock event time, for producers (the matching core never reads a clock)."""
    return int(time.time() * 1000)


def _derived_id(*parts: str) -> str:
    """``parts`` joined by ":", or, when that is longer than an Id may be, its beginning
    and a 128-bit hash of the whole: the same parts always give the same id (retries
    stay harmless), and different ones different ids."""
    whole = ":".join(parts)
    if len(whole) <= _MAX_ID:
        return whole
    digest = hashlib.blake2b(whole.encode(), digest_size=16).hexdigest()
    return f"{whole[: _MAX_ID - len(digest) - 1]}~{digest}"


class DispatcherProducer:
    """An async producer of the dispatcher's input events.

    Every record is validated (it is an edge model), encoded in the Confluent
    wire format and keyed as topics.yaml says: by pool for the dispatch inputs,
    by policy id for policies. ``publish_*`` waits for the broker's
    acknowledgement (acks=all, idempotent producer); ``send_*`` only queues,
    for bulk producers, who then ``flush()``: it raises for the records the
    broker refused (so does ``stop()``, for those queued since).

    Raises:
        BrokerError: the broker cannot be reached or refuses a record.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topics: TopicNames | None = None,
        codec: Codec | None = None,
        **producer_config: Any,
    ) -> None:
        self.topics = topics or TopicNames()
        self.codec = codec or Codec()
        self._bootstrap = bootstrap_servers
        config = {"acks": "all", "enable_idempotence": True, "linger_ms": 5} | producer_config
        self._producer = patient(AIOKafkaProducer(bootstrap_servers=bootstrap_servers, **config))
        # The delivery futures of send(), until they are done (-> topic, key). aiokafka
        # reports a refused record only there: its flush() never raises.
        self._unacked: dict[asyncio.Future[Any], tuple[str, str]] = {}
        self._undelivered = 0  # refused since the last check (flush, stop)
        self._first_undelivered: tuple[str, str, BaseException | None] | None = None

    @property
    def kafka(self) -> AIOKafkaProducer:
        """The underlying aiokafka producer (for sharing, e.g. with a DecodingConsumer)."""
        return self._producer

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await closing(self._producer.stop())
            raise BrokerError(f"connecting a producer to {self._bootstrap}: {exc!r}") from exc

    async def stop(self) -> None:
        """Sends what is queued and disconnects.

        Raises:
            BrokerError: a record queued by ``send`` was refused or never acknowledged.
        """
        await closing(self._producer.stop())
        # What is still on its way now never gets there.
        self._check_delivered(f"stopping the producer of {self._bootstrap}", stopped=True)

    async def __aenter__(self) -> DispatcherProducer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def flush(self) -> None:
        """Waits until every queued record is delivered or refused.

        Raises:
            BrokerError: the broker refused records queued by ``send`` since the last
                check; names the first and counts them.
        """
        await self._producer.flush()
        self._check_delivered(f"flushing to {self._bootstrap}")

    async def send(self, topic: str, key: str, record: Record) -> Any:
        """Queues one record; returns the future of its delivery (``flush()`` checks it)."""
        future = await self._queue(topic, key, record)
        self._unacked[future] = (topic, key)
        future.add_done_callback(self._settle)  # let go of it once done: bounded memory
        return future

    async def _queue(self, topic: str, key: str, record: Record) -> Any:
        try:
            return await self._producer.send(topic, self.codec.encode(record), key=key.encode())
        except KafkaError as exc:
            raise BrokerError(f"sending to {topic}: {exc!r}") from exc

    def _settle(self, future: asyncio.Future[Any]) -> None:
        where = self._unacked.pop(future, None)
        if where is None or future.cancelled():  # settled already, or its sender gave up on it
            return
        if (error := future.exception()) is not None:
            self._lost(*where, error)

    def _lost(self, topic: str, key: str, error: BaseException | None) -> None:
        self._undelivered += 1
        if self._first_undelivered is None:
            self._first_undelivered = (topic, key, error)

    def _check_delivered(self, doing: str, *, stopped: bool = False) -> None:
        """Raises BrokerError for the records refused since the last check (once each)."""
        # Settled here too, not only by the callbacks, which need not have run yet.
        for future in [f for f in self._unacked if f.done()]:
            self._settle(future)
        if stopped:
            for topic, key in self._unacked.values():
                self._lost(topic, key, None)
            self._unacked.clear()
        if self._first_undelivered is None:
            return
        (topic, key, error), count = self._first_undelivered, self._undelivered
        self._first_undelivered, self._undelivered = None, 0
        why = "never acknowledged" if error is None else repr(error)
        raise BrokerError(
            f"{doing}: {count} record(s) not delivered; the first, to {topic} (key {key!r}): {why}"
        ) from error

    async def publish(self, topic: str, key: str, record: Record) -> tuple[int, int]:
        """Sends one record and waits for it; returns its (partition, offset)."""
        future = await self._queue(topic, key, record)  # (its failure is raised here)
        try:
            meta = await future
        except KafkaError as exc:
            raise BrokerError(f"publishing to {topic}: {exc!r}") from exc
        return meta.partition, meta.offset

    # -- producers of work -------------------------------------------------------

    async def publish_load(self, event: LoadEvent) -> tuple[int, int]:
        """Publishes a load arrival (or any LoadEvent) keyed by its pool."""
        return await self.publish(self.topics.load_arrival, event.pool, event)

    async def send_load(self, event: LoadEvent) -> Any:
        """Queues a LoadEvent without waiting (bulk producers flush())."""
        return await self.send(self.topics.load_arrival, event.pool, event)

    async def cancel_load(
        self,
        load_id: str,
        pool: str,
        tenant: str,
        *,
        idempotency_key: str | None = None,
        event_time_ms: int | None = None,
    ) -> tuple[int, int]:
        """Withdraws a load. Give a stable ``idempotency_key`` to make retries harmless."""
        event = LoadEvent(
            idempotency_key=idempotency_key or _derived_id("cancel", load_id),
            kind=LoadEventKind.CANCEL, load_id=load_id, pool=pool, tenant=tenant,
            event_time_ms=now_ms() if event_time_ms is None else event_time_ms,
        )  # fmt: skip
        return await self.publish_load(event)

    # -- agents ------------------------------------------------------------------

    async def publish_agent_event(self, event: AgentEvent) -> tuple[int, int]:
        """Publishes an agent's registration, profile update, availability, drain or exit."""
        return await self.publish(self.topics.agent_availability, event.pool, event)

    async def heartbeat(
        self, agent_id: str, pool: str, seq: int, *, event_time_ms: int | None = None
    ) -> tuple[int, int]:
        """An agent is alive. ``seq`` is its own increasing sequence number."""
        event = AgentEvent(
            event_id=_derived_id(agent_id, str(seq)), kind=AgentEventKind.HEARTBEAT,
            agent_id=agent_id, pool=pool, seq=seq,
            event_time_ms=now_ms() if event_time_ms is None else event_time_ms,
        )  # fmt: skip
        return await self.publish_agent_event(event)

    async def publish_result(self, result: TaskResult) -> tuple[int, int]:
        """Publishes an agent's answer to an assignment."""
        return await self.publish(self.topics.task_results, result.pool, result)

    # -- operators ---------------------------------------------------------------

    async def publish_policy(self, update: PolicyUpdate) -> tuple[int, int]:
        """Publishes a policy version."""
        return await self.publish(self.topics.policy_update, update.policy_id, update)
