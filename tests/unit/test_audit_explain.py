"""Which moment `dispatcher explain` folds up to before it asks the core why not an agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition

from dispatcher import audit, core
from dispatcher.audit import _moment, explain_load
from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import encode_decision, to_records
from dispatcher.demo import agent_profile, load_event
from dispatcher.topics import TopicNames
from dispatcher.worker.fold import PartitionFold

CODEC = Codec()


def test_a_load_cancelled_while_it_waited_is_explained_as_it_waited() -> None:
    rng = np.random.default_rng(1)
    inputs: list[m.Record] = [
        m.AgentEvent(event_id="r", kind=m.AgentEventKind.REGISTERED, agent_id="a", pool="p",
                     seq=1, event_time_ms=1, profile=agent_profile(rng)),
        m.AgentEvent(event_id="u", kind=m.AgentEventKind.AVAILABLE, agent_id="a", pool="p",
                     seq=2, event_time_ms=1),
    ]  # fmt: skip
    load = load_event(rng, "p", "L1")
    assert load.load is not None
    needs = load.load.model_copy(update={"required_capabilities": ["cobol"]})  # nobody has it
    inputs.append(load.model_copy(update={"load": needs, "event_time_ms": 2}))
    inputs.append(m.LoadEvent(idempotency_key="c", kind=m.LoadEventKind.CANCEL, load_id="L1",
                              pool="p", tenant=load.tenant, event_time_ms=3))  # fmt: skip
    fold = PartitionFold("input-sequence", 0, CODEC)
    decisions = [to_records(d)[0] for i, rec in enumerate(inputs)
                 for d in fold.apply(CODEC.encode(rec), i)]  # fmt: skip
    assert [d.outcome for d in decisions] == [m.DecisionOutcome.QUEUED,
                                              m.DecisionOutcome.CANCELLED]  # fmt: skip

    moment = _moment(decisions)
    assert moment.outcome is m.DecisionOutcome.QUEUED
    replay = PartitionFold("input-sequence", 0, CODEC)
    for i, rec in enumerate(inputs[: moment.input.offset + 1]):
        replay.apply(CODEC.encode(rec), i)
    (verdict,) = core.explain(replay.pools["p"], "L1", ("a",)).verdicts
    assert verdict.failed == ("capability",)  # not "load_finished": its needs are known then


def test_explain_asks_which_pool_when_two_have_the_load() -> None:
    def logged(pool: str, outcome: m.DecisionOutcome) -> m.DecisionRecord:
        return SimpleNamespace(pool=pool, load_id="L1", outcome=outcome)  # type: ignore[return-value]

    assert _moment([logged("a", m.DecisionOutcome.QUEUED)]).pool == "a"
    with pytest.raises(ValueError, match="pools a, b each have a load L1"):
        _moment([logged("a", m.DecisionOutcome.QUEUED), logged("b", m.DecisionOutcome.ASSIGNED)])


def _one_partition_broker(
    monkeypatch: pytest.MonkeyPatch, topics: TopicNames, logged: Sequence[bytes | None],
    inputs: Sequence[bytes | None],
) -> None:  # fmt: skip
    """Audit reads ``logged`` as the decision log and ``inputs`` as the input sequence, one
    partition each, from no broker."""

    async def partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, 0)]

    async def read_chunks(bootstrap: str, tp: TopicPartition) -> AsyncIterator[list[Any]]:
        values = logged if tp.topic == topics.decision_log else inputs
        yield [SimpleNamespace(value=v, offset=i) for i, v in enumerate(values)]

    monkeypatch.setattr(audit, "partitions", partitions)
    monkeypatch.setattr(audit, "read_chunks", read_chunks)


def test_explain_passes_over_records_with_no_value_in_either_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, a tombstone crashed it: looking into the log's None, or decoding the inputs'.
    rng = np.random.default_rng(1)
    inputs: list[bytes | None] = [CODEC.encode(r) for r in (
        m.AgentEvent(event_id="r", kind=m.AgentEventKind.REGISTERED, agent_id="a", pool="p",
                     seq=1, event_time_ms=1, profile=agent_profile(rng)),
        m.AgentEvent(event_id="u", kind=m.AgentEventKind.AVAILABLE, agent_id="a", pool="p",
                     seq=2, event_time_ms=1),
    )]  # fmt: skip
    inputs.insert(1, None)
    inputs.append(CODEC.encode(load_event(rng, "p", "L1").model_copy(update={"event_time_ms": 2})))
    fold = PartitionFold("input-sequence", 0, CODEC)
    decided = [d for i, v in enumerate(inputs) if v is not None for d in fold.apply(v, i)]
    logged = [None, *(encode_decision(CODEC, d, assignment=False)[0] for d in decided)]
    topics = TopicNames()
    _one_partition_broker(monkeypatch, topics, logged, inputs)
    found = asyncio.run(explain_load("b:1", topics, "L1", ("a",)))
    assert [d["outcome"] for d in found["decisions"]] == [d.outcome.value for d in decided]
    assert [v["agent_id"] for v in found["verdicts"]] == ["a"]


def test_explain_judges_the_agents_as_they_stood_when_the_decision_was_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One batch assigns L1 and L2, one agent each: when L1's pair was made, the other
    # agent was still free, and the decision's runner-up. (Judged after the whole input,
    # it "failed capacity", and the gap was not the logged margin.)
    rng = np.random.default_rng(1)
    inputs: list[bytes | None] = []
    for agent in ("a", "b"):
        profile = agent_profile(rng, capacity=1).model_copy(update={"tools": [], "regions": ["eu"]})
        inputs += [CODEC.encode(m.AgentEvent(
            event_id=f"{agent}{kind}", kind=kind, agent_id=agent, pool="p", seq=seq,
            event_time_ms=1, profile=profile if kind is m.AgentEventKind.REGISTERED else None))
            for seq, kind in enumerate((m.AgentEventKind.REGISTERED,
                                        m.AgentEventKind.AVAILABLE), 1)]  # fmt: skip
    for load_id in ("L1", "L2"):
        event = load_event(rng, "p", load_id)
        assert event.load is not None
        spec = event.load.model_copy(update={"required_capabilities": [], "deadline_ms": None,
                                             "sensitivity": m.Sensitivity.PUBLIC,
                                             "priority": m.Priority.NORMAL})  # fmt: skip
        inputs.append(CODEC.encode(event.model_copy(update={"load": spec, "event_time_ms": 2,
                                                            "tenant": "acme"})))  # fmt: skip
    inputs.append(CODEC.encode(m.Tick(pool="p", event_time_ms=500)))
    policy = core.Policy(mode="batched")
    fold = PartitionFold("input-sequence", 0, CODEC, policy)
    decided = [d for i, v in enumerate(inputs) if v is not None for d in fold.apply(v, i)]
    logged = [encode_decision(CODEC, d, assignment=False)[0] for d in decided]
    (l1,) = [d for d in decided if d.load_id == "L1" and d.outcome is core.Outcome.ASSIGNED]
    other = "b" if l1.agent_id == "a" else "a"
    assert l1.runner_up == other
    topics = TopicNames()
    _one_partition_broker(monkeypatch, topics, logged, inputs)
    found = asyncio.run(explain_load("b:1", topics, "L1", (other,), policy=policy))
    (verdict,) = found["verdicts"]
    assert verdict["failed"] == []
    assert verdict["gap"] == pytest.approx(l1.margin)
