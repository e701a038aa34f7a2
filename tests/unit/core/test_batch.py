"""Batched mode: the global assignment beats greedy where greedy is myopic."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Literal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core import (
    AgentStatusKind,
    Decision,
    Outcome,
    Policy,
    PoolState,
    Priority,
    TaskOutcome,
)
from dispatcher.core.agents import Scored
from dispatcher.core.batch import solve
from tests.unit.core.builders import arrive, available, register, report, status, tick


def test_solve_finds_the_pairing_greedy_misses() -> None:
    # Greedy gives L1 its best (A, 0.9) and leaves L2 with B (0.1): 1.0 in all.
    # The optimum swaps them: L1-B 0.8 + L2-A 0.85 = 1.65.
    candidates = [[(0, 0.9), (1, 0.8)], [(0, 0.85), (1, 0.1)]]
    assert solve(candidates, {0: 1, 1: 1}) == [1, 0]


def test_solve_fills_slots_and_leaves_the_rest() -> None:
    assert solve([[(0, 0.5)], [(0, 0.4)], [(0, 0.3)]], {0: 2}) == [0, 0, None]
    assert solve([[], [(3, 1.0)]], {3: 1}) == [None, 3]
    assert solve([[]], {}) == [None]
    assert solve([[(0, 1.0)], [(1, 0.5)]], {0: -2, 1: 1}) == [None, 1]  # 0 is over capacity


@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), max_size=40),  # few values: many ties
    st.integers(1, 12),
)
def test_best_k_is_the_prefix_of_a_stable_sort(scores: list[float], k: int) -> None:
    total = np.array(scores)
    s = Scored(np.arange(len(scores)), total, {}, (), len(scores))
    assert s.best(k).tolist() == np.argsort(-total, kind="stable")[:k].tolist()


def _brute(candidates: list[list[tuple[int, float]]], free: dict[int, int]) -> tuple[int, float]:
    """The most loads served, and of those, the greatest total score, by trying every way."""
    best = (0, 0.0)
    for choice in itertools.product(*[[None, *(r for r, _ in pairs)] for pairs in candidates]):
        used = Counter(r for r in choice if r is not None)
        if all(n <= free[r] for r, n in used.items()):
            total = sum(dict(pairs)[r] for pairs, r in zip(candidates, choice, strict=True)
                        if r is not None)  # fmt: skip
            best = max(best, (len(list(used.elements())), round(total, 9)))
    return best


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.dictionaries(st.integers(0, 3), st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.7]),
                             max_size=4), min_size=1, max_size=4),
    st.lists(st.integers(0, 2), min_size=4, max_size=4),
)  # fmt: skip
def test_solve_serves_the_most_loads_then_scores_the_most(
    wants: list[dict[int, float]], slots: list[int]
) -> None:
    candidates = [sorted(w.items()) for w in wants]
    free = dict(enumerate(slots))
    chosen = solve(candidates, free)
    assert all(n <= free[r] for r, n in Counter(r for r in chosen if r is not None).items())
    score = sum(dict(c)[r] for c, r in zip(candidates, chosen, strict=True) if r is not None)
    assert (sum(r is not None for r in chosen), round(score, 9)) == _brute(candidates, free)


def test_solve_opens_no_more_columns_than_loads_want() -> None:
    # An agent with a million free slots still needs only as many columns as loads list it.
    assert solve([[(0, 1.0)], [(0, 0.5), (1, 0.4)]], {0: 10**6, 1: 10**6}) == [0, 0]


def _two_agents(policy: Policy) -> PoolState:
    state = PoolState("p", policy)
    # A points along x, B up and right; L1's intent is close to both (a little closer to
    # A), L2's only to A.
    state.apply(register("A", personality=(1.0, 0.0)))
    state.apply(register("B", personality=(0.6, 0.8)))
    state.apply(available("A"))
    state.apply(available("B"))
    return state


WEIGHTS = {"embedding": 1.0}


def test_batched_mode_waits_for_the_window_then_assigns_optimally() -> None:
    greedy = _two_agents(Policy(weights=WEIGHTS))
    g1 = greedy.apply(arrive("L1", 1, intent=(0.9, 0.44)))[-1]
    g2 = greedy.apply(arrive("L2", 2, intent=(1.0, -0.3)))[-1]
    batched = _two_agents(Policy(weights=WEIGHTS, mode="batched", batch_window_ms=100))
    q1 = batched.apply(arrive("L1", 1, intent=(0.9, 0.44)))
    q2 = batched.apply(arrive("L2", 2, intent=(1.0, -0.3)))
    assert [(d.outcome, d.reason) for d in q1 + q2] == [(Outcome.QUEUED, "BATCH_WINDOW")] * 2
    out = batched.apply(tick(150))
    pairs = {d.load_id: d.agent_id for d in out if d.outcome is Outcome.ASSIGNED}
    assert {(g1.load_id, g1.agent_id), (g2.load_id, g2.agent_id)} == {("L1", "A"), ("L2", "B")}
    assert pairs == {"L1": "B", "L2": "A"}
    assert sum(d.score or 0 for d in out) > (g1.score or 0) + (g2.score or 0)
    assert {d.reason for d in out} == {"BATCH_OPTIMAL"}


def test_critical_loads_do_not_wait_for_the_batch() -> None:
    batched = _two_agents(Policy(mode="batched", batch_window_ms=10_000))
    (d,) = batched.apply(arrive("urgent", 1, priority=Priority.CRITICAL))
    assert d.outcome is Outcome.ASSIGNED


def test_a_batch_keeps_the_fair_share_reserve() -> None:
    state = PoolState("p", Policy(mode="batched", batch_window_ms=100, fair_share_reserve=0.2))
    for i in range(10):
        state.apply(register(f"x{i}"))
        state.apply(available(f"x{i}"))
    state.apply(arrive("g0", 1, tenant="globex"))
    for i in range(10):
        state.apply(arrive(f"a{i}", 2 + i, tenant="acme"))
    first = [d.tenant for d in state.apply(tick(150)) if d.outcome is Outcome.ASSIGNED]
    # Served in turn (globex second), acme until 2 agents are left, kept for the others.
    assert sorted(first) == ["acme"] * 7 + ["globex"]
    state.apply(arrive("g1", 200, tenant="globex"))
    later = [d.load_id for d in state.apply(tick(300)) if d.outcome is Outcome.ASSIGNED]
    assert later == ["g1"]


def test_loads_no_agent_can_take_do_not_hold_a_batch_from_the_loads_behind() -> None:
    state = PoolState("p", Policy(mode="batched", fair_share_reserve=0.0))
    state.apply(register("A"))  # python only, one slot
    state.apply(available("A"))
    state.apply(arrive("Y", 1, required=frozenset({"rust"}), priority=Priority.HIGH))
    state.apply(arrive("X", 2))  # behind Y in service order, and A can run it
    (d,) = [d for d in state.apply(tick(100)) if d.outcome is Outcome.ASSIGNED]
    assert (d.load_id, d.agent_id, d.reason) == ("X", "A", "BATCH_OPTIMAL")
    assert state.loads["Y"].last_match is not None
    assert dict(state.loads["Y"].last_match.excluded)["capability"] == 1


def _session_pool(hard: bool) -> tuple[PoolState, list[Decision]]:
    """A session served by B once; its next load leans towards A, and B is busy."""
    state = PoolState("p", Policy(mode="batched", hard_affinity=hard, fair_share_reserve=0.0,
                                  weights={"embedding": 1.0, "affinity": 0.5}))  # fmt: skip
    for agent, towards in (("A", (1.0, 0.0)), ("B", (0.0, 1.0))):
        state.apply(register(agent, personality=towards, capacity=2))
        state.apply(available(agent))
    state.apply(arrive("L1", 1, intent=(0.0, 1.0), session_id="S"))
    (first,) = state.apply(tick(100))
    assert first.agent_id == "B"
    state.apply(arrive("L2", 200, intent=(1.0, 0.3), session_id="S"))
    return state, state.apply(tick(300))


def test_a_batch_counts_session_affinity() -> None:
    _, out = _session_pool(hard=False)
    (d,) = out
    assert (d.load_id, d.agent_id) == ("L2", "B")  # 0.5 for the session outweighs the intent
    assert dict(d.score_parts)["affinity"] == 0.5


def test_under_hard_affinity_a_batch_gives_the_load_to_its_sessions_agent() -> None:
    state, out = _session_pool(hard=True)
    (d,) = out
    assert (d.load_id, d.agent_id, d.reason) == ("L2", "B", "AFFINITY")
    # With B full, the session's next load waits for B, not for A.
    state.apply(arrive("L3", 400, intent=(1.0, 0.0), session_id="S"))
    assert [x.agent_id for x in state.apply(tick(500)) if x.outcome is Outcome.ASSIGNED] == []
    assert state.pending["L3"].last_match is not None


def _assigned(decisions: list[Decision]) -> dict[str, str | None]:
    return {d.load_id: d.agent_id for d in decisions if d.outcome is Outcome.ASSIGNED}


def test_a_batch_keeps_within_each_agents_risk_budget() -> None:
    state = PoolState("p", Policy(mode="batched", batch_window_ms=100))
    state.apply(register("a1", capacity=3, risk_budget=10.0))
    state.apply(available("a1"))
    for i in range(3):
        state.apply(arrive(f"L{i}", 1 + i, risk=6.0))
    # Each fits the agent's budget alone; together they would use 18 of its 10.
    assert _assigned(state.apply(tick(150))) == {"L0": "a1"}
    assert state.agents.risk_room[state.agents.row["a1"]] == 4.0


def test_a_batch_gives_a_contested_agent_to_the_higher_class() -> None:
    state = PoolState("p", Policy(mode="batched", batch_window_ms=100))
    state.apply(register("a1", personality=(0.0, 1.0)))
    state.apply(register("a2", capabilities=frozenset({"rust"})))  # a second slot, for neither
    state.apply(available("a1"))
    state.apply(available("a2"))
    state.apply(arrive("high", 1, priority=Priority.HIGH, intent=(1.0, 0.0)))
    state.apply(arrive("low", 2, priority=Priority.LOW, intent=(0.0, 1.0)))  # scores better
    assert _assigned(state.apply(tick(150))) == {"high": "a1"}


def test_a_batch_shares_the_slots_between_tenants_as_one_by_one_service_would() -> None:
    def run(mode: Literal["greedy", "batched"]) -> list[str]:
        state = PoolState("p", Policy(mode=mode, batch_window_ms=100, fair_share_reserve=0.0))
        for tenant in ("acme", "globex"):
            for i in range(8):
                state.apply(arrive(f"{tenant}{i}", 1, tenant=tenant))
        out = []
        for i in range(4):
            out += state.apply(register(f"x{i}"))
            out += state.apply(available(f"x{i}"))
        out += state.apply(tick(150))
        return sorted(d.tenant for d in out if d.outcome is Outcome.ASSIGNED)

    assert run("batched") == run("greedy") == ["acme", "acme", "globex", "globex"]


def test_a_batch_gives_an_agents_risk_room_to_the_higher_class_first() -> None:
    state = PoolState("p", Policy(mode="batched", batch_window_ms=100, fair_share_reserve=0.0))
    state.apply(register("a1", capacity=2, risk_budget=10.0))
    state.apply(available("a1"))
    # acme is served first (fewer served, by name), but globex's load is the more important.
    state.apply(arrive("acme-low", 1, tenant="acme", priority=Priority.LOW, risk=6.0))
    state.apply(arrive("globex-high", 2, tenant="globex", priority=Priority.HIGH, risk=6.0))
    assert _assigned(state.apply(tick(150))) == {"globex-high": "a1"}


def test_a_batch_ranks_a_load_by_the_class_its_deadline_moved_it_to() -> None:
    def first(mode: Literal["greedy", "batched"]) -> list[str]:
        policy = Policy(mode=mode, batch_window_ms=100, fair_share_reserve=0.0,
                        tenant_first=False)  # fmt: skip
        state = PoolState("p", policy)
        state.apply(register("busy"))
        state.apply(available("busy"))
        state.apply(register("rusty", capabilities=frozenset({"rust"})))  # a slot for neither
        state.apply(available("rusty"))
        state.apply(arrive("hold", 0, tenant="x"))
        state.apply(tick(50))  # hold takes the agent both loads need
        # Latest start 200: low until then, normal after, and older than the normal load.
        state.apply(arrive("urgent-low", 51, tenant="a", priority=Priority.LOW, deadline_ms=1200))
        state.apply(arrive("normal", 52, tenant="b"))
        state.apply(tick(250))
        hold = state.in_flight["hold"]
        out = state.apply(report(hold.decision_id or "", "hold", "busy", TaskOutcome.SUCCESS,
                                 time_ms=260))  # fmt: skip
        out += state.apply(tick(400))
        return [d.load_id for d in out if d.outcome is Outcome.ASSIGNED]

    assert first("batched") == first("greedy") == ["urgent-low"]


# -- a batch leaves no free agent idle that a waiting load could take (review of batched mode)


def _pool(policy: Policy, agents: dict[str, dict[str, object]]) -> PoolState:
    state = PoolState("p", policy)
    for agent, kw in agents.items():
        state.apply(register(agent, **kw))  # type: ignore[arg-type]
        state.apply(available(agent))
    return state


def _batched(**kw: object) -> Policy:
    return Policy(mode="batched", batch_window_ms=100, **{"fair_share_reserve": 0.0, **kw})  # type: ignore[arg-type]


def test_solve_gives_a_tie_to_the_earlier_load() -> None:
    assert solve([[(0, 2.0)], [(0, 2.0)]], {0: 1}) == [0, None]
    assert solve([[(0, 2.0)], [(0, 2.0)], [(0, 2.0)]], {0: 2}) == [0, 0, None]


def test_the_oldest_load_is_not_left_waiting_by_ties_batch_after_batch() -> None:
    # One agent finishing one load per window, one new load per window, all alike: the
    # oldest goes first (the solver used to give every tie to the newer load; B, for
    # none of them, makes a batch take two).
    state = _pool(_batched(), {"A": {}, "B": {"capabilities": frozenset({"rust"})}})
    order: list[str] = []
    state.apply(arrive("OLD", 0))
    for i in range(4):
        t = 200 * i
        state.apply(arrive(f"L{i}", t + 1))
        order += [d.load_id for d in state.apply(tick(t + 100)) if d.outcome is Outcome.ASSIGNED]
        for load_id, ls in list(state.in_flight.items()):
            state.apply(report(ls.decision_id or "", load_id, "A", TaskOutcome.SUCCESS,
                               time_ms=t + 150))  # fmt: skip
    assert order == ["OLD", "L0", "L1", "L2"]


def test_a_batch_spreads_its_loads_as_the_balance_term_asks() -> None:
    def run(mode: Literal["greedy", "batched"]) -> list[tuple[str | None, float]]:
        state = _pool(Policy(mode=mode, batch_window_ms=100, fair_share_reserve=0.0),
                      {"A": {"capacity": 4}, "B": {"capacity": 4}})  # fmt: skip
        out = [d for i in range(4) for d in state.apply(arrive(f"L{i}", 1))]
        out += state.apply(tick(100))
        return sorted((d.agent_id, dict(d.score_parts)["balance"])
                      for d in out if d.outcome is Outcome.ASSIGNED)  # fmt: skip

    # Each decision is scored on the agents as they stood when it was made (the balance
    # part of a second load on an agent is less): as greedy scores them.
    assert run("batched") == run("greedy") == [("A", 0.375), ("A", 0.5), ("B", 0.375), ("B", 0.5)]


def test_the_reserve_counts_agents_that_close_not_loads_taken() -> None:
    # One agent with 10 slots; the reserve (10% of one agent) is reached only when it is
    # full: four loads of two tenants all start (three did, each load counted as an agent).
    state = _pool(Policy(mode="batched", batch_window_ms=100), {"A": {"capacity": 10}})
    for i in range(3):
        state.apply(arrive(f"acme{i}", 1, tenant="acme", risk=0.0))
    state.apply(arrive("globex0", 1, tenant="globex", risk=0.0))
    assert len(_assigned(state.apply(tick(100)))) == 4


def test_a_batch_takes_loads_until_its_loads_list_every_free_slot() -> None:
    # Three python loads want A; the rust load behind them wants only B: one batch
    # serves A and B (it stopped at two loads, both for A, and B idled window after window).
    state = _pool(_batched(), {"A": {}, "B": {"capabilities": frozenset({"rust"})}})
    for i in range(3):
        state.apply(arrive(f"py{i}", 1 + i))
    state.apply(arrive("rust", 9, required=frozenset({"rust"})))
    assert _assigned(state.apply(tick(100))) == {"py0": "A", "rust": "B"}


def test_a_load_whose_best_agents_went_to_others_takes_one_still_free() -> None:
    # 17 alike agents and loads, 16 candidates kept per load: the 17th load gets the 17th agent.
    state = _pool(_batched(), {f"x{i:02d}": {} for i in range(17)})
    for i in range(17):
        state.apply(arrive(f"L{i:02d}", 1))
    out = state.apply(tick(100))
    assert len(_assigned(out)) == 17
    assert sorted(Counter(d.reason for d in out if d.outcome is Outcome.ASSIGNED).items()) == [
        ("BATCH_OPTIMAL", 16), ("BEST_SCORE", 1)
    ]  # fmt: skip


def test_loads_no_free_agent_takes_do_not_use_up_the_batch() -> None:
    # 800 loads wait for the busy A (more than batch_max_loads + drain_limit); the rust
    # load behind them still gets the idle B in the next batch.
    policy = _batched(max_pending=10_000, high_watermark=10_000, low_watermark=10_000)
    state = _pool(policy, {"A": {"risk_budget": 1e9}, "B": {"capabilities": frozenset({"rust"})}})
    state.apply(arrive("long", 0, risk=0.0))
    state.apply(tick(1))
    for i in range(800):
        state.apply(arrive(f"py{i}", 2, risk=0.0))
    state.apply(arrive("rust", 3, required=frozenset({"rust"})))
    assert _assigned(state.apply(tick(200))) == {"rust": "B"}  # the first batch after


def test_under_hard_affinity_a_new_sessions_loads_in_one_batch_go_to_one_agent() -> None:
    state = _pool(_batched(hard_affinity=True, weights={"embedding": 1.0, "affinity": 0.5}),
                  {"A": {"capacity": 2, "personality": (1.0, 0.0)},
                   "B": {"capacity": 2, "personality": (0.0, 1.0)}})  # fmt: skip
    state.apply(arrive("S-1", 1, session_id="S", intent=(1.0, 0.0)))
    state.apply(arrive("S-2", 2, session_id="S", intent=(0.0, 1.0)))  # would go to B alone
    assert _assigned(state.apply(tick(100))) == {"S-1": "A"}  # S-2 waits to know the agent
    (d,) = [d for d in state.apply(tick(200)) if d.outcome is Outcome.ASSIGNED]
    assert (d.load_id, d.agent_id, d.reason) == ("S-2", "A", "AFFINITY")


def test_batched_mode_sheds_and_defers_nothing_the_next_batch_has_slots_for() -> None:
    state = _pool(_batched(max_pending=3, high_watermark=3, low_watermark=1),
                  {f"x{i}": {} for i in range(6)})  # fmt: skip
    out = [d for i in range(5) for d in state.apply(arrive(f"L{i}", 1, priority=Priority.LOW))]
    assert {(d.outcome, d.reason) for d in out} == {(Outcome.QUEUED, "BATCH_WINDOW")}
    assert len(_assigned(state.apply(tick(100)))) == 5
    # Beyond the free slots, the limit holds as before.
    out = [d for i in range(5, 14) for d in state.apply(arrive(f"L{i}", 101))]
    assert any(d.outcome is Outcome.SHED for d in out)


def test_a_load_kept_waiting_by_its_tenants_quota_says_so_in_batched_mode() -> None:
    state = _pool(_batched(tenant_quotas={"acme": 1}), {"A": {}, "B": {}})
    state.apply(arrive("L0", 1))
    state.apply(tick(100))
    (d,) = state.apply(arrive("L1", 101))
    assert (d.outcome, d.reason) == (Outcome.QUEUED, "TENANT_QUOTA")


def test_under_hard_affinity_a_sessions_loads_stay_together_when_its_agent_is_gone() -> None:
    policy = _batched(hard_affinity=True, weights={"embedding": 1.0, "affinity": 0.5})
    state = _pool(policy, {"A": {"capacity": 2, "personality": (1.0, 0.0)},
                           "B": {"capacity": 2, "personality": (0.0, 1.0)},
                           "C": {"capacity": 2, "personality": (0.0, 1.0)}})  # fmt: skip
    state.apply(arrive("S-0", 1, session_id="S", intent=(1.0, 0.0)))
    assert _assigned(state.apply(tick(100))) == {"S-0": "A"}
    state.apply(status("A", AgentStatusKind.OFFLINE, 3, 150))  # the session's agent is gone
    state.apply(arrive("S-1", 160, session_id="S", intent=(0.0, 1.0)))
    state.apply(arrive("S-2", 161, session_id="S", intent=(0.0, 1.0)))
    first = _assigned(state.apply(tick(300)))
    assert list(first) == ["S-1"]  # S-2 waits to learn the session's new agent
    assert _assigned(state.apply(tick(400))) == {"S-2": first["S-1"]}


def test_newer_loads_that_score_better_do_not_keep_an_older_one_waiting() -> None:
    # A alone can take these loads; each window a new load that scores better with A
    # arrives and A finishes one. The old load, left out once, goes first in the next.
    state = _pool(_batched(weights={"embedding": 1.0}),
                  {"A": {"personality": (1.0, 0.0)},
                   "B": {"capabilities": frozenset({"rust"})}})  # fmt: skip
    state.apply(arrive("warm", 1))
    state.apply(tick(100))
    state.apply(arrive("old", 105, intent=(0.0, 1.0)))  # scores low with A
    order: list[str] = []
    for k in range(4):
        t = 200 + 100 * k
        state.apply(arrive(f"new{k}", t - 50, intent=(1.0, 0.0)))
        for load_id, ls in list(state.in_flight.items()):
            state.apply(report(ls.decision_id or "", load_id, "A", TaskOutcome.SUCCESS,
                               time_ms=t - 5))  # fmt: skip
        order += [d.load_id for d in state.apply(tick(t)) if d.outcome is Outcome.ASSIGNED]
    assert order == ["new0", "old", "new1", "new2"]


def test_a_batch_that_leaves_loads_waiting_counts_them_against_the_queue_limit() -> None:
    # Ten idle agents can take none of these loads: a window's arrivals up to the free
    # slots wait for the batch; once the batch leaves them waiting, the limit holds.
    agents: dict[str, dict[str, object]] = {"A": {}}
    agents |= {f"go{i}": {"capabilities": frozenset({"go"})} for i in range(10)}
    state = _pool(_batched(max_pending=3, high_watermark=3, low_watermark=1), agents)
    state.apply(arrive("first", 1))
    state.apply(tick(100))  # A takes it
    burst = [d for i in range(12) for d in state.apply(arrive(f"w{i}", 110 + i))]
    assert not [d for d in burst if d.outcome is Outcome.SHED]  # 12 < 3 + 10 free slots
    state.apply(tick(200))  # the batch finds no free agent for them
    (d,) = state.apply(arrive("late", 210))
    assert (d.outcome, d.reason) == (Outcome.SHED, "QUEUE_FULL")


def test_a_load_held_for_its_sessions_busy_agent_says_so_in_batched_mode() -> None:
    state = _pool(_batched(hard_affinity=True, affinity_wait_ms=5_000), {"A": {}, "B": {}})
    state.apply(arrive("S-1", 10, session_id="S"))
    state.apply(tick(100))
    (d,) = state.apply(arrive("S-2", 110, session_id="S"))
    assert (d.outcome, d.reason) == (Outcome.QUEUED, "AFFINITY_WAIT")


def test_a_batch_looks_at_a_bounded_number_of_loads_no_free_agent_can_take() -> None:
    # 5,000 loads wait for the busy A, B idle for none of them: a batch pops at most
    # 4 x (batch_max_loads + drain_limit) of them (it popped and screened the whole queue,
    # 1.4 s a batch at 100k waiting), and the next leaves them parked while no agent changes.
    policy = _batched(max_pending=10**6, high_watermark=10**6, low_watermark=10**6)
    state = _pool(policy, {"A": {"risk_budget": 1e9}, "B": {"capabilities": frozenset({"rust"})}})
    state.apply(arrive("long", 0, risk=0.0))
    state.apply(tick(100))
    for i in range(5_000):
        state.apply(arrive(f"py{i}", 101, risk=0.0))
    state.apply(tick(200))
    looks = policy.batch_max_loads + policy.drain_limit
    assert len(state.queue) >= 5_000 - 4 * looks
    assert not _assigned(state.apply(tick(300)))
