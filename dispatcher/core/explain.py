"""Why this agent, and why not that one."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np

from dispatcher.core.dispatch import PoolState
from dispatcher.core.policy import CONSTRAINTS
from dispatcher.core.types import LoadSpec

__all__ = ["AgentVerdict", "Explanation", "explain"]


@dataclass(frozen=True, slots=True)
class AgentVerdict:
    """How one agent stands against one load, now."""

    agent_id: str
    failed: tuple[str, ...]  # hard constraints it fails, in CONSTRAINTS order
    score: float | None  # its score, when it passes them all
    parts: tuple[tuple[str, float], ...]
    gap: float | None  # how far below the chosen agent's score (when both are known)


@dataclass(frozen=True, slots=True)
class Explanation:
    load_id: str
    status: str
    attempt: int
    agent_id: str | None  # where it is, or None
    candidates: int
    excluded: tuple[tuple[str, int], ...]
    chosen_score: float | None
    verdicts: tuple[AgentVerdict, ...]


def explain(state: PoolState, load_id: str, agent_ids: tuple[str, ...] = ()) -> Explanation:
    """Explains ``load_id``'s last match, and how each of ``agent_ids`` stands against it now.

    A load not matched yet (none chosen) has no gap to the chosen agent. A load in
    flight is judged with its slot and risk given back to its agent (else the agent
    it went to would fail capacity, or score below itself), on a copy of the agents.
    A finished load keeps neither its last match nor its needs (the decision log has
    them): each agent's verdict is ``load_finished``.

    Raises:
        KeyError: the pool does not know the load (never seen, or pruned).
    """
    ls = state.load(load_id)
    if ls is None:
        raise KeyError(load_id)
    m = ls.last_match
    chosen = m.score if m is not None and m.row is not None else None
    if ls.agent is not None and ls.final is None and agent_ids:
        state = copy.copy(state)  # (a view: the pool itself stays as it is)
        state.agents = state.agents.released(state.agents.row[ls.agent], ls.spec.risk)
    t, spec, policy = state.agents, ls.spec, state.policy
    denied = policy.tenant_deny.get(spec.tenant, frozenset())
    verdicts = []
    for agent_id in agent_ids:
        row = t.row.get(agent_id)
        if row is None or ls.final is not None:
            why = "unknown_agent" if row is None else "load_finished"
            verdicts.append(AgentVerdict(agent_id, (why,), None, (), None))
            continue
        # (The agent it is on was chosen: any "tried" of its did not apply then.)
        tried = tuple(a for a in ls.tried if a != ls.agent)
        failed = _failed(state, row, spec, denied, tried)
        score: float | None = None
        parts: tuple[tuple[str, float], ...] = ()
        gap: float | None = None
        if not failed:
            alone = t.scored(np.array([row]), spec, policy, state.now_ms,
                             affinity_row=ls.affinity_row)  # fmt: skip
            score, parts = float(alone.total[0]), alone.pick(0).parts
            gap = chosen - score if chosen is not None else None
        verdicts.append(AgentVerdict(agent_id, failed, score, parts, gap))
    return Explanation(
        load_id=load_id,
        status=ls.final.value if ls.final else ls.status.value,
        attempt=ls.attempt,
        agent_id=ls.agent,
        candidates=m.candidates if m else 0,
        excluded=m.excluded if m else (),
        chosen_score=chosen,
        verdicts=tuple(verdicts),
    )


def _failed(
    state: PoolState, row: int, spec: LoadSpec, denied: frozenset[str], tried: tuple[str, ...]
) -> tuple[str, ...]:
    """The enforced hard constraints agent ``row`` fails for ``spec``, each judged alone;
    ``tried`` only if the load was taken back from the agent and another agent passes
    the rest (as the match judges it)."""
    failed = []
    for constraint in CONSTRAINTS:
        if not state.policy.enforced(constraint):
            continue
        if constraint == "tried":
            if state.agents.ids[row] in tried:
                rows, _ = state.agents.feasible(spec, state.policy, denied, tried)
                if any(state.agents.ids[r] not in tried for r in rows):
                    failed.append(constraint)
            continue
        alone = replace(state.policy, disabled_constraints=frozenset(CONSTRAINTS) - {constraint})
        rows, _ = state.agents.feasible(spec, alone, denied)
        if row not in rows:
            failed.append(constraint)
    return tuple(failed)
