"""The SDK on the real broker: poison goes to dead-letter, agents see their own work once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fastavro import parse_schema, schemaless_writer

from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.codecs.schemas import SCHEMA_DIR
from dispatcher.codecs.signing import content_hash
from dispatcher.demo import DecisionTally, policy_update
from dispatcher.errors import BrokerError
from dispatcher.policytool import current_version
from dispatcher.sdk import AgentClient, DecodingConsumer, DispatcherProducer, partition_for
from dispatcher.topics import TopicNames
from tests.samples import LOAD, SAMPLES

CODEC = Codec()


@pytest.fixture
def topics(new_topics: Callable[..., list[str]], unique: Callable[[str], str]) -> TopicNames:
    fields = TopicNames.__dataclass_fields__
    names = TopicNames(**{f: unique(f.replace("_", "-")) for f in fields})
    for field in fields:
        single = field in ("dead_letter", "policy_update")
        new_topics(getattr(names, field), partitions=1 if single else 4)
    return names


async def _more_within(source: AsyncIterable[object], seconds: float) -> list[object]:
    """What arrives from ``source`` within ``seconds`` (expected: nothing)."""
    got: list[object] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for item in source:
                got.append(item)
    return got


def _load(i: int, pool: str) -> m.LoadEvent:
    return m.LoadEvent(
        idempotency_key=f"k{i}",
        kind=m.LoadEventKind.ARRIVAL,
        load_id=f"load-{i}",
        pool=pool,
        tenant="acme",
        event_time_ms=1_700_000_000_000 + i,
        load=LOAD,
    )


def _raw_load(**changes: object) -> bytes:
    datum = _load(0, "pool-a").model_dump()
    datum["load"] |= changes
    schema = parse_schema(json.loads((SCHEMA_DIR / "LoadEvent.avsc").read_text()), named_schemas={})
    out = io.BytesIO(b"\x00" + CODEC.writer_schema("LoadEvent").id.to_bytes(4, "big"))
    out.seek(5)
    schemaless_writer(out, schema, datum)
    return out.getvalue()


GOOD = CODEC.encode(_load(0, "pool-a"))
POISON = [
    (b"not avro at all", m.DeadLetterReason.BAD_FRAME),
    (None, m.DeadLetterReason.BAD_FRAME),  # a tombstone
    (GOOD[:-3], m.DeadLetterReason.MALFORMED),
    (GOOD + b"\x00\x01", m.DeadLetterReason.TRAILING_BYTES),
    (b"\x00\x00\x00\x7f\xff" + GOOD[5:], m.DeadLetterReason.UNKNOWN_SCHEMA),
    (CODEC.encode(SAMPLES["AgentEvent"][0]), m.DeadLetterReason.WRONG_SCHEMA),
    (_raw_load(deadline_ms=5), m.DeadLetterReason.INVALID),
    (_raw_load(risk_score=float("nan")), m.DeadLetterReason.INVALID),
    (GOOD[:8] + b"\x01" + GOOD[9:], m.DeadLetterReason.MALFORMED),  # enum index -1
    (b"\x00" + bytes(8000), m.DeadLetterReason.TOO_LARGE),  # over this test's 4 KiB cap
]


async def _read_all(bootstrap: str, topic: str, want: int) -> list[tuple[bytes | None, bytes, int]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[tuple[bytes | None, bytes, int]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < want:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    got += [(r.key, r.value, r.partition) for r in records]
        extra = await consumer.getmany(timeout_ms=500)  # and nothing more arrives
        got += [(r.key, r.value, r.partition) for rs in extra.values() for r in rs]
    finally:
        await consumer.stop()
    return got


def test_poison_goes_to_dead_letter_and_every_valid_record_is_delivered(
    kafka_bootstrap: str, topics: TopicNames, unique: Callable[[str], str]
) -> None:
    async def scenario() -> None:
        expected_reason: dict[tuple[int, int], m.DeadLetterReason] = {}
        valid: set[str] = set()
        raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        async with DispatcherProducer(kafka_bootstrap, topics=topics) as producer:
            await raw.start()
            try:
                for i in range(60):  # valid and poison interleaved, over several pools
                    pool = f"pool-{i % 3}"
                    await producer.publish_load(_load(i, pool))
                    valid.add(f"load-{i}")
                    if i % 6 == 0:
                        value, reason = POISON[(i // 6) % len(POISON)]
                        meta = await (await raw.send(topics.load_arrival, value, key=pool.encode()))
                        expected_reason[(meta.partition, meta.offset)] = reason
            finally:
                await raw.stop()
        assert len(expected_reason) == len(POISON)

        group = unique("dispatch")
        seen: list[str] = []
        consumer = DecodingConsumer(
            kafka_bootstrap,
            topics.load_arrival,
            "LoadEvent",
            group_id=group,
            dead_letter_topic=topics.dead_letter,
            codec=Codec(max_bytes=4096),
        )
        async with consumer:
            async with asyncio.timeout(60):
                async for delivered in consumer:
                    assert isinstance(delivered.record, m.LoadEvent)
                    seen.append(delivered.record.load_id)
                    if len(seen) == len(valid):
                        break
            assert consumer.dead_lettered == len(POISON)
        assert sorted(seen) == sorted(valid)  # every valid one, each once

        letters = await _read_all(kafka_bootstrap, topics.dead_letter, len(POISON))
        assert len(letters) == len(POISON)
        for key, value, _ in letters:
            letter = CODEC.decode(value, "DeadLetter")
            assert isinstance(letter, m.DeadLetter)
            assert key == topics.load_arrival.encode()
            assert letter.source_topic == topics.load_arrival
            where = (letter.source_partition, letter.source_offset)
            assert letter.reason is expected_reason.pop(where), letter.error
            assert letter.error
        assert expected_reason == {}

        # Everything was committed: the group starts again with nothing left to read.
        again = DecodingConsumer(
            kafka_bootstrap,
            topics.load_arrival,
            "LoadEvent",
            group_id=group,
            dead_letter_topic=topics.dead_letter,
        )
        async with again:
            assert await _more_within(again, 3) == []

    asyncio.run(scenario())


def _assignment(decision: str, agent: str) -> m.Assignment:
    return m.Assignment(
        decision_id=decision,
        load_id=f"load-{decision}",
        agent_id=agent,
        pool="pool-a",
        tenant="acme",
        attempt=1,
        policy_version=1,
        priority=m.Priority.NORMAL,
        event_time_ms=1_700_000_000_000,
        ack_by_ms=1_700_000_005_000,
    )


def test_agent_client_yields_its_own_assignments_once_and_answers(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    agents = [f"agent-{i}" for i in range(8)]
    mine = "agent-3"

    async def scenario() -> None:
        async with DispatcherProducer(kafka_bootstrap, topics=topics) as producer:
            for n in range(5):
                for agent in agents:
                    await producer.publish(
                        topics.assignments, agent, _assignment(f"d{n}-{agent}", agent)
                    )
            # The same id is an agent of another pool too: not this client's.
            other_pool = _assignment(f"dx-{mine}", mine).model_copy(update={"pool": "pool-b"})
            await producer.publish(topics.assignments, mine, other_pool)
            # The dispatcher republishes one decision (say, after a crash) ...
            await producer.publish(topics.assignments, mine, _assignment(f"d1-{mine}", mine))
            # ... and a broken record lands in this agent's partition.
            raw = await producer.kafka.send_and_wait(
                topics.assignments, b"\x00garbage", key=mine.encode()
            )
            assert raw.partition == partition_for(mine, 4)

        got: list[m.Assignment] = []
        async with AgentClient(kafka_bootstrap, mine, "pool-a", topics=topics) as client:
            async with asyncio.timeout(60):
                async for assignment in client:
                    got.append(assignment)
                    if assignment.decision_id == f"d0-{mine}":
                        await client.accept(assignment)
                    if len(got) == 5:
                        break
            assert await _more_within(client, 2) == []  # the repeat never comes through
            assert client.duplicates == 1
        assert [a.decision_id for a in got] == [f"d{n}-{mine}" for n in range(5)]

        (result,) = await _read_all(kafka_bootstrap, topics.task_results, 1)
        answer = CODEC.decode(result[1], "TaskResult")
        assert isinstance(answer, m.TaskResult)
        assert (answer.decision_id, answer.outcome, answer.agent_id) == (
            f"d0-{mine}",
            m.TaskOutcome.ACCEPTED,
            mine,
        )
        assert answer.event_id == f"d0-{mine}:ACCEPTED"
        (letter,) = await _read_all(kafka_bootstrap, topics.dead_letter, 1)
        assert CODEC.decode(letter[1], "DeadLetter").source_topic == topics.assignments  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_an_agent_upgraded_from_the_old_group_starts_where_that_group_had_got_to(
    kafka_bootstrap: str, topics: TopicNames, unique: Callable[[str], str]
) -> None:
    """Clients of earlier releases committed under ``agent-<id>``: one upgraded starts there,
    not again from the oldest assignment kept."""
    mine = unique("agent")

    async def scenario() -> None:
        async with DispatcherProducer(kafka_bootstrap, topics=topics) as producer:
            for n in range(3):
                await producer.publish(topics.assignments, mine, _assignment(f"d{n}-{mine}", mine))
        tp = TopicPartition(topics.assignments, partition_for(mine, 4))
        old = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"agent-{mine}",
                               enable_auto_commit=False)  # fmt: skip
        await old.start()
        old.assign([tp])
        await old.commit({tp: 2})  # the old client had handled the first two
        await old.stop()
        async with AgentClient(kafka_bootstrap, mine, "pool-a", topics=topics) as client:
            async with asyncio.timeout(30):
                first = await anext(client)
            assert first.decision_id == f"d2-{mine}"
            assert await _more_within(client, 2) == []

    asyncio.run(scenario())


def test_producer_publishes_every_input_kind_keyed_as_declared(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    async def scenario() -> None:
        async with DispatcherProducer(kafka_bootstrap, topics=topics) as p:
            load, agent = SAMPLES["LoadEvent"][0], SAMPLES["AgentEvent"][0]
            result, policy = SAMPLES["TaskResult"][0], SAMPLES["PolicyUpdate"][0]
            assert isinstance(load, m.LoadEvent)
            assert isinstance(agent, m.AgentEvent)
            assert isinstance(result, m.TaskResult)
            assert isinstance(policy, m.PolicyUpdate)
            await p.publish_load(load)
            await p.cancel_load("load-1", "pool-a", "acme", event_time_ms=5)
            await p.publish_agent_event(agent)
            await p.heartbeat("agent-1", "pool-a", 7, event_time_ms=9)
            await p.publish_result(result)
            await p.publish_policy(policy)
        loads = await _read_all(kafka_bootstrap, topics.load_arrival, 2)
        events = await _read_all(kafka_bootstrap, topics.agent_availability, 2)
        results = await _read_all(kafka_bootstrap, topics.task_results, 1)
        policies = await _read_all(kafka_bootstrap, topics.policy_update, 1)
        for key, value, partition in loads + events + results:
            assert key == b"pool-a"
            assert partition == partition_for("pool-a", 4)
            CODEC.decode(value)
        cancel = CODEC.decode(loads[1][1], "LoadEvent")
        assert isinstance(cancel, m.LoadEvent)
        assert (cancel.kind, cancel.idempotency_key, cancel.event_time_ms) == (
            m.LoadEventKind.CANCEL,
            "cancel:load-1",
            5,
        )
        beat = CODEC.decode(events[1][1], "AgentEvent")
        assert isinstance(beat, m.AgentEvent)
        assert (beat.kind, beat.seq, beat.event_id) == (m.AgentEventKind.HEARTBEAT, 7, "agent-1:7")
        assert policies[0][0] == b"default"
        assert CODEC.decode(policies[0][1], "PolicyUpdate") == SAMPLES["PolicyUpdate"][0]

    asyncio.run(scenario())


async def _set_topic_config(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


def test_flush_and_leaving_raise_for_the_records_the_broker_refused(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    """aiokafka's flush() never raises: the records a topic refuses (here: each is over its
    100 bytes) were lost without a word. Now flush() and leaving ``async with`` say so."""

    async def flush_then_leave() -> None:
        await _set_topic_config(kafka_bootstrap, topics.load_arrival, {"max.message.bytes": "100"})
        async with DispatcherProducer(kafka_bootstrap, topics=topics) as producer:
            for i in range(3):
                await producer.send_load(_load(i, "pool-a"))
            with pytest.raises(BrokerError, match=(
                rf"flushing to .*: 3 record\(s\) not delivered; the first, to "
                rf"{topics.load_arrival} \(key 'pool-a'\): MessageSizeTooLargeError"
            )):  # fmt: skip
                await producer.flush()
            await producer.flush()  # each is reported once
            await producer.send_load(_load(9, "pool-b"))

    with pytest.raises(BrokerError, match=r"stopping .* 1 record\(s\) not delivered.*'pool-b'"):
        asyncio.run(flush_then_leave())


def test_the_demo_tally_counts_every_decision_up_to_the_end_of_the_log(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    """aiokafka fetches a partition again only once its last fetch was read: one read at the
    end missed what arrived since the read before (the demo's summary was short)."""
    decision = SAMPLES["DecisionRecord"][0]

    async def scenario() -> tuple[int, DecisionTally]:
        tally = DecisionTally(kafka_bootstrap, topics)
        await tally.start()
        try:
            async with DispatcherProducer(kafka_bootstrap, topics=topics) as producer:

                async def publish(n: int) -> None:
                    update = {"decision_id": f"d{n}", "pool": f"pool-{n % 8}"}
                    await producer.publish(topics.decision_log, update["pool"],
                                           decision.model_copy(update=update))  # fmt: skip

                for n in range(8):
                    await publish(n)
                await asyncio.sleep(0.6)
                await tally.poll()  # the demo's last progress line
                for n in range(8, 48):  # the last seconds
                    await publish(n)
                    await asyncio.sleep(0.05)
            assert await tally.catch_up()
        finally:
            await tally.stop()
        return 48, tally

    sent, tally = asyncio.run(scenario())
    assert (tally.decisions, len(tally.ids), tally.undecodable) == (sent, sent, 0)


def test_clients_fail_with_broker_error_when_no_broker_answers() -> None:
    async def scenario() -> None:
        with pytest.raises(BrokerError, match=r"127\.0\.0\.1:1"):
            await DispatcherProducer("127.0.0.1:1").start()

    asyncio.run(scenario())


def test_a_dead_letter_that_cannot_be_written_is_not_committed_past(
    kafka_bootstrap: str, topics: TopicNames, unique: Callable[[str], str]
) -> None:
    group = unique("dl-fails")

    async def scenario() -> None:
        async with DispatcherProducer(kafka_bootstrap, topics=topics) as producer:
            await producer.publish(topics.load_arrival, "pool-a", _load(1, "pool-a"))
            await producer.kafka.send_and_wait(topics.load_arrival, b"poison", key=b"pool-a")
            await producer.publish(topics.load_arrival, "pool-a", _load(2, "pool-a"))
        # The dead-letter topic does not exist and auto-creation is off: the send fails.
        impatient = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=1500)
        await impatient.start()
        try:
            consumer = DecodingConsumer(
                kafka_bootstrap,
                topics.load_arrival,
                "LoadEvent",
                group_id=group,
                dead_letter_topic=unique("missing"),
                producer=impatient,
            )
            async with consumer:
                first = await anext(consumer)
                assert first.record.load_id == "load-1"  # type: ignore[attr-defined]
                with pytest.raises(BrokerError, match="dead letter"):
                    await anext(consumer)
                assert consumer.dead_lettered == 0
        finally:
            await impatient.stop()
        # Nothing was skipped: the same group dead-letters the poison and delivers the rest.
        retry = DecodingConsumer(
            kafka_bootstrap,
            topics.load_arrival,
            "LoadEvent",
            group_id=group,
            dead_letter_topic=topics.dead_letter,
        )
        async with retry:
            again = await anext(retry)
            assert again.record.load_id == "load-2"  # type: ignore[attr-defined]
            assert retry.dead_lettered == 1
        (letter,) = await _read_all(kafka_bootstrap, topics.dead_letter, 1)
        assert CODEC.decode(letter[1], "DeadLetter").source_offset == 1  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_a_dead_letter_the_broker_refuses_sends_the_consumer_back_to_its_last_commit(
    kafka_bootstrap: str, topics: TopicNames, unique: Callable[[str], str]
) -> None:
    """The dead letter is accepted by the producer, then refused by the broker (its topic
    takes 100 bytes at most): the consumer says so, and once the topic takes it, reads
    again from its last commit. Before, it raised the same error for ever."""
    group, letters = unique("dl-refused"), unique("letters")

    async def max_bytes(value: int | None) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            if value is not None and letters not in await admin.list_topics():
                await admin.create_topics(
                    [NewTopic(letters, 1, 1, topic_configs={"max.message.bytes": "100"})]
                )
            else:
                configs = {} if value is None else {"max.message.bytes": str(value)}
                await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, letters,
                                                          configs)])  # fmt: skip
        finally:
            await admin.close()

    async def scenario() -> None:
        await max_bytes(100)
        try:
            async with DispatcherProducer(kafka_bootstrap, topics=topics) as producer:
                await producer.publish(topics.load_arrival, "pool-a", _load(1, "pool-a"))
                await producer.kafka.send_and_wait(topics.load_arrival, b"poison", key=b"pool-a")
                await producer.publish(topics.load_arrival, "pool-a", _load(2, "pool-a"))
            consumer = DecodingConsumer(kafka_bootstrap, topics.load_arrival, "LoadEvent",
                                        group_id=group, dead_letter_topic=letters)  # fmt: skip
            async with consumer:
                ids = [(await anext(consumer)).record.load_id for _ in range(2)]  # type: ignore[attr-defined]
                with pytest.raises(BrokerError, match=r"MessageSizeTooLarge.*come again"):
                    await anext(consumer)
                await max_bytes(None)
                ids += [(await anext(consumer)).record.load_id for _ in range(2)]  # type: ignore[attr-defined]
            assert ids == ["load-1", "load-2", "load-1", "load-2"]
            (letter,) = await _read_all(kafka_bootstrap, letters, 1)
            assert CODEC.decode(letter[1], "DeadLetter").source_offset == 1  # type: ignore[attr-defined]
        finally:
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            with contextlib.suppress(Exception):
                await admin.delete_topics([letters])
            await admin.close()

    asyncio.run(scenario())


