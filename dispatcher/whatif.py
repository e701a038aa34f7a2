"""What-if: replay the recorded inputs under another policy and compare.

Open loop: the same arrivals, agent events and ticks, in the recorded order.
The recorded policy updates are left out of the alternative run (the policy
under test holds throughout). A worker ticks only the pools a tick can change
(``PoolState.wants_tick``), so the recorded ticks are those the recorded
policy's pools wanted: the alternative run's pools get, besides, the ticks a
worker's timer would have given them (every ``TICK_MS`` of event time, when one
can change them), so a policy that times out, expires or batches sooner is
not held back to the recorded ticks (but none where the recorded run's pool
wanted one as early: that tick is in the log). Agents' answers refer to the
recorded run's assignments; in the alternative run an answer about a load's current
assignment there is given to whoever holds the same attempt of the load, so a
load still completes when its agent reports it done. One about an attempt
the alternative run has not made yet (a batched policy, say, assigns later)
waits for it: it is given as long after that assignment as it came after the
recorded one (before the first input from then on); one whose attempt the
replay never makes is dropped, and counted. Any other is passed as recorded
(the core rejects it, as it did an answer about an earlier attempt in the
recorded run). That is an approximation: a different agent would have taken
a different time.

Loads are told apart by pool and load id (two pools may use the same id).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dispatcher import core
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import to_event
from dispatcher.codecs.codec import Codec, CodecError
from dispatcher.reading import PROGRESS_EVERY
from dispatcher.worker.fold import PartitionFold

__all__ = ["TICK_MS", "Outcomes", "Replay", "WhatIf", "compare"]

TICK_MS = 200  # how often a worker's timer ticks the pools (``WorkerConfig.tick_ms``)


@dataclass
class _Load:
    tenant: str = ""
    arrived_ms: int = 0
    deadline_ms: int | None = None
    first_agent: str | None = None
    first_ms: int | None = None
    first_score: float = 0.0
    final: str | None = None
    final_ms: int | None = None
    trail: list[tuple[str, str | None]] = field(default_factory=list)  # (outcome, agent)
    why: dict[str, Any] | None = None  # the first assignment's score parts, runner-up, ...
    last: tuple[str, str] = ("", "")  # its latest decision's outcome and reason


_Key = tuple[str, str]  # (pool, load id)


REJECTED = core.Outcome.REJECTED


@dataclass
class Outcomes:
    """What one run decided, per load (a run keeps no decision whole)."""

    loads: dict[_Key, _Load] = field(default_factory=dict)
    contents: set[tuple[Any, ...]] = field(default_factory=set)  # of its decisions (_content)
    why: bool = False  # keep why each load got its first agent (examples show the what-if run's)
    last_ms: int = 0  # the latest event time seen

    def observe(self, event: core.Event, decisions: list[core.Decision]) -> None:
        if not isinstance(event, core.PolicyChanged):  # (its time is when it takes effect)
            self.last_ms = max(self.last_ms, event.time_ms)
        # (a repeated arrival has no decision, a refused one its REJECTED)
        if isinstance(event, core.LoadArrived) and decisions and decisions[0].outcome != REJECTED:
            spec = event.load
            self.loads.setdefault((decisions[0].pool, spec.load_id),
                                  _Load(spec.tenant, event.time_ms, spec.deadline_ms))  # fmt: skip
        for d in decisions:
            self.contents.add(_content(d))
            ld = self.loads.get((d.pool, d.load_id))
            if ld is None:
                continue
            ld.trail.append((d.outcome.value, d.agent_id))
            ld.last = (d.outcome.value, d.reason)
            if d.outcome is core.Outcome.ASSIGNED and ld.first_agent is None:
                ld.first_agent, ld.first_ms, ld.first_score = d.agent_id, d.time_ms, d.score or 0.0
                if self.why:
                    ld.why = {"score_parts": dict(d.score_parts), "runner_up": d.runner_up,
                              "margin": d.margin, "candidates": d.candidates}  # fmt: skip
            if d.outcome in core.FINAL_OUTCOMES:
                ld.final, ld.final_ms = d.outcome.value, d.time_ms

    def summary(self) -> dict[str, Any]:
        tenants: dict[str, dict[str, Any]] = {}
        assigned = sum(1 for ld in self.loads.values() if ld.first_ms is not None)
        for name in sorted({ld.tenant for ld in self.loads.values()}):
            mine = [ld for ld in self.loads.values() if ld.tenant == name]
            waits = [ld.first_ms - ld.arrived_ms for ld in mine if ld.first_ms is not None]
            tenants[name] = {
                "loads": len(mine), "share": len(waits) / assigned if assigned else 0.0,
                "wait_p50_ms": _pct(waits, 50), "wait_p99_ms": _pct(waits, 99),
                "never_assigned": len(mine) - len(waits),  # (the waits leave them out)
            }  # fmt: skip
        # Due: a load with a deadline that ended (but for a cancel), or whose deadline the
        # replay passed unfinished (before, only ended loads counted: a policy that left
        # loads waiting for ever met every deadline it was held to).
        due = [ld for ld in self.loads.values()
               if ld.deadline_ms is not None and ld.final != "CANCELLED"
               and (ld.final is not None or ld.deadline_ms < self.last_ms)]  # fmt: skip
        met = sum(1 for ld in due if ld.final == "COMPLETED" and (ld.final_ms or 0) <= (
            ld.deadline_ms or 0))  # fmt: skip
        finals: dict[str, int] = {}
        for ld in self.loads.values():
            if ld.final:
                finals[ld.final] = finals.get(ld.final, 0) + 1
        return {
            "loads": len(self.loads), "assigned": assigned, "finals": dict(sorted(finals.items())),
            "shed": finals.get("SHED", 0), "sla_pct": 100.0 * met / len(due) if due else None,
            "match_score": round(sum(ld.first_score for ld in self.loads.values()), 6),
            "tenants": tenants,
        }  # fmt: skip


def _pct(values: list[int], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class WhatIf:
    recorded: dict[str, Any]
    alternative: dict[str, Any]
    changed: int  # loads whose decisions (outcome and agent, in order) differ
    decisions_changed: int  # decisions of one run the other does not have, by content
    examples: list[dict[str, Any]]
    # Agents' answers the alternative run never got: about attempts it did not make (by
    # the end of the replay), or that came due after its last input.
    answers_dropped: int = 0


def compare(
    partitions: Iterable[tuple[int, Iterable[tuple[int, bytes | None]]]], policy: core.Policy, *,
    base_policy: core.Policy = core.DEFAULT_POLICY, topic: str = "input-sequence",
    codec: Codec | None = None, examples: int = 5,
    progress: Callable[[int], None] | None = None,
) -> WhatIf:  # fmt: skip
    """Replays each partition's (offset, bytes) records as recorded and under ``policy``.

    ``progress`` is called with the number of inputs replayed so far, now and then.
    """
    replay = Replay(policy, base_policy=base_policy, topic=topic, codec=codec,
                    progress=progress)  # fmt: skip
    for partition, records in partitions:
        replay.start(partition)
        for offset, value in records:
            replay.feed(offset, value)
    return replay.result(examples)


class Replay:
    """The two runs of a what-if, fed one partition's records after another's."""

    def __init__(
        self, policy: core.Policy, *, base_policy: core.Policy = core.DEFAULT_POLICY,
        topic: str = "input-sequence", codec: Codec | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self.policy, self.base_policy, self.topic = policy, base_policy, topic
        self.codec, self.progress = codec or Codec(), progress
        self.rec_out, self.alt_out = Outcomes(), Outcomes(why=True)
        self.replayed = 0
        # Answers about attempts the alternative run has not made yet, per load: (attempt,
        # ms after the recorded assignment, the record, the event); and those made since,
        # by when they are due: (due, order, record, the event for the attempt made).
        self.later: dict[_Key, list[tuple[int, int, m.TaskResult, core.TaskReported]]] = {}
        self.due: list[tuple[int, int, m.TaskResult, core.TaskReported]] = []
        self.dropped = 0  # answers of the partitions replayed before never given
        self._order = 0

    def start(self, partition: int) -> None:
        """Starts replaying ``partition``."""
        self.partition = partition
        self.recorded = PartitionFold(self.topic, partition, self.codec, self.base_policy)
        self.alt = PartitionFold(self.topic, partition, self.codec, self.policy)
        self.holder: dict[_Key, tuple[int, str, str | None]] = {}  # attempt, decision, agent
        self.dropped += self._waiting()  # (the replay of a partition ends at its last input)
        self.later, self.due = {}, []
        # The alternative run's own ticks: (time, pool) by time, the one planned per pool,
        # and the time of the last it was given.
        self.ticks: list[tuple[int, str]] = []
        self.tick_at: dict[str, int] = {}
        self.ticked: dict[str, int] = {}

    def feed(self, offset: int, value: bytes | None) -> None:
        """Replays the partition's record at ``offset`` in both runs (one with no value, as
        one that does not decode, in neither: the worker dead-lettered it)."""
        self.replayed += 1
        if self.progress is not None and self.replayed % PROGRESS_EVERY == 0:
            self.progress(self.replayed)
        try:
            record = self.recorded.taken(value, offset)
        except CodecError:
            return  # (the worker dead-lettered it)
        event = to_event(record, (self.topic, self.partition, offset))
        if not isinstance(record, m.PolicyUpdate) and (
            (state := self.recorded.pools.get(record.pool)) is not None and state.repeats(event)
        ):  # (the alternative run's copy of an answer may say another holder: no repeat there)
            self.rec_out.observe(event, self.recorded.apply_event(record, event))
            return
        alt_event: core.Event | None = event
        if isinstance(record, m.PolicyUpdate):
            alt_event = None  # the policy under test holds throughout
        elif isinstance(event, core.TaskReported) and isinstance(record, m.TaskResult):
            alt_event = self._answer(record, event)  # (before the recorded run moves on)
        self.rec_out.observe(event, self.recorded.apply_event(record, event))
        if alt_event is None:
            return
        if not isinstance(alt_event, core.PolicyChanged):
            self._catch_up(alt_event.time_ms)
        self._alt(record, alt_event)

    def _alt(self, record: m.Record, event: core.Event) -> None:
        """Applies ``event`` to the alternative run, noting who holds what, and which
        answers waiting for an attempt it made come due when."""
        out = self.alt.apply_event(record, event)
        for d in out:
            if d.outcome is not core.Outcome.ASSIGNED:
                continue
            key = (d.pool, d.load_id)
            self.holder[key] = (d.attempt, d.decision_id, d.agent_id)
            waiting = self.later.get(key, [])
            for answer in [a for a in waiting if a[0] == d.attempt]:
                waiting.remove(answer)
                _, after, rec, e = answer
                mine = replace(e, decision_id=d.decision_id, agent_id=d.agent_id or e.agent_id)
                self._order += 1
                heapq.heappush(self.due, (d.time_ms + after, self._order, rec, mine))
        self.alt_out.observe(event, out)
        self._plan_tick(record.pool)  # type: ignore[attr-defined]  # (every input names its pool)

    def _catch_up(self, now_ms: int) -> None:
        """Gives the alternative run the answers and its own ticks due by ``now_ms``, each at
        its time, in time order (an answer before a tick at the same time)."""
        while True:
            while self.ticks and self.tick_at.get(self.ticks[0][1]) != self.ticks[0][0]:
                heapq.heappop(self.ticks)  # (replanned since, or its pool went)
            tick_at = self.ticks[0][0] if self.ticks else math.inf
            answer_at = self.due[0][0] if self.due else math.inf
            if min(tick_at, answer_at) > now_ms:
                return
            if answer_at <= tick_at:
                at, _, rec, e = heapq.heappop(self.due)
                self._alt(rec, replace(e, time_ms=at))
                continue
            at, pool = heapq.heappop(self.ticks)
            del self.tick_at[pool]
            self.ticked[pool] = at
            self._alt(
                m.Tick(pool=pool, event_time_ms=at), core.Tick(at, (self.topic, self.partition, -1))
            )

    def _plan_tick(self, pool: str) -> None:
        """Plans the alternative run's next tick of ``pool`` as a worker's timer gives it: at
        the first multiple of ``TICK_MS`` at or after the time one can change the pool
        (``PoolState.next_tick_ms``), one ``TICK_MS`` after the last at the soonest; unless
        the recorded run's pool wanted one by then (that tick is in the log: under the
        recorded policy, the two runs get the same ticks)."""
        state, recorded = self.alt.pools.get(pool), self.recorded.pools.get(pool)
        due = state.next_tick_ms() if state is not None else math.inf
        if due == math.inf or (recorded is not None and recorded.next_tick_ms() <= due):
            self.tick_at.pop(pool, None)  # (none wanted; or the recorded run's comes first)
            return
        assert state is not None  # noqa: S101 - (a pool gone wants none)
        due = max(due, state.now_ms, self.ticked.get(pool, -TICK_MS) + TICK_MS)
        at = -(-int(due) // TICK_MS) * TICK_MS
        if self.tick_at.get(pool) != at:
            self.tick_at[pool] = at
            heapq.heappush(self.ticks, (at, pool))

    def _waiting(self) -> int:
        return sum(map(len, self.later.values())) + len(self.due)

    def _answer(self, rec: m.TaskResult, e: core.TaskReported) -> core.TaskReported | None:
        """The answer ``e`` as the alternative run gets it now (None: not now)."""
        key = (rec.pool, e.load_id)
        state = self.recorded.pools.get(rec.pool)
        ls = state.loads.get(e.load_id) if state is not None else None
        mine = ls is not None and (ls.decision_id, ls.agent) == (e.decision_id, e.agent_id)
        held = self.holder.get(key)
        if mine and ls is not None and (held is None or held[0] < ls.attempt):
            # An attempt the alternative run has not made yet: the answer waits for it.
            after = e.time_ms - ls.assigned_ms
            self.later.setdefault(key, []).append((ls.attempt, after, rec, e))
            return None
        if held is None or held[2] is None:
            return None  # nobody holds it in the alternative run
        if not mine or ls is None:
            return e  # not about the load's assignment in the recorded run either
        if held[0] != ls.attempt:
            return e  # about an attempt the alternative run's holder is not on
        return replace(e, decision_id=held[1], agent_id=held[2])

    def result(self, examples: int = 5) -> WhatIf:
        rec_out, alt_out = self.rec_out, self.alt_out
        changed = [i for i, ld in rec_out.loads.items()
                   if ld.trail != alt_out.loads.get(i, _Load()).trail]  # fmt: skip
        return WhatIf(
            recorded=rec_out.summary(), alternative=alt_out.summary(), changed=len(changed),
            decisions_changed=len(rec_out.contents ^ alt_out.contents),
            examples=[_example(i, rec_out, alt_out) for i in changed[:examples]],
            answers_dropped=self.dropped + self._waiting(),
        )  # fmt: skip


def _content(d: core.Decision) -> tuple[Any, ...]:
    # The decision's content without the policy version (and so without its id).
    return (d.pool, d.load_id, d.attempt, d.outcome, d.reason, d.agent_id, d.time_ms, d.score)


def _example(key: _Key, a: Outcomes, b: Outcomes) -> dict[str, Any]:
    ra, rb = a.loads[key], b.loads.get(key, _Load())
    return {
        "pool": key[0], "load": key[1], "tenant": ra.tenant,
        "recorded": {"agent": ra.first_agent, "score": ra.first_score, "final": ra.final,
                     "wait_ms": None if ra.first_ms is None else ra.first_ms - ra.arrived_ms},
        "alternative": {"agent": rb.first_agent, "score": rb.first_score, "final": rb.final,
                        "wait_ms": None if rb.first_ms is None else rb.first_ms - rb.arrived_ms},
        # Why it went where it went in the what-if run; or, never assigned there, why it
        # waited or ended as it did.
        "why": rb.why if rb.why is not None else dict(zip(("outcome", "reason"), rb.last,
                                                          strict=True)),
    }  # fmt: skip
