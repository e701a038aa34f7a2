"""A private copy of the system's topics and real worker processes, for pipeline tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from dispatcher import core
from dispatcher.audit import PartitionAudit
from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import encode_decision
from dispatcher.codecs.codec import CodecError
from dispatcher.reading import committed_offsets, end_offsets, partitions, read_partition
from dispatcher.topics import TopicNames, apply_topics, delete_topics, load_topics

READY = "[^Worker]: Ready"
CODEC = Codec()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pipeline:
    """Topics under one prefix, and the workers started on them."""

    bootstrap: str
    redis_url: str
    prefix: str
    logs: Path
    workers: list[subprocess.Popen[Any]] = field(default_factory=list)
    worker_args: list[str] = field(default_factory=list)  # more `dispatcher worker` options
    worker_env: dict[str, str] = field(default_factory=dict)  # more environment variables

    @property
    def topics(self) -> TopicNames:
        return TopicNames.prefixed(self.prefix)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}dispatcher"

    def create_topics(self) -> None:
        asyncio.run(apply_topics(load_topics().prefixed(self.prefix), self.bootstrap))

    def delete_topics(self) -> None:
        asyncio.run(delete_topics(list(load_topics().prefixed(self.prefix).topics), self.bootstrap))

    def start_worker(self, *, wait: bool = True, timeout_s: float = 90.0) -> subprocess.Popen[Any]:
        n = len(self.workers)
        log = self.logs / f"worker-{n}.log"
        env = os.environ | self.worker_env | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "REDIS_URL": self.redis_url,
            "DISPATCHER_STATE_DIR": str(self.logs / "state"),
        }  # fmt: skip
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "worker", "--app-id", self.app_id,
                 "--topic-prefix", self.prefix, "--web-port", str(free_port()),
                 "--loglevel", "info", *self.worker_args],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self.workers.append(proc)
        if wait:
            deadline = time.monotonic() + timeout_s
            while READY not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"worker {n} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        return proc

    def kill(self, proc: subprocess.Popen[Any]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


async def wait_until(
    check: Callable[[], bool], timeout_s: float, poll: Callable[[], Awaitable[object]]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await poll()


def assert_audit_clean(results: list[PartitionAudit]) -> int:
    for r in results:
        assert r.ok, (r.partition, r.mismatches[:3], r.missing[:3], r.unexplained[:3])
    return sum(r.matched for r in results)


def over_capacity(
    results: list[PartitionAudit], agents: dict[str, tuple[str, m.AgentProfile]]
) -> list[str]:
    """Decisions that put an agent over its capacity, replaying the log's holds and releases."""
    bad = []
    for r in results:
        active: dict[str, int] = {}
        for rec in r.records:
            if rec.agent_id is None:
                continue
            if rec.outcome is m.DecisionOutcome.ASSIGNED:
                active[rec.agent_id] = active.get(rec.agent_id, 0) + 1
                if active[rec.agent_id] > agents[rec.agent_id][1].capacity:
                    bad.append(rec.decision_id)
            elif rec.outcome is not m.DecisionOutcome.REJECTED:  # requeued or final: released
                active[rec.agent_id] -= 1
    return bad


async def records_of(bootstrap: str, topic: str) -> dict[int, list[Any]]:
    """Every record of ``topic`` up to its end now, by partition."""
    return {tp.partition: await read_partition(bootstrap, tp)
            for tp in await partitions(bootstrap, topic)}  # fmt: skip


async def dead_letters(p: Pipeline) -> list[m.DeadLetter]:
    """Every record of the dead-letter topic."""
    out = []
    for records in (await records_of(p.bootstrap, p.topics.dead_letter)).values():
        for r in records:
            rec = CODEC.decode(r.value, "DeadLetter")
            assert isinstance(rec, m.DeadLetter)
            out.append(rec)
    return out


Position = tuple[str, int, int]  # topic, partition, offset


@dataclass
class Poison:
    """Records that are no valid input, as sent: where each lies and why it must be refused."""

    sent: dict[Position, m.DeadLetterReason] = field(default_factory=dict)

    async def send(
        self, kafka: Any, topic: str, value: bytes, reason: m.DeadLetterReason,
        key: bytes | None = None,
    ) -> None:  # fmt: skip
        meta = await kafka.send_and_wait(topic, value, key=key)
        self.sent[meta.topic, meta.partition, meta.offset] = reason


