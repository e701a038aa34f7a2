"""Consume one topic as decoded, validated records; dead-letter the rest and go on."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from dispatcher.codecs import Codec, CodecError, dead_letter
from dispatcher.codecs.models import Record
from dispatcher.errors import BrokerError
from dispatcher.patience import patient
from dispatcher.reading import closing, committed_offsets
from dispatcher.sdk._lifecycle import CommittingIterator

__all__ = ["DecodingConsumer", "Delivered"]

log = logging.getLogger("dispatcher.sdk.consumer")


@dataclass(frozen=True, slots=True)
class Delivered:
    """A decoded record and where it was read."""

    record: Record
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int


class DecodingConsumer(CommittingIterator):
    """Reads ``topic``, yields every valid record, sends every invalid one to dead-letter.

    Offsets are committed once per partition batch, after every record of it
    was handled, on a rebalance up to the record in hand (the new owner of a
    partition starts there), and on a clean ``stop()`` (or leaving ``async
    with`` without an exception) up to the last record yielded. A record counts
    as handled once the caller asks for the next one. A bad record counts as
    handled once its dead letter is acknowledged by the broker; if that fails,
    ``__anext__`` raises BrokerError and then starts again from the last
    commit. So a crash loses nothing; records may come again, and consumers
    deduplicate by id.

    Args:
        bootstrap_servers: the Kafka cluster.
        topic: the topic to read.
        schema: the record name it carries (topics.yaml's value_schema).
        group_id: the consumer group whose committed offsets it resumes from.
        dead_letter_topic: where undecodable records go.
        partitions: read only these partitions (no group rebalancing), or all
            of them through the group (None).
        resume_from: with ``partitions``, a group whose committed offsets to start
            from where ``group_id`` has none (a group renamed).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        schema: str,
        *,
        group_id: str,
        dead_letter_topic: str = "dead-letter",
        partitions: list[int] | None = None,
        codec: Codec | None = None,
        producer: AIOKafkaProducer | None = None,
        max_records: int = 500,
        resume_from: str | None = None,
    ) -> None:
        self.topic = topic
        self.schema = schema
        self.dead_letter_topic = dead_letter_topic
        self.codec = codec or Codec()
        self.delivered = 0
        self.dead_lettered = 0
        self._partitions = partitions
        self._resume_from = resume_from
        self._uncommitted: dict[TopicPartition, int] = {}  # handled: commit up to these
        # The record returned last, until the caller asks for the next one (then it was
        # handled): its partition and the offset after it.
        self._in_hand: tuple[TopicPartition, int] | None = None
        self._resumed_at: dict[TopicPartition, int] = {}  # where _resume started a partition
        self._buffer: deque[Any] = deque()
        self._pending_dead: list[Any] = []
        self._max_records = max_records
        self._consumer = patient(AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        ))  # fmt: skip
        self._own_producer = producer is None
        self._producer = producer or patient(AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True
        ))  # fmt: skip
        self._bootstrap = bootstrap_servers

    async def start(self) -> None:
        """Connects; raises BrokerError when the broker cannot be reached."""
        try:
            if self._own_producer:
                await self._producer.start()
            await self._consumer.start()
            if self._partitions is not None:
                tps = [TopicPartition(self.topic, p) for p in self._partitions]
                self._consumer.assign(tps)
                if self._resume_from is not None:
                    await self._resume(tps, self._resume_from)
            else:
                self._consumer.subscribe([self.topic], listener=_HandOver(self))
        except (KafkaError, BrokerError) as exc:
            await self.stop()
            if isinstance(exc, BrokerError):
                raise
            raise BrokerError(f"consuming {self.topic} at {self._bootstrap}: {exc!r}") from exc

    async def _resume(self, tps: list[TopicPartition], group: str) -> None:
        """Starts the partitions this group never committed where ``group`` committed."""
        fresh = [tp for tp in tps if await self._consumer.committed(tp) is None]
        if not fresh:
            return
        offsets = await committed_offsets(self._bootstrap, group, self.topic)
        for tp in fresh:
            if (offset := offsets.get(tp.partition)) is not None:
                self._consumer.seek(tp, offset)
                self._resumed_at[tp] = offset

    async def stop(self, *, commit: bool = True) -> None:
        """Commits what was yielded (unless ``commit`` is False) and disconnects."""
        try:
            if commit:
                # Handled: everything returned, and what the buffer never reached is not.
                self._put_down()
                for r in self._buffer:
                    tp = TopicPartition(r.topic, r.partition)
                    self._uncommitted[tp] = min(self._uncommitted.get(tp, r.offset), r.offset)
                await self._commit_handled()
        finally:
            try:
                await closing(self._consumer.stop())
            finally:
                if self._own_producer:
                    await closing(self._producer.stop())

    async def __anext__(self) -> Delivered:
        """The next valid record, waiting for it as long as it takes (cancel to stop).

        Records fetched but not yet returned stay buffered, so leaving one
        ``async for`` and starting another loses nothing.
        """
        self._put_down()  # the record returned last was handled
        while True:
            if not self._buffer:
                await self._commit_handled()  # every record returned so far was handled
                try:
                    batch = await self._consumer.getmany(
                        timeout_ms=200, max_records=self._max_records
                    )
                except KafkaError as exc:
                    raise BrokerError(f"reading {self.topic}: {exc!r}") from exc
                for records in batch.values():
                    self._buffer.extend(records)
                continue
            r = self._buffer.popleft()
            tp = TopicPartition(r.topic, r.partition)
            try:
                record = self.codec.decode(
                    r.value or b"",
                    self.schema,
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                )
            except CodecError as exc:
                try:
                    self._pending_dead.append(await self._send_dead_letter(exc, r.key, r.timestamp))
                except BaseException:
                    # Not handled: neither delivered nor dead-lettered. It stays first in line.
                    self._buffer.appendleft(r)
                    raise
                self._uncommitted[tp] = r.offset + 1
                continue
            self._in_hand = (tp, r.offset + 1)
            self.delivered += 1
            return Delivered(record, r.topic, r.partition, r.offset, r.key, r.timestamp)

    async def _send_dead_letter(self, exc: CodecError, key: bytes | None, ts: int) -> Any:
        letter = dead_letter(
            exc,
            failed_at_ms=int(time.time() * 1000),
            source_key=key,
            source_timestamp_ms=ts,  # (dead_letter leaves out what the record cannot hold)
        )
        try:
            future = await self._producer.send(
                self.dead_letter_topic, self.codec.encode(letter), key=exc.topic.encode()
            )
        except KafkaError as err:
            raise BrokerError(
                f"writing a dead letter to {self.dead_letter_topic}: {err!r}"
            ) from err
        self.dead_lettered += 1
        return future

    async def _rewind(self) -> None:
        """Goes back to the last committed offsets (where none, to where reading started),
        forgetting what was read since: a dead letter was not delivered, so the records
        from there on were not all handled. (If it fails, nothing changed, and the next
        call tries again.)"""
        tps = sorted(self._consumer.assignment())
        committed = [await self._consumer.committed(tp) for tp in tps]
        for tp, offset in zip(tps, committed, strict=True):
            if offset is not None:
                self._consumer.seek(tp, offset)
            elif tp in self._resumed_at:  # not yet committed: back where it started
                self._consumer.seek(tp, self._resumed_at[tp])
            else:
                await self._consumer.seek_to_beginning(tp)  # (auto_offset_reset="earliest")
        self._pending_dead.clear()
        self._buffer.clear()
        self._uncommitted.clear()
        self._in_hand = None

    def _put_down(self) -> None:
        """Counts the record returned last as handled."""
        if self._in_hand is not None:
            tp, after = self._in_hand
            self._uncommitted[tp] = after
            self._in_hand = None

    async def _hand_over(self, revoked: set[TopicPartition]) -> None:
        """On a rebalance: commits what was handled (so the new owner of ``revoked`` starts
        after it; before, it read every record handled since the last commit again), then
        drops what we hold of ``revoked``. The record in hand is not committed: it may not
        be handled yet, so the new owner reads it again (at least once)."""
        try:
            await self._commit_handled()
        except BrokerError as exc:  # (then the new owner reads them again: at least once)
            log.warning("on a rebalance of %s: %s", self.topic, exc)
        self._buffer = deque(
            r for r in self._buffer if TopicPartition(r.topic, r.partition) not in revoked
        )
        for tp in revoked:
            self._uncommitted.pop(tp, None)

    async def _commit_handled(self) -> None:
        # Dead letters are on the broker before any offset past them is committed.
        try:
            for fut in self._pending_dead:
                await fut
        except KafkaError as err:
            try:
                await self._rewind()
            except KafkaError as again:
                raise BrokerError(f"reading {self.topic} again: {again!r}") from again
            raise BrokerError(
                f"writing a dead letter to {self.dead_letter_topic}: {err!r} (the records "
                "since the last commit come again)"
            ) from err
        self._pending_dead.clear()
        if not self._uncommitted:
            return
        assigned = self._consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(offset, "")
            for tp, offset in self._uncommitted.items()
            if tp in assigned
        }
        try:
            if offsets:
                await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group moved on without this member (a rebalance it joined late, a slow
            # machine): whoever holds those partitions now reads the records since their
            # last commit again (at least once; consumers deduplicate by id). Before, the
            # consumer raised and its reader stopped.
            log.warning("%s: offsets not committed, the group rebalanced: %s", self.topic, exc)
        except KafkaError as exc:
            raise BrokerError(f"committing offsets of {self.topic}: {exc!r}") from exc
        self._uncommitted.clear()


class _HandOver(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """On a rebalance, commit what was handled and drop what we hold of partitions that go
    to another member (``DecodingConsumer._hand_over``).

    Their records not yet handled are not committed, so the new owner reads
    them again (at least once; consumers deduplicate by id).
    """

    def __init__(self, owner: DecodingConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner._hand_over(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass
