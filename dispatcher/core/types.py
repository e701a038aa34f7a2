"""Plain values of the matching core: events in, decisions out.

No I/O, no clock, no randomness anywhere in dispatcher.core: time arrives
inside events (``time_ms``), and every collection that reaches the output is
ordered explicitly. The edge (dispatcher.codecs) converts its validated
models to these values and the decisions back to records.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "FINAL_OUTCOMES",
    "AgentProfile",
    "AgentRegistered",
    "AgentStatusChanged",
    "AgentStatusKind",
    "Decision",
    "Event",
    "LoadArrived",
    "LoadCancelled",
    "LoadSpec",
    "Outcome",
    "PolicyChanged",
    "Priority",
    "Sensitivity",
    "Source",
    "TaskOutcome",
    "TaskReported",
    "Tick",
]


class Priority(IntEnum):
    """Strict classes: a lower value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


class Sensitivity(IntEnum):
    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2
    RESTRICTED = 3


class Outcome(StrEnum):
    """What a decision did (the DecisionRecord enum)."""

    ASSIGNED = "ASSIGNED"
    QUEUED = "QUEUED"
    DEFERRED = "DEFERRED"
    SHED = "SHED"
    REJECTED = "REJECTED"  # an input was refused (duplicate id, zombie result); not a load's end
    REQUEUED = "REQUEUED"
    DEAD_LETTERED = "DEAD_LETTERED"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


FINAL_OUTCOMES = frozenset(
    {Outcome.SHED, Outcome.DEAD_LETTERED, Outcome.CANCELLED, Outcome.COMPLETED, Outcome.FAILED}
)


class AgentStatusKind(StrEnum):
    AVAILABLE = "AVAILABLE"
    HEARTBEAT = "HEARTBEAT"
    DRAINING = "DRAINING"
    OFFLINE = "OFFLINE"


class TaskOutcome(StrEnum):
    ACCEPTED = "ACCEPTED"
    DECLINED = "DECLINED"
    SUCCESS = "SUCCESS"
    BLOCKED = "BLOCKED"
    NEED_INPUT = "NEED_INPUT"
    FAILED = "FAILED"


Source = tuple[str, int, int]  # (topic, partition, offset) of the input, for audit


@dataclass(frozen=True, slots=True)
class AgentProfile:
    capabilities: frozenset[str]  # tools, credentials and model types together
    capacity: int
    personality: tuple[float, ...]
    risk_budget: float
    abstention_threshold: float
    clearance: Sensitivity
    regions: frozenset[str]
    zone: str | None = None
    speed: float = 1.0


@dataclass(frozen=True, slots=True)
class LoadSpec:
    load_id: str
    tenant: str
    priority: Priority
    required: frozenset[str]
    intent: tuple[float, ...]
    sensitivity: Sensitivity
    region: str
    created_ms: int
    deadline_ms: int | None
    duration_ms: int
    risk: float
    session_id: str | None = None
    zone: str | None = None


# -- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRegistered:
    """Registered or profile updated."""

    key: str
    agent_id: str
    seq: int
    time_ms: int
    profile: AgentProfile
    source: Source = ("", -1, -1)


@dataclass(frozen=True, slots=True)
class AgentStatusChanged:
    key: str
    agent_id: str
    seq: int
    time_ms: int
    kind: AgentStatusKind
    source: Source = ("", -1, -1)


@dataclass(frozen=True, slots=True)
class LoadArrived:
    key: str
    time_ms: int
    load: LoadSpec
    source: Source = ("", -1, -1)


@dataclass(frozen=True, slots=True)
class LoadCancelled:
    key: str
    time_ms: int
    load_id: str
    source: Source = ("", -1, -1)


@dataclass(frozen=True, slots=True)
class TaskReported:
    key: str
    time_ms: int
    decision_id: str
    load_id: str
    agent_id: str
    outcome: TaskOutcome
    retryable: bool = False
    source: Source = ("", -1, -1)


@dataclass(frozen=True, slots=True)
class Tick:
    time_ms: int
    source: Source = ("", -1, -1)


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    time_ms: int
    policy: object  # a dispatcher.core.policy.Policy (typed there, to keep this module leaf)
    source: Source = ("", -1, -1)


Event = (
    AgentRegistered
    | AgentStatusChanged
    | LoadArrived
    | LoadCancelled
    | TaskReported
    | Tick
    | PolicyChanged
)


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision and why; mirrors the DecisionRecord contract."""

    decision_id: str
    pool: str
    load_id: str
    attempt: int
    outcome: Outcome
    reason: str
    agent_id: str | None
    policy_version: int
    time_ms: int
    source: Source
    score: float | None = None
    score_parts: tuple[tuple[str, float], ...] = ()
    candidates: int = 0
    excluded: tuple[tuple[str, int], ...] = ()
    runner_up: str | None = None
    margin: float | None = None
    tenant: str = ""
    priority: Priority = Priority.NORMAL
    deadline_ms: int | None = None
    ack_by_ms: int | None = None
