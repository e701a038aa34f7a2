"""Small builders for core events, so tests say only what matters to them."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from dispatcher.core import (
    AgentProfile,
    AgentRegistered,
    AgentStatusChanged,
    AgentStatusKind,
    LoadArrived,
    LoadSpec,
    Priority,
    Sensitivity,
    TaskOutcome,
    TaskReported,
    Tick,
)

_keys = itertools.count()


def key() -> str:
    return f"k{next(_keys)}"


def profile(**kw: Any) -> AgentProfile:
    base = AgentProfile(
        capabilities=frozenset({"python"}), capacity=1, personality=(1.0, 0.0),
        risk_budget=10.0, abstention_threshold=1.0, clearance=Sensitivity.RESTRICTED,
        regions=frozenset({"eu"}),
    )  # fmt: skip
    return replace(base, **kw)


def spec(load_id: str, **kw: Any) -> LoadSpec:
    base = LoadSpec(
        load_id=load_id, tenant="acme", priority=Priority.NORMAL, required=frozenset({"python"}),
        intent=(1.0, 0.0), sensitivity=Sensitivity.PUBLIC, region="eu", created_ms=0,
        deadline_ms=None, duration_ms=1000, risk=1.0,
    )  # fmt: skip
    return replace(base, **kw)


def register(agent_id: str, seq: int = 1, time_ms: int = 0, **kw: Any) -> AgentRegistered:
    return AgentRegistered(key(), agent_id, seq, time_ms, profile(**kw))


def status(agent_id: str, kind: AgentStatusKind, seq: int, time_ms: int = 0) -> AgentStatusChanged:
    return AgentStatusChanged(key(), agent_id, seq, time_ms, kind)


def available(agent_id: str, seq: int = 2, time_ms: int = 0) -> AgentStatusChanged:
    return status(agent_id, AgentStatusKind.AVAILABLE, seq, time_ms)


def arrive(load_id: str, time_ms: int = 0, **kw: Any) -> LoadArrived:
    return LoadArrived(key(), time_ms, spec(load_id, created_ms=time_ms, **kw))


def report(decision_id: str, load_id: str, agent_id: str, outcome: TaskOutcome, *,
           time_ms: int = 0, retryable: bool = False) -> TaskReported:  # fmt: skip
    return TaskReported(key(), time_ms, decision_id, load_id, agent_id, outcome, retryable)


def tick(time_ms: int) -> Tick:
    return Tick(time_ms)
