"""Pydantic models of the records on our topics: where untrusted data is validated.

Each model mirrors one Avro record of schemas/ field by field (a test holds
them equal). Beyond what Avro can say they check meaning: lengths are capped,
floats are finite, counts are not negative, a deadline is not before its
load was created, and the payload that a kind of event needs is there.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

__all__ = [
    "INT_MAX",
    "LONG_MAX",
    "MAX_EMBEDDING_DIM",
    "MAX_EPOCH_MS",
    "MAX_LIST_ITEMS",
    "MAX_RISK",
    "MAX_TOPIC_CHARS",
    "MIN_SPEED",
    "AgentEvent",
    "AgentEventKind",
    "AgentProfile",
    "Assignment",
    "Backpressure",
    "DeadLetter",
    "DeadLetterReason",
    "DecisionOutcome",
    "DecisionRecord",
    "InputPosition",
    "LoadEvent",
    "LoadEventKind",
    "LoadSource",
    "LoadSpec",
    "MatchingMode",
    "PolicyDocument",
    "PolicyUpdate",
    "Priority",
    "Record",
    "RetryPolicy",
    "Sensitivity",
    "TaskOutcome",
    "TaskResult",
    "Tick",
]

# The widest personality or intent. A pool's rows are as wide as its widest agent's: at 1k
# agents of 8 floats, one agent of 4,096 made each arrival take 41 ms instead of 0.3 (1,024:
# 16 ms; 256: 4.6 ms, since wide columns no longer fit the matching's cache).
MAX_EMBEDDING_DIM = 1024
MAX_LIST_ITEMS = 1024
MAX_MAP_ITEMS = 1024
MAX_TOPIC_CHARS = 249  # Kafka's limit
MAX_EPOCH_MS = 2**53  # exact in a double, so in JSON and JavaScript too
# Risk scores and budgets: an agent's risk in use sums the scores of its loads (up to its
# capacity), and a sum that rounded to infinity took the agent out of use for good.
MAX_RISK = 1e9
# The slowest an agent is taken to be: a speed near 0 made its time for a load overflow to
# infinity, with a warning. (Taken so, not refused: records the worker took before are
# replayed from the input sequence, which a refusal now would make decide otherwise.)
MIN_SPEED = 1e-3
# The ranges of Avro's int and long: every integer field is bounded by its schema type, or
# fastavro writes an "int" that Java readers refuse, or fails a "long" with OverflowError.
INT_MAX = 2**31 - 1
LONG_MAX = 2**63 - 1

# No control characters in ids and names: the core joins them with NUL into decision ids
# (pool "a" + load "b\0c" and pool "a\0b" + load "c" would share one), and they show in logs.
# Nor the invisible ones that make two ids look alike or a log line read otherwise: C1
# controls, zero-width marks, bidi embeddings, overrides and isolates, line and paragraph
# separators, and the BOM. (Both pydantic's regex engine and Python's read these escapes.)
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]*$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_PRINTABLE)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_PRINTABLE)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
Topic = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOPIC_CHARS)]
EpochMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)]
DurationMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)]
Count = Annotated[int, Field(ge=0, le=INT_MAX)]
Names = Annotated[list[Name], Field(max_length=MAX_LIST_ITEMS)]
Ids = Annotated[list[Id], Field(max_length=MAX_LIST_ITEMS)]
# A position in a Kafka topic; -1: none (an input made offline, or one Kafka did not tell).
Partition = Annotated[int, Field(ge=-1, le=INT_MAX)]
Offset = Annotated[int, Field(ge=-1, le=LONG_MAX)]
Attempt = Annotated[int, Field(ge=1, le=INT_MAX)]


def _float32(values: list[float]) -> list[float]:
    # Avro "float" is 32-bit: round here, so a record equals itself after a round trip
    # and replay sees exactly the values the live run saw.
    n = len(values)
    try:
        return list(struct.unpack(f"<{n}f", struct.pack(f"<{n}f", *values)))
    except OverflowError:
        raise ValueError("embedding value out of 32-bit float range") from None


Embedding = Annotated[list[float], Field(max_length=MAX_EMBEDDING_DIM), AfterValidator(_float32)]
Version = Annotated[int, Field(ge=1, le=INT_MAX)]
# A version decisions were made under: 0 is the built-in default policy.
UsedVersion = Annotated[int, Field(ge=0, le=INT_MAX)]


class Record(BaseModel):
    """Base of every edge model: immutable, no unknown fields, no NaN or infinity."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        # In JSON (the codec CLI, logs) bytes travel as base64, both ways.
        ser_json_bytes="base64",
        val_json_bytes="base64",
    )