def _sources(t: TopicNames) -> dict[str, str]:
    """The input topics but policies, by the record each holds (another there is poison)."""
    return {"LoadEvent": t.load_arrival, "AgentEvent": t.agent_availability,
            "TaskResult": t.task_results, "Tick": t.ticks}  # fmt: skip


async def wait_sequenced(p: Pipeline, timeout_s: float = 60.0) -> None:
    """Waits until the workers committed every record the input topics hold now (Faust
    flushes before it commits: each is in the input sequence or on dead-letter then)."""
    t = p.topics
    topics = [*_sources(t).values(), t.policy_update]
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        tps = await partitions(p.bootstrap, topic)
        ends |= {(tp.topic, tp.partition): end
                 for tp, end in (await end_offsets(p.bootstrap, tps)).items()}  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        committed = {(topic, part): offset for topic in topics for part, offset in
                     (await committed_offsets(p.bootstrap, p.app_id, topic)).items()}  # fmt: skip
        behind = {k: (committed.get(k, 0), end) for k, end in ends.items()
                  if committed.get(k, 0) < end}  # fmt: skip
        if not behind:
            return
        assert time.monotonic() < deadline, f"inputs not committed (committed, end): {behind}"
        await asyncio.sleep(0.5)


async def dead_letter_problems(p: Pipeline, poison: Poison) -> list[str]:
    """How dead-letter differs from ``poison``: each poison record there once, with its
    position and the reason expected, and nothing else."""
    problems, letters = [], Counter[Position]()
    for d in await dead_letters(p):
        where = (d.source_topic, d.source_partition, d.source_offset)
        letters[where] += 1
        if where not in poison.sent:
            problems.append(f"dead-lettered, but no poison: {where}: {d.reason} {d.error}")
        elif d.reason is not poison.sent[where]:
            problems.append(f"poison {where}: {d.reason}, not {poison.sent[where]} ({d.error})")
    return problems + [f"poison {where} dead-lettered {letters[where]} times, not once"
                       for where in poison.sent if letters[where] != 1]  # fmt: skip


async def sequence_problems(p: Pipeline, poison: Poison) -> list[str]:
    """How the input sequence and dead-letter differ from what the input topics hold.

    Checked against the raw input topics, not against anything the workers
    wrote: every record there that is not ``poison`` must be in the input
    sequence exactly once, byte for byte, in its topic's order, in the partition
    it was sent to (inputs are co-partitioned by pool), keyed by its pool; each
    valid policy once in every partition (the fan-out), keyed ``*``; poison
    only on dead-letter (``dead_letter_problems``); and nothing else in the
    sequence. The workers send the ticks themselves, and keep sending them: those
    sequenced must be the first ticks of their partition, in order (the last
    ones may not be sequenced yet).
    """
    t, problems = p.topics, await dead_letter_problems(p, poison)
    # The sequence first: the ticks read after it hold every tick it does.
    sequence = await records_of(p.bootstrap, t.input_sequence)
    want: dict[tuple[str, int], list[bytes]] = {}  # (record name, partition) -> values
    for name, topic in [*_sources(t).items(), ("PolicyUpdate", t.policy_update)]:
        for part, records in (await records_of(p.bootstrap, topic)).items():
            valid = [r.value for r in records if (topic, part, r.offset) not in poison.sent]
            want.setdefault((name, part), []).extend(valid)
    policies = want.pop(("PolicyUpdate", 0), [])  # (the policy topic has one partition)
    got: dict[tuple[str, int], list[bytes]] = {}
    for part, records in sequence.items():
        want["PolicyUpdate", part] = policies
        for r in records:
            try:
                rec = CODEC.decode(r.value)
            except CodecError as exc:
                problems.append(f"input sequence [{part}]@{r.offset}: {exc}")
                continue
            key = b"*" if isinstance(rec, m.PolicyUpdate) else getattr(rec, "pool", "").encode()
            if r.key != key:
                problems.append(f"input sequence [{part}]@{r.offset}: key {r.key!r}, not {key!r}")
            got.setdefault((type(rec).__name__, part), []).append(r.value)
    for name, part in sorted(want.keys() | got.keys()):
        seq, src = got.get((name, part), []), want.get((name, part), [])
        if name == "Tick":
            src = src[: len(seq)]
        if seq != src:
            lost, twice = Counter(src) - Counter(seq), Counter(seq) - Counter(src)
            problems.append(f"{name} of partition {part}: {sum(lost.values())} of {len(src)} "
                            f"missing, {sum(twice.values())} extra or repeated"
                            + ("" if lost or twice else ", out of order"))  # fmt: skip
    return problems


