"""Records in, core events; core decisions out, records that encode."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

import pytest
from pydantic import ValidationError

from dispatcher import core
from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import (
    encode_decision,
    policy_from,
    policy_problems,
    to_event,
    to_records,
)
from dispatcher.sim import SCENARIOS, SIM_POLICY
from dispatcher.sim.engine import Simulation
from tests.samples import SAMPLES

CODEC = Codec()


@pytest.mark.parametrize(
    ("edge", "inner"),
    [
        (m.Priority, core.Priority),
        (m.Sensitivity, core.Sensitivity),
        (m.TaskOutcome, core.TaskOutcome),
        (m.DecisionOutcome, core.Outcome),
    ],
)
def test_edge_and_core_enums_name_the_same_things(edge: type[Enum], inner: type[Enum]) -> None:
    assert [e.name for e in edge] == [i.name for i in inner]


def test_agent_status_kinds_map_onto_agent_events() -> None:
    edge = {k.name for k in m.AgentEventKind} - {"REGISTERED", "PROFILE_UPDATED"}
    assert edge == {k.name for k in core.AgentStatusKind}


def test_each_input_record_becomes_its_event() -> None:
    reg = to_event(SAMPLES["AgentEvent"][0], ("agent-availability", 1, 5))
    assert isinstance(reg, core.AgentRegistered)
    assert reg.profile.capabilities == {"python", "sql", "github", "llm-large"}
    assert reg.profile.clearance is core.Sensitivity.CONFIDENTIAL
    assert reg.source == ("agent-availability", 1, 5)
    beat = to_event(SAMPLES["AgentEvent"][1])
    assert isinstance(beat, core.AgentStatusChanged)
    assert beat.kind is core.AgentStatusKind.HEARTBEAT
    arrival = to_event(SAMPLES["LoadEvent"][0])
    assert isinstance(arrival, core.LoadArrived)
    assert (arrival.key, arrival.load.priority, arrival.load.deadline_ms) == (
        "k1",
        core.Priority.HIGH,
        1_700_000_060_000,
    )
    assert isinstance(to_event(SAMPLES["LoadEvent"][1]), core.LoadCancelled)
    result = to_event(SAMPLES["TaskResult"][0])
    assert isinstance(result, core.TaskReported)
    assert (result.outcome, result.retryable) == (core.TaskOutcome.FAILED, True)
    assert isinstance(to_event(SAMPLES["Tick"][0]), core.Tick)
    with pytest.raises(TypeError, match="Assignment is not an input"):
        to_event(SAMPLES["Assignment"][0])


def test_an_agent_is_never_slower_than_the_slowest_speed() -> None:
    """(5e-324 made its time for a load overflow to infinity, with a numpy warning; taken
    as the slowest, not refused, as records taken before are replayed.)"""
    sample = SAMPLES["AgentEvent"][0]
    assert isinstance(sample, m.AgentEvent)
    assert sample.profile is not None
    for speed, expected in ((5e-324, m.MIN_SPEED), (0.5, 0.5)):
        record = sample.model_copy(
            update={"profile": sample.profile.model_copy(update={"speed": speed})}
        )
        registered = to_event(CODEC.decode(CODEC.encode(record)))
        assert isinstance(registered, core.AgentRegistered)
        assert registered.profile.speed == expected


def test_a_load_is_never_created_after_the_event_that_says_it_came() -> None:
    """(A creation time far ahead held a hard affinity's wait, counted from it, until then.)"""
    sample = SAMPLES["LoadEvent"][0]
    assert isinstance(sample, m.LoadEvent)
    assert sample.load is not None
    for created, expected in ((sample.event_time_ms - 5, sample.event_time_ms - 5),
                              (sample.event_time_ms + 10**9, sample.event_time_ms)):  # fmt: skip
        record = sample.model_copy(update={"load": sample.load.model_copy(update={
            "created_at_ms": created, "deadline_ms": None})})  # fmt: skip
        arrival = to_event(record)
        assert isinstance(arrival, core.LoadArrived)
        assert arrival.load.created_ms == expected


def test_a_policy_update_becomes_a_core_policy() -> None:
    update = SAMPLES["PolicyUpdate"][0]
    assert isinstance(update, m.PolicyUpdate)
    policy = policy_from(update)
    assert (policy.version, policy.mode, policy.batch_window_ms) == (2, "batched", 50)
    assert policy.weight("embedding") == 1.0
    assert policy.tenant_weight("acme") == 2.0
    assert policy.tenant_deny["globex"] == frozenset({"agent-7"})
    assert policy.tenant_quotas == {"acme": 100}
    assert (policy.ack_timeout_ms, policy.heartbeat_timeout_ms) == (5000, 15000)
    assert (policy.max_attempts, policy.max_pending, policy.low_watermark) == (3, 10_000, 6_000)
    assert policy.fair_share_reserve == 0.25
    assert (policy.tenant_first, policy.deadline_margin, policy.drain_limit) == (False, 0.5, 64)
    assert (policy.batch_max_loads, policy.batch_candidates) == (128, 8)


def test_tenant_deny_names_agents_by_their_ids_of_any_allowed_length() -> None:
    # Agent ids may be 256 characters, tenant names 128: an agent with a long id can be denied.
    update = SAMPLES["PolicyUpdate"][0]
    assert isinstance(update, m.PolicyUpdate)
    long_id = "agent-" + "x" * 250
    doc = update.document.model_dump() | {"tenant_deny": {"globex": [long_id]}}
    update = m.PolicyUpdate.model_validate(update.model_dump() | {"document": doc})
    assert policy_from(update).tenant_deny["globex"] == frozenset({long_id})
    assert CODEC.decode(CODEC.encode(update), "PolicyUpdate") == update
    for deny in ({"globex": [long_id + "x"]}, {"globex": ["a"] * (m.MAX_LIST_ITEMS + 1)}):
        with pytest.raises(ValidationError, match=r"tenant_deny\.globex"):
            m.PolicyDocument.model_validate(doc | {"tenant_deny": deny})


def test_records_through_the_core_and_back_to_records() -> None:
    state = core.PoolState("pool-a")
    inputs = [
        SAMPLES["AgentEvent"][0],
        m.AgentEvent(event_id="e9", kind=m.AgentEventKind.AVAILABLE, agent_id="agent-1",
                     pool="pool-a", seq=2, event_time_ms=1_700_000_000_000),
        SAMPLES["LoadEvent"][0],
    ]  # fmt: skip
    decisions = []
    for offset, record in enumerate(inputs):
        wire = CODEC.decode(CODEC.encode(record))
        decisions += state.apply(to_event(wire, ("in", 0, offset)))
    (d,) = decisions
    assert d.outcome is core.Outcome.ASSIGNED
    record, assignment = to_records(d)
    assert assignment is not None
    assert CODEC.decode(CODEC.encode(record), "DecisionRecord") == record
    assert CODEC.decode(CODEC.encode(assignment), "Assignment") == assignment
    assert (record.decision_id, record.policy_version) == (assignment.decision_id, 0)
    assert record.input == m.InputPosition(topic="in", partition=0, offset=2)
    assert record.excluded == dict(d.excluded)
    assert assignment.priority is m.Priority.HIGH
    queued, none = to_records(core.PoolState("p").apply(to_event(SAMPLES["LoadEvent"][0]))[0])
    assert (queued.outcome, none) == (m.DecisionOutcome.QUEUED, None)
    assert queued.input.partition == -1


class _Recording(Simulation):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[core.Decision] = []

    def _observe(self, d: core.Decision, t: int) -> None:
        self.seen.append(dataclasses.replace(d, source=("input-sequence", 2, len(self.seen))))
        super()._observe(d, t)


@pytest.mark.parametrize("scenario", ["deadline-crunch", "tenant-flood", "agent-churn"])
def test_decisions_encode_to_the_bytes_of_their_validated_records(scenario: str) -> None:
    sim = _Recording(SCENARIOS[scenario].scaled(agents=40, duration_s=4), 1, SIM_POLICY)
    sim.run(None)
    outcomes = {d.outcome for d in sim.seen}
    assert {core.Outcome.ASSIGNED, core.Outcome.QUEUED, core.Outcome.COMPLETED} <= outcomes
    some = next(d for d in sim.seen if d.outcome is core.Outcome.ASSIGNED)
    unset = dataclasses.replace(
        some, agent_id=None, score=None, score_parts=(), runner_up=None, margin=None,
        ack_by_ms=None, deadline_ms=None, excluded=(),
    )  # fmt: skip
    others = [dataclasses.replace(x, outcome=o) for o in core.Outcome for x in (some, unset)]
    for d in [*sim.seen, *others]:
        record, assignment = to_records(d)
        want = (CODEC.encode(record), CODEC.encode(assignment) if assignment else None)
        assert encode_decision(CODEC, d) == want, d
        assert encode_decision(CODEC, d, assignment=False) == (want[0], None)


def test_a_policy_document_leaving_out_a_field_gets_the_cores_default() -> None:
    update = SAMPLES["PolicyUpdate"][0]
    assert isinstance(update, m.PolicyUpdate)
    added = ("fair_share_reserve", "tenant_first", "deadline_margin", "drain_limit",
             "batch_max_loads", "batch_candidates")  # fmt: skip
    doc = update.document.model_dump()
    for name in added:
        del doc[name]
    bare = update.model_copy(update={"document": m.PolicyDocument.model_validate(doc)})
    policy = policy_from(bare)
    assert [getattr(policy, n) for n in added] == [getattr(core.DEFAULT_POLICY, n) for n in added]


_YEAR_AND_A_DAY_MS = 367 * 86_400_000


@pytest.mark.parametrize(
    ("change", "problems"),
    [
        ({}, []),
        # hard_affinity is a switch of the document, never an unknown constraint of the core
        ({"constraints": {"hard_affinity": False, "region": False}}, []),
        ({"constraints": {"status": False}},
         ["constraints.status: cannot be disabled (agents would be double-booked, or work "
          "would go to agents that are not there)"]),
        ({"batch_window_ms": 0},
         ["batch_window_ms: 0 in batched mode (every tick a batch of one)"]),
        ({"timeouts_ms": {"heartbeat": 0}},
         ["timeouts_ms.heartbeat: 0 (every load would time out at once, or duplicates pass)"]),
        ({"retry": {"max_attempts": 3, "backoff_base_ms": 100,
                    "backoff_max_ms": _YEAR_AND_A_DAY_MS}},
         [f"retry.backoff_max_ms: {_YEAR_AND_A_DAY_MS} ms, more than a year"]),
        ({"weights": {"embedding": 0.0}, "constraints": {"gravity": True}},
         ["constraints.gravity: unknown (capability, capacity, clearance, hard_affinity, region, "
          "risk, status, tenant_deny, tried)",
          "weights: none is positive, so every agent scores 0 and ties decide"]),
    ],
)  # fmt: skip
def test_the_cores_policy_checks_name_the_documents_fields(
    change: dict[str, Any], problems: list[str]
) -> None:
    update = SAMPLES["PolicyUpdate"][0]
    assert isinstance(update, m.PolicyUpdate)
    doc = m.PolicyDocument.model_validate(update.document.model_dump() | change)
    assert policy_problems(update.model_copy(update={"document": doc})) == problems
