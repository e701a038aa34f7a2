"""Between the edge's records and the core's values: events in, decisions out.

The core knows nothing of Avro or pydantic; this module is where a validated
record becomes a core event, and a core decision becomes the DecisionRecord
(and, for an assignment, the Assignment) that go on the topics.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

from dispatcher import core
from dispatcher.codecs import models as m
from dispatcher.codecs.codec import Codec
from dispatcher.core.policy import policy_problems as checks

__all__ = [
    "TIMEOUTS",
    "encode_decision",
    "policy_from",
    "policy_problems",
    "to_event",
    "to_records",
]

TIMEOUTS = {  # PolicyDocument.timeouts_ms key -> core.Policy field
    "ack": "ack_timeout_ms",
    "heartbeat": "heartbeat_timeout_ms",
    "affinity_wait": "affinity_wait_ms",
    "expire_after_deadline": "expire_after_deadline_ms",
    "dedupe_window": "dedupe_window_ms",
    "forget_departed": "forget_departed_ms",
}


def policy_from(update: m.PolicyUpdate) -> core.Policy:
    """The core policy a PolicyUpdate describes (unknown timeout names are ignored)."""
    doc = update.document
    timeouts = {TIMEOUTS[k]: v for k, v in doc.timeouts_ms.items() if k in TIMEOUTS}
    return core.Policy(
        version=update.version,
        mode="batched" if doc.matching_mode is m.MatchingMode.BATCHED else "greedy",
        batch_window_ms=doc.batch_window_ms,
        weights=MappingProxyType(dict(doc.weights)),
        disabled_constraints=frozenset(c for c, on in doc.constraints.items() if not on),
        hard_affinity=doc.constraints.get("hard_affinity", False),
        tenant_weights=MappingProxyType(dict(doc.tenant_weights)),
        tenant_quotas=MappingProxyType(dict(doc.tenant_quotas)),
        tenant_deny=MappingProxyType({t: frozenset(a) for t, a in doc.tenant_deny.items()}),
        max_attempts=doc.retry.max_attempts,
        backoff_base_ms=doc.retry.backoff_base_ms,
        backoff_max_ms=doc.retry.backoff_max_ms,
        max_pending=doc.backpressure.max_pending,
        high_watermark=doc.backpressure.high_watermark,
        low_watermark=doc.backpressure.low_watermark,
        fair_share_reserve=doc.fair_share_reserve,
        tenant_first=doc.tenant_first,
        deadline_margin=doc.deadline_margin,
        drain_limit=doc.drain_limit,
        batch_max_loads=doc.batch_max_loads,
        batch_candidates=doc.batch_candidates,
        **timeouts,  # field names checked by TIMEOUTS
    )


_SWITCHES = frozenset(core.CONSTRAINTS) | {"hard_affinity"}
# Where a PolicyDocument holds each core.Policy field the core's checks name.
_DOC_NAMES = {
    "mode": "matching_mode",
    "disabled_constraints": "constraints",
    **{field: f"timeouts_ms.{key}" for key, field in TIMEOUTS.items()},
    **{f: f"retry.{f}" for f in ("max_attempts", "backoff_base_ms", "backoff_max_ms")},
    **{f: f"backpressure.{f}" for f in ("max_pending", "high_watermark", "low_watermark")},
}


def policy_problems(update: m.PolicyUpdate) -> list[str]:
    """Semantic problems: what the schema allows but no sane dispatcher should run (the
    workers refuse such a policy, and ``policy publish`` does not publish it): the names
    the document uses that the core has no meaning for, then ``core.policy_problems`` of
    the policy it describes."""
    doc = update.document
    out = [f"constraints.{c}: unknown ({', '.join(sorted(_SWITCHES))})"
           for c in sorted(doc.constraints) if c not in _SWITCHES]  # fmt: skip
    out += [f"timeouts_ms.{t}: unknown ({', '.join(sorted(TIMEOUTS))})"
            for t in sorted(doc.timeouts_ms) if t not in TIMEOUTS]  # fmt: skip
    policy = policy_from(update)
    # hard_affinity is a switch of the document, not a constraint (named above if unknown).
    known = policy.disabled_constraints & frozenset(core.CONSTRAINTS)
    return out + checks(replace(policy, disabled_constraints=known), _DOC_NAMES)


def to_event(  # noqa: PLR0911 - one return per kind of input
    record: m.Record, source: core.types.Source = ("", -1, -1)
) -> core.Event:
    """The core event a decoded input record stands for.

    Raises:
        TypeError: ``record`` is not an input record (a decision, assignment or dead letter).
    """
    match record:
        case m.AgentEvent(profile=p) if p is not None and record.kind in (
            m.AgentEventKind.REGISTERED, m.AgentEventKind.PROFILE_UPDATED
        ):  # fmt: skip
            caps = frozenset(p.tools) | frozenset(p.credentials) | frozenset(p.model_types)
            profile = core.AgentProfile(
                capabilities=caps,
                capacity=p.capacity, personality=tuple(p.personality), risk_budget=p.risk_budget,
                abstention_threshold=p.abstention_threshold,
                clearance=core.Sensitivity[p.clearance.value], regions=frozenset(p.regions),
                zone=p.zone, speed=max(p.speed, m.MIN_SPEED),
            )  # fmt: skip
            return core.AgentRegistered(record.event_id, record.agent_id, record.seq,
                                        record.event_time_ms, profile, source)  # fmt: skip
        case m.AgentEvent():
            kind = core.AgentStatusKind[record.kind.value]
            return core.AgentStatusChanged(record.event_id, record.agent_id, record.seq,
                                           record.event_time_ms, kind, source)  # fmt: skip
        case m.LoadEvent(load=spec) if spec is not None and record.kind is m.LoadEventKind.ARRIVAL:
            load = core.LoadSpec(
                load_id=record.load_id, tenant=record.tenant,
                priority=core.Priority[spec.priority.value],
                required=frozenset(spec.required_capabilities), intent=tuple(spec.intent),
                sensitivity=core.Sensitivity[spec.sensitivity.value], region=spec.region,
                # Never after the event that says it came (a creation time far ahead held a
                # hard affinity's wait, which counts from it, until then).
                created_ms=min(spec.created_at_ms, record.event_time_ms),
                deadline_ms=spec.deadline_ms,
                duration_ms=spec.estimated_duration_ms, risk=spec.risk_score,
                session_id=spec.session_id, zone=spec.zone,
            )  # fmt: skip
            return core.LoadArrived(record.idempotency_key, record.event_time_ms, load, source)
        case m.LoadEvent():
            return core.LoadCancelled(record.idempotency_key, record.event_time_ms,
                                      record.load_id, source)  # fmt: skip
        case m.TaskResult():
            return core.TaskReported(record.event_id, record.event_time_ms, record.decision_id,
                                     record.load_id, record.agent_id,
                                     core.TaskOutcome[record.outcome.value], record.retryable,
                                     source)  # fmt: skip
        case m.Tick():
            return core.Tick(record.event_time_ms, source)
        case m.PolicyUpdate():
            return core.PolicyChanged(record.effective_from_ms, policy_from(record), source)
    raise TypeError(f"{type(record).__name__} is not an input of the core")


def to_records(d: core.Decision) -> tuple[m.DecisionRecord, m.Assignment | None]:
    """The decision-log record of a decision, and the assignment it makes, if any."""
    record, assignment = _datums(d)
    out = m.Assignment.model_validate(assignment) if assignment is not None else None
    return m.DecisionRecord.model_validate(record), out


def encode_decision(
    codec: Codec, d: core.Decision, *, assignment: bool = True
) -> tuple[bytes, bytes | None]:
    """The encoded records of ``to_records(d)``, without building the models; with
    ``assignment=False`` the decision record alone (the audit compares only the log).

    The worker and audit encode every decision; the models' validation cost
    as much as the encoding itself, and checks nothing the core does not
    already keep (a test holds these bytes equal to the validated path's over
    simulated decisions of every outcome).
    """
    record, datum = _datums(d)
    out = codec.encode_datum("Assignment", datum) if assignment and datum is not None else None
    return codec.encode_datum("DecisionRecord", record), out


def _datums(d: core.Decision) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The Avro datums of the DecisionRecord of ``d``, and of its Assignment, if any."""
    topic, partition, offset = d.source
    record: dict[str, Any] = {
        "decision_id": d.decision_id, "pool": d.pool, "load_id": d.load_id, "attempt": d.attempt,
        "outcome": d.outcome.value, "reason_code": d.reason, "agent_id": d.agent_id,
        "policy_version": d.policy_version, "event_time_ms": d.time_ms,
        "input": {"topic": topic or "?", "partition": partition, "offset": offset},
        "score": d.score, "score_parts": dict(d.score_parts), "candidates": d.candidates,
        "excluded": dict(d.excluded), "runner_up": d.runner_up, "margin": d.margin,
    }  # fmt: skip
    if d.outcome is not core.Outcome.ASSIGNED or d.agent_id is None or d.ack_by_ms is None:
        return record, None
    assignment: dict[str, Any] = {
        "decision_id": d.decision_id, "load_id": d.load_id, "agent_id": d.agent_id,
        "pool": d.pool, "tenant": d.tenant, "attempt": d.attempt,
        "policy_version": d.policy_version, "priority": d.priority.name,
        "event_time_ms": d.time_ms, "deadline_ms": d.deadline_ms, "ack_by_ms": d.ack_by_ms,
    }  # fmt: skip
    return record, assignment
