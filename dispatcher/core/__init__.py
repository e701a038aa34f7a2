"""The matching core: pure, deterministic, explainable.

``decide(state, event) -> (state, decisions)`` over one pool. No I/O, no
Faust, no Avro, no clock, no randomness: time arrives inside events. This
package imports neither faust, fastavro, redis, aiokafka nor the app, codec
or SDK layers (an import-linter contract holds that).
"""

from dispatcher.core.dispatch import LoadState, LoadStatus, PoolState, decide, decision_id
from dispatcher.core.explain import AgentVerdict, Explanation, explain
from dispatcher.core.policy import CONSTRAINTS, DEFAULT_POLICY, SCORE_TERMS, Policy
from dispatcher.core.types import (
    FINAL_OUTCOMES,
    AgentProfile,
    AgentRegistered,
    AgentStatusChanged,
    AgentStatusKind,
    Decision,
    Event,
    LoadArrived,
    LoadCancelled,
    LoadSpec,
    Outcome,
    PolicyChanged,
    Priority,
    Sensitivity,
    TaskOutcome,
    TaskReported,
    Tick,
)

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_POLICY",
    "FINAL_OUTCOMES",
    "SCORE_TERMS",
    "AgentProfile",
    "AgentRegistered",
    "AgentStatusChanged",
    "AgentStatusKind",
    "AgentVerdict",
    "Decision",
    "Event",
    "Explanation",
    "LoadArrived",
    "LoadCancelled",
    "LoadSpec",
    "LoadState",
    "LoadStatus",
    "Outcome",
    "Policy",
    "PolicyChanged",
    "PoolState",
    "Priority",
    "Sensitivity",
    "TaskOutcome",
    "TaskReported",
    "Tick",
    "decide",
    "decision_id",
    "explain",
]
