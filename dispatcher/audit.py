"""Audit: fold the recorded input sequence again and hold the decision log against it.

For each partition of ``input-sequence``: read it from the start, fold it
through the core exactly as the worker did (``PartitionFold``), encode every
decision, and compare with the same partition of ``decision-log``, byte for
byte and in order. The log may repeat a decision (a worker re-emits what it
decided after the last committed offset when it restarts): a repeat must be
identical, and only its first occurrence counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aiokafka import TopicPartition

from dispatcher import core
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import encode_decision, to_records
from dispatcher.codecs.codec import Codec, CodecError
from dispatcher.reading import PROGRESS_EVERY, end_offsets, partitions, read_partition
from dispatcher.topics import TopicNames
from dispatcher.worker.fold import PartitionFold

__all__ = ["Mismatch", "PartitionAudit", "audit", "explain_load"]

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


@dataclass
class PartitionAudit:
    partition: int
    inputs: int = 0
    expected: int = 0
    logged: int = 0  # distinct decision ids in the log
    repeats: int = 0  # repeated records of a decision id, each identical
    matched: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # decided on replay, absent from the log
    unexplained: list[str] = field(default_factory=list)  # in the log, no input decides it
    decisions: list[core.Decision] = field(default_factory=list)  # the expected ones, in order

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
) -> list[PartitionAudit]:
    """Audits every partition; ``policy`` is the workers' policy before the first update.

    With ``jobs`` > 1, that many partitions at a time, each in a process of its
    own (the replay is CPU-bound: one per core), each with a codec of its own;
    0: one per core when the input sequence is long enough to repay starting
    them (about a second each), else in this process. ``progress`` is called
    with the number of inputs replayed so far, now and then.
    """
    topics = topics or TopicNames()
    tps = await partitions(bootstrap, topics.input_sequence)
    if jobs == 0:
        records = sum((await end_offsets(bootstrap, tps)).values())
        jobs = _cores() if records >= PARALLEL_FROM else 1
    jobs = min(jobs, len(tps))
    if jobs > 1:
        return await _in_processes(bootstrap, topics, [tp.partition for tp in tps], policy,
                                   progress, jobs)  # fmt: skip
    codec = codec or Codec()
    results: list[PartitionAudit] = []
    replayed = 0

    def report(n: int) -> None:
        nonlocal replayed
        replayed += n
        if progress is not None:
            progress(replayed)

    for tp in tps:
        results.append(await _audit_partition(bootstrap, topics, tp.partition, policy, codec,
                                              report))  # fmt: skip
    return results


_replayed: Any = None  # in an audit's worker process: the inputs replayed, over all of them


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _share(counter: Any) -> None:
    global _replayed  # noqa: PLW0603 - one per worker process, set when it starts
    _replayed = counter


def _audit_in_process(
    bootstrap: str, topics: TopicNames, partition: int, policy: core.Policy
) -> PartitionAudit:
    def report(n: int) -> None:
        with _replayed.get_lock():
            _replayed.value += n

    return asyncio.run(_audit_partition(bootstrap, topics, partition, policy, Codec(), report))


async def _in_processes(  # noqa: PLR0917 - audit's arguments
    bootstrap: str, topics: TopicNames, parts: list[int], policy: core.Policy,
    progress: Callable[[int], None] | None, jobs: int,
) -> list[PartitionAudit]:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")  # not fork: this process runs an event loop
    counter = ctx.Value("q", 0)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_share,
                             initargs=(counter,)) as pool:  # fmt: skip
        done = asyncio.gather(*(loop.run_in_executor(pool, _audit_in_process, bootstrap, topics,
                                                     p, policy) for p in parts))  # fmt: skip
        shown, finished = 0, False
        while not finished:
            finished = bool((await asyncio.wait({done}, timeout=0.5))[0])
            if progress is not None and counter.value != shown:
                shown = counter.value
                progress(shown)
        return list(done.result())


async def _audit_partition(  # noqa: PLR0917 - audit's arguments, for one partition
    bootstrap: str, topics: TopicNames, partition: int, policy: core.Policy, codec: Codec,
    report: Callable[[int], None],
) -> PartitionAudit:  # fmt: skip
    """Replays one partition of the input sequence and holds its decision log against it."""
    res = PartitionAudit(partition)
    tp = TopicPartition(topics.input_sequence, partition)
    fold = PartitionFold(topics.input_sequence, partition, codec, policy)
    expected: list[tuple[bytes, core.Decision]] = []
    for r in await read_partition(bootstrap, tp):
        res.inputs += 1
        if res.inputs % PROGRESS_EVERY == 0:
            report(PROGRESS_EVERY)
        try:
            out = fold.apply(r.value, r.offset)
        except CodecError:
            continue  # the worker dead-lettered it
        expected += [(encode_decision(codec, d, assignment=False)[0], d) for d in out]
    if res.inputs % PROGRESS_EVERY:
        report(res.inputs % PROGRESS_EVERY)  # the rest, so the count ends exact
    log_tp = TopicPartition(topics.decision_log, tp.partition)
    logged = _distinct(await read_partition(bootstrap, log_tp), expected, codec, res)
    res.expected, res.logged = len(expected), len(logged)
    res.decisions = [d for _, d in expected]
    expected_ids = {d.decision_id for _, d in expected}
    for i, ((eb, ed), (lb, _)) in enumerate(zip(expected, logged, strict=False)):
        if eb == lb:
            res.matched += 1
            continue
        erec = to_records(ed)[0]
        name, want, got = _first_difference(erec, _decode(codec, lb))
        res.mismatches.append(Mismatch(i, ed.decision_id, name, want, got, _input(erec)))
    res.missing = [d.decision_id for _, d in expected[len(logged) :]]
    res.unexplained = [i for _, i in logged if i not in expected_ids]
    return res


def _distinct(
    log: list[Any], expected: list[tuple[bytes, core.Decision]], codec: Codec,
    res: PartitionAudit,
) -> list[tuple[bytes, str]]:  # fmt: skip
    """The log's distinct decisions (bytes, id), in order; repeats are counted in ``res``,
    conflicting repeats and undecodable records reported there.

    A record equal to the next expected one is not decoded: its bytes say all
    (most records, in a clean log).
    """
    logged: list[tuple[bytes, str]] = []
    ids: set[str] = set()
    values: set[bytes] = set()
    for r in log:
        value = r.value
        if value in values:
            res.repeats += 1  # a decision logged again (a restarted worker), identical
            continue
        i = len(logged)
        rec = None
        if i < len(expected) and value == expected[i][0]:
            decision_id = expected[i][1].decision_id
        else:
            try:
                rec = _decode(codec, value)
            except CodecError as exc:
                where = (r.topic, r.partition, r.offset)
                res.mismatches.append(Mismatch(-1, "?", "(undecodable)", None, exc.detail, where))
                continue
            decision_id = rec.decision_id
        if decision_id in ids:
            rec = rec or _decode(codec, value)
            res.mismatches.append(
                Mismatch(-1, decision_id, "(conflicting repeat)", None, None, _input(rec))
            )
            continue
        ids.add(decision_id)
        values.add(value)
        logged.append((value, decision_id))
    return logged


def _decode(codec: Codec, value: bytes) -> m.DecisionRecord:
    rec = codec.decode(value, "DecisionRecord", trusted=True)
    assert isinstance(rec, m.DecisionRecord)  # noqa: S101 - decode checked the schema
    return rec


def _input(rec: m.DecisionRecord) -> tuple[str, int, int]:
    return (rec.input.topic, rec.input.partition, rec.input.offset)


async def explain_load(
    bootstrap: str, topics: TopicNames, load_id: str, agents: tuple[str, ...] = (),
    *, policy: core.Policy = core.DEFAULT_POLICY,
) -> dict[str, Any]:  # fmt: skip
    """The logged decisions about ``load_id``; with ``agents``, how each stood against it.

    The verdicts come from folding the load's partition up to (and including)
    the input of its last assignment (or, never assigned, of its last
    decision), then asking the core (``core.explain``).
    """
    codec = Codec()
    decisions: list[m.DecisionRecord] = []
    seen: set[str] = set()
    for tp in await partitions(bootstrap, topics.decision_log):
        for r in await read_partition(bootstrap, tp):
            rec = codec.decode(r.value, "DecisionRecord", trusted=True)
            if (isinstance(rec, m.DecisionRecord) and rec.load_id == load_id
                    and rec.decision_id not in seen):  # fmt: skip
                seen.add(rec.decision_id)
                decisions.append(rec)
    verdicts: list[dict[str, Any]] = []
    if decisions and agents:
        assigned = [d for d in decisions if d.outcome is m.DecisionOutcome.ASSIGNED]
        last = (assigned or decisions)[-1]
        tp = TopicPartition(topics.input_sequence, last.input.partition)
        fold = PartitionFold(topics.input_sequence, tp.partition, codec, policy)
        for r in await read_partition(bootstrap, tp):
            if r.offset > last.input.offset:
                break
            with contextlib.suppress(CodecError):
                fold.apply(r.value, r.offset)
        why = core.explain(fold.pools[last.pool], load_id, agents)
        verdicts = [{"agent_id": v.agent_id, "failed": list(v.failed), "score": v.score,
                     "gap": v.gap, "parts": dict(v.parts)} for v in why.verdicts]  # fmt: skip
    return {"load_id": load_id, "decisions": [d.model_dump(mode="json") for d in decisions],
            "verdicts": verdicts}  # fmt: skip
