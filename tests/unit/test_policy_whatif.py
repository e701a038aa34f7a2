"""Policy files (validate) and what-if replays over a recorded input sequence."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from dispatcher import core, policytool
from dispatcher.codecs import Codec, CodecError, dead_letter
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import policy_from
from dispatcher.codecs.signing import content_hash
from dispatcher.demo import agent_profile, load_event, policy_update
from dispatcher.errors import ConfigError
from dispatcher.policytool import load_policy_file, problems
from dispatcher.settings import PROJECT_ROOT
from dispatcher.topics import TopicNames
from dispatcher.whatif import Outcomes, compare
from dispatcher.worker.fold import PartitionFold
from tests.unit.core import builders

EXAMPLE = PROJECT_ROOT / "ops/policies/example.yaml"
CODEC = Codec()


def write(tmp_path: Path, change: dict[str, Any]) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    for dotted, value in change.items():
        *path, last = dotted.split(".")
        node = doc
        for key in path:
            node = node[key]
        node[last] = value
    out = tmp_path / "p.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def test_the_example_policy_is_valid() -> None:
    update = load_policy_file(EXAMPLE)
    assert problems(update) == []
    assert len(update.content_hash) == 64


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"document.weights.charisma": 1.0}, "weights.charisma: not a score term"),
        ({"document.weights": {"embedding": 0.0}}, "none is positive"),
        ({"document.constraints": {"capacity": False}}, "constraints.capacity: cannot be"),
        ({"document.constraints": {"gravity": True}}, "constraints.gravity: unknown"),
        ({"document.timeouts_ms": {"lunch": 5}}, "timeouts_ms.lunch: unknown"),
        ({"document.tenant_quotas": {"acme": 0}}, "tenant_quotas.acme: 0"),
        ({"document.retry.backoff_base_ms": 10**6}, "backoff_base_ms 1000000 > backoff_max_ms"),
        ({"document.weights.embedding": 1e308}, "weights.embedding: 1e+308 (weights are from"),
        ({"document.timeouts_ms": {"ack": 0}}, "timeouts_ms.ack: 0"),
        ({"document.timeouts_ms": {"dedupe_window": 0}}, "timeouts_ms.dedupe_window: 0"),
        ({"document.timeouts_ms": {"ack": 2**53}}, "more than a year"),
        ({"document.batch_max_loads": 2**31 - 1}, "batch_max_loads: 2147483647 (at most"),
        ({"document.batch_max_loads": 1_025}, "batch_max_loads: 1025 (at most 1,024)"),
        ({"document.tenant_weights": {"acme": 5e-324}}, "tenant_weights.acme: 5e-324 (tenant"),
        ({"document.tenant_weights": {"acme": 1e7}}, "tenant_weights.acme: 10000000.0 (tenant"),
    ],
)
def test_semantic_problems_are_named(tmp_path: Path, change: dict[str, Any], problem: str) -> None:
    found = problems(load_policy_file(write(tmp_path, change)))
    assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    "change",
    [{"version": -1}, {"document.matching_mode": "RANDOM"}, {"document.weights.embedding": "x"},
     {"document.backpressure.low_watermark": 10**9},
     # Values of another kind were read as one (lax): version 1, version 3, 50 ms.
     {"version": True}, {"version": "3"}, {"document.batch_window_ms": 50.0},
     {"document.tenant_deny": {"acme": "agent-1"}}, {"document.weights.embedding": float("nan")}],
)  # fmt: skip
def test_schema_problems_are_refused(tmp_path: Path, change: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="not a valid policy"):
        load_policy_file(write(tmp_path, change))


def test_schema_problems_are_named_one_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, {"version": "3", "document.weights.embedding": "high",
                            "document.retry": None, "document.typo": 1})  # fmt: skip
    doc = yaml.safe_load(path.read_text())
    del doc["document"]["batch_window_ms"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as raised:
        load_policy_file(path)
    head, *lines = str(raised.value).splitlines()
    assert head == f"{path}: not a valid policy:"
    assert sorted(lines) == [
        "  field 'document.batch_window_ms': required field is missing",
        "  field 'document.retry': Input should be an object (got None)",
        "  field 'document.typo': unknown field",
        "  field 'document.weights.embedding': Input should be a valid number (got 'high')",
    ]  # (the version's problem shows once the document has none)


@pytest.mark.parametrize(
    ("once", "twice", "key"),
    [
        ("ack: 30000,", "ack: 30000, ack: 5,", "ack"),
        ("version: 2", "version: 2\nversion: 9", "version"),
    ],
)
def test_a_key_written_twice_is_refused_not_the_last_kept(
    tmp_path: Path, once: str, twice: str, key: str
) -> None:
    """(The last was kept: `ack: 30000, ack: 5` was valid, with an ack timeout of 5 ms.)"""
    text = EXAMPLE.read_text()
    assert text.count(once) == 1
    path = tmp_path / "p.yaml"
    path.write_text(text.replace(once, twice))
    with pytest.raises(ConfigError, match=f"duplicate key '{key}'"):
        load_policy_file(path)


def recorded_run(
    policy: m.PolicyUpdate, steps: int = 60, *, deadlines: bool = False
) -> list[tuple[int, bytes]]:
    """An input sequence as the worker records it: ``policy`` (in effect from time 0), two
    agents (capacity 1), tenant acme sending three loads per step and globex one, agents
    finishing work a step later; with ``deadlines``, each load due 2.5 s after it came."""
    rng = np.random.default_rng(3)
    fold = PartitionFold("input-sequence", 0, CODEC)
    records: list[tuple[int, bytes]] = []

    def add(record: m.Record) -> list[core.Decision]:
        offset = len(records)
        records.append((offset, CODEC.encode(record)))
        return fold.apply(records[-1][1], offset)

    add(policy.model_copy(update={"effective_from_ms": 0}))
    for i in range(2):
        profile = agent_profile(rng, capacity=1)
        for seq, kind in ((1, m.AgentEventKind.REGISTERED), (2, m.AgentEventKind.AVAILABLE)):
            add(m.AgentEvent(event_id=f"a{i}:{seq}", kind=kind, agent_id=f"a{i}", pool="p",
                             seq=seq, event_time_ms=1_000,
                             profile=profile if seq == 1 else None))  # fmt: skip
    running: list[core.Decision] = []
    for step in range(steps):
        t = 2_000 + step * 1_000
        done, running = running, []
        for d in done:  # the agents report last step's work done
            for outcome in (m.TaskOutcome.ACCEPTED, m.TaskOutcome.SUCCESS):
                out = add(m.TaskResult(event_id=f"{d.decision_id}:{outcome.value}",
                                       decision_id=d.decision_id, load_id=d.load_id,
                                       agent_id=d.agent_id or "", pool="p", outcome=outcome,
                                       retryable=False, event_time_ms=t))  # fmt: skip
                running += [x for x in out if x.outcome is core.Outcome.ASSIGNED]
        for k, tenant in enumerate(["acme", "acme", "acme", "globex"]):
            ev = load_event(rng, "p", f"L{step}-{k}", tenant=tenant, deadline=False)
            ev = ev.model_copy(update={"event_time_ms": t + k,
                                       "load": ev.load.model_copy(update={  # type: ignore[union-attr]
                                           "created_at_ms": t + k,
                                           "deadline_ms": t + k + 2_500 if deadlines else None,
                                           "required_capabilities": []})})  # fmt: skip
            running += [x for x in add(ev) if x.outcome is core.Outcome.ASSIGNED]
    return records


def test_whatif_with_the_recorded_policy_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = policy_update(1)
    records = recorded_run(policy)
    monkeypatch.setattr("dispatcher.whatif.PROGRESS_EVERY", 10)
    reported: list[int] = []
    report = compare([(0, records)], policy_from(policy), progress=reported.append)
    assert reported == list(range(10, len(records) + 1, 10))  # progress, every 10 inputs
    assert report.changed == 0
    assert report.decisions_changed == 0
    assert report.recorded == report.alternative
    assert report.recorded["assigned"] > 40
    assert report.answers_dropped == 0


STRAY = CODEC.encode(dead_letter(CodecError(m.DeadLetterReason.INVALID, "x", b"", topic="t"),
                                  failed_at_ms=1))  # fmt: skip


# A record of another kind, and one with no value (a tombstone): each a TypeError before,
# where the worker dead-letters it and audit skips it.
@pytest.mark.parametrize("stray", [STRAY, None], ids=["no input", "no value"])
def test_whatif_skips_a_record_in_the_input_sequence_that_is_no_input(stray: bytes | None) -> None:
    policy = policy_update(1)
    records: list[tuple[int, bytes | None]] = [*recorded_run(policy, steps=3)]
    records.insert(5, (5, stray))
    report = compare([(0, records)], policy_from(policy))
    assert report.changed == 0
    assert report.recorded["assigned"] > 0


def taken_version(version: int, at_ms: int) -> tuple[m.PolicyUpdate, m.PolicyUpdate]:
    """Policy ``version`` for ``at_ms``, and a policy of the same version, with another
    document, in effect at once."""
    first = policy_update(version, effective_from_ms=at_ms)
    doc = first.document.model_copy(update={"weights": first.document.weights | {"locality": 9.0}})
    return first, first.model_copy(
        update={"document": doc, "content_hash": content_hash(doc), "effective_from_ms": 0}
    )


def test_a_policy_of_a_version_that_came_with_another_document_is_refused() -> None:
    """Before, it applied in place of the first if that was scheduled for later (and the
    first then never did), or was ignored: either way with nothing said."""
    fold = PartitionFold("input-sequence", 0, CODEC)
    first, other = taken_version(2, 10**12)
    fold.apply(CODEC.encode(first), 0)
    fold.apply(CODEC.encode(first.model_copy(update={"effective_from_ms": 0})), 1)  # (its time)
    with pytest.raises(CodecError, match="version 2 came before with another document") as bad:
        fold.apply(CODEC.encode(other), 2)
    assert bad.value.reason is m.DeadLetterReason.INVALID
    fold.apply(CODEC.encode(m.Tick(pool="p", event_time_ms=5)), 3)
    assert fold.pool("p").policy.weights["locality"] == first.document.weights["locality"] != 9


def test_whatif_skips_a_policy_of_a_version_taken_as_the_worker_does() -> None:
    policy = policy_update(1)
    records: list[tuple[int, bytes | None]] = [*recorded_run(policy, steps=10)]
    records[5:5] = [(5, CODEC.encode(p)) for p in taken_version(2, 10**12)]
    records = [(i, value) for i, (_, value) in enumerate(records)]
    report = compare([(0, records)], policy_from(policy))
    assert report.recorded["assigned"] > 10
    assert report.changed == 0  # (applied, the other made every recorded decision anew)


def test_whatif_takes_a_repeated_answer_and_a_reused_key_as_the_recorded_run_does() -> None:
    """An answer sent twice (a producer's retry) after its load finished: the what-if run's
    first copy named its own holder, and the second, another key's content there, was
    refused (KEY_REUSED), so a what-if of the recorded document under a new version saw
    58 loads changed. And an arrival refused for its key counted as a load that came."""
    policy = policy_update(1)
    values: list[bytes] = []
    for _, value in recorded_run(policy, steps=30):
        values += [value] * (2 if isinstance(CODEC.decode(value), m.TaskResult) else 1)
    arrival = next(r for v in values if isinstance(r := CODEC.decode(v), m.LoadEvent))
    values.append(CODEC.encode(arrival.model_copy(update={"load_id": "L-new"})))  # its key
    arrivals = sum(isinstance(CODEC.decode(v), m.LoadEvent) for v in values) - 1
    report = compare([(0, list(enumerate(values)))], policy_from(policy_update(2)))
    assert (report.changed, report.decisions_changed) == (0, 0)
    assert report.recorded["loads"] == report.alternative["loads"] == arrivals


def test_whatif_with_more_weight_for_a_tenant_shifts_its_share_and_wait() -> None:
    # Recorded with equal weights: acme (3 loads a step) and globex (1) each get about one of
    # the two slots a step. Weight 4 for acme should move acme's share towards 4/5.
    policy = policy_update(1)
    records = recorded_run(policy)
    favour = policy_update(2, tenant_weights={"acme": 4.0})
    report = compare([(0, records)], policy_from(favour))
    before, after = report.recorded["tenants"], report.alternative["tenants"]
    assert report.changed > 0
    assert report.examples
    assert before["acme"]["share"] == pytest.approx(0.5, abs=0.05)
    assert after["acme"]["share"] == pytest.approx(0.8, abs=0.05)
    assert after["globex"]["wait_p99_ms"] > before["globex"]["wait_p99_ms"]


def test_whatif_says_why_a_load_it_never_assigned_waited() -> None:
    policy = policy_update(1)
    records = recorded_run(policy, steps=5)
    deny = policy_update(2)
    deny = deny.model_copy(update={"document": deny.document.model_copy(
        update={"tenant_deny": {"globex": ["a0", "a1"]}})})  # fmt: skip
    report = compare([(0, records)], policy_from(deny), examples=100)
    denied = [ex for ex in report.examples if ex["tenant"] == "globex"]
    assert denied
    for ex in denied:  # (before: "why" was None where the what-if run assigned nothing)
        assert ex["alternative"]["agent"] is None
        assert ex["why"] == {"outcome": "QUEUED", "reason": "NO_CANDIDATE"}
    assigned = [ex for ex in report.examples if ex["alternative"]["agent"] is not None]
    assert all("score_parts" in ex["why"] for ex in assigned)


def test_the_policy_file_and_the_core_policy_agree() -> None:
    p = policy_from(load_policy_file(EXAMPLE))
    assert p.tenant_weight("acme") == 2.0
    assert (p.ack_timeout_ms, p.heartbeat_timeout_ms, p.version) == (30_000, 60_000, 2)


class _Log:
    """A small input sequence, built record by record, folded as the worker would."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes]] = []
        self.fold = PartitionFold("input-sequence", 0, CODEC)
        self.add(policy_update(1).model_copy(update={"effective_from_ms": 0}))

    def add(self, record: m.Record) -> list[core.Decision]:
        self.records.append((len(self.records), CODEC.encode(record)))
        return self.fold.apply(*self.records[-1][::-1])

    def agent(self, pool: str, agent_id: str) -> None:
        profile = agent_profile(np.random.default_rng(1), capacity=1)
        for seq, kind in ((1, m.AgentEventKind.REGISTERED), (2, m.AgentEventKind.AVAILABLE)):
            self.add(m.AgentEvent(event_id=f"{agent_id}:{seq}", kind=kind, agent_id=agent_id,
                                  pool=pool, seq=seq, event_time_ms=1_000,
                                  profile=profile if seq == 1 else None))  # fmt: skip

    def load(self, pool: str, load_id: str, t: int) -> core.Decision:
        ev = load_event(np.random.default_rng(2), pool, load_id, tenant="acme", deadline=False)
        spec = ev.load.model_copy(update={"required_capabilities": []})  # type: ignore[union-attr]
        (d,) = self.add(ev.model_copy(update={"event_time_ms": t, "load": spec}))
        assert d.outcome is core.Outcome.ASSIGNED
        return d

    def answer(self, d: core.Decision, outcome: m.TaskOutcome, t: int) -> list[core.Decision]:
        return self.add(m.TaskResult(event_id=f"{d.decision_id}:{outcome.value}",
                                     decision_id=d.decision_id, load_id=d.load_id,
                                     agent_id=d.agent_id or "", pool=d.pool, outcome=outcome,
                                     retryable=False, event_time_ms=t))  # fmt: skip


def test_whatif_tells_apart_loads_of_two_pools_with_the_same_id() -> None:
    log = _Log()
    assigned = []
    for pool in ("pa", "pb"):
        log.agent(pool, f"agent-{pool}")
        assigned.append(log.load(pool, "L1", 2_000))
    for d in assigned:
        for outcome in (m.TaskOutcome.ACCEPTED, m.TaskOutcome.SUCCESS):
            log.answer(d, outcome, 3_000)
    report = compare([(0, log.records)], policy_from(policy_update(1)))
    assert (report.changed, report.decisions_changed) == (0, 0)
    assert report.alternative["loads"] == 2
    assert report.alternative["finals"] == {"COMPLETED": 2}


def test_whatif_gives_a_late_answer_about_an_earlier_attempt_to_nobody() -> None:
    log = _Log()
    log.agent("p", "a1")
    first = log.load("p", "L1", 2_000)
    log.answer(first, m.TaskOutcome.DECLINED, 2_100)
    (second,) = [d for d in log.add(m.Tick(pool="p", event_time_ms=5_000))
                 if d.outcome is core.Outcome.ASSIGNED]  # fmt: skip
    assert second.attempt == 2
    (late,) = log.answer(first, m.TaskOutcome.SUCCESS, 5_100)  # about attempt 1
    assert late.reason == "ZOMBIE_RESULT"
    report = compare([(0, log.records)], policy_from(policy_update(1)))
    assert (report.changed, report.decisions_changed) == (0, 0)
    assert report.alternative["finals"] == {}  # attempt 2 still runs, as recorded


def test_publish_refuses_a_version_below_any_published_whatever_its_policy_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers order policies by version alone: "dispatch" v3 after "experiment" v10 would
    # never apply, so publish must refuse it.
    doc = yaml.safe_load((PROJECT_ROOT / "ops/policies/example.yaml").read_text())
    updates = []
    for policy_id, version in (("experiment", 10), ("dispatch", 3)):
        path = tmp_path / f"{policy_id}.yaml"
        path.write_text(yaml.safe_dump(doc | {"policy_id": policy_id, "version": version}))
        updates.append(load_policy_file(path, effective_from_ms=0))
    topic = [CODEC.encode(updates[0])]

    async def partitions(*_: object) -> list[str]:
        return ["policy-update-0"]

    async def read_partition(*_: object) -> list[SimpleNamespace]:
        return [SimpleNamespace(value=v) for v in topic]

    monkeypatch.setattr(policytool, "partitions", partitions)
    monkeypatch.setattr(policytool, "read_partition", read_partition)
    with pytest.raises(ConfigError, match="version 10 is already published"):
        asyncio.run(policytool.publish("unused:9092", TopicNames(), updates[1]))


def test_whatif_sla_counts_loads_whose_deadline_passed_unfinished() -> None:
    """Before, only loads that ended counted: one never served met every deadline."""
    state = core.PoolState("p")
    out = Outcomes()

    def apply(event: core.Event) -> list[core.Decision]:
        decisions = state.apply(event)
        out.observe(event, decisions)
        return decisions

    apply(builders.register("a1"))
    apply(builders.available("a1"))
    rust = frozenset({"rust"})  # no agent has it: never assigned
    (met,) = apply(builders.arrive("met", 1, deadline_ms=100))
    apply(builders.arrive("late", 2, deadline_ms=100, required=rust))
    apply(builders.arrive("late2", 2, deadline_ms=200, required=rust))
    apply(builders.arrive("later", 3, deadline_ms=1_000, required=rust))  # not due yet
    apply(builders.arrive("gone", 4, deadline_ms=100, required=rust))
    apply(core.LoadCancelled("c", 5, "gone"))  # left out
    apply(builders.report(met.decision_id, "met", "a1", core.TaskOutcome.SUCCESS, time_ms=50))
    apply(core.Tick(500))
    summary = out.summary()
    assert summary["sla_pct"] == pytest.approx(100 / 3)  # met; late and late2 missed
    assert summary["tenants"]["acme"]["never_assigned"] == 4


def _two_agents(add: Callable[[m.Record], object], rng: np.random.Generator) -> None:
    """Agents a0 and a1 of pool p (one slot each, region eu), available from 1,000 ms."""
    for i in range(2):
        profile = agent_profile(rng, capacity=1).model_copy(update={"regions": ["eu"]})
        for seq, kind in ((1, m.AgentEventKind.REGISTERED), (2, m.AgentEventKind.AVAILABLE)):
            add(m.AgentEvent(event_id=f"a{i}:{seq}", kind=kind, agent_id=f"a{i}", pool="p",
                             seq=seq, event_time_ms=1_000,
                             profile=profile if seq == 1 else None))  # fmt: skip


def _plain_load(rng: np.random.Generator, step: int, t: int) -> m.LoadEvent:
    """Load L<step> of tenant acme in pool p at ``t``: any agent takes it, no deadline."""
    ev = load_event(rng, "p", f"L{step}", tenant="acme", deadline=False)
    load = ev.load.model_copy(update={  # type: ignore[union-attr]
        "created_at_ms": t, "deadline_ms": None, "required_capabilities": [],
        "sensitivity": m.Sensitivity.PUBLIC, "region": "eu", "risk_score": 0.0})  # fmt: skip
    return ev.model_copy(update={"event_time_ms": t, "load": load})


def test_whatif_gives_an_answer_to_an_assignment_its_run_makes_later() -> None:
    """Recorded in greedy mode, agents answering within 100 ms; replayed in batched mode,
    each load is assigned at the next tick a worker's timer gives (a multiple of 200 ms,
    150 ms after the load came), after the recorded answers: they wait for it and come as
    long after it (before, they were dropped: no load completed)."""
    rng = np.random.default_rng(5)
    fold = PartitionFold("input-sequence", 0, CODEC)
    records: list[tuple[int, bytes]] = []

    def add(record: m.Record) -> list[core.Decision]:
        records.append((len(records), CODEC.encode(record)))
        return fold.apply(records[-1][1], records[-1][0])

    hour = 3_600_000  # (the agents send no heartbeats)
    add(policy_update(1, heartbeat_ms=hour, effective_from_ms=0))
    _two_agents(add, rng)
    for step in range(10):
        t = 2_050 + step * 1_000
        (d,) = [x for x in add(_plain_load(rng, step, t)) if x.outcome is core.Outcome.ASSIGNED]
        for outcome, after in ((m.TaskOutcome.ACCEPTED, 10), (m.TaskOutcome.SUCCESS, 100)):
            add(m.TaskResult(event_id=f"{d.decision_id}:{outcome.value}",
                             decision_id=d.decision_id, load_id=d.load_id,
                             agent_id=d.agent_id or "", pool="p", outcome=outcome,
                             retryable=False, event_time_ms=t + after))  # fmt: skip
        add(m.Tick(pool="p", event_time_ms=t + 500))
    add(m.Tick(pool="p", event_time_ms=20_000))
    batched = policy_update(2, heartbeat_ms=hour)
    batched = batched.model_copy(update={"document": batched.document.model_copy(
        update={"matching_mode": m.MatchingMode.BATCHED})})  # fmt: skip
    report = compare([(0, records)], policy_from(batched))
    assert report.recorded["finals"] == {"COMPLETED": 10}
    assert report.alternative["finals"] == {"COMPLETED": 10}
    assert report.answers_dropped == 0
    waits = report.alternative["tenants"]["acme"]
    assert waits["wait_p50_ms"] == 150  # assigned at the timer's tick after it came


def _recorded_as_a_worker_ticks(ack_ms: int) -> list[tuple[int, bytes]]:
    """A greedy pool of 2 agents heartbeating each second, a load every second answered in
    200 ms, ticked as a worker's timer ticks: every 200 ms, when the pool wants one."""
    rng = np.random.default_rng(5)
    fold = PartitionFold("input-sequence", 0, CODEC)
    records: list[tuple[int, bytes]] = []
    order = itertools.count()
    due: list[tuple[int, int, m.Record | None]] = []  # (time, order, record; None: timer)

    def add(record: m.Record) -> list[core.Decision]:
        records.append((len(records), CODEC.encode(record)))
        return fold.apply(records[-1][1], records[-1][0])

    def at(t: int, record: m.Record | None) -> None:
        heapq.heappush(due, (t, next(order), record))

    add(policy_update(1, heartbeat_ms=5_000, ack_ms=ack_ms, effective_from_ms=0))
    _two_agents(add, rng)
    for t in range(1_000, 23_000, 200):
        at(t, None)
        if t % 1_000 == 400:  # heartbeats, one a second
            for i in range(2):
                at(t, m.AgentEvent(event_id=f"a{i}:{t}", kind=m.AgentEventKind.HEARTBEAT,
                                   agent_id=f"a{i}", pool="p", seq=t, event_time_ms=t))  # fmt: skip
    for step in range(20):
        t = 2_007 + step * 1_000
        at(t, _plain_load(rng, step, t))
    while due:
        t, _, record = heapq.heappop(due)
        if record is None:  # the timer
            if fold.pools["p"].wants_tick(t):
                add(m.Tick(pool="p", event_time_ms=t))
            continue
        for d in add(record):
            if d.outcome is core.Outcome.ASSIGNED:
                for outcome, after in ((m.TaskOutcome.ACCEPTED, 10), (m.TaskOutcome.SUCCESS, 200)):
                    at(t + after, m.TaskResult(
                        event_id=f"{d.decision_id}:{outcome.value}", decision_id=d.decision_id,
                        load_id=d.load_id, agent_id=d.agent_id or "", pool="p",
                        outcome=outcome, retryable=False, event_time_ms=t + after))  # fmt: skip
    return records


@pytest.mark.parametrize("ack_ms", [2_000, 60_000])
def test_whatif_ticks_the_alternative_runs_pools_as_a_worker_would(ack_ms: int) -> None:
    """A worker ticks only the pools a tick can change, so the recorded ticks are those the
    recorded greedy pool wanted (a few for the 2 s ack timeouts, none with 60 s). Replayed in
    batched mode, the loads are batched at the timer's next tick all the same (before, the
    what-if run got the recorded ticks only: waits of 2 s, or no load assigned at all)."""
    records = _recorded_as_a_worker_ticks(ack_ms)
    ticks = sum(CODEC.decode(v).__class__ is m.Tick for _, v in records)
    assert ticks < 25  # (a tick every 200 ms would be 110)
    batched = policy_update(2, heartbeat_ms=5_000, ack_ms=ack_ms)
    batched = batched.model_copy(update={"document": batched.document.model_copy(
        update={"matching_mode": m.MatchingMode.BATCHED})})  # fmt: skip
    report = compare([(0, records)], policy_from(batched))
    assert report.recorded["finals"] == report.alternative["finals"] == {"COMPLETED": 20}
    assert report.alternative["tenants"]["acme"]["wait_p99_ms"] == 193  # (the tick at 2,200)
    assert report.answers_dropped == 0
