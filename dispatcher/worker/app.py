"""The Faust worker: sequence the inputs, fold them through the core, emit decisions.

Two thin Faust agents, one app (the only place Faust is imported):

1. **sequencer** reads the four dispatch inputs (and the policy topic),
   decodes each record strictly (poison goes to dead-letter with its source
   position) and appends the valid bytes, unchanged, to ``input-sequence``,
   keyed by pool; a policy whose content hash or signature is wrong goes to
   dead-letter too (``codecs.signing``), a valid one is appended to every
   partition. The order of that log is *the* order the core applies,
   recorded before anything is decided.
2. **dispatch** reads ``input-sequence`` in micro-batches and folds each
   partition through the core (``PartitionFold``), sending every decision to
   ``decision-log`` and every assignment to ``assignments``.

Correctness under failure rests on determinism, not on EOS (DESIGN.md): a
partition's state is the fold of its log, so a worker that takes a partition
over (after a crash, restart or rebalance) first folds the log up to the
group's committed offset without emitting, then carries on. Faust flushes the
producer before it commits offsets (and commits nothing more after a send
failed for good, or a batch was cut short: ``_Consumer._commit``), so
everything below the committed offset was emitted; what lies above it is
decided again, to the same decisions with the same ids, and readers drop the
repeats by decision id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import logging
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP, EventT
from mode.services import WaitResults

from dispatcher import core
from dispatcher.codecs import models as m
from dispatcher.codecs import signing
from dispatcher.codecs.adapt import encode_decision, policy_problems
from dispatcher.codecs.codec import Codec, CodecError, dead_letter
from dispatcher.patience import Repeats, patient
from dispatcher.reading import replay_consumer
from dispatcher.topics import TopicNames
from dispatcher.worker.fold import PartitionFold
from dispatcher.worker.readmodel import ReadModel
from dispatcher.worker.snapshots import Snapshots, record_digest

__all__ = ["Worker", "WorkerConfig", "build_app", "low_latency"]

log = logging.getLogger("dispatcher.worker")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    bootstrap: str  # host:port[,host:port...]
    redis_url: str | None = None
    app_id: str = "dispatcher"
    web_port: int = 6066
    topics: TopicNames = field(default_factory=TopicNames)
    policy: core.Policy = core.DEFAULT_POLICY  # until the first PolicyUpdate
    tick_ms: int = 200  # how often each owned pool gets a Tick
    batch: int = 1000  # records per micro-batch
    batch_within_s: float = 0.002  # how long a micro-batch waits to fill
    # A worker killed without leaving holds its partitions until this expires.
    session_timeout_s: float = 10.0
    # Where Faust keeps its files (the tables live in memory: it writes little). Faust's
    # default is the working directory.
    datadir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "dispatcher-faust")
    # Where the folds' snapshots go (None: none are written, a restart folds the whole
    # log), and how many records apart.
    snapshot_dir: Path | None = None
    snapshot_every: int = 100_000
    # Policy keys (id -> secret): with any, only policies signed by one of them apply.
    policy_keys: Mapping[str, bytes] = field(default_factory=dict)
    # An input whose event time is further ahead of this worker's clock is dead-lettered.
    max_ahead_ms: int = 10_000


class Worker(faust.Worker):
    """faust.Worker without its terminal spinner, and with its start-up objects frozen.

    To spin on every log line, Faust sets the root logger to DEBUG, so every
    debug call of aiokafka, mode and Faust builds a record that the handlers
    then drop: 4-5% of a busy worker's CPU. The root logger keeps the
    configured level instead. Its handlers let each of aiokafka's warnings and errors
    through once every 10 s (``patience.Repeats``: a broker away is tried again and again).

    Python's full garbage collections walk every tracked object; about 110k
    exist once the modules are imported and the app is built, and each full
    collection over them stopped the worker for 25-100 ms, several times a
    minute under load (the p99 latency). Frozen after start-up, they are no
    longer walked; what the worker creates later is collected as usual.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        for handler in logger.handlers:
            handler.addFilter(Repeats())

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        gc.collect()
        gc.freeze()
        # (at the default log level Faust says nothing once it serves: one line says so)
        conf = self.app.conf
        brokers = ",".join(f"{u.host}:{u.port}" for u in conf.broker)
        web = f"http://{conf.web_host}:{conf.web_port}/"
        print(f"ready: worker {conf.id} on {brokers}, web {web}", file=sys.stderr, flush=True)


