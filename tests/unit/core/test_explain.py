"""explain: why this agent, and why not that one."""

from __future__ import annotations

import copy

import numpy as np

from dispatcher.core import LoadCancelled, Outcome, Policy, PoolState, Sensitivity, agents, explain
from tests.unit.core.builders import arrive, available, register


def test_explain_names_the_failing_constraints_and_scores_the_rest() -> None:
    state = PoolState("p", Policy())
    state.apply(register("good", personality=(1.0, 0.0)))
    state.apply(register("ok", personality=(0.0, 1.0)))
    state.apply(register("uncleared", clearance=Sensitivity.PUBLIC, regions=frozenset({"us"})))
    for agent in ("good", "ok", "uncleared"):
        state.apply(available(agent))
    (d,) = state.apply(arrive("L1", sensitivity=Sensitivity.CONFIDENTIAL))
    assert (d.outcome, d.agent_id) == (Outcome.ASSIGNED, "good")

    why = explain(state, "L1", ("good", "ok", "uncleared", "ghost"))
    assert (why.status, why.agent_id, why.candidates) == ("ASSIGNED", "good", 2)
    assert dict(why.excluded)["clearance"] == 1
    good, ok, uncleared, ghost = why.verdicts
    # The chosen agent is judged as before it took the load; the others say why not.
    assert (good.failed, good.gap) == ((), 0.0)
    assert ok.failed == ()
    assert ok.score is not None
    assert ok.gap is not None
    assert ok.gap > 0
    assert ok.score == sum(v for _, v in ok.parts)
    assert uncleared.failed == ("clearance", "region")
    assert ghost.failed == ("unknown_agent",)


def test_explain_scores_an_agent_exactly_as_matching_did() -> None:
    state = PoolState("p", Policy())
    state.apply(register("a", capacity=2))
    state.apply(available("a"))
    state.apply(register("b", personality=(0.5, 0.5)))  # registered, not available
    (d,) = state.apply(arrive("L1"))
    (verdict,) = explain(state, "L1", ("a",)).verdicts
    # The same code computes both, on the agent as before it took the load: the same
    # score to the last bit.
    assert (verdict.score, verdict.parts) == (d.score, d.score_parts)


def test_explain_of_a_finished_load_says_so_for_every_agent() -> None:
    state = PoolState("p", Policy())
    state.apply(register("a"))
    state.apply(available("a"))
    state.apply(arrive("L1", required=frozenset({"cobol"})))  # nobody can run it: it waits
    (waiting,) = explain(state, "L1", ("a",)).verdicts
    assert waiting.failed == ("capability",)
    state.apply(LoadCancelled("c1", 1, "L1"))
    why = explain(state, "L1", ("a", "ghost"))
    assert why.status == "CANCELLED"
    assert [v.failed for v in why.verdicts] == [("load_finished",), ("unknown_agent",)]


def test_explain_counts_session_affinity_as_the_match_did() -> None:
    state = PoolState("p", Policy(weights={"embedding": 1.0, "affinity": 0.5}))
    for agent, towards in (("A", (1.0, 0.0)), ("B", (0.0, 1.0))):
        state.apply(register(agent, personality=towards, capacity=3))
        state.apply(available(agent))
    state.apply(arrive("L1", 1, intent=(0.0, 1.0), session_id="S"))  # to B
    (d,) = state.apply(arrive("L2", 2, intent=(1.0, 0.3), session_id="S"))
    assert (d.agent_id, d.runner_up, dict(d.score_parts)["affinity"]) == ("B", "A", 0.5)
    a, b = explain(state, "L2", ("A", "B")).verdicts
    assert (b.score, b.parts) == (d.score, d.score_parts)
    assert a.gap == d.margin


def test_explain_judges_the_chosen_agent_as_before_it_took_the_load() -> None:
    state = PoolState("p")
    for agent_id, personality in (("a", (0.0, 1.0)), ("b", (1.0, 0.0))):
        state.apply(register(agent_id, personality=personality))  # capacity 1
        state.apply(available(agent_id))
    (d,) = state.apply(arrive("L1", 1))
    assert d.agent_id == "b"
    why = explain(state, "L1", ("a", "b"))
    a, b = why.verdicts
    # Before, b "failed capacity": the load it took was counted against it.
    assert (b.failed, b.score, b.gap) == ((), d.score, 0.0)
    assert a.failed == ()
    assert a.gap == (d.score or 0.0) - (a.score or 0.0) > 0
    assert state.agents.active[state.agents.row["b"]] == 1  # (the pool is as it was)


def test_explain_of_a_load_held_for_its_sessions_agent_names_no_chosen_score() -> None:
    state = PoolState("p", Policy(hard_affinity=True, fair_share_reserve=0.0))
    for agent_id in ("a", "b"):
        state.apply(register(agent_id))
        state.apply(available(agent_id))
    first = state.apply(arrive("L1", 1, session_id="s"))[0]
    (held,) = state.apply(arrive("L2", 2, session_id="s"))  # waits for the session's agent
    assert (held.outcome, held.reason) == (Outcome.QUEUED, "AFFINITY_WAIT")  # (NO_CANDIDATE)
    why = explain(state, "L2", ("a", "b"))
    assert why.chosen_score is None
    assert all(v.gap is None for v in why.verdicts)
    assert {v.agent_id: v.failed for v in why.verdicts}[first.agent_id or ""] == ("capacity",)


def test_explaining_a_load_in_flight_changes_nothing_and_judges_as_a_deep_copy_would() -> None:
    """(explain gave the load back to its agent on a deep copy of the agents: 0.8 s at 100k
    agents; ``released`` copies only the columns a load changes.)"""
    state = PoolState("p", Policy())
    for i, risk_budget in enumerate((0.3, 5.0, 2.0)):
        state.apply(register(f"a{i}", capacity=2, risk_budget=risk_budget))
        state.apply(available(f"a{i}"))
    for i in range(4):
        state.apply(arrive(f"L{i}", risk=0.1 * (i + 1)))
    t = state.agents
    before = {name: getattr(t, name).copy() for name, *_ in agents._COLUMNS}
    counts = (t.open_count, t.available_count, t._room_floor, t._floor_loose)
    ls = state.loads["L1"]
    assert ls.agent is not None
    row = t.row[ls.agent]

    deep = copy.deepcopy(t)  # (what explain did)
    deep.add_load(row, ls.spec.risk, -1)
    given_back = t.released(row, ls.spec.risk)
    for name, *_ in agents._COLUMNS:
        assert np.array_equal(getattr(given_back, name), getattr(deep, name)), name
        assert np.array_equal(getattr(t, name), before[name]), name  # (the pool's: as it was)
    assert (t.open_count, t.available_count, t._room_floor, t._floor_loose) == counts
    assert given_back.open_count == deep.open_count

    why = explain(state, "L1", ("a0", "a1", "a2"))
    assert [v.failed for v in why.verdicts].count(()) >= 2
    for name, *_ in agents._COLUMNS:
        assert np.array_equal(getattr(t, name), before[name]), name
