"""explain: why this agent, and why not that one."""

from __future__ import annotations

from dispatcher.core import LoadCancelled, Outcome, Policy, PoolState, Sensitivity, explain
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