# How long the broker may hold a fetch that finds no new data. Faust fixes it at
# 1,500 ms, and aiokafka leaves a partition whose records are still being
# consumed out of the next fetch: under steady load that fetch long-polls the
# idle partitions while the busy one's new records wait, about a second per hop.
FETCH_MAX_WAIT_MS = 5


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = patient(super()._create_worker_consumer(transport))
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer


class _Consumer(faust_kafka.Consumer):
    _refused = False

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Any) -> bool:
        """Commits ``offsets`` (Faust flushed the producer just before), unless a record was
        lost (``_Producer.failed``): then it commits nothing, now or later, and crashes the
        worker once; the one started after it decides the inputs from the last commit on
        again. (Before, Faust committed past the lost record.)"""
        failed = getattr(self.app.producer, "failed", None)
        if failed is None:
            return bool(await super()._commit(offsets))
        if not self._refused:
            self._refused = True
            await self.crash(ProducerSendError(
                f"a record was not sent ({failed!r}): no offset is committed after it; a "
                "restarted worker decides those inputs again"
            ))  # fmt: skip
        return False

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:  # noqa: ASYNC109 - mode's signature
        """Mode's wait_first, with a fast path for Faust's delivery of each fetched record.

        Faust hands every record to the streams with ``wait_first(deliver(record),
        suspend_flow.wait())``, and wait_first makes four tasks to race them: about
        a third of what a worker spends per record when the streams do nothing. A
        delivery finishes without waiting whenever the stream's buffer has room;
        while the flow is not suspended, it is started in place, and only one that
        must wait (a full buffer) is raced as before.
        """
        first = coros[0] if coros else None
        if (len(coros) == 2 and timeout is None and inspect.iscoroutine(first)
                and not self.suspend_flow.is_set() and not self.should_stop):  # fmt: skip
            other = coros[1]
            try:
                pending = first.send(None)
            except StopIteration as stop:
                if inspect.iscoroutine(other):
                    other.close()  # never started
                return WaitResults([first], [stop.value], False)
            coros = (_rest(first, pending), other)
        return await super().wait_first(*coros, timeout=timeout)


async def _rest(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    """The rest of ``coro``, started elsewhere and suspended on ``pending``."""
    return await _resume(coro, pending)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, None, Any]:
    # What a Task does with a coroutine: hand what it yields to the loop, resume it
    # when that is done, pass in what the Task is told (a cancellation).
    while True:
        try:
            yield pending
        except BaseException as exc:  # every exception goes to the coroutine
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(None)
            except StopIteration as stop:
                return stop.value


