"""The worker's Faust settings that measurements chose (no broker needed)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import pickle
import time
import types
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from dispatcher import core
from dispatcher.codecs import Codec, CodecError
from dispatcher.codecs import models as m
from dispatcher.codecs.codec import dead_letter
from dispatcher.codecs.signing import content_hash
from dispatcher.demo import agent_profile, load_event, policy_update
from dispatcher.sdk.agent import partition_for
from dispatcher.worker.app import (
    FETCH_MAX_WAIT_MS,
    Dispatcher,
    Worker,
    WorkerConfig,
    _Consumer,
    _holds,
    _Producer,
    _whole,
    build_app,
    key_partition,
)
from dispatcher.worker.fold import PartitionFold
from dispatcher.worker.readmodel import ReadModel, _gauges
from dispatcher.worker.snapshots import Snapshots, record_digest
from tests.unit.core import builders
from tests.unit.test_policy_whatif import recorded_run

CFG = WorkerConfig(bootstrap="127.0.0.1:1", web_port=6099)
CODEC = Codec()


def test_the_workers_consumer_lets_the_broker_hold_a_fetch_only_briefly() -> None:
    async def consumer_wait() -> int:
        app = build_app(CFG)
        thread = app.consumer._thread  # type: ignore[attr-defined]  # aiokafka driver only
        consumer = thread._create_worker_consumer(app.transport)  # the one it would start
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()
            thread.thread_loop.close()

    assert FETCH_MAX_WAIT_MS <= 10
    assert asyncio.run(consumer_wait()) == FETCH_MAX_WAIT_MS  # not Faust's 1,500 ms


def test_the_worker_keeps_the_configured_log_level_and_freezes_start_up_objects(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def check() -> None:
        worker = Worker(build_app(CFG), loglevel="warning", quiet=True)
        root = logging.getLogger()
        before = root.level
        root.setLevel(logging.WARNING)
        try:
            worker.on_setup_root_logger(root, logging.WARNING)
            assert root.level == logging.WARNING  # faust.Worker sets DEBUG here
            assert worker.spinner is None
            gc.unfreeze()
            await worker.on_startup_finished()
            assert gc.get_freeze_count() > 0
            # (before, nothing said so at the default log level)
            assert capsys.readouterr().err.startswith(f"ready: worker {CFG.app_id} on ")
        finally:
            gc.unfreeze()
            root.setLevel(before)

    asyncio.run(check())


def test_a_delivery_with_room_runs_in_place_and_one_that_waits_is_raced_as_before() -> None:
    async def check() -> None:
        consumer = build_app(CFG).consumer
        try:
            await deliveries(consumer)
        finally:
            consumer._thread.thread_loop.close()  # type: ignore[attr-defined]  # aiokafka driver

    async def deliveries(consumer: Any) -> None:
        flow = consumer.suspend_flow
        log: list[str] = []

        async def at_once() -> str:
            log.append("ran")
            return "delivered"

        # Room in the buffer: done before wait_first returns, the flow wait never started.
        other = flow.wait()
        tasks = len(asyncio.all_tasks())
        res = await consumer.wait_first(at_once(), other)
        assert (res.results, res.stopped, log) == (["delivered"], False, ["ran"])
        assert len(asyncio.all_tasks()) == tasks  # no task made (mode's makes four)
        assert other.cr_frame is None  # closed, not left to warn "never awaited"

        room = asyncio.get_running_loop().create_future()

        async def must_wait() -> str:
            try:
                return f"delivered after {await room}"
            except asyncio.CancelledError:
                log.append("cancelled")
                raise

        # A full buffer: the delivery waits; wait_first returns when it is done.
        waiting = asyncio.ensure_future(consumer.wait_first(must_wait(), flow.wait()))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        room.set_result("a while")
        assert (await waiting).results == ["delivered after a while"]

        # The flow suspended while a delivery waits: the suspension wins, the delivery
        # is cancelled (as mode's wait_first does).
        room = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(consumer.wait_first(must_wait(), flow.wait()))
        await asyncio.sleep(0.01)
        flow.set()
        res = await waiting
        await asyncio.sleep(0.01)
        assert res.results == [True]  # what the flow's Event.wait returned
        assert log[-1] == "cancelled"

    asyncio.run(check())


def test_faust_keeps_its_files_where_the_config_says_not_in_the_working_directory(
    tmp_path: Path,
) -> None:
    async def datadir() -> Path:
        app = build_app(dataclasses.replace(CFG, app_id="w1", datadir=tmp_path / "faust"))
        return Path(app.conf.datadir)

    path = asyncio.run(datadir())
    assert path == tmp_path / "faust" / "w1-data"
    path.mkdir()  # what Faust does at start: the directory above must exist


def test_the_workers_partition_of_a_key_is_kafkas_default() -> None:
    # The worker hashes each output key once (aiokafka's murmur2 is pure Python); agents
    # find their assignments with the partitioner Kafka's clients use.
    rng = np.random.default_rng(3)
    for _ in range(2000):
        key = rng.bytes(int(rng.integers(0, 40)))
        count = int(rng.choice((1, 3, 4, 12)))
        everyone = list(range(count))
        assert key_partition(key, count) == DefaultPartitioner()(key, everyone, everyone)
    assert key_partition(b"agent-7", 4) == partition_for("agent-7", 4)


def test_an_input_stamped_too_far_ahead_is_refused_and_a_policy_for_later_is_not() -> None:
    d = Dispatcher(dataclasses.replace(CFG, max_ahead_ms=10_000))
    topics = CFG.topics
    msg = types.SimpleNamespace(topic=topics.load_arrival, partition=0, offset=7)
    now = int(time.time() * 1000)

    def load(at: int) -> bytes:
        ev = load_event(np.random.default_rng(1), "p", "L1", deadline=False)
        return CODEC.encode(ev.model_copy(update={"event_time_ms": at}))

    assert isinstance(d.decode_input(load(now + 5_000), msg), m.LoadEvent)
    with pytest.raises(CodecError) as refused:
        d.decode_input(load(now + 3_600_000), msg)
    assert refused.value.reason is m.DeadLetterReason.INVALID
    assert "ms ahead of this worker's clock (at most 10000 ms allowed)" in refused.value.detail
    assert refused.value.offset == 7
    later = policy_update(2, effective_from_ms=now + 86_400_000)
    policy_msg = types.SimpleNamespace(topic=topics.policy_update, partition=0, offset=0)
    assert d.decode_input(CODEC.encode(later), policy_msg) == later


def test_a_policy_with_a_semantic_problem_is_refused_even_if_published_around_the_cli() -> None:
    d = Dispatcher(CFG)
    msg = types.SimpleNamespace(topic=CFG.topics.policy_update, partition=0, offset=3)
    update = policy_update(2)
    doc = update.document.model_copy(update={"constraints": {"capacity": False}})
    bad = update.model_copy(update={"document": doc, "content_hash": content_hash(doc)})
    with pytest.raises(CodecError) as refused:
        d.decode_input(CODEC.encode(bad), msg)
    assert refused.value.reason is m.DeadLetterReason.INVALID
    assert "policy dispatch version 2: constraints.capacity: cannot be disabled" in (
        refused.value.detail
    )


def test_the_timer_ticks_the_pools_a_tick_can_change_only() -> None:
    """Not the empty pools any record makes (those holding nothing are not even kept), nor
    a pool whose agents all left (before, it was ticked for ever), nor one whose agent
    never became available, nor one whose agents were heard of lately."""
    d = Dispatcher(CFG)
    fold = d.folds[0] = PartitionFold(CFG.topics.input_sequence, 0, CODEC)
    profile = agent_profile(np.random.default_rng(1), capacity=1)

    def agent(pool: str, seq: int, kind: m.AgentEventKind) -> m.AgentEvent:
        registered = kind is m.AgentEventKind.REGISTERED
        return m.AgentEvent(event_id=f"{pool}{seq}", kind=kind, agent_id="a", pool=pool, seq=seq,
                            event_time_ms=1, profile=profile if registered else None)  # fmt: skip

    k = m.AgentEventKind
    records: list[m.Record] = [
        *(agent("busy", i, kind) for i, kind in enumerate((k.REGISTERED, k.AVAILABLE), 1)),
        *(agent("left", i, kind) for i, kind in enumerate((k.REGISTERED, k.AVAILABLE,
                                                           k.OFFLINE), 1)),
        agent("waiting", 1, k.REGISTERED),
        *(m.Tick(pool=f"junk-{i}", event_time_ms=1) for i in range(3)),
    ]  # fmt: skip
    for offset, record in enumerate(records):
        fold.apply(CODEC.encode(record), offset)
    assert sorted(fold.pools) == ["busy", "left", "waiting"]  # (not the junk: kept for ever)
    # Nor a pool of agents heard of within the heartbeat timeout (before, every pool with
    # an agent available was ticked five times a second): once one may have gone silent.
    heartbeat = fold.pools["busy"].policy.heartbeat_timeout_ms
    assert d.ticking(2) == []
    assert d.ticking(2 + heartbeat) == ["busy"]
    fold.apply(CODEC.encode(load_event(np.random.default_rng(2), "left", "L1")), len(records))
    # A load waits there now, for an agent: only an event can bring one (before, it was
    # ticked five times a second all the same).
    assert fold.pools["left"].pending
    assert d.ticking(2) == []
    # A stray cancel leaves only its key: ticked once the dedupe window has passed, to
    # forget it, not five times a second until then.
    cancel = m.LoadEvent(idempotency_key="c1", kind=m.LoadEventKind.CANCEL, load_id="nope",
                         pool="stray", tenant="t", event_time_ms=1)  # fmt: skip
    fold.apply(CODEC.encode(cancel), len(records) + 1)
    window = fold.pools["stray"].policy.dedupe_window_ms
    assert "stray" not in d.ticking(2)
    assert "stray" in d.ticking(2 + window)
    fold.apply(CODEC.encode(m.Tick(pool="stray", event_time_ms=2 + window)), len(records) + 2)
    assert "stray" not in fold.pools  # (its key forgotten, nothing was left in it)
    assert "stray" not in d.ticking(3 + window)
    # A pool whose clock is ahead of the worker's (an input stamped ahead) is asked at its
    # own: its agent's heartbeat is overdue there, though not by the worker's clock.
    ahead = load_event(np.random.default_rng(3), "busy", "L2")
    fold.apply(CODEC.encode(ahead.model_copy(update={"event_time_ms": 2 * heartbeat})),
               len(records) + 3)  # fmt: skip
    assert "busy" in d.ticking(2)


def test_a_pool_dropped_and_made_anew_gives_no_decision_an_id_given_before(
    tmp_path: Path,
) -> None:
    """A pool left with nothing in it is dropped; the one a later record makes goes on from
    its id counts, after a restart from a snapshot too (the review's fuzzer: a second
    decision about an unknown load id had the first's id, which readers drop as a repeat)."""
    fold = PartitionFold(CFG.topics.input_sequence, 0, CODEC)
    window = core.DEFAULT_POLICY.dedupe_window_ms
    ids: list[str] = []
    for n in range(3):
        if n == 2:  # (restarted from a snapshot taken after the pool was dropped)
            snaps = Snapshots(tmp_path, fold.topic, every=1)
            fold.next_offset = 7  # (as if the records above had come through ``apply``)
            assert snaps.maybe_write(fold)
            snaps.wait()
            restored = snaps.load(0, 7, CODEC)
            assert restored is not None
            fold = restored.fold
        t = n * 2 * window  # (each round after the last one's keys were forgotten)
        where = m.Tick(pool="p", event_time_ms=t)
        for event in (builders.arrive("L1", t), core.LoadCancelled(f"c{n}", t, "L1"),
                      core.LoadCancelled(f"u{n}", t, "unknown")):  # fmt: skip
            ids += [d.decision_id for d in fold.apply_event(where, event)]
        fold.apply_event(where, builders.tick(t + window + 1))  # (forgets them: dropped)
        assert "p" not in fold.pools
    assert len(ids) == 9  # queued, cancelled, unknown load: three times
    assert len(set(ids)) == len(ids)


def test_a_pool_made_anew_goes_on_from_the_clock_of_the_one_dropped() -> None:
    """(Its clock never goes back: a review found a late record decided under an older
    policy than the dropped pool had run, and stamped before its decisions.)"""
    fold = PartitionFold(CFG.topics.input_sequence, 0, CODEC)
    window = core.DEFAULT_POLICY.dedupe_window_ms
    where = m.Tick(pool="p", event_time_ms=0)
    v2 = core.PolicyChanged(1_000, dataclasses.replace(core.DEFAULT_POLICY, version=2))
    fold.apply_event(where, v2)
    fold.apply_event(where, builders.arrive("L1", 2_000))
    fold.apply_event(where, core.LoadCancelled("c1", 2_000, "L1"))
    end = 2_000 + window + 1
    fold.apply_event(where, builders.tick(end))  # (forgets them: dropped)
    assert "p" not in fold.pools
    (late,) = fold.apply_event(where, builders.arrive("L2", 500))  # (stamped before v2)
    assert (late.policy_version, late.time_ms) == (2, end)


def test_no_bad_input_gets_past_the_sequencer_as_anything_but_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust acks a crashed agent's whole batch, so every failure on one record must end in
    # a dead letter, never in an exception that crashes the sequencer.
    d = Dispatcher(CFG)
    msg = types.SimpleNamespace(topic=CFG.topics.agent_availability, partition=1, offset=9)
    profile = agent_profile(np.random.default_rng(1)).model_copy(
        update={"tools": [f"t{i:04d}" + "\U0001d11e" * 123 for i in range(2_000)]}
    )  # a valid record of ~998 KB: under the codec's 1 MiB, over what Faust's producer sends
    wide = CODEC.encode(m.AgentEvent(event_id="e", kind=m.AgentEventKind.REGISTERED,
                                     agent_id="a", pool="p", seq=1, event_time_ms=1,
                                     profile=profile))  # fmt: skip
    assert 1_000_000 - 4096 < len(wide) < CODEC.max_bytes
    with pytest.raises(CodecError) as big:
        d.decode_input(wide, msg)
    assert big.value.reason is m.DeadLetterReason.TOO_LARGE

    def broken(*_: object) -> m.Record:
        raise ValueError("a bug")

    monkeypatch.setattr(d, "_decode_input", broken)
    with pytest.raises(CodecError) as odd:
        d.decode_input(b"\x00\x00\x00\x00\x01", msg)
    assert (odd.value.reason, odd.value.detail, odd.value.offset) == (
        m.DeadLetterReason.INVALID,
        "ValueError: a bug",
        9,
    )
    # Kafka's "no timestamp" (-1 ms; Faust's -0.001 s) is left out of the dead letter.
    for seconds, kept in ((-0.001, None), (1_700_000_000.123, 1_700_000_000_123)):
        record = CODEC.decode(d.dead_letter_bytes(odd.value, b"p", seconds), "DeadLetter")
        assert record.source_timestamp_ms == kept  # type: ignore[attr-defined]


def test_a_record_that_is_no_input_in_the_input_sequence_is_a_codec_error() -> None:
    fold = PartitionFold("input-sequence", 0, CODEC)
    assert fold.apply(CODEC.encode(m.Tick(pool="p", event_time_ms=1)), 0) == []  # an input
    with pytest.raises(CodecError) as foreign:
        fold.apply(CODEC.encode(dead_letter(CodecError(m.DeadLetterReason.MALFORMED, "x", b""),
                                            failed_at_ms=1)), 1)  # fmt: skip
    assert foreign.value.reason is m.DeadLetterReason.WRONG_SCHEMA
    assert "a DeadLetter is no input of the core" in foreign.value.detail


def test_no_offset_is_committed_after_a_send_failed_or_a_batch_was_cut_short() -> None:
    """Faust commits right after flushing the producer, and acks a batch's events however
    its processing ends: before, a failed delivery or a batch cut short (an error, a
    cancellation) was committed past, and what it should have sent was lost."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        app = build_app(CFG)
        producer, consumer = cast(_Producer, app.producer), cast(_Consumer, app.consumer)
        try:
            delivered, refused = loop.create_future(), loop.create_future()
            delivered.set_result(None)
            refused.set_exception(MessageSizeTooLargeError())
            producer._sent.append(delivered)
            producer._settle()
            assert producer.failed is None
            producer._sent.append(refused)
            producer._settle()
            assert isinstance(producer.failed, MessageSizeTooLargeError)
            assert await consumer._commit({}) is False  # (the broker is not even asked)
            assert consumer._crashed.is_set()  # the worker stops

            producer.failed = None
            with pytest.raises(asyncio.CancelledError), _whole(app):
                raise asyncio.CancelledError  # say, the worker stopped in the middle
            assert isinstance(producer.failed, asyncio.CancelledError)
        finally:
            consumer._thread.thread_loop.close()

    asyncio.run(scenario())


def test_the_pool_gauges_say_which_waiting_loads_no_agent_could_take() -> None:
    state = core.PoolState("p")
    state.apply(core.AgentRegistered("r", "a1", 1, 0, builders.profile()))
    state.apply(core.AgentStatusChanged("u", "a1", 2, 0, core.AgentStatusKind.AVAILABLE))
    for i, priority in enumerate((core.Priority.HIGH, core.Priority.NORMAL, core.Priority.NORMAL)):
        state.apply(builders.arrive(f"L{i}", 1, priority=priority,
                                    required=frozenset({"rust"})))  # fmt: skip
    gauges = _gauges(state)
    assert (gauges["pending"], gauges["unqualified"], gauges["deferred"], gauges["open"]) == (
        3,
        3,
        0,
        1,
    )
    assert (gauges["queued_high"], gauges["queued_normal"]) == (1, 2)


class _Pipe:
    """Stands in for a Redis pipeline: what ``hset`` is given goes to ``sent``."""

    def __init__(self, sent: list[tuple[str, dict[str, Any]]]) -> None:
        self.sent = sent

    def hset(self, key: str, mapping: dict[str, Any]) -> None:
        self.sent.append((key, mapping))

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: None

    async def execute(self) -> None:
        return None


def test_the_read_models_counters_are_the_folds_and_a_refold_counts_nothing_twice() -> None:
    records = recorded_run(policy_update(1), steps=20, deadlines=True)
    decided: Counter[str] = Counter()
    whole = PartitionFold(CFG.topics.input_sequence, 0, CODEC)
    half = len(records) // 2
    for offset, value in records:
        for d in whole.apply(value, offset):
            decided[d.outcome.value] += 1
            if d.outcome is core.Outcome.COMPLETED and d.deadline_ms is not None:
                decided["met" if d.time_ms <= d.deadline_ms else "missed"] += 1
        if offset == half:
            restored = pickle.loads(pickle.dumps(whole))  # noqa: S301 - a snapshot, as restarts read it
    assert whole.counts == {"p": dict(decided)}
    assert decided["COMPLETED"] > 0
    assert decided["met"] > 0
    assert decided["missed"] > 0
    # A restart from the snapshot folds the rest again: each decision counted once.
    for offset, value in records[half + 1 :]:
        restored.apply(value, offset)
    assert restored.counts == whole.counts

    calls: list[tuple[str, dict[str, Any]]] = []
    model = ReadModel(None, "app")
    model.client = SimpleNamespace(pipeline=lambda transaction: _Pipe(calls))
    asyncio.run(model._publish({0: whole}))
    published = dict(calls)["app:pool:p"]
    assert published["decided_COMPLETED"] == decided["COMPLETED"]
    assert (published.get("sla_met", 0), published.get("sla_missed", 0)) == (
        decided["met"],
        decided["missed"],
    )


def test_a_snapshot_whose_last_record_had_no_value_is_recognised() -> None:
    class Consumer:
        def seek(self, tp: Any, offset: int) -> None:
            pass

        async def getmany(self, tp: Any, **_: Any) -> dict[Any, list[Any]]:
            return {tp: [SimpleNamespace(offset=7, value=None)]}

    tp = TopicPartition("input-sequence", 0)
    # (before: record_digest(None), a TypeError)
    assert asyncio.run(_holds(Consumer(), tp, 7, record_digest(b"")))
    assert not asyncio.run(_holds(Consumer(), tp, 7, record_digest(b"x")))


def test_the_read_model_shows_the_state_after_the_last_batch() -> None:
    """A publish right after another is let wait (one round trip per PUBLISH_EVERY_S, gauges
    per POOL_EVERY_S); the worker's timer flushes it, so the last batch's state is shown,
    not the one before (agents gone offline showed as available until the next input)."""
    sent: list[tuple[str, dict[str, Any]]] = []
    fold = PartitionFold("input-sequence", 0, Codec())
    state = fold.pools["p"] = core.PoolState("p")
    state.apply(builders.register("a1"))
    state.apply(builders.available("a1"))

    async def run() -> None:
        model = ReadModel(None, "app")
        model.client = SimpleNamespace(pipeline=lambda transaction: _Pipe(sent))
        model.publish({0: fold}, [])
        await asyncio.sleep(0)  # (the publish runs in the background)
        assert sent[-1][1]["available"] == 1
        state.apply(builders.status("a1", core.AgentStatusKind.OFFLINE, 3))
        model.publish({0: fold}, [])  # too soon after the first: let wait
        await asyncio.sleep(0)
        assert sent[-1][1]["available"] == 1
        model._publish_at = model._pools_at = 0.0  # (as if the intervals had passed)
        model.flush({0: fold})
        await asyncio.sleep(0)
        assert sent[-1][1]["available"] == 0
        count = len(sent)
        model._publish_at = model._pools_at = 0.0
        model.flush({0: fold})  # nothing new: nothing sent
        await asyncio.sleep(0)
        assert len(sent) == count

    asyncio.run(run())


def test_the_read_model_shows_a_pool_dropped_as_empty_and_leaves_one_gone_elsewhere() -> None:
    """(A review: a dropped pool's last gauges stayed for ever.)"""
    calls: list[tuple[str, dict[str, Any]]] = []
    fold = PartitionFold("input-sequence", 0, Codec())
    where = m.Tick(pool="p", event_time_ms=0)
    fold.apply_event(where, builders.arrive("L1", 1))  # (no agent: it waits)
    other = PartitionFold("input-sequence", 1, Codec())
    other.apply_event(m.Tick(pool="q", event_time_ms=0), builders.arrive("L2", 1))

    async def run() -> None:
        model = ReadModel(None, "app")
        model.client = SimpleNamespace(pipeline=lambda transaction: _Pipe(calls))

        async def publish(folds: dict[int, PartitionFold]) -> None:
            model._publish_at = model._pools_at = 0.0  # (as if the intervals had passed)
            model.publish(folds, [])  # (as after a batch)
            await asyncio.sleep(0)

        await publish({0: fold, 1: other})
        sent = dict(calls)
        assert sent["app:pool:p"]["pending"] == sent["app:pool:q"]["pending"] == 1
        fold.apply_event(where, core.LoadCancelled("c", 2, "L1"))
        fold.apply_event(where, builders.tick(3 + core.DEFAULT_POLICY.dedupe_window_ms))
        assert "p" not in fold.pools  # dropped
        calls.clear()
        await publish({0: fold})  # (and partition 1 went to another worker)
        sent = dict(calls)
        assert sent["app:pool:p"]["pending"] == 0
        assert "app:pool:q" not in sent

    asyncio.run(run())