async def assignment_problems(
    p: Pipeline, results: list[PartitionAudit], *, repeats: bool = False
) -> list[str]:
    """How the assignments topic differs from the ASSIGNED decisions of ``results`` (an
    audit that kept them): one record per assignment, byte for byte the Assignment its
    decision makes (same load, agent, attempt, id, times...), keyed by its agent; with
    ``repeats``, a record may come again (a restarted worker sends it again), identical."""
    expected = {d.decision_id: (d, encode_decision(CODEC, d)[1]) for r in results
                for d in r.decisions if d.outcome is core.Outcome.ASSIGNED}  # fmt: skip
    problems, seen = [], Counter[str]()
    for part, records in (await records_of(p.bootstrap, p.topics.assignments)).items():
        for r in records:
            try:
                a = CODEC.decode(r.value, "Assignment")
            except CodecError as exc:
                problems.append(f"assignments [{part}]@{r.offset}: {exc}")
                continue
            assert isinstance(a, m.Assignment)
            seen[a.decision_id] += 1
            if a.decision_id not in expected:
                problems.append(f"assignment {a.decision_id} ({a.load_id} -> {a.agent_id}): "
                                "no ASSIGNED decision has that id")  # fmt: skip
                continue
            d, value = expected[a.decision_id]
            if r.value != value:
                sent, decided = (a.load_id, a.agent_id, a.attempt), (d.load_id, d.agent_id,
                                                                      d.attempt)  # fmt: skip
                problems.append(f"assignment {a.decision_id} differs from its decision: sent "
                                f"(load, agent, attempt) {sent}, decided {decided}"
                                + ("" if sent != decided else " (another field)"))  # fmt: skip
            if r.key != a.agent_id.encode():
                problems.append(f"assignment {a.decision_id} keyed {r.key!r}, not its agent")
    missing = sorted(expected.keys() - seen.keys())
    if missing:
        problems.append(f"{len(missing)} ASSIGNED decisions sent no assignment: {missing[:3]}")
    if not repeats:
        twice = sorted(i for i, n in seen.items() if n > 1)
        if twice:
            problems.append(f"{len(twice)} assignments sent more than once: {twice[:3]}")
    return problems


# -- what the workers' logs and the topics say about a kill -----------------------------

_STAMP = (
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[INFO\] partition (?P<part>\d+): "
)
_FOLDED = re.compile(_STAMP + r"folded (?P<n>\d+) records up to offset (?P<upto>\d+)", re.M)
_RESTORED = re.compile(_STAMP + r"starts from the snapshot at offset (?P<offset>\d+)", re.M)


def pool_partition(pool: str, partitions: int = 4) -> int:
    """The partition of the dispatch topics a pool's records go to (Kafka's default
    partitioner, as the producers and the workers use it)."""
    return int((murmur2(pool.encode()) & 0x7FFFFFFF) % partitions)


@dataclass(frozen=True, slots=True)
class CatchUp:
    """A worker taking a partition: it rebuilt the state up to ``upto`` from a snapshot
    (at ``snapshot``, if any) and the ``folded`` records of the log after it."""

    worker: int
    at: datetime
    partition: int
    folded: int
    upto: int
    snapshot: int | None


def catch_ups(p: Pipeline) -> list[CatchUp]:
    """Every catch-up the workers logged, oldest first."""
    out = []
    for worker in range(len(p.workers)):
        text = (p.logs / f"worker-{worker}.log").read_text(errors="replace")
        restored: dict[int, int] = {}
        lines = sorted(
            [*_FOLDED.finditer(text), *_RESTORED.finditer(text)], key=lambda x: x.start()
        )
        for line in lines:
            part = int(line["part"])
            if "offset" in line.groupdict():
                restored[part] = int(line["offset"])
                continue
            at = datetime.strptime(line["at"], "%Y-%m-%d %H:%M:%S,%f")  # (local time)
            out.append(CatchUp(worker, at, part, int(line["n"]), int(line["upto"]),
                               restored.pop(part, None)))  # fmt: skip
    return sorted(out, key=lambda c: c.at)


