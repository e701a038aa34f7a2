"""Audit's comparison of the decisions a replay expects with the logged ones, as both arrive.

The audit reads the input sequence and the decision log side by side, so the
verdict must not depend on which side runs ahead: every interleaving gives
the verdict of comparing the whole log with the whole replay at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher import audit, core
from dispatcher.audit import PartitionAudit, Scope, _Comparison
from dispatcher.codecs import Codec, CodecError
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import encode_decision, to_records
from dispatcher.demo import policy_update
from dispatcher.worker.fold import PartitionFold
from tests.unit.test_policy_whatif import recorded_run

CODEC = Codec()
WHOLE = Scope()


def _expected() -> list[tuple[bytes, core.Decision]]:
    fold = PartitionFold("input-sequence", 0, CODEC)
    out: list[core.Decision] = []
    for offset, value in recorded_run(policy_update(1), steps=6):
        out += fold.apply(value, offset)
    return [(encode_decision(CODEC, d, assignment=False)[0], d) for d in out]


EXPECTED = _expected()


def _forged(d: core.Decision) -> bytes:
    """The record of ``d`` naming another agent."""
    return CODEC.encode(to_records(d)[0].model_copy(update={"agent_id": "intruder"}))


def _other() -> bytes:
    """A decision no input of the run explains."""
    _, d = EXPECTED[0]
    return CODEC.encode(to_records(d)[0].model_copy(update={"decision_id": "f" * 32}))


def reference(
    expected: list[tuple[bytes, core.Decision]], log: Sequence[bytes | None], scope: Scope = WHOLE
) -> dict[str, Any]:
    """The verdict from the whole log and the whole replay: the log's problems in log order,
    then each distinct logged decision against the expected one of its id, in log order;
    those about decisions outside ``scope`` only counted (an undecodable record tells none)."""
    logged: dict[str, bytes] = {}
    placed: dict[str, bool] = {}  # decision id -> whether its (first) record is in the scope
    problems: list[tuple[int, str, str, bool]] = []  # ..., whether in the scope
    repeats = 0
    for value in log:
        raw = value or b""  # (a record with no value is an undecodable one)
        try:
            rec = CODEC.decode(raw, "DecisionRecord")
        except CodecError:
            problems.append((-1, "?", "(undecodable)", True))
            continue
        assert isinstance(rec, m.DecisionRecord)
        if rec.decision_id in logged:
            if logged[rec.decision_id] == raw:
                repeats += 1
            else:
                problems.append((-1, rec.decision_id, "(conflicting repeat)", scope.covers(rec)))
            continue
        logged[rec.decision_id] = raw
        placed[rec.decision_id] = scope.covers(rec)
    by_id = {d.decision_id: (eb, d) for eb, d in expected}
    pairs = [(i, *by_id[i], lb) for i, lb in logged.items() if i in by_id]
    problems += [(k, i, "differs", scope.covers(d))
                 for k, (i, eb, d, lb) in enumerate(pairs) if eb != lb]  # fmt: skip
    missing = [d for _, d in expected if d.decision_id not in logged]
    unexplained = [i for i in logged if i not in by_id]
    return {
        "matched": sum(eb == lb and scope.covers(d) for _, eb, d, lb in pairs),
        "problems": [p[:3] for p in problems if p[3]], "repeats": repeats,
        "missing": [d.decision_id for d in missing if scope.covers(d)],
        "unexplained": [i for i in unexplained if placed[i]], "logged": len(logged),
        "outside": (sum(not p[3] for p in problems) + sum(not scope.covers(d) for d in missing)
                    + sum(not placed[i] for i in unexplained)),
    }  # fmt: skip


def streamed(
    expected: list[tuple[bytes, core.Decision]], log: Sequence[bytes | None], order: list[bool],
    first_offset: int = 0, scope: Scope = WHOLE,
) -> PartitionAudit:  # fmt: skip
    """The verdict of ``_Comparison`` fed the two sides in ``order`` (True: the next expected
    decision, False: the next log record; the rest of either side after that), the log's
    records from ``first_offset`` on."""
    res = PartitionAudit(0)
    check = _Comparison(CODEC, res, scope)
    e = iter(expected)
    records = iter(SimpleNamespace(value=v, topic="decision-log", partition=0, offset=i)
                   for i, v in enumerate(log, first_offset))  # fmt: skip
    for side in order:
        if side:
            if (x := next(e, None)) is not None:
                check.expect(*x)
        elif (r := next(records, None)) is not None:
            check.log(r)
    for x in e:
        check.expect(*x)
    for r in records:
        check.log(r)
    check.finish()
    return res


def verdict(res: PartitionAudit) -> dict[str, Any]:
    return {
        "matched": res.matched,
        "problems": [(x.position, x.decision_id, x.field if x.position < 0 else "differs")
                     for x in res.mismatches],
        "repeats": res.repeats, "missing": res.missing, "unexplained": res.unexplained,
        "logged": res.logged, "outside": res.outside,
    }  # fmt: skip


def test_a_clean_log_matches_in_every_order_and_is_not_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = [v for v, _ in EXPECTED]
    assert len(log) > 20
    monkeypatch.setattr(audit, "_decode", None)  # (called, it would raise)
    for order in ([True] * len(log), [False] * len(log), [True, False] * len(log)):
        res = streamed(EXPECTED, log, order)
        assert verdict(res) == reference(EXPECTED, log)
        assert res.matched == res.expected == res.logged == len(log)
        assert res.ok


CHANGES = ["keep"] * 6 + ["drop", "repeat", "forge", "garbage", "stranger", "late", "tombstone"]
# Each cuts the run somewhere, by pool, input offset or time.
SCOPES = [WHOLE, Scope(pool="elsewhere"), Scope(start=("offset", EXPECTED[9][1].source[2])),
          Scope("p", ("time", EXPECTED[4][1].time_ms),
                ("offset", EXPECTED[-6][1].source[2]))]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_log_gets_the_verdict_of_the_whole_comparison_in_any_order(data: Any) -> None:
    log: list[bytes | None] = []
    for i, (value, d) in enumerate(EXPECTED):
        change = data.draw(st.sampled_from(CHANGES), label=f"#{i}")
        if change == "drop":
            continue
        log.append(_forged(d) if change == "forge" else value)
        if change == "repeat":
            log.append(value)
        elif change == "garbage":
            log.append(b"\x00garbage")
        elif change == "stranger":
            log.append(_other())
        elif change == "late":  # a forged repeat: a conflicting one
            log.append(_forged(d))
        elif change == "tombstone":  # a record with no value (a crash before: bytes expected)
            log.append(None)
    cut = data.draw(st.integers(0, len(EXPECTED)), label="replayed")  # a replay that stops early
    expected = EXPECTED[:cut]
    order = data.draw(st.lists(st.booleans(), max_size=2 * len(log) + cut), label="order")
    scope = data.draw(st.sampled_from(SCOPES), label="scope")
    assert verdict(streamed(expected, log, order, scope=scope)) == reference(expected, log, scope)


def test_problems_outside_the_scope_are_counted_apart_and_fail_no_audit() -> None:
    # Before, a scope changed the "checked" count only: a problem anywhere failed the audit,
    # and every decision counted as matched.
    cut = EXPECTED[len(EXPECTED) // 2][1].source[2]
    before = [i for i, (_, d) in enumerate(EXPECTED) if d.source[2] < cut]
    log: list[bytes | None] = [v for v, _ in EXPECTED]
    log[before[1]] = _forged(EXPECTED[before[1]][1])
    del log[before[2]]
    log.append(_other())  # (its input: the first decision's)
    order = [True, False] * len(log)
    later = streamed(EXPECTED, log, order, scope=Scope(start=("offset", cut)))
    assert later.ok
    assert (later.outside, later.matched) == (3, len(EXPECTED) - len(before))
    elsewhere = streamed(EXPECTED, log, order, scope=Scope(pool="elsewhere"))
    assert elsewhere.ok
    assert (elsewhere.outside, elsewhere.matched) == (3, 0)
    whole = streamed(EXPECTED, log, order)
    assert (len(whole.mismatches), len(whole.missing), len(whole.unexplained)) == (1, 1, 1)
    assert (whole.outside, whole.matched) == (0, len(EXPECTED) - 2)
    # A record that does not decode tells no pool, time or input: it counts whatever the scope.
    garbled = streamed(EXPECTED, [*log, b"\x00garbage"], order, scope=Scope(pool="elsewhere"))
    assert [x.field for x in garbled.mismatches] == ["(undecodable)"]


def test_a_record_with_no_value_is_an_undecodable_one() -> None:
    # Before, a tombstone crashed the audit (hashing or decoding None), first record or not.
    log = [v for v, _ in EXPECTED[5:]]
    for where, first_offset in ((0, 5), (3, 5), (len(log), 0)):
        res = streamed(EXPECTED, [*log[:where], None, *log[where:]], [True] * len(EXPECTED),
                       first_offset)  # fmt: skip
        assert [(x.field, x.input[2]) for x in res.mismatches] == [
            ("(undecodable)", first_offset + where)
        ]
        assert res.matched == len(log)


@pytest.mark.parametrize("behind", [True, False], ids=["log behind", "log ahead"])
def test_a_mismatch_names_its_position_and_first_differing_field(behind: bool) -> None:
    log = [v for v, _ in EXPECTED]
    k = next(i for i, (_, d) in enumerate(EXPECTED) if d.agent_id is not None)
    log[k] = _forged(EXPECTED[k][1])
    res = streamed(EXPECTED, log, [behind] * len(log))  # all expected first, or all logged
    (bad,) = res.mismatches
    assert (bad.position, bad.decision_id, bad.field) == (k, EXPECTED[k][1].decision_id,
                                                          "agent_id")  # fmt: skip
    assert (bad.expected, bad.logged) == (EXPECTED[k][1].agent_id, "intruder")
    assert bad.input == EXPECTED[k][1].source
    assert res.matched == len(log) - 1


def test_a_log_whose_records_retention_all_deleted_has_every_decision_expired() -> None:
    # Before, with no first record to say so, every expected decision was missing.
    res = PartitionAudit(0)
    check = _Comparison(CODEC, res, emptied=True)
    for x in EXPECTED:
        check.expect(*x)
    check.finish()
    assert (res.expired, res.missing, res.matched, res.logged) == (len(EXPECTED), [], 0, 0)
    assert res.ok
    # Should a worker log a decision meanwhile, the log is compared from that record on.
    res = PartitionAudit(0)
    check = _Comparison(CODEC, res, emptied=True)
    for i, (v, _) in enumerate(EXPECTED[5:], 5):
        check.log(SimpleNamespace(value=v, topic="decision-log", partition=0, offset=i))
    for x in EXPECTED:
        check.expect(*x)
    check.finish()
    assert (res.expired, res.missing, res.matched) == (5, [], len(EXPECTED) - 5)


def test_a_log_whose_oldest_records_retention_deleted_is_compared_from_its_first() -> None:
    log = [v for v, _ in EXPECTED[5:]]
    orders = ([True] * len(EXPECTED), [False] * len(log), [True, False] * len(EXPECTED))
    for order in orders:
        res = streamed(EXPECTED, log, order, first_offset=5)
        assert (res.expired, res.matched, res.missing) == (5, len(log), [])
        assert res.ok
    # What is left is still checked: a forged record, or a first record no input decides.
    forged = [*log[:3], _forged(EXPECTED[8][1]), *log[4:]]
    assert [x.decision_id for x in streamed(EXPECTED, forged, orders[2], 5).mismatches] == [
        EXPECTED[8][1].decision_id
    ]
    stranger = streamed(EXPECTED, [_other(), *log], orders[0], first_offset=4)
    assert not stranger.ok
    assert stranger.unexplained[:1] == ["f" * 32]
    # A log from offset 0 that lacks its first decisions is missing them, as before.
    assert streamed(EXPECTED, log, orders[0]).expired == 0


@pytest.mark.parametrize("behind", [True, False], ids=["log behind", "log ahead"])
def test_one_record_lost_from_the_log_is_one_gap_named_by_its_id(behind: bool) -> None:
    # Before, the n-th logged decision was held against the n-th expected one: every later
    # decision "differed", and the last expected one was named missing.
    k = len(EXPECTED) // 2
    log = [v for i, (v, _) in enumerate(EXPECTED) if i != k]
    res = streamed(EXPECTED, log, [behind] * (len(EXPECTED) + len(log)))
    assert (res.missing, res.mismatches, res.unexplained) == ([EXPECTED[k][1].decision_id], [],
                                                              [])  # fmt: skip
    assert res.matched == len(log)


def test_repeats_of_decisions_whose_first_records_retention_deleted_are_no_mismatch() -> None:
    # A restarted worker sent 2-4 again; the log now starts at the first copy of 3.
    values = [v for v, _ in EXPECTED]
    log = values[3:5] + values[2:5] + values[5:]
    for order in ([True] * len(EXPECTED), [False] * len(log)):
        res = streamed(EXPECTED, log, order, first_offset=3)
        assert (res.mismatches, res.missing, res.unexplained) == ([], [], [])
        assert (res.expired, res.repeats) == (3, 2)


def test_a_logged_decision_no_input_explains_waits_for_the_replay_only_so_far(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, it held back every later log record (and expected decision) to the end.
    monkeypatch.setattr(audit, "LOOKAHEAD", 3)
    res = PartitionAudit(0)
    check = _Comparison(CODEC, res)
    stranger = _other()
    log = [stranger] + [v for v, _ in EXPECTED]
    for i, v in enumerate(log):  # the log first, all of it (it is ahead)
        check.log(SimpleNamespace(value=v, topic="decision-log", partition=0, offset=i))
    for x in EXPECTED[:5]:
        check.expect(*x)
    assert len(check.waiting) == len(log) - 1 - 5  # the stranger went; the first 5 matched
    for x in EXPECTED[5:]:
        check.expect(*x)
    check.finish()
    assert (res.matched, res.missing, len(res.unexplained)) == (len(EXPECTED), [], 1)


def test_a_conflicting_repeat_says_where_the_repeat_is() -> None:
    log = [eb for eb, _ in EXPECTED]
    log.insert(3, _forged(EXPECTED[1][1]))  # decision 1 logged again, naming another agent
    res = streamed(EXPECTED, log, [])
    (x,) = res.mismatches
    assert (x.decision_id, x.field) == (EXPECTED[1][1].decision_id, "(conflicting repeat)")
    assert "decision-log[0]@3" in str(x.logged)
    assert "as first logged" in str(x.expected)