class Sensitivity(StrEnum):
    PUBLIC = "PUBLIC"
    INTERNAL = "INTERNAL"
    CONFIDENTIAL = "CONFIDENTIAL"
    RESTRICTED = "RESTRICTED"


class Priority(StrEnum):
    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    NORMAL = "NORMAL"
    LOW = "LOW"


# -- agent-availability ------------------------------------------------------------


class AgentEventKind(StrEnum):
    REGISTERED = "REGISTERED"
    PROFILE_UPDATED = "PROFILE_UPDATED"
    AVAILABLE = "AVAILABLE"
    HEARTBEAT = "HEARTBEAT"
    DRAINING = "DRAINING"
    OFFLINE = "OFFLINE"


class AgentProfile(Record):
    tools: Names
    credentials: Names
    model_types: Names
    capacity: Annotated[int, Field(ge=0, le=100_000)]
    cpu_millicores: Count
    memory_mb: Count
    personality: Embedding
    risk_budget: Annotated[float, Field(ge=0, le=MAX_RISK)]
    abstention_threshold: Annotated[float, Field(ge=0, le=1)]
    clearance: Sensitivity
    regions: Names
    zone: Name | None = None
    speed: Annotated[float, Field(gt=0, le=1000)] = 1.0  # (taken as MIN_SPEED at least)


class AgentEvent(Record):
    event_id: Id
    kind: AgentEventKind
    agent_id: Id
    pool: Name
    seq: Annotated[int, Field(ge=0, le=LONG_MAX)]
    event_time_ms: EpochMs
    profile: AgentProfile | None = None

    @model_validator(mode="after")
    def _profile_where_needed(self) -> Self:
        needs = self.kind in (AgentEventKind.REGISTERED, AgentEventKind.PROFILE_UPDATED)
        if needs and self.profile is None:
            raise ValueError(f"a {self.kind} event needs a profile")
        if not needs and self.profile is not None:  # (it would be dropped unread)
            raise ValueError(f"a {self.kind} event carries no profile (send PROFILE_UPDATED)")
        return self


# -- load-arrival ----------------------------------------------------------------


class LoadEventKind(StrEnum):
    ARRIVAL = "ARRIVAL"
    CANCEL = "CANCEL"


class LoadSource(StrEnum):
    USER = "USER"
    CRON = "CRON"
    WEBHOOK = "WEBHOOK"
    SUB_AGENT_RESULT = "SUB_AGENT_RESULT"
    HUMAN_APPROVAL = "HUMAN_APPROVAL"


class LoadSpec(Record):
    source: LoadSource
    priority: Priority
    required_capabilities: Names
    intent: Embedding
    sensitivity: Sensitivity
    region: Name
    created_at_ms: EpochMs
    deadline_ms: EpochMs | None = None
    estimated_duration_ms: DurationMs
    risk_score: Annotated[float, Field(ge=0, le=MAX_RISK)]
    session_id: Id | None = None
    zone: Name | None = None

    @model_validator(mode="after")
    def _deadline_after_creation(self) -> Self:
        if self.deadline_ms is not None and self.deadline_ms < self.created_at_ms:
            raise ValueError(
                f"deadline_ms {self.deadline_ms} is before created_at_ms {self.created_at_ms}"
            )
        return self


class LoadEvent(Record):
    idempotency_key: Id
    kind: LoadEventKind
    load_id: Id
    pool: Name
    tenant: Name
    event_time_ms: EpochMs
    load: LoadSpec | None = None

    @model_validator(mode="after")
    def _load_on_arrival(self) -> Self:
        if self.kind is LoadEventKind.ARRIVAL and self.load is None:
            raise ValueError("an ARRIVAL event needs a load")
        if self.kind is LoadEventKind.CANCEL and self.load is not None:  # (dropped unread)
            raise ValueError("a CANCEL event carries no load")
        return self


# -- task-results ----------------------------------------------------------------


class TaskOutcome(StrEnum):
    ACCEPTED = "ACCEPTED"
    DECLINED = "DECLINED"
    SUCCESS = "SUCCESS"
    BLOCKED = "BLOCKED"
    NEED_INPUT = "NEED_INPUT"
    FAILED = "FAILED"


class TaskResult(Record):
    event_id: Id
    decision_id: Id
    load_id: Id
    agent_id: Id
    pool: Name
    outcome: TaskOutcome
    retryable: bool = False
    reason_code: Code | None = None
    event_time_ms: EpochMs


# -- ticks -----------------------------------------------------------------------


class Tick(Record):
    pool: Name
    event_time_ms: EpochMs


# -- policy-update ---------------------------------------------------------------