def owners(p: Pipeline, before: datetime) -> dict[int, int]:
    """Partition -> the worker that caught up on it last before ``before``: its owner then,
    for a partition that gets records (a worker catches up at the first record it reads)."""
    return {c.partition: c.worker for c in catch_ups(p) if c.at < before}


@dataclass(frozen=True, slots=True)
class Kill:
    """A worker killed with SIGKILL, and what it held: its partitions that get records, the
    input offsets its group had committed on them, and the ends of their decision logs."""

    worker: int
    at: datetime
    at_ms: int
    owned: frozenset[int]
    committed: dict[int, int]
    log_end: dict[int, int]


async def deciding(
    p: Pipeline, worker: int, busy: set[int], *, every: bool = False, timeout_s: float = 120.0
) -> None:
    """Waits until ``worker`` decides for a partition of ``busy`` (for all of them, with
    ``every``): it caught up on them, and no other worker did since."""
    deadline = time.monotonic() + timeout_s
    while True:
        mine = {part for part, w in owners(p, datetime.now()).items() if w == worker} & busy
        if mine == busy if every else mine:
            return
        assert time.monotonic() < deadline, f"worker {worker} does not decide for {busy}"
        await asyncio.sleep(0.2)


async def kill_deciding(p: Pipeline, worker: int, busy: set[int], *, every: bool = False) -> Kill:
    """Kills ``worker`` once it decides (``deciding``), and notes what it held. Right after
    a kill, no other worker commits or decides for its partitions yet: a dead member holds
    them until its session times out."""
    await deciding(p, worker, busy, every=every)
    p.kill(p.workers[worker])
    at, at_ms = datetime.now(), int(time.time() * 1000)  # (local time, as the logs stamp)
    owned = frozenset(part for part, w in owners(p, at).items() if w == worker) & busy
    committed = await committed_offsets(p.bootstrap, p.app_id, p.topics.input_sequence)
    tps = [TopicPartition(p.topics.decision_log, part) for part in owned]
    ends = await end_offsets(p.bootstrap, tps) if tps else {}
    return Kill(worker, at, at_ms, owned, committed, {tp.partition: n for tp, n in ends.items()})


async def uncommitted_decisions(p: Pipeline, kills: list[Kill]) -> list[int]:
    """Per kill, the decisions the killed worker had sent for inputs it had not committed
    (its successor decides those inputs again: each such decision comes twice).

    A worker's decisions follow its inputs' order, so they are the end of its
    partition's log, back to the first about an input below the committed offset.
    """
    logs = await records_of(p.bootstrap, p.topics.decision_log)
    out = []
    for kill in kills:
        n = 0
        for part in kill.owned:
            for r in reversed([r for r in logs[part] if r.offset < kill.log_end[part]]):
                d = CODEC.decode(r.value, "DecisionRecord", trusted=True)
                assert isinstance(d, m.DecisionRecord)
                if d.input.offset < kill.committed.get(part, 0):
                    break
                n += 1
        out.append(n)
    return out


def in_flight(results: list[PartitionAudit], kill: Kill) -> int:
    """The loads of the killed worker's partitions that the log has assigned and not yet
    ended at the time of the kill (event time: the producers' clocks, this machine's)."""
    n = 0
    for r in results:
        if r.partition not in kill.owned:
            continue
        assigned: dict[str, int] = {}
        ended: dict[str, int] = {}
        for d in r.decisions:
            if d.outcome is core.Outcome.ASSIGNED:
                assigned.setdefault(d.load_id, d.time_ms)
            elif d.outcome in core.FINAL_OUTCOMES:
                ended[d.load_id] = d.time_ms
        n += sum(1 for load, t in assigned.items()
                 if t <= kill.at_ms < ended.get(load, 2**63))  # fmt: skip
    return n


def takeovers(p: Pipeline, kill: Kill) -> list[CatchUp]:
    """Who took each of the killed worker's partitions: the first catch-up of it by another
    worker after the kill."""
    first: dict[int, CatchUp] = {}
    for c in catch_ups(p):
        if c.at > kill.at and c.worker != kill.worker and c.partition in kill.owned:
            first.setdefault(c.partition, c)
    return sorted(first.values(), key=lambda c: c.partition)
