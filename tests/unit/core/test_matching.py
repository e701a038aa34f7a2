"""Hard constraints, scoring and tie-breaks of one match."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from dispatcher.core import (
    AgentStatusKind,
    Decision,
    Outcome,
    Policy,
    PoolState,
    Sensitivity,
    TaskOutcome,
    agents,
    explain,
)
from dispatcher.core.agents import AgentTable, unit
from tests.unit.core.builders import (
    arrive,
    available,
    profile,
    register,
    report,
    spec,
    status,
    tick,
)


def pool(*agents: tuple[str, dict[str, Any]], policy: Policy | None = None) -> PoolState:
    state = PoolState("pool-a", policy or Policy())
    for agent_id, kw in agents:
        state.apply(register(agent_id, **kw))
        state.apply(available(agent_id))
    return state


EXCLUSIONS = [
    # (constraint, the agent's profile, the load's spec)
    ("capability", {"capabilities": frozenset({"sql"})}, {}),
    ("clearance", {"clearance": Sensitivity.INTERNAL}, {"sensitivity": Sensitivity.RESTRICTED}),
    ("region", {"regions": frozenset({"us"})}, {}),
    ("risk", {"risk_budget": 0.5}, {}),
    ("risk", {"abstention_threshold": 0.05}, {}),  # one load may take 5% of the budget
    ("capacity", {"capacity": 0}, {}),
]


@pytest.mark.parametrize(("constraint", "agent", "load"), EXCLUSIONS)
def test_a_hard_constraint_excludes_and_says_so(
    constraint: str, agent: dict[str, Any], load: dict[str, Any]
) -> None:
    state = pool(("a1", agent))
    (d,) = state.apply(arrive("L1", **load))
    assert d.outcome is Outcome.QUEUED
    assert dict(d.excluded)[constraint] == 1
    assert sum(n for _, n in d.excluded) == 1  # counted once, by the first that removed it
    good = pool(("a1", {}))
    (ok,) = good.apply(arrive("L1", **load if constraint != "capability" else {}))
    if constraint in ("capability", "region", "risk", "capacity"):
        assert ok.outcome is Outcome.ASSIGNED


def test_the_risk_check_follows_rooms_that_shrink_and_grow() -> None:
    # Loads within every agent's risk room skip the per-agent check: the room they are
    # measured against must follow each agent's room down and back up.
    state = pool(
        ("a", {"risk_budget": 10.0, "capacity": 5}), ("b", {"risk_budget": 3.0, "capacity": 5})
    )
    t, p = state.agents, state.policy
    a, b = t.row["a"], t.row["b"]

    def risk_excluded(risk: float) -> int:
        m = t.match(arrive("X", risk=risk).load, p, 0)
        return dict(m.excluded)["risk"]

    assert risk_excluded(2.0) == 0
    t.add_load(b, 2.0, 1)  # b's room: 1
    assert risk_excluded(2.0) == 1
    t.add_load(b, 2.0, -1)  # back to 3
    assert risk_excluded(2.0) == 0
    assert risk_excluded(3.5) == 1
    t.add_load(a, 9.5, 1)  # a's room: 0.5
    assert risk_excluded(2.0) == 1
    assert risk_excluded(3.5) == 2
    assert t.match(arrive("Y", risk=2.0).load, p, 0).row == b


def test_status_and_tenant_deny_exclude() -> None:
    state = PoolState("p", Policy(tenant_deny={"acme": frozenset({"a2"})}))
    state.apply(register("a1"))  # registered, never available
    state.apply(register("a2"))
    state.apply(available("a2"))
    (d,) = state.apply(arrive("L1"))
    assert d.outcome is Outcome.QUEUED
    assert dict(d.excluded) == {"status": 1, "capacity": 0, "capability": 0, "clearance": 0,
                                "region": 0, "risk": 0, "tenant_deny": 1, "tried": 0}  # fmt: skip


def test_a_disabled_constraint_is_not_applied() -> None:
    state = pool(("a1", {"regions": frozenset({"us"})}),
                 policy=Policy(disabled_constraints=frozenset({"region"})))  # fmt: skip
    (d,) = state.apply(arrive("L1"))
    assert d.outcome is Outcome.ASSIGNED


SCORING = [
    # (why, two agents' profiles, the load, the agent that must win)
    ("embedding", {"personality": (0.0, 1.0)}, {"personality": (1.0, 0.1)}, {}, "a2"),
    ("capability fit", {"capabilities": frozenset({"python", "sql", "go", "rust"})},
     {"capabilities": frozenset({"python"})}, {"intent": ()}, "a2"),
    ("locality", {"zone": "z1"}, {"zone": "z2"}, {"zone": "z2", "intent": ()}, "a2"),
    ("speed when tight", {"speed": 1.0}, {"speed": 4.0},
     {"deadline_ms": 1500, "duration_ms": 1000, "intent": ()}, "a2"),
    ("tie: earliest registered", {}, {}, {}, "a1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("why", "p1", "p2", "load", "winner"), SCORING, ids=[s[0] for s in SCORING]
)
def test_the_best_scored_agent_wins(
    why: str, p1: dict[str, Any], p2: dict[str, Any], load: dict[str, Any], winner: str
) -> None:
    state = pool(("a1", p1), ("a2", p2))
    (d,) = state.apply(arrive("L1", **load))
    assert d.outcome is Outcome.ASSIGNED
    assert d.agent_id == winner, why
    assert d.candidates == 2
    assert d.runner_up == ({"a1", "a2"} - {winner}).pop()
    assert d.margin is not None
    assert d.margin >= 0
    assert d.score == pytest.approx(sum(v for _, v in d.score_parts))


def test_balance_prefers_the_least_utilised_agent() -> None:
    state = pool(("a1", {"capacity": 4}), ("a2", {"capacity": 4}))
    first = state.apply(arrive("L1", intent=()))[0]
    second = state.apply(arrive("L2", intent=()))[0]
    assert {first.agent_id, second.agent_id} == {"a1", "a2"}


def test_session_affinity_prefers_the_agent_that_served_the_session() -> None:
    state = pool(("a1", {"capacity": 2}), ("a2", {"capacity": 2, "personality": (0.9, 0.1)}))
    first = state.apply(arrive("L1", session_id="s1", intent=(0.0, 1.0)))[0]
    again = state.apply(arrive("L2", session_id="s1", intent=(0.0, 1.0)))[0]
    assert again.agent_id == first.agent_id
    assert dict(again.score_parts)["affinity"] > 0


def _session_pool() -> tuple[PoolState, str | None]:
    """Hard affinity; session s1 was served by the agent that now scores worse for s1's
    next load."""
    policy = Policy(hard_affinity=True, affinity_wait_ms=5_000, fair_share_reserve=0.0)
    state = pool(("a1", {"capacity": 2, "personality": (0.0, 1.0)}),
                 ("a2", {"capacity": 2, "personality": (1.0, 0.0)}), policy=policy)  # fmt: skip
    first = state.apply(arrive("L1", session_id="s1", intent=(0.0, 1.0)))[0]
    return state, first.agent_id


def test_hard_affinity_gives_the_load_to_its_sessions_agent_when_it_has_room() -> None:
    state, agent = _session_pool()
    assert agent == "a1"
    (d,) = state.apply(arrive("L2", 1, session_id="s1", intent=(1.0, 0.0)))  # a2 scores better
    assert (d.outcome, d.reason, d.agent_id) == (Outcome.ASSIGNED, "AFFINITY", "a1")


def test_hard_affinity_does_not_wait_for_a_draining_agent() -> None:
    state, agent = _session_pool()
    state.apply(status(agent or "", AgentStatusKind.DRAINING, 3))
    (d,) = state.apply(arrive("L2", 1, session_id="s1", intent=(1.0, 0.0)))
    assert (d.outcome, d.reason, d.agent_id) == (Outcome.ASSIGNED, "BEST_SCORE", "a2")


def test_hard_affinity_does_not_wait_for_an_agent_the_load_cannot_go_to() -> None:
    state, _ = _session_pool()
    state.apply(register("go", capabilities=frozenset({"go"})))
    state.apply(available("go"))
    (d,) = state.apply(arrive("L2", 1, session_id="s1", required=frozenset({"go"})))
    assert (d.outcome, d.agent_id) == (Outcome.ASSIGNED, "go")  # a1 knows no go


def test_unknown_capability_or_region_matches_no_one() -> None:
    state = pool(("a1", {}))
    assert state.apply(arrive("L1", required=frozenset({"cobol"})))[0].outcome is Outcome.QUEUED
    assert state.apply(arrive("L2", region="mars"))[0].outcome is Outcome.QUEUED


@pytest.mark.parametrize(("margin", "fits"), [(0.0, 1.0), (0.2, 0.0)])
def test_deadline_fit_keeps_a_safety_margin(margin: float, fits: float) -> None:
    # Speed 1: the expected run is 1000 ms; the deadline leaves 1100 ms, 10% to spare.
    state = pool(("a1", {"speed": 1.0}), policy=Policy(deadline_margin=margin))
    (d,) = state.apply(arrive("L1", deadline_ms=1100, duration_ms=1000, intent=()))
    assert d.agent_id == "a1"
    assert dict(d.score_parts)["deadline_fit"] == fits * Policy().weight("deadline_fit")


def test_similarity_is_exact_whatever_computes_it() -> None:
    # Rounded to the grid of ``unit``, a dot product is exact in float64: a matrix
    # product, each row alone and exact rational arithmetic agree to the last bit.
    rng = np.random.default_rng(3)
    table = np.array([unit(tuple(rng.normal(size=9)), 9) for _ in range(300)])
    intent = unit(tuple(rng.normal(size=9)), 9)
    together = table @ intent
    alone = [float((table[i : i + 1] @ intent)[0]) for i in range(len(table))]
    exact = [float(sum(Fraction(a) * Fraction(b) for a, b in zip(r, intent, strict=True)))
             for r in table]  # fmt: skip
    assert together.tolist() == alone == exact
    assert np.allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)


def test_the_chosen_agent_scores_alike_alone_and_among_many() -> None:
    rng = np.random.default_rng(5)
    state = pool(*((f"a{i}", {"personality": tuple(rng.normal(size=6)), "capacity": 50})
                   for i in range(200)))  # fmt: skip
    for j in range(30):
        (d,) = state.apply(arrive(f"L{j}", 1 + j, intent=tuple(rng.normal(size=6))))
        assert d.outcome is Outcome.ASSIGNED
        # explain scores the one agent alone; the parts before balance (which moved when
        # the agent took the load) are the match's, to the last bit.
        (verdict,) = explain(state, d.load_id, (str(d.agent_id),)).verdicts
        assert verdict.parts[:2] == d.score_parts[:2]


def test_kinds_without_cached_columns_decide_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    def run() -> list[str]:
        rng = np.random.default_rng(9)
        caps = ["python", "sql", "go", "rust"]
        state = pool(*((f"a{i}", {"capabilities": frozenset(rng.choice(caps, 2, replace=False)),
                                  "personality": tuple(rng.normal(size=4)), "capacity": 3})
                       for i in range(60)))  # fmt: skip
        out = []
        for j in range(80):
            need = frozenset(rng.choice(caps, int(rng.integers(0, 2)), replace=False))
            load = arrive(f"L{j}", 1 + j, required=need, intent=tuple(rng.normal(size=4)))
            out += [repr(d) for d in state.apply(load)]
        return out

    cached = run()
    monkeypatch.setattr(agents, "_COLS_BUDGET", 0)  # every kind gathers its columns per load
    assert run() == cached
    assert any("ASSIGNED" in d for d in cached)


def _taken_back(state: PoolState, d: Decision, how: TaskOutcome, time_ms: int) -> Decision:
    """Has ``d``'s agent decline or fail its load; returns the load's next decision (after
    the backoff)."""
    load, agent = d.load_id, d.agent_id or ""
    if how is TaskOutcome.FAILED:
        state.apply(report(d.decision_id, load, agent, TaskOutcome.ACCEPTED, time_ms=time_ms))
    out = state.apply(report(d.decision_id, load, agent, how, time_ms=time_ms, retryable=True))
    out += state.apply(tick(time_ms + state.policy.backoff_ms(d.attempt + 1)))
    return [x for x in out if x.load_id == load][-1]


@pytest.mark.parametrize("mode", ["greedy", "batched"])
@pytest.mark.parametrize("how", [TaskOutcome.DECLINED, TaskOutcome.FAILED])
def test_a_load_taken_back_goes_to_another_agent_while_one_can_take_it(
    how: TaskOutcome, mode: str
) -> None:
    # a1 scores best for L1 every time; it declines (or fails) it. Before, L1 went back to
    # a1 at every attempt and was dead-lettered, with a2 idle.
    policy = Policy(mode=mode, batch_window_ms=10, max_attempts=4)  # type: ignore[arg-type]
    state = pool(("a1", {"personality": (1.0, 0.0)}), ("a2", {"personality": (0.0, 1.0)}),
                 ("a3", {"personality": (0.0, 1.0), "capabilities": frozenset({"go"})}),
                 policy=policy)  # fmt: skip
    out = state.apply(arrive("L1", intent=(1.0, 0.0)))
    first = (out + state.apply(tick(10)))[-1]
    assert (first.outcome, first.agent_id) == (Outcome.ASSIGNED, "a1")
    second = _taken_back(state, first, how, 100)
    assert (second.outcome, second.agent_id, second.attempt) == (Outcome.ASSIGNED, "a2", 2)
    assert dict(second.excluded)["tried"] == 1
    why = explain(state, "L1", ("a1", "a2"))
    assert [v.failed for v in why.verdicts] == [("tried",), ()]
    # Every agent that can take it had it: it may go back to one of them.
    third = _taken_back(state, second, how, 10_000)
    assert (third.outcome, third.agent_id, third.attempt) == (Outcome.ASSIGNED, "a1", 3)
    assert dict(third.excluded)["tried"] == 0
    assert explain(state, "L1", ("a1",)).verdicts[0].failed == ()


def test_a_load_taken_back_waits_for_no_agent_and_a_policy_can_turn_that_off() -> None:
    # a2 is busy: L1 goes back to a1 (which declined it) rather than wait.
    state = pool(("a1", {"personality": (1.0, 0.0)}), ("a2", {"personality": (0.0, 1.0)}))
    state.apply(arrive("busy", intent=(0.0, 1.0)))
    (first,) = state.apply(arrive("L1", intent=(1.0, 0.0)))
    assert first.agent_id == "a1"
    again = _taken_back(state, first, TaskOutcome.DECLINED, 100)
    assert (again.agent_id, dict(again.excluded)["tried"]) == ("a1", 0)
    # Turned off, a taken-back load may go back at once to the agent it scores best with.
    off = pool(("a1", {"personality": (1.0, 0.0)}), ("a2", {"personality": (0.0, 1.0)}),
               policy=Policy(disabled_constraints=frozenset({"tried"})))  # fmt: skip
    (first,) = off.apply(arrive("L1", intent=(1.0, 0.0)))
    again = _taken_back(off, first, TaskOutcome.DECLINED, 100)
    assert (again.agent_id, dict(again.excluded)["tried"]) == ("a1", 0)


def test_hard_affinity_does_not_wait_for_a_session_agent_that_declined_the_load() -> None:
    state, agent = _session_pool()
    assert agent == "a1"
    state.apply(arrive("busy", 1, intent=(1.0, 0.0)))  # a2 has one slot left
    (d,) = state.apply(arrive("L2", 2, session_id="s1", intent=(0.0, 1.0)))
    assert (d.agent_id, d.reason) == ("a1", "AFFINITY")
    again = _taken_back(state, d, TaskOutcome.DECLINED, 100)
    assert (again.outcome, again.agent_id) == (Outcome.ASSIGNED, "a2")


def test_an_agent_gone_offline_and_back_is_not_tried_for_the_loads_it_had() -> None:
    # A restart (offline, then available) says nothing about the load: with hard affinity
    # it goes back to its session's agent (before, "tried" sent it elsewhere).
    state, agent = _session_pool()
    (d,) = state.apply(arrive("L2", 1, session_id="s1", intent=(1.0, 0.0)))
    assert d.agent_id == agent == "a1"
    state.apply(status("a1", AgentStatusKind.OFFLINE, 3, time_ms=20))
    state.apply(status("a1", AgentStatusKind.AVAILABLE, 4, time_ms=30))
    again = [x for x in state.apply(tick(2_000)) if x.load_id == "L2"]
    assert [(x.outcome, x.agent_id, x.reason) for x in again] == [
        (Outcome.ASSIGNED, "a1", "AFFINITY")
    ]
    assert state.loads["L2"].tried == ()


def test_explain_does_not_hold_tried_against_the_agent_a_load_went_back_to() -> None:
    state = pool(("a1", {"personality": (1.0, 0.0)}), ("a2", {"personality": (0.0, 1.0)}))
    (x,) = state.apply(arrive("X", intent=(0.0, 1.0)))  # a2 busy
    (first,) = state.apply(arrive("L1", intent=(1.0, 0.0)))
    again = _taken_back(state, first, TaskOutcome.DECLINED, 100)
    assert (again.agent_id, dict(again.excluded)["tried"]) == ("a1", 0)  # no one else
    state.apply(report(x.decision_id, "X", "a2", TaskOutcome.SUCCESS, time_ms=2_000))
    verdicts = explain(state, "L1", ("a1", "a2")).verdicts
    assert verdicts[0].failed == ()  # (before: "tried", though it was chosen)
    assert verdicts[0].score is not None


@pytest.mark.parametrize("seed", range(5))
def test_the_risk_ceiling_answers_as_qualified_does_for_every_risk(seed: int) -> None:
    """``AgentTable.risk_ceiling`` (per kind and tenant) against ``qualified`` (per load),
    over budgets and risks with zeros, infinities and NaN, deny lists and constraints off."""
    rng = np.random.default_rng(seed)
    values = [0.0, 0.5, 1.0, 3.0, 1e9, float("inf"), float("nan")]
    table = AgentTable()
    for i in range(12):
        caps = frozenset(rng.choice(["py", "go", "sql"], size=int(rng.integers(1, 3))).tolist())
        table.upsert(f"a{i}", 1, 0, replace(
            profile(capabilities=caps), risk_budget=float(rng.choice(values)),
            abstention_threshold=float(rng.choice([0.0, 0.5, 1.0, float("nan")])),
        ))  # fmt: skip
    for off in [frozenset(), frozenset({"risk"}), frozenset({"tenant_deny", "capability"})]:
        policy = Policy(disabled_constraints=off)
        for required in (frozenset({"py"}), frozenset({"go", "sql"}), frozenset({"rust"})):
            for denied in (frozenset(), frozenset({"a0", "a1", "a2"}), frozenset(table.ids)):
                ceiling = table.risk_ceiling(spec("L", required=required), policy, denied)
                for risk in [*values, -1.0, float("-inf")]:
                    load = spec("L", required=required, risk=risk)
                    want = bool(table.qualified(load, policy, denied).size)
                    risky = policy.enforced("risk")
                    got = ceiling is not None and (not risky or ceiling >= risk)
                    assert got == want, (off, risk)