class MatchingMode(StrEnum):
    GREEDY = "GREEDY"
    BATCHED = "BATCHED"


class RetryPolicy(Record):
    max_attempts: Annotated[int, Field(ge=1, le=1000)]
    backoff_base_ms: DurationMs
    backoff_max_ms: DurationMs


class Backpressure(Record):
    max_pending: Annotated[int, Field(ge=1, le=INT_MAX)]
    high_watermark: Annotated[int, Field(ge=1, le=INT_MAX)]
    low_watermark: Annotated[int, Field(ge=0, le=INT_MAX)]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low_watermark <= self.high_watermark <= self.max_pending:
            raise ValueError("need low_watermark <= high_watermark <= max_pending")
        return self


class PolicyDocument(Record):
    matching_mode: MatchingMode
    batch_window_ms: DurationMs
    weights: Annotated[dict[Name, float], Field(max_length=MAX_MAP_ITEMS)]
    constraints: Annotated[dict[Name, bool], Field(max_length=MAX_MAP_ITEMS)]
    tenant_weights: Annotated[
        dict[Name, Annotated[float, Field(gt=0)]], Field(max_length=MAX_MAP_ITEMS)
    ]
    tenant_quotas: Annotated[dict[Name, Count], Field(max_length=MAX_MAP_ITEMS)]
    tenant_deny: Annotated[dict[Name, Ids], Field(max_length=MAX_MAP_ITEMS)]  # agent ids
    timeouts_ms: Annotated[dict[Name, DurationMs], Field(max_length=MAX_MAP_ITEMS)]
    retry: RetryPolicy
    backpressure: Backpressure
    fair_share_reserve: Annotated[float, Field(ge=0, lt=1)] = 0.1
    tenant_first: bool = True
    deadline_margin: Annotated[float, Field(ge=0, le=100)] = 0.2
    drain_limit: Annotated[int, Field(ge=1, le=INT_MAX)] = 256
    batch_max_loads: Annotated[int, Field(ge=1, le=INT_MAX)] = 512
    batch_candidates: Annotated[int, Field(ge=1, le=INT_MAX)] = 16


class PolicyUpdate(Record):
    policy_id: Name
    version: Version
    author: Name
    effective_from_ms: EpochMs
    document: PolicyDocument
    content_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    signature: Annotated[bytes, Field(max_length=1024)] | None = None
    signature_key_id: Name | None = None


# -- assignments and decision-log -------------------------------------------------


class Assignment(Record):
    decision_id: Id
    load_id: Id
    agent_id: Id
    pool: Name
    tenant: Name
    attempt: Attempt
    policy_version: UsedVersion
    priority: Priority
    event_time_ms: EpochMs
    deadline_ms: EpochMs | None = None
    ack_by_ms: EpochMs


class DecisionOutcome(StrEnum):
    ASSIGNED = "ASSIGNED"
    QUEUED = "QUEUED"
    DEFERRED = "DEFERRED"
    SHED = "SHED"
    REJECTED = "REJECTED"
    REQUEUED = "REQUEUED"
    DEAD_LETTERED = "DEAD_LETTERED"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class InputPosition(Record):
    topic: Topic
    partition: Partition
    offset: Offset


class DecisionRecord(Record):
    decision_id: Id
    pool: Name
    load_id: Id
    attempt: Attempt
    outcome: DecisionOutcome
    reason_code: Code
    agent_id: Id | None = None
    policy_version: UsedVersion
    event_time_ms: EpochMs
    input: InputPosition
    score: float | None = None
    score_parts: Annotated[dict[Name, float], Field(max_length=MAX_MAP_ITEMS)]
    candidates: Count
    excluded: Annotated[dict[Name, Count], Field(max_length=MAX_MAP_ITEMS)]
    runner_up: Id | None = None
    margin: float | None = None


# -- dead-letter -------------------------------------------------------------------


class DeadLetterReason(StrEnum):
    TOO_LARGE = "TOO_LARGE"
    BAD_FRAME = "BAD_FRAME"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    WRONG_SCHEMA = "WRONG_SCHEMA"
    MALFORMED = "MALFORMED"
    TRAILING_BYTES = "TRAILING_BYTES"
    INVALID = "INVALID"


class DeadLetter(Record):
    source_topic: Topic
    source_partition: Partition
    source_offset: Offset
    source_timestamp_ms: EpochMs | None = None
    source_key: Annotated[bytes, Field(max_length=4096)] | None = None
    reason: DeadLetterReason
    error: Annotated[str, StringConstraints(max_length=2000)]
    payload: bytes | None = None
    payload_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    payload_size: Count
    failed_at_ms: EpochMs
