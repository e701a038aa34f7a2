"""Audit: fold the recorded input sequence again and hold the decision log against it.

For each partition of ``input-sequence``: read it from the start, fold it
through the core exactly as the worker did (``PartitionFold``), encode every
decision, and compare with the same partition of ``decision-log``, byte for
byte and in order. The log may repeat a decision (a worker re-emits what it
decided after the last committed offset when it restarts): a repeat must be
identical, and only its first occurrence counts.

Both topics are read a fetch at a time, side by side, and compared as they
come: an audit keeps the ids of the decisions (for repeats, and for logged
decisions no input explains) and what one side has that the other has not
yet reached, not the partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aiokafka import TopicPartition

from dispatcher import core
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import encode_decision, to_records
from dispatcher.codecs.codec import Codec, CodecError
from dispatcher.errors import BrokerError
from dispatcher.reading import (
    CHUNK,
    PROGRESS_EVERY,
    bounds,
    committed_offsets,
    end_offsets,
    partitions,
    read_chunks,
)
from dispatcher.topics import TopicNames
from dispatcher.worker.fold import PartitionFold

__all__ = ["Mismatch", "PartitionAudit", "Scope", "audit", "explain_load"]

# From this many inputs on, an audit with jobs=0 replays partitions in processes.
PARALLEL_FROM = 100_000


@dataclass(frozen=True, slots=True)
class Mismatch:
    position: int  # the decision's index in the partition's decision sequence
    decision_id: str
    field: str  # the first field that differs ("decision_id": a different decision altogether)
    expected: Any
    logged: Any
    # The input (topic, partition, offset) that led to it; for an undecodable log record,
    # where that record lies.
    input: tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Scope:
    """The decisions an audit checks: those of ``pool`` (None: all) whose input lies from
    ``start`` up to (not including) ``end``, each ("offset", n) or ("time", epoch ms), or
    open.

    Every decision is compared whatever the scope (each depends on every input
    before it, so the replay folds them all), but only those in it count as
    checked and matched, and as problems (mismatched, missing, unexplained):
    a problem outside it is counted apart (``PartitionAudit.outside``). A
    logged record no input decides is placed by what it holds (its pool, time
    and input offset); one that does not decode tells nothing: it counts
    whatever the scope.
    """

    pool: str | None = None
    start: tuple[str, int] | None = None
    end: tuple[str, int] | None = None

    def covers(self, d: core.Decision | m.DecisionRecord) -> bool:
        """Whether decision ``d``, as decided or as logged, is in the scope."""
        if self.pool is None and self.start is None and self.end is None:
            return True  # (the usual audit: asked of every decision)
        if isinstance(d, m.DecisionRecord):
            at = {"offset": d.input.offset, "time": d.event_time_ms}
        else:
            at = {"offset": d.source[2], "time": d.time_ms}
        return ((self.pool is None or d.pool == self.pool)
                and (self.start is None or at[self.start[0]] >= self.start[1])
                and (self.end is None or at[self.end[0]] < self.end[1]))  # fmt: skip


@dataclass
class PartitionAudit:
    """What auditing one partition found. The problems (``mismatches``, ``missing``,
    ``unexplained``) and ``matched`` are those in the audit's scope; ``outside``
    counts the problems of decisions outside it, found all the same."""

    partition: int
    inputs: int = 0
    checked: int = 0  # expected decisions in the audit's scope
    expected: int = 0
    logged: int = 0  # distinct decision ids in the log
    repeats: int = 0  # repeated records of a decision id, each identical
    matched: int = 0
    outside: int = 0  # problems outside the audit's scope: not this audit's to fail on
    # Decided before the first record the log still holds (retention deleted the older
    # ones): not compared, nor counted as checked.
    expired: int = 0
    # Of inputs the workers have not committed yet (an audit of a live system): not logged
    # yet, and not counted missing.
    pending: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # decided on replay, absent from the log
    unexplained: list[str] = field(default_factory=list)  # in the log, no input decides it
    # The expected decisions, in order (kept only when the audit is asked to).
    decisions: list[core.Decision] = field(default_factory=list)
    pools: set[str] = field(default_factory=set)  # those the expected decisions are about

    @cached_property
    def records(self) -> list[m.DecisionRecord]:
        """The expected decisions as the records the log should hold."""
        return [to_records(d)[0] for d in self.decisions]

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.missing or self.unexplained)


def _first_difference(a: m.DecisionRecord, b: m.DecisionRecord) -> tuple[str, Any, Any]:
    da, db = a.model_dump(), b.model_dump()
    for name in da:
        if da[name] != db.get(name):
            return name, da[name], db.get(name)
    return "(encoding)", None, None


async def audit(
    bootstrap: str,
    topics: TopicNames | None = None,
    *,
    policy: core.Policy = core.DEFAULT_POLICY,
    codec: Codec | None = None,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    scope: Scope = Scope(),
    keep: bool = False,
    group: str | None = None,
) -> list[PartitionAudit]:
    """Audits every partition; ``policy`` is the workers' policy before the first update.
    Each result counts the decisions in ``scope`` (see ``Scope``) and, with ``keep``,
    holds its partition's expected decisions.

    With ``group`` (the workers' app id: an audit of a live system), a decision
    the log lacks counts as pending, not missing, when its input lies at or
    after the offset the group last committed: the workers have not reached it
    yet (below that offset, they had sent every decision: they flush before
    they commit). The offsets are read before the log's end, and the log's end
    before the inputs' (so a decision logged meanwhile is not unexplained).

    With ``jobs`` > 1, that many partitions at a time, each in a process of its
    own (the replay is CPU-bound: one per core), each with a codec of its own;
    0: one per core when the input sequence is long enough to repay starting
    them (about a second each), else in this process. ``progress`` is called
    with the number of inputs replayed so far, now and then.

    Raises:
        BrokerError: the broker cannot be reached or fails a request, or either topic
            is missing, or the decision log lacks a partition of the input sequence.
    """
    topics = topics or TopicNames()
    tps = await partitions(bootstrap, topics.input_sequence)
    # Checked now: reading a partition that does not exist waits ~40 s for it, then fails.
    logs = {tp.partition for tp in await partitions(bootstrap, topics.decision_log)}
    if lacking := [str(tp.partition) for tp in tps if tp.partition not in logs]:
        raise BrokerError(f"{topics.decision_log} at {bootstrap} has no partition "
                          f"{', '.join(lacking)} (it must have those of "
                          f"{topics.input_sequence})")  # fmt: skip
    decided = None
    if group is not None:
        decided = await committed_offsets(bootstrap, group, topics.input_sequence)
        if not decided:
            raise BrokerError(f"group {group} has committed no offset on {topics.input_sequence}")
    if jobs == 0:
        records = sum((await end_offsets(bootstrap, tps)).values())
        jobs = _cores() if records >= PARALLEL_FROM else 1
    jobs = min(jobs, len(tps))
    job = _Job(bootstrap, topics, policy, scope, keep, decided)
    if jobs > 1:
        return await _in_processes(job, [tp.partition for tp in tps], progress, jobs)
    codec = codec or Codec()
    replayed = 0

    def report(n: int) -> None:
        nonlocal replayed
        replayed += n
        if progress is not None:
            progress(replayed)

    return [await job.run(tp.partition, codec, report) for tp in tps]


_replayed: Any = None  # in an audit's worker process: the inputs replayed, over all of them


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _share(counter: Any) -> None:
    global _replayed  # noqa: PLW0603 - one per worker process, set when it starts
    _replayed = counter


def _audit_in_process(job: _Job, partition: int) -> PartitionAudit:
    def report(n: int) -> None:
        with _replayed.get_lock():
            _replayed.value += n

    return asyncio.run(job.run(partition, Codec(), report))


async def _in_processes(
    job: _Job, parts: list[int], progress: Callable[[int], None] | None, jobs: int
) -> list[PartitionAudit]:
    """Audits ``parts`` in ``jobs`` processes. They start with Ctrl-C ignored (it came to
    each, and each printed its KeyboardInterrupt): this one stops them when it is cancelled."""
    ctx = multiprocessing.get_context("spawn")  # not fork: this process runs an event loop
    counter = ctx.Value("q", 0)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_share,
                             initargs=(counter,)) as pool:  # fmt: skip
        with _interrupts_ignored():  # (the processes start as the work is handed out)
            done = asyncio.gather(*(loop.run_in_executor(pool, _audit_in_process, job, p)
                                    for p in parts))  # fmt: skip
        try:
            shown, finished = 0, False
            while not finished:
                finished = bool((await asyncio.wait({done}, timeout=0.5))[0])
                if progress is not None and counter.value != shown:
                    shown = counter.value
                    progress(shown)
        except BaseException:
            done.cancel()  # (and its outcome taken, so none is reported as never retrieved)
            done.add_done_callback(lambda f: None if f.cancelled() else f.exception())
            for process in list(getattr(pool, "_processes", {}).values()):  # (3.14 has
                process.terminate()  # terminate_workers(); else shutting down waits for them)
            raise
        return list(done.result())


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile, so processes started meanwhile ignore it (in the main
    thread: the only one that may set how a signal is handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass(frozen=True, slots=True)
class _Job:
    """What auditing one partition takes (sent to the audit's processes)."""

    bootstrap: str
    topics: TopicNames
    policy: core.Policy
    scope: Scope
    keep: bool
    decided: dict[int, int] | None  # partition -> offset the workers committed (see audit)

    async def run(
        self, partition: int, codec: Codec, report: Callable[[int], None]
    ) -> PartitionAudit:
        """Replays one partition of the input sequence and holds its decision log against it,
        reading the log as far as the replay has got after each fetch of inputs."""
        res = PartitionAudit(partition)
        fold = PartitionFold(self.topics.input_sequence, partition, codec, self.policy)
        log_tp = TopicPartition(self.topics.decision_log, partition)
        input_tp = TopicPartition(self.topics.input_sequence, partition)
        first, end = await bounds(self.bootstrap, log_tp)  # (no record left: none tells)
        check = _Comparison(codec, res, self.scope, emptied=first == end > 0)
        async with (
            contextlib.aclosing(read_chunks(self.bootstrap, log_tp)) as log,
            contextlib.aclosing(read_chunks(self.bootstrap, input_tp)) as inputs,
        ):
            for r in await anext(log, []):  # the log's end is taken before the inputs'
                check.log(r)
            async for chunk in inputs:
                for r in chunk:
                    res.inputs += 1
                    if res.inputs % PROGRESS_EVERY == 0:
                        report(PROGRESS_EVERY)
                    try:
                        out = fold.apply(r.value, r.offset)
                    except CodecError:
                        continue  # the worker dead-lettered it
                    for d in out:
                        check.expect(encode_decision(codec, d, assignment=False)[0], d)
                        res.checked += self.scope.covers(d)
                        res.pools.add(d.pool)
                    if self.keep:
                        res.decisions += out
                while check.expected and (records := await anext(log, None)) is not None:
                    for r in records:  # (the log was behind the replay)
                        check.log(r)
            if res.inputs % PROGRESS_EVERY:
                report(res.inputs % PROGRESS_EVERY)  # the rest, so the count ends exact
            async for records in log:
                for r in records:
                    check.log(r)
        check.finish(None if self.decided is None else self.decided.get(partition, 0))
        return res


# How many decisions further on the replay may come to the decision of a logged record that
# waits for it (the log is read a fetch ahead of the replay at most): then it is unexplained.
LOOKAHEAD = 2 * CHUNK


class _Comparison:
    """Expected decisions and logged records, held against each other as they come.

    Each distinct logged decision is compared with the expected one of its id,
    in order: the expected ones a logged record skips are missing (one lost
    record is one gap, named, not every later decision compared with its
    neighbour), and a logged record whose id the replay has not decided waits
    for it (as far as ``LOOKAHEAD`` decisions on: then it is unexplained). A
    log record waits until the replay has reached it (then, equal to the
    decision expected there, it needs no decoding: most records, in a clean
    log), and an expected decision until the log has. Beyond that, only ids
    and a digest of each logged record are kept.

    A log that no longer starts at offset 0 lost its oldest records to
    retention: the expected decisions before the one its first record holds
    are counted as expired, and the comparison starts there (a log left with
    no record, ``emptied``: all of them).

    Decisions outside ``scope`` are compared too, their problems counted in
    ``res.outside`` (see ``Scope``).
    """

    def __init__(
        self, codec: Codec, res: PartitionAudit, scope: Scope = Scope(), *, emptied: bool = False
    ) -> None:
        self.codec, self.res, self.scope = codec, res, scope
        self.started = False  # whether the log's first record came
        # The decision a truncated log starts with, until found; emptied: none (no decision
        # has the id ""), unless a worker logs one meanwhile (its first record will tell).
        self.seek: str | None = "" if emptied else None
        self.expected: deque[tuple[bytes, core.Decision]] = deque()  # not yet compared
        self.queued: set[str] = set()  # their ids
        self.waiting: deque[Any] = deque()  # log records the replay has not reached
        self.blocked: tuple[str, int] | None = None  # (the id waiting[0] waits for, since)
        self.skipped: dict[str, tuple[bytes, core.Decision]] = {}  # expected, not logged
        self.expected_ids: set[str] = set()
        self.logged: dict[str, bytes] = {}  # decision id -> its record's digest, in log order
        self.beyond: set[str] = set()  # logged, none expected then, outside the scope
        self.compared = 0
        self.unreadable: list[Mismatch] = []  # undecodable, conflicting repeats: in log order
        self.differing: list[Mismatch] = []  # in order of position

    def expect(self, value: bytes, d: core.Decision) -> None:
        self.res.expected += 1
        self.expected_ids.add(d.decision_id)
        self.expected.append((value, d))
        self.queued.add(d.decision_id)
        self._expire()
        if self.blocked is not None:
            if self.blocked[0] == d.decision_id:
                self.blocked = None
            elif self.res.expected - self.blocked[1] > LOOKAHEAD:  # waited enough: unexplained
                self.blocked = None
                self._take(self.waiting.popleft(), final=True)
        self._drain()

    def _drain(self, *, final: bool = False) -> None:
        """Takes the waiting log records while the replay has reached them."""
        while self.waiting and (self.expected or final) and self.blocked is None:
            r = self.waiting.popleft()
            if not self._take(r, final=final):
                self.waiting.appendleft(r)  # (its decision not decided yet: blocked)

    def _expire(self) -> None:
        """Drops the expected decisions before the first one a truncated log holds."""
        while self.seek is not None and self.expected:
            if self.expected[0][1].decision_id == self.seek:
                self.seek = None
                return
            _, d = self.expected.popleft()
            self.queued.discard(d.decision_id)
            self.res.expired += 1
            self.res.checked -= self.scope.covers(d)

    def log(self, r: Any) -> None:
        """Takes the next record of the log (a ConsumerRecord)."""
        if not self.started:
            self.started = True
            if r.offset > 0:  # retention deleted the head of the log
                self.seek = None  # (undecodable: compared as it is; emptied: not after all)
                with contextlib.suppress(CodecError):
                    self.seek = _decode(self.codec, r.value or b"").decision_id
                    self._expire()
        self.waiting.append(r)
        self._drain()

    def _take(self, r: Any, *, final: bool = False) -> bool:
        """Holds log record ``r`` against the expected decision of its id; False: the replay
        has not decided that id yet (``r`` waits for it, unless ``final``)."""
        value = r.value or b""  # (a record with no value, a tombstone, does not decode)
        digest = hashlib.blake2b(value, digest_size=16).digest()
        if self.expected and value == self.expected[0][0]:
            decision_id = self.expected[0][1].decision_id
            rec = None
        else:
            try:
                rec = _decode(self.codec, value)
            except CodecError as exc:
                where = (r.topic, r.partition, r.offset)
                self.unreadable.append(Mismatch(-1, "?", "(undecodable)", None, exc.detail, where))
                return True
            decision_id = rec.decision_id
        first = self.logged.get(decision_id)
        if first == digest:
            self.res.repeats += 1  # a decision logged again (a restarted worker), identical
            return True
        if first is not None:
            again = f"{r.topic}[{r.partition}]@{r.offset} (digest {digest.hex()[:16]})"
            self._conflict(rec or _decode(self.codec, value), first, again)
            return True
        if decision_id in self.queued:  # the expected ones before it are not in the log
            while self.expected[0][1].decision_id != decision_id:
                skipped = self.expected.popleft()
                self.queued.discard(skipped[1].decision_id)
                self.skipped[skipped[1].decision_id] = skipped
            expected: tuple[bytes, core.Decision] | None = self.expected.popleft()
            self.queued.discard(decision_id)
        elif decision_id in self.skipped:  # logged after decisions that came after it
            expected = self.skipped.pop(decision_id)
        elif decision_id in self.expected_ids or final:  # (compared already; or no input)
            expected = None
            # Placed now (the record is not kept), in case no input decides it: unexplained.
            if not self.scope.covers(rec or _decode(self.codec, value)):
                self.beyond.add(decision_id)
        else:  # the replay may not have got there yet
            self.blocked = (decision_id, self.res.expected)
            return False
        self.logged[decision_id] = digest
        self.res.logged += 1
        if expected is not None:
            self._compare(expected, value)
        return True

    def _conflict(self, rec: m.DecisionRecord, first: bytes, again: str) -> None:
        """Reports a repeat of a logged decision that differs from its first record (only
        the first one's digest is kept: the repeat's position says where to look)."""
        if not self.scope.covers(rec):
            self.res.outside += 1
            return
        first_logged = f"as first logged (digest {first.hex()[:16]})"
        self.unreadable.append(Mismatch(-1, rec.decision_id, "(conflicting repeat)",
                                        first_logged, again, _input(rec)))  # fmt: skip

    def _compare(self, expected: tuple[bytes, core.Decision], logged: bytes) -> None:
        eb, ed = expected
        position, self.compared = self.compared, self.compared + 1
        if not self.scope.covers(ed):
            self.res.outside += eb != logged
            return
        if eb == logged:
            self.res.matched += 1
            return
        erec = to_records(ed)[0]
        name, want, got = _first_difference(erec, _decode(self.codec, logged))
        self.differing.append(Mismatch(position, ed.decision_id, name, want, got, _input(erec)))

    def finish(self, decided: int | None = None) -> None:
        """Takes the log records left; reports the problems, the expected decisions the log
        lacks (those of inputs from offset ``decided`` on, if given, as pending), and
        logged ones no input explains."""
        self.blocked = None
        self._drain(final=True)
        self.res.mismatches = self.unreadable + self.differing
        lacking = sorted((d for _, d in (*self.skipped.values(), *self.expected)),
                         key=lambda d: d.source[2])  # fmt: skip
        if decided is not None:
            self.res.pending = sum(d.source[2] >= decided for d in lacking)
            lacking = [d for d in lacking if d.source[2] < decided]
        self.res.missing = [d.decision_id for d in lacking if self.scope.covers(d)]
        strangers = [i for i in self.logged if i not in self.expected_ids]
        self.res.unexplained = [i for i in strangers if i not in self.beyond]
        self.res.outside += (len(lacking) - len(self.res.missing)
                             + len(strangers) - len(self.res.unexplained))  # fmt: skip


def _decode(codec: Codec, value: bytes) -> m.DecisionRecord:
    rec = codec.decode(value, "DecisionRecord", trusted=True)
    assert isinstance(rec, m.DecisionRecord)  # noqa: S101 - decode checked the schema
    return rec


def _input(rec: m.DecisionRecord) -> tuple[str, int, int]:
    return (rec.input.topic, rec.input.partition, rec.input.offset)


def _moment(decisions: list[m.DecisionRecord]) -> m.DecisionRecord:
    """The decision explain looks from: the load's last assignment, or never assigned, its
    last decision while it waited (a finished load no longer holds its needs), or its first.

    Raises:
        ValueError: the decisions are about loads of several pools (ids may repeat).
    """
    if len(pools := sorted({d.pool for d in decisions})) > 1:
        raise ValueError(f"pools {', '.join(pools)} each have a load {decisions[0].load_id}: "
                         "name one")  # fmt: skip
    waiting = (m.DecisionOutcome.QUEUED, m.DecisionOutcome.DEFERRED)
    assigned = [d for d in decisions if d.outcome is m.DecisionOutcome.ASSIGNED]
    return (assigned or [d for d in decisions if d.outcome in waiting] or decisions[:1])[-1]


async def explain_load(
    bootstrap: str, topics: TopicNames, load_id: str, agents: tuple[str, ...] = (),
    *, policy: core.Policy = core.DEFAULT_POLICY, pool: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The logged decisions about ``load_id`` (in ``pool``, if given); with ``agents``, how
    each stood against it.

    The verdicts come from folding the load's partition up to the input of the
    decision ``_moment`` picks, then asking the core (``core.explain``) about
    the pool as it stood when that decision was made (an assignment: one input
    may assign many loads, a batch most of all, and the agents the later ones
    took were free then), or once the input was applied (any other decision).

    Raises:
        ValueError: ``agents`` are asked about, and pools name the load id alike.
        BrokerError: the broker fails a request, or the input sequence is missing (or
            lacks the partition of the decision's input).
    """
    codec = Codec()
    decisions: list[m.DecisionRecord] = []
    seen: set[str] = set()
    needle = load_id.encode()  # Avro writes a string as its UTF-8 bytes: in every record of it
    for tp in await partitions(bootstrap, topics.decision_log):
        async for records in read_chunks(bootstrap, tp):
            for r in records:
                if r.value is None or needle not in r.value:  # (None: a tombstone)
                    continue
                with contextlib.suppress(CodecError):  # (audit reports undecodable records)
                    rec = _decode(codec, r.value)
                    if (rec.load_id == load_id and rec.decision_id not in seen
                            and pool in (None, rec.pool)):  # fmt: skip
                        seen.add(rec.decision_id)
                        decisions.append(rec)
    verdicts: list[dict[str, Any]] = []
    if decisions and agents:
        last = _moment(decisions)
        # Checked now: reading a partition that does not exist waits ~40 s for it, then fails.
        held = {tp.partition for tp in await partitions(bootstrap, topics.input_sequence)}
        if last.input.partition not in held:
            raise BrokerError(f"{topics.input_sequence} at {bootstrap} has no partition "
                              f"{last.input.partition} (the decision's input)")  # fmt: skip
        state = await _pool_at(bootstrap, topics, last, policy, codec)
        if state is not None and state.load(load_id) is not None:  # (not: about an unknown id)
            why = core.explain(state, load_id, agents)
            verdicts = [{"agent_id": v.agent_id, "failed": list(v.failed), "score": v.score,
                         "gap": v.gap, "parts": dict(v.parts)} for v in why.verdicts]  # fmt: skip
    return {"load_id": load_id, "decisions": [d.model_dump(mode="json") for d in decisions],
            "verdicts": verdicts}  # fmt: skip


async def _pool_at(
    bootstrap: str, topics: TopicNames, last: m.DecisionRecord, policy: core.Policy,
    codec: Codec,
) -> core.PoolState | None:  # fmt: skip
    """The pool of decision ``last`` as it stood when the decision was made (an assignment),
    or once its input was applied (any other; or a pool that input made); None: the
    input sequence never named the pool."""
    tp = TopicPartition(topics.input_sequence, last.input.partition)
    fold = PartitionFold(topics.input_sequence, tp.partition, codec, policy)
    moment: list[core.PoolState] = []

    def capture(state: core.PoolState, d: core.Decision) -> None:
        if d.decision_id == last.decision_id:
            then = copy.copy(state)
            then.agents = copy.deepcopy(state.agents)
            then.loads = {last.load_id: copy.copy(state.loads[last.load_id])}
            moment.append(then)

    async with contextlib.aclosing(read_chunks(bootstrap, tp)) as chunks:
        async for records in chunks:
            for r in records:
                if r.offset > last.input.offset:
                    break
                watched = fold.pool(last.pool) if r.offset == last.input.offset else None
                if watched is not None:
                    watched.on_assign = capture
                with contextlib.suppress(CodecError):
                    fold.apply(r.value, r.offset)
                if watched is not None:
                    del watched.on_assign
            if records and records[-1].offset >= last.input.offset:
                break
    return moment[0] if moment else fold.pools.get(last.pool)