def test_two_members_of_a_group_rebalance_and_lose_nothing(
    kafka_bootstrap: str,
    topics: TopicNames,
    unique: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    group, total = unique("rebalance"), 200

    async def member(consumer: DecodingConsumer, seen: list[str], warmed: asyncio.Event) -> None:
        async for delivered in consumer:
            seen.append(delivered.record.load_id)  # type: ignore[attr-defined]
            if len(seen) == 20:
                warmed.set()
            await asyncio.sleep(0.03)  # handling takes time, so the rebalance lands mid-stream

    async def scenario() -> tuple[list[str], list[str]]:
        async with DispatcherProducer(kafka_bootstrap, topics=topics) as producer:
            for i in range(total):
                await producer.send_load(_load(i, f"pool-{i % 8}"))
            await producer.flush()
        seen_a: list[str] = []
        seen_b: list[str] = []
        a = DecodingConsumer(
            kafka_bootstrap,
            topics.load_arrival,
            "LoadEvent",
            group_id=group,
            dead_letter_topic=topics.dead_letter,
            max_records=50,
        )
        b = DecodingConsumer(
            kafka_bootstrap,
            topics.load_arrival,
            "LoadEvent",
            group_id=group,
            dead_letter_topic=topics.dead_letter,
            max_records=50,
        )
        await a.start()
        a_warmed, b_warmed = asyncio.Event(), asyncio.Event()
        task_a = asyncio.create_task(member(a, seen_a, a_warmed))
        async with asyncio.timeout(60):
            await a_warmed.wait()  # a is mid-way through its partitions ...
        await b.start()  # ... when b joins and takes some of them away
        task_b = asyncio.create_task(member(b, seen_b, b_warmed))
        try:
            async with asyncio.timeout(90):
                while len(set(seen_a) | set(seen_b)) < total:
                    assert not task_a.done(), task_a.exception()
                    assert not task_b.done(), task_b.exception()
                    await asyncio.sleep(0.05)
        finally:
            for task in (task_a, task_b):
                task.cancel()
            await asyncio.gather(task_a, task_b, return_exceptions=True)
            await a.stop()
            await b.stop()
        # What the group still has to read can only be repeats: after a rebalance a
        # member may hold records the other already handled (at least once; consumers
        # deduplicate by id). Nothing new may be left, and not more than the buffers held.
        c = DecodingConsumer(
            kafka_bootstrap,
            topics.load_arrival,
            "LoadEvent",
            group_id=group,
            dead_letter_topic=topics.dead_letter,
        )
        async with c:
            again = [d.record.load_id for d in await _more_within(c, 3)]  # type: ignore[attr-defined]
        assert set(again) <= set(seen_a) | set(seen_b)
        assert len(again) <= 2 * 50  # two members' buffers at most
        return seen_a, seen_b

    seen_a, seen_b = asyncio.run(scenario())
    # On the rebalance, a committed what it had handled: b read again at most the one
    # record a had in hand (before, every one a handled since its last commit); unless the
    # group moved on before a could commit (a slow machine: the commit is refused, and b
    # reads again what a handled since its last one, at most a's buffer).
    refused = any("the group rebalanced" in r.getMessage() for r in caplog.records)
    assert len(set(seen_a) & set(seen_b)) <= (50 if refused else 1)
    assert set(seen_a) | set(seen_b) == {f"load-{i}" for i in range(total)}
    assert seen_b, "the second member never got a partition"


def test_the_current_version_leaves_out_what_every_worker_refuses(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    """A policy record every worker refuses whatever its keys (a content hash that is not
    its document's, a semantic problem) blocked every later publish when its version was
    high; one refused only for want of a key still counts (other workers may hold it)."""
    good = policy_update(5)
    wrong_hash = policy_update(99).model_copy(update={"content_hash": "0" * 64})
    no_weights = policy_update(50)
    doc = no_weights.document.model_copy(update={"weights": dict.fromkeys(
        no_weights.document.weights, 0.0)})  # fmt: skip
    no_weights = no_weights.model_copy(update={"document": doc, "content_hash": content_hash(doc)})
    unsigned_but_sound = policy_update(7)  # (workers with keys refuse it, others apply it)

    async def scenario() -> int | None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for update in (good, wrong_hash, no_weights):
                await producer.send_and_wait(topics.policy_update, CODEC.encode(update), b"p")
            assert await current_version(kafka_bootstrap, topics) == 5  # (99, then 50, before)
            await producer.send_and_wait(topics.policy_update,
                                         CODEC.encode(unsigned_but_sound), b"p")  # fmt: skip
        finally:
            await producer.stop()
        return await current_version(kafka_bootstrap, topics)

    assert asyncio.run(scenario()) == 7