class _Producer(faust_kafka.Producer):
    """Faust's producer, which remembers the first record that was lost (``failed``).

    A send that failed for good (its retries timed out, or the topic refuses
    the record) is only an exception on a delivery future nobody awaits. Each
    send's future is kept until a flush settles it; a batch whose processing
    ended early says so too (``lost``), since Faust acks its events anyway.
    ``_Consumer`` then commits nothing more (see there).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._sent: list[asyncio.Future[Any]] = []
        self._sweep_at = _SWEEP_AT
        self.failed: BaseException | None = None

    def _new_producer(self, transactional_id: str | None = None) -> AIOKafkaProducer:
        return patient(super()._new_producer(transactional_id))

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        future = await super().send(*args, **kwargs)
        self._sent.append(cast("asyncio.Future[Any]", future))
        if len(self._sent) >= self._sweep_at:  # (no flush for long: keep memory bounded)
            self._settle()
            self._sweep_at = max(_SWEEP_AT, 2 * len(self._sent))
        return future

    async def flush(self) -> None:
        await super().flush()
        self._settle()

    def lost(self, why: BaseException) -> None:
        """Records that something meant to be sent may not have been (the first cause is
        kept)."""
        if self.failed is None:
            self.failed = why
            log.error("records may be lost, so no offset is committed from now on: %r", why)

    def _settle(self) -> None:
        """Forgets the delivered sends, keeps those still on the way, and records a failure."""
        sent, self._sent = self._sent, []
        for future in sent:
            if not future.done():
                self._sent.append(future)
                continue
            error = asyncio.CancelledError() if future.cancelled() else future.exception()
            if error is not None:
                self.lost(error)


_SWEEP_AT = 1 << 16  # sends kept between flushes before the delivered ones are let go


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


def low_latency(app: faust.App) -> faust.App:
    """``app`` with consumers whose fetches the broker holds FETCH_MAX_WAIT_MS at most, and
    that commit nothing after a record was lost (``_Producer``, ``_Consumer._commit``)."""
    app.transport = _Transport(app.conf.broker_consumer, app)
    return app


@functools.lru_cache(maxsize=1 << 16)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition of ``partitions`` Kafka's default partitioner gives ``key`` (murmur2,
    as aiokafka and Java do); remembered, since aiokafka hashes in Python: ~3% of a busy
    worker's time when every record sent was hashed anew."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


# The largest input the worker takes: Faust's producer refuses requests above 1,000,000
# bytes, and a valid input must fit into input-sequence with its key and the record's
# overhead (a larger one is dead-lettered as TOO_LARGE; the codec alone allows 1 MiB).
MAX_INPUT_BYTES = 1_000_000 - 4096


def _now_ms() -> int:
    return int(time.time() * 1000)


class Dispatcher:
    """The worker's state between Faust callbacks: one fold per owned sequence partition."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.codec = Codec(max_bytes=MAX_INPUT_BYTES)
        if not cfg.policy_keys:
            log.warning("policy signatures are not checked: DISPATCHER_POLICY_KEYS is not set, "
                        "so any policy with a matching content hash applies")  # fmt: skip
        self.folds: dict[int, PartitionFold] = {}
        self.readmodel = ReadModel(cfg.redis_url, cfg.app_id)
        self.snapshots = (
            Snapshots(cfg.snapshot_dir, cfg.topics.input_sequence, cfg.snapshot_every)
            if cfg.snapshot_dir is not None and cfg.snapshot_every > 0 else None
        )  # fmt: skip
        self._partitions: dict[str, int] = {}
        t = cfg.topics
        self.expect = {t.load_arrival: "LoadEvent", t.agent_availability: "AgentEvent",
                       t.task_results: "TaskResult", t.ticks: "Tick",
                       t.policy_update: "PolicyUpdate"}  # fmt: skip

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (looked up once, for the policies' fan-out:
        `topics apply` never changes a partition count)."""
        count = self._partitions.get(topic)
        if count is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.cfg.bootstrap)
            await producer.start()
            try:
                count = self._partitions[topic] = len(await producer.partitions_for(topic))
            finally:
                await producer.stop()
        return count

    @staticmethod
    async def send(
        producer: Any, topic: str, key: bytes, value: bytes, partition: int | None = None
    ) -> None:
        """Sends with Faust's own producer (so its commit flushes these first), without the
        per-record futures and callbacks of Topic.send.

        Without ``partition``, the record goes where Kafka's default partitioner puts
        its key, by the producer's live metadata, each key hashed once (aiokafka would
        hash it in Python every time; before the producer has the topic's metadata,
        aiokafka picks).
        """
        if partition is None:
            partitions = producer._ensure_producer().client.cluster.partitions_for_topic(topic)
            partition = key_partition(key, len(partitions)) if partitions else None
        await producer.send(topic, key, value, partition, None, None)

    def outputs(self, decisions: list[core.Decision]) -> Iterator[tuple[str, bytes, bytes]]:
        """What ``decisions`` send: (topic, key, value) of each decision record, and of
        each assignment."""
        t = self.cfg.topics
        for decision in decisions:
            record, assignment = encode_decision(self.codec, decision)
            yield t.decision_log, decision.pool.encode(), record
            if assignment is not None:
                yield t.assignments, str(decision.agent_id).encode(), assignment

    def after_batch(self, emitted: list[core.Decision], touched: set[int]) -> None:
        """Publishes the read model; snapshots the partitions the batch moved on, if due."""
        self.readmodel.publish(self.folds, emitted)
        if self.snapshots is not None:
            for partition in touched & self.folds.keys():
                self.snapshots.maybe_write(self.folds[partition])

    def ticking(self, now_ms: int) -> list[str]:
        """The pools the timer ticks at ``now_ms``: those a tick can change
        (``PoolState.wants_tick``). Any record naming a new pool makes one, and thousands
        of empty ones would cost a core in ticks; a pool whose agents all left would be
        ticked for ever. A pool whose clock is ahead of this worker's (inputs may be
        stamped up to ``max_ahead_ms`` ahead) is asked at its own: that is when the tick
        applies."""
        return [pool for fold in list(self.folds.values())
                for pool, s in sorted(fold.pools.items())
                if s.wants_tick(max(now_ms, s.now_ms))]  # fmt: skip

    def decode_input(self, value: bytes, msg: Any) -> m.Record:
        """``_decode_input``, whose every failure is a CodecError: one bad record must not
        crash the sequencer (Faust acks a crashed agent's whole batch, so the records after
        it would be lost)."""
        try:
            return self._decode_input(value, msg)
        except CodecError:
            raise
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"[:500]
            raise CodecError(m.DeadLetterReason.INVALID, detail, bytes(value or b""),
                             topic=msg.topic, partition=msg.partition,
                             offset=msg.offset) from exc  # fmt: skip

    def _decode_input(self, value: bytes, msg: Any) -> m.Record:
        """Decodes an input record strictly; a policy must also pass ``codecs.signing`` and
        have no semantic problem (``policy_problems``), any other input must not come from
        further ahead than ``cfg.max_ahead_ms``.

        A pool's clock is the newest event time it has seen (the core reads no
        clock), so one record stamped an hour ahead would time out every agent's
        heartbeat and forget every dedupe key at the next tick. A policy's time
        is when it takes effect, and may lie ahead. (This check reads the clock:
        a record refused and read again after a crash, before the offset was
        committed, may pass the second time; it is then in the input sequence
        and on dead-letter both.)

        Raises:
            CodecError: the bytes are not a valid record of their topic, or a policy's
                hash or signature is wrong, or it is unsigned while this worker holds
                keys, or it has a semantic problem, or the event time is too far ahead
                (all go to dead-letter).
        """
        where = {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset}
        record = self.codec.decode(value, self.expect[msg.topic], **where)
        if isinstance(record, m.PolicyUpdate):
            written = self.codec.field_digest(value, "document")
            problem = signing.verify(record, self.cfg.policy_keys, written=written)
            found = [problem] if problem is not None else policy_problems(record)
            if found:  # (policy publish refuses these too; a worker must not trust it did)
                detail = f"policy {record.policy_id} version {record.version}: {'; '.join(found)}"
                raise CodecError(m.DeadLetterReason.INVALID, detail, value, **where)
        else:
            t: int = record.event_time_ms  # type: ignore[attr-defined]  # every other input has one
            if (ahead := t - _now_ms()) > self.cfg.max_ahead_ms:
                detail = (f"event time {t} is {ahead} ms ahead of this worker's clock (at most "
                          f"{self.cfg.max_ahead_ms} ms allowed)")  # fmt: skip
                raise CodecError(m.DeadLetterReason.INVALID, detail, value, **where)
        return record

    def dead_letter_bytes(self, exc: CodecError, key: bytes | None, timestamp: float) -> bytes:
        """The dead-letter record of ``exc``; ``timestamp`` is the source record's (Faust's
        seconds: -0.001 for Kafka's "none", which ``dead_letter`` then leaves out, as it does
        any other time the record cannot hold)."""
        record = dead_letter(exc, failed_at_ms=_now_ms(), source_key=key,
                             source_timestamp_ms=round(timestamp * 1000))  # fmt: skip
        return self.codec.encode(record)

    async def catch_up(self, partition: int, upto: int) -> PartitionFold:
        """The fold of ``partition`` up to (not including) offset ``upto``, from the log.

        Folds silently: decisions below ``upto`` were emitted by whoever applied
        them (Faust commits an offset only after flushing what came before it).
        Starts from the newest snapshot below ``upto`` if there is one.
        """
        fold = self.folds.get(partition)
        restored = None
        if fold is None or fold.next_offset > upto:
            restored = self.snapshots and self.snapshots.load(partition, upto, self.codec)
            fold = restored.fold if restored else self._fresh(partition)
        started, replayed = time.perf_counter(), 0
        if fold.next_offset < upto or restored:
            consumer = replay_consumer(self.cfg.bootstrap)
            await consumer.start()
            try:
                tp = TopicPartition(self.cfg.topics.input_sequence, partition)
                consumer.assign([tp])
                if restored and not await _holds(consumer, tp, fold.next_offset - 1,
                                                 restored.last):  # fmt: skip
                    log.warning("partition %d: the snapshot at offset %d is of another log (a "
                                "topic deleted and created again?): folding from the start",
                                partition, fold.next_offset)  # fmt: skip
                    fold = self._fresh(partition)
                consumer.seek(tp, fold.next_offset)
                done = fold.next_offset >= upto
                while not done:
                    batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
                    for msg in batch.get(tp, []):
                        if msg.offset >= upto:
                            done = True
                            break
                        with contextlib.suppress(CodecError):  # dead-lettered when first met
                            fold.apply(msg.value, msg.offset)
                        replayed += 1
            finally:
                await consumer.stop()
        fold.next_offset = upto
        self.folds[partition] = fold
        log.info("partition %d: folded %d records up to offset %d in %.2fs",
                 partition, replayed, upto, time.perf_counter() - started)  # fmt: skip
        return fold

    async def decide(self, batch: list[EventT[Any]], send: Callable[..., Awaitable[None]]) -> None:
        """Folds a batch of the input sequence, sending the decisions with ``send``."""
        t = self.cfg.topics
        emitted: list[core.Decision] = []
        touched: set[int] = set()
        for ev in batch:
            partition, offset = ev.message.partition, ev.message.offset
            touched.add(partition)
            fold = self.folds.get(partition)
            if fold is None or offset > fold.next_offset:
                fold = await self.catch_up(partition, offset)
            elif offset < fold.next_offset:
                continue  # applied already (a redelivery after a seek)
            try:
                out = fold.apply(ev.value, offset)
            except CodecError as exc:  # validated on the way in: a policy whose version was
                # taken (``PartitionFold.taken``), or a codec change
                log.error("record of the input sequence refused: %s", exc)
                value = self.dead_letter_bytes(exc, ev.key, ev.message.timestamp)
                await send(t.dead_letter, t.input_sequence.encode(), value)
                continue
            for topic, key, value in self.outputs(out):
                await send(topic, key, value)
            emitted += out
        self.after_batch(emitted, touched)

    def _fresh(self, partition: int) -> PartitionFold:
        return PartitionFold(self.cfg.topics.input_sequence, partition, self.codec,
                             self.cfg.policy)  # fmt: skip


async def _holds(consumer: Any, tp: TopicPartition, offset: int, digest: bytes) -> bool:
    """Whether the record at ``offset`` of ``tp`` is the one ``digest`` names."""
    consumer.seek(tp, offset)
    for _ in range(30):  # (a fetch may come back empty; the record is there)
        records = (await consumer.getmany(tp, timeout_ms=1000, max_records=1)).get(tp, [])
        if records:  # (a record with no value folds as b"": the snapshot digested that)
            r = records[0]
            return bool(r.offset == offset and record_digest(r.value or b"") == digest)
    return False


@contextlib.contextmanager
def _whole(app: faust.App) -> Iterator[None]:
    """Around the processing of events that Faust acks however it ends (``take_events``
    acks a batch's events in a ``finally``): ended early, by an error or a cancellation,
    it may have sent only part of what they cause, so no offset is committed after them
    (``_Producer.lost``)."""
    try:
        yield
    except BaseException as exc:
        cast(_Producer, app.producer).lost(exc)
        raise


def _datadir(cfg: WorkerConfig) -> str:
    """Faust's datadir setting: ``<cfg.datadir>/<app id>-data``; Faust makes only the last
    directory, so this makes the one above."""
    cfg.datadir.mkdir(parents=True, exist_ok=True)
    return str(cfg.datadir / "{conf.name}-data")


def build_app(cfg: WorkerConfig) -> faust.App:
    """The Faust app of one dispatcher worker."""
    d = Dispatcher(cfg)
    t = cfg.topics
    app = low_latency(faust.App(
        cfg.app_id,
        broker=";".join(f"kafka://{h}" for h in cfg.bootstrap.split(",")),
        key_serializer="raw", value_serializer="raw", store="memory://",
        web_port=cfg.web_port, web_bind="127.0.0.1", web_host="127.0.0.1",
        topic_replication_factor=1, topic_allow_declare=False, topic_disable_leader=True,
        producer_acks=-1, broker_commit_interval=0.5, consumer_auto_offset_reset="earliest",
        broker_session_timeout=cfg.session_timeout_s,
        broker_heartbeat_interval=cfg.session_timeout_s / 4,
        stream_buffer_maxsize=4 * cfg.batch, datadir=_datadir(cfg),
    ))  # fmt: skip
    inputs = app.topic(t.load_arrival, t.agent_availability, t.task_results, t.ticks)
    policies = app.topic(t.policy_update)
    sequence = app.topic(t.input_sequence)

    async def send(topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        await d.send(app.producer, topic, key, value, partition)

    async def validate(ev: EventT[Any]) -> m.Record | None:
        msg = ev.message
        try:
            return d.decode_input(ev.value, msg)
        except CodecError as exc:
            log.warning("dead letter: %s", exc)
            await send(t.dead_letter, msg.topic.encode(),
                       d.dead_letter_bytes(exc, msg.key, msg.timestamp))  # fmt: skip
            return None

    @app.agent(inputs)
    async def sequencer(stream: Any) -> None:
        async for batch in stream.take_events(cfg.batch, within=cfg.batch_within_s):
            with _whole(app):
                for ev in batch:
                    record = await validate(ev)
                    if record is not None:
                        await send(t.input_sequence, record.pool.encode(), ev.value)  # type: ignore[attr-defined]  # inputs name their pool

    @app.agent(policies)
    async def policy_fanout(stream: Any) -> None:
        async for ev in stream.events():
            with _whole(app):
                if await validate(ev) is not None:
                    for partition in range(await d.partition_count(t.input_sequence)):
                        await send(t.input_sequence, b"*", ev.value, partition)

    @app.agent(sequence)
    async def dispatch(stream: Any) -> None:
        async for batch in stream.take_events(cfg.batch, within=cfg.batch_within_s):
            with _whole(app):
                await d.decide(batch, send)

    @app.timer(interval=cfg.tick_ms / 1000)  # type: ignore[untyped-decorator]  # faust is untyped
    async def tick() -> None:
        d.readmodel.flush(d.folds)
        now = _now_ms()
        for pool in d.ticking(now):
            value = d.codec.encode(m.Tick(pool=pool, event_time_ms=now))
            await send(t.ticks, pool.encode(), value)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust's signal stubs
    async def forget(app: faust.App, assigned: set[TP], **_: Any) -> None:
        # A fold kept across a rebalance stays right: records below its next offset were
        # applied here, and any applied elsewhere meanwhile are folded in on the first
        # record after them. Folds of partitions now owned by others go.
        owned = {tp.partition for tp in assigned if tp.topic == t.input_sequence}
        for partition in set(d.folds) - owned:
            del d.folds[partition]

    app.dispatcher = d  # type: ignore[attr-defined]  # for the web views and tests
    return app
