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
    # The chosen agent now has a full slot, so it fails capacity; the others say why not.
    assert good.failed == ("capacity",)
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
    # The same code computes both, so the score is the same to the last bit,
    # but for the balance term, which moved when "a" took the load.
    assert verdict.parts[:2] == d.score_parts[:2]
    assert dict(verdict.parts)["balance"] < dict(d.score_parts)["balance"]


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
