"""Audit: fold the recorded input sequence again and hold the decision log against it.

For each partition of ``input-sequence``: read it from the start, fold it
through the core exactly as the worker did (``PartitionFold``), encode every
decision, and compare with the same partition of ``decision-log``, byte for
byte and in order. The log may repeat a decision (a worker re-emits what it
decided after the last committed offset when it restarts): a repeat must be
identical, and only its first occurrence counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aiokafka import TopicPartition

from dispatcher import core
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import encode_decision, to_records
from dispatcher.codecs.codec import Codec, CodecError
from dispatcher.reading import PROGRESS_EVERY, partitions, read_partition
from dispatcher.topics import TopicNames
from dispatcher.worker.fold import PartitionFold

__all__ = ["Mismatch", "PartitionAudit", "audit", "explain_load"]


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
) -> list[PartitionAudit]:
    """Audits every partition; ``policy`` is the workers' policy before the first update.

    ``progress`` is called with the number of inputs replayed so far, now and then.
    """
    topics = topics or TopicNames()
    codec = codec or Codec()
    results = []
    replayed = 0
    for tp in await partitions(bootstrap, topics.input_sequence):
        res = PartitionAudit(tp.partition)
        fold = PartitionFold(topics.input_sequence, tp.partition, codec, policy)
        expected: list[tuple[bytes, core.Decision]] = []
        for r in await read_partition(bootstrap, tp):
            res.inputs += 1
            replayed += 1
            if progress is not None and replayed % PROGRESS_EVERY == 0:
                progress(replayed)
            try:
                out = fold.apply(r.value, r.offset)
            except CodecError:
                continue  # the worker dead-lettered it
            expected += [(encode_decision(codec, d, assignment=False)[0], d) for d in out]
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
        results.append(res)
    return results


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
