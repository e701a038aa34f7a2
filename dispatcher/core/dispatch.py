"""One pool's dispatch state and the fold over its events.

``decide(state, event) -> (state, decisions)``: the state is owned by the
caller and updated in place (like h11's Connection); the same events in the
same order give the same decisions, byte for byte.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Container, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from enum import StrEnum
from fractions import Fraction
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from dispatcher.core.agents import AgentStatus, AgentTable, Match, Scored
from dispatcher.core.batch import solve
from dispatcher.core.policy import CONSTRAINTS, DEFAULT_POLICY, Policy
from dispatcher.core.queue import ServiceQueue, latest_start
from dispatcher.core.types import (
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
    Source,
    TaskOutcome,
    TaskReported,
    Tick,
)

__all__ = ["LoadState", "LoadStatus", "PoolState", "decide", "decision_id"]


_AVAILABLE = int(AgentStatus.AVAILABLE)


class LoadStatus(StrEnum):
    PENDING = "PENDING"
    DEFERRED = "DEFERRED"  # admitted under pressure, waits until the queue drains
    ASSIGNED = "ASSIGNED"  # offered to an agent, not yet accepted
    RUNNING = "RUNNING"  # accepted
    FINAL = "FINAL"


@dataclass(slots=True)
class LoadState:
    spec: LoadSpec
    seq: int  # arrival order in the pool
    status: LoadStatus = LoadStatus.PENDING
    attempt: int = 1
    agent: str | None = None
    decision_id: str | None = None  # the current assignment's
    decisions: int = 0
    not_before_ms: int = 0  # retry backoff
    assigned_ms: int = 0
    failed_epoch: int = -1  # the agent epoch at which it last found no agent
    final: Outcome | None = None
    finished_ms: int = 0
    last_match: Match | None = None
    affinity_row: int | None = None  # its session's agent when it was last matched
    tried: tuple[str, ...] = ()  # agents that declined it, failed it or did not answer
    passed: int = 0  # batches it was in and left without an agent (it goes first after)
    wait_ends: int = -1  # when its hard-affinity wait ends, as put in ``backing_off``
    entered: int = -1  # when it last entered ``pending``, in the order loads did


def decision_id(  # noqa: PLR0917 - the parts of the id, in order
    pool: str, load_id: str, attempt: int, policy_version: int, arrival: int, n: int
) -> str:
    """A hash of pool, load, attempt, policy version, the load's arrival number in the pool
    and its decision count (or, about an unknown load id, the pool's count of those).

    The arrival number keeps the ids of a load id seen again after the dedupe
    window (a new load) apart from the first one's, which readers would drop
    as repeats.
    """
    text = f"{pool}\0{load_id}\0{attempt}\0{policy_version}\0{arrival}\0{n}\0"  # NUL-ended
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


# What a task result does to a load, by (load status, reported outcome).
# A pair missing here is an illegal transition: the result is rejected, not applied.
_RESULTS: dict[tuple[LoadStatus, TaskOutcome], str] = {
    (LoadStatus.ASSIGNED, TaskOutcome.ACCEPTED): "run",
    (LoadStatus.ASSIGNED, TaskOutcome.DECLINED): "decline",
    **{(s, TaskOutcome.SUCCESS): "complete" for s in (LoadStatus.ASSIGNED, LoadStatus.RUNNING)},
    **{(s, TaskOutcome.FAILED): "fail" for s in (LoadStatus.ASSIGNED, LoadStatus.RUNNING)},
    **{(s, TaskOutcome.BLOCKED): "blocked" for s in (LoadStatus.ASSIGNED, LoadStatus.RUNNING)},
    **{
        (s, TaskOutcome.NEED_INPUT): "need_input" for s in (LoadStatus.ASSIGNED, LoadStatus.RUNNING)
    },
}


# The events remembered by key, for the dedupe window, and their key spaces: keys are unique
# per input topic (a result keyed "cancel:7" is no duplicate of the cancel of load 7).
# Agent events are not: their sequence numbers make a repeat stale (so changing nothing),
# and a pool's heartbeats would otherwise be most of its memory (10k agents beating every
# 5 s: 7.2 million keys an hour).
_KEY_SPACE = {LoadArrived: "load\0", LoadCancelled: "load\0", TaskReported: "result\0"}
_KEYED = (LoadArrived, LoadCancelled, TaskReported)
_KEY_BITS = 32  # a key's entry in ``seen``: the time it came, then (these bits) what it said
_KEY_SAID = (1 << _KEY_BITS) - 1

# A tenant running more than this times its weighted share is held back from the reserve.
_OVER_SHARE = 1.25
_T = TypeVar("_T", bound=tuple[object, ...])  # (heap entries)
_FORGET_AT_LEAST = 64  # departed agents forgotten together, at least (``_forget_departed``)

_NOTHING: frozenset[str] = frozenset()  # (each frozenset() call makes a new one)


def _kind_of(spec: LoadSpec) -> tuple[object, ...]:
    """What the agents a load could go to depend on of its own, but for its risk, tenant,
    session and the agents it had (the kinds of ``AgentTable``)."""
    return (spec.required, spec.sensitivity, spec.region)


# The classes a full queue sheds from, first to last (critical never).
_SHED_ORDER = (Priority.LOW, Priority.NORMAL, Priority.HIGH)


class _Desc(str):
    """A tenant name that sorts before the names it is greater than (``PoolState.heavy``:
    the heaviest tenant first, ties to the greatest name)."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


_Heavy = list[tuple[float, _Desc]]  # (-(waiting loads / weight), tenant)


class _NamedSum:
    """The weights a policy names for the tenants of a set, counted and summed exactly as
    tenants join and leave it: the float of the sum is fsum's over them (both are exactly
    rounded), in whatever order they came, without a pass over the set at each look."""

    __slots__ = ("count", "exact")

    def __init__(self, named: Mapping[str, float], tenants: Collection[str]) -> None:
        weights = _named_weights(named, tenants)
        self.count, self.exact = len(weights), sum(map(Fraction, weights), Fraction(0))

    def move(self, named: Mapping[str, float], tenant: str, sign: int) -> None:
        """``tenant`` joined the set (``sign`` 1) or left it (-1)."""
        if (weight := named.get(tenant)) is not None:
            self.count += sign
            self.exact += sign * Fraction(weight)

    def total(self, others: int, more: Collection[float] = ()) -> float:
        """These weights, ``more`` weights besides, and 1 for each of ``others`` tenants."""
        if not self.count and not more:
            return float(others)
        return float(self.exact + others + sum(map(Fraction, more), Fraction(0)))


class _Over:
    """The tenants ``PoolState._held`` holds back, asked one at a time: those in ``also``,
    and those whose loads in flight (``running`` plus ``extra``), times ``weights`` (the
    active tenants' weights, over the share they may run over), are more than ``total``
    times their own weight."""

    __slots__ = ("_also", "_extra", "_running", "_total", "_weight", "_weights")

    def __init__(  # noqa: PLR0917 - what the question is about, in the order it is asked
        self, running: Mapping[str, int], extra: Mapping[str, int], weights: float,
        total: int, named: Mapping[str, float], also: AbstractSet[str],
    ) -> None:  # fmt: skip
        self._running, self._extra, self._weights, self._total = running, extra, weights, total
        self._weight, self._also = named.get, also

    def __contains__(self, tenant: object) -> bool:
        if not isinstance(tenant, str):
            return False
        if tenant in self._also:
            return True
        n = self._running.get(tenant, 0) + self._extra.get(tenant, 0)
        return n * self._weights > self._total * float(self._weight(tenant, 1.0))


# Requeue reasons that make the agent "tried" for the load: it said no, failed it, or did
# not answer. (An agent going offline or lost says nothing about the load: one restarted
# takes its sessions' loads again.)
_REFUSED = frozenset({"DECLINED", "FAILED_RETRYABLE", "ACK_TIMEOUT"})
# Where the constraints that look at the load beyond its kind start (risk, tenant rules,
# tried), in CONSTRAINTS order; those before it are the agent's state and its kind's.
_STATIC = CONSTRAINTS.index("risk")


class PoolState:
    """Everything one pool's decisions depend on."""

    # Told of each assignment as it is made, with the pool as it stands then (explain
    # judges the agents at that moment: one input may make many decisions); None: nobody.
    on_assign: Callable[[PoolState, Decision], None] | None = None

    def __init__(self, pool: str, policy: Policy = DEFAULT_POLICY) -> None:
        self.pool = pool
        self.policy = policy
        self.agents = AgentTable()
        self.now_ms = 0  # event time: the newest time seen, never going back
        self.loads: dict[str, LoadState] = {}
        self.pending: dict[str, LoadState] = {}  # PENDING and DEFERRED, in arrival order
        self.queue = ServiceQueue()  # the PENDING ones, in order of service
        # Out of the queue until something changes: loads that found no agent, by kind
        # (``_kind_of``), until an agent that could take their kind changes (``woken``:
        # the rows changed since they were last looked at; None: every kind, after a
        # profile or the policy changed); and loads backing off until a time (heap by time).
        # (All of them went back at every agent change before: behind 10k loads waiting for
        # a busy agent, a load an idle agent could take waited for ever.) A kind no open
        # agent can take at all waits in the queue itself, in a closed lane of its own
        # (``_hold``), so the loads of the kind still in line join it unmatched: parked
        # one by one, 5,000 of them cost each result of the kind 256 matches, and kept a
        # load an idle agent could take behind them.
        # (Each kind keeps the spec of the load that opened it: a load's spec is stripped
        # when it ends, and one ended while parked must not stand for its kind.)
        self.parked: dict[tuple[object, ...], tuple[LoadSpec, list[LoadState]]] = {}
        self.woken: set[int] | None = set()
        self.aside: list[LoadState] = []  # loads a batch passed over with agents free for them
        # Loads no registered agent could ever take (``AgentTable.qualified``): only a
        # profile or a policy can change that, not an agent coming free (``profiles``).
        self.unqualified: dict[str, LoadState] = {}
        self.unqualified_profiles = -1
        self.stuck: dict[str, int] = {}  # tenant -> its unqualified loads
        self.backing_off: list[tuple[int, int, str]] = []
        self.in_flight: dict[str, LoadState] = {}  # ASSIGNED and RUNNING, in assignment order
        self.held: dict[str, dict[str, None]] = {}  # agent -> its loads in flight
        # session -> (the agent that served it last, when), least recently served first.
        # (An ordered dict: it is pruned from the front, where a plain dict leaves deleted
        # slots that every later look at its first item walks past: with a million keys in
        # the window, a tick took 26 ms, 560 ms at worst.)
        self.sessions: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self.served: dict[str, float] = {}  # tenant -> assignments / weight (fair share)
        self.vtime = 0.0  # the served count of the last load's tenant when it was served
        self.running: dict[str, int] = {}  # tenant -> loads in flight (quotas)
        # The tenants whose loads in flight have reached their quota (a look at every
        # quota cost each pop O(quotas), with a policy giving many tenants one); kept for
        # ``books_for``, as are ``on_named`` and ``waiting_named`` below (``_books``).
        self.at_quota: set[str] = set()
        self.backlog: dict[str, int] = {}  # tenant -> pending loads
        # The tenants with loads in flight, or waiting that an agent qualifies for
        # (``_contends``: kept, as ``_held`` asks at every pop while the pool is busy); and,
        # while loads wait, those waiting in a heap by service (``_least_served``), with
        # each one's entry (None: not ranked, as while the pool keeps up).
        self.contending: set[str] = set()
        # The weights the policy names for the tenants contending, and for those waiting
        # (``backlog``): a sum over either set cost each pop O(tenants) while the reserve
        # binds, and each low arrival above the watermark, with a policy naming many.
        self.on_named, self.waiting_named = _NamedSum({}, ()), _NamedSum({}, ())
        self.books_for: Policy | None = None  # the policy of these books (None: to be made)
        self.by_service: list[tuple[float, str]] = []
        self.ranked: dict[str, float] | None = None
        # While the queue is near full (``_heaviest``): per class it sheds from, the tenants
        # with loads of it waiting in a heap, heaviest first (an entry per change of their
        # waiting loads: those not as they are now go as they surface), and the policy
        # whose weights they are weighed with (kept, not its weights: a snapshot pickles
        # the policy, and a policy's mapping of weights does not pickle); None while not
        # asked.
        self.heavy: dict[Priority, _Heavy] | None = None
        self.heavy_policy: Policy | None = None
        # (tenant, class) -> its pending loads, in arrival order
        self.tenant_pending: dict[tuple[str, Priority], dict[str, LoadState]] = {}
        # event key -> event time and what its event said (``_keyed``), one int: a repeat
        # changes nothing, another event with the key is refused; and the keys oldest first,
        # to prune from (a plain dict and a deque: 34 bytes a key besides the key and its
        # int of 36, where an ordered dict took 72; a finished load has about three keys)
        self.seen: dict[str, int] = {}
        self.seen_order: deque[str] = deque()
        self.orphans = 0  # decisions about unknown load ids (not remembered per id)
        # Finished loads, kept for the dedupe window (``_Done``), in the order they finished;
        # ``loads`` holds the others.
        self.done: dict[str, _Done] = {}
        self.done_order: deque[str] = deque()  # (as ``seen_order``)
        # (accept by, assignment number, load id, decision id), a heap: a policy may shorten
        # the ack timeout, and later assignments then fall due before earlier ones.
        self.ack_due: list[tuple[int, int, str, str]] = []
        self.assignments = 0
        self.forgotten = 0  # departed agents forgotten (``_forget_departed``)
        # (deadline, entered, load id) of the loads below critical with a deadline that
        # entered ``pending``, a heap: the ones whose deadline passed long ago expire.
        self.deadlines: list[tuple[int, int, str]] = []
        self.entered = 0
        self.unknown_agent_events = 0  # status events of agents not registered (ignored)
        self.deferred = 0
        self.last_batch_ms = -(10**18)
        self.since_batch = 0  # loads let in since the last batch (batched mode)
        self.epoch = 0  # grows whenever agents' ability to take loads may have grown
        self.profiles = 0  # grows whenever an agent's profile or the policy changes
        # Newer policies waiting for their time, by time (and in order of arrival).
        self.scheduled: list[PolicyChanged] = []
        self.arrivals = 0

    # -- the fold ----------------------------------------------------------------------

    def apply(self, event: Event) -> list[Decision]:
        """Applies one event; returns the decisions it caused, in order."""
        key = None
        if isinstance(event, _KEYED):
            key, said, load_id = _keyed(event)
            if (before := self.seen.get(key)) is not None:
                if before & _KEY_SAID == said:
                    return []  # a repeat
                # The key of another event: a producer's mistake, refused (it was dropped
                # as a repeat: a cancel reusing its arrival's key, a result another's id).
                return [self._orphan(load_id, Outcome.REJECTED, "KEY_REUSED", event.source)]
        out: list[Decision] = []
        changed = False  # (a policy took effect with this event)
        if not isinstance(event, PolicyChanged):  # (a policy's time is when it takes effect)
            self.now_ms = max(self.now_ms, event.time_ms)
            if self.scheduled and self.scheduled[0].time_ms <= self.now_ms:
                changed = self._policy_due()
        if key is not None:
            # Stamped with the pool's clock, which never goes back: the oldest key is
            # always first, so pruning reads from the front.
            self.seen[key] = self.now_ms << _KEY_BITS | said
            self.seen_order.append(key)
        self._handle(event, out)
        if changed:
            # Served under the policy after the event, not before it: the loads its change
            # let go went to agents the event was about to take away (lost at this tick,
            # gone offline, or with less room in a new profile).
            self._drain(event.source, out)
        return out

    def repeats(self, event: Event) -> bool:
        """Whether ``event`` repeats one this pool has seen (its key, saying the same), which
        then changes nothing."""
        if not isinstance(event, _KEYED):
            return False
        key, said, _ = _keyed(event)
        before = self.seen.get(key)
        return before is not None and before & _KEY_SAID == said

    def _handle(self, event: Event, out: list[Decision]) -> None:
        match event:
            case AgentRegistered():
                self._on_agent_registered(event, out)
            case AgentStatusChanged():
                self._on_agent_status(event, out)
            case LoadArrived():
                self._on_load_arrived(event, out)
            case LoadCancelled():
                self._on_load_cancelled(event, out)
            case TaskReported():
                self._on_task_reported(event, out)
            case Tick():
                self._on_tick(event, out)
            case PolicyChanged():
                self._on_policy_changed(event, out)

    # -- agents -------------------------------------------------------------------------

    def _stale(self, agent_id: str, seq: int) -> bool:
        row = self.agents.row.get(agent_id)
        return row is not None and seq <= int(self.agents.seq[row])

    def _on_agent_registered(self, e: AgentRegistered, out: list[Decision]) -> None:
        if self._stale(e.agent_id, e.seq):
            return
        self.agents.upsert(e.agent_id, e.seq, e.time_ms, e.profile)
        self._wake(None)  # (a profile changed: any kind may match now)
        self.profiles += 1
        self._drain(e.source, out)

    def _on_agent_status(self, e: AgentStatusChanged, out: list[Decision]) -> None:
        row = self.agents.row.get(e.agent_id)
        if row is None:
            self.unknown_agent_events += 1  # (it must register first, or again)
            return
        if self._stale(e.agent_id, e.seq):
            return  # stale events are ignored
        t = self.agents
        t.seq[row] = e.seq
        t.last_seen[row] = max(int(t.last_seen[row]), e.time_ms)
        revived = e.kind is AgentStatusKind.HEARTBEAT and t.status[row] == AgentStatus.LOST
        if e.kind is AgentStatusKind.AVAILABLE or revived:
            # A lost agent that speaks again was only presumed dead (its loads were
            # requeued when it was lost; its answers about them are zombies now).
            t.set_status(row, AgentStatus.AVAILABLE)
        elif e.kind is AgentStatusKind.DRAINING:
            t.set_status(row, AgentStatus.DRAINING)
        elif e.kind is AgentStatusKind.OFFLINE:
            t.set_status(row, AgentStatus.OFFLINE)
            self._requeue_agent(e.agent_id, "AGENT_OFFLINE", e.source, out)
        if e.kind is not AgentStatusKind.HEARTBEAT or revived:
            self._wake(row)
            self._drain(e.source, out)

    def _requeue_agent(
        self, agent_id: str, reason: str, source: Source, out: list[Decision]
    ) -> None:
        for load_id in list(self.held.get(agent_id, {})):
            self._requeue(self.loads[load_id], reason, source, out)

    # -- loads ---------------------------------------------------------------------------

    def _on_load_arrived(self, e: LoadArrived, out: list[Decision]) -> None:
        spec = e.load
        if spec.load_id in self.loads or spec.load_id in self.done:
            out.append(self._orphan(spec.load_id, Outcome.REJECTED, "DUPLICATE_LOAD_ID", e.source))
            return
        ls = LoadState(spec, seq=self.arrivals)
        self.arrivals += 1
        self.loads[spec.load_id] = ls
        p = self.policy
        # A full queue bounds the loads that wait: one an open agent takes at once is let
        # in (before, a queue full of loads that no open agent could take shed it, or
        # evicted one of them for it); if it has to wait after all, room is made as for
        # any other.
        waiting = self._waiting()
        full = waiting >= p.max_pending and spec.priority is not Priority.CRITICAL
        if full and not self._takes_now(ls):
            if not self._make_room(ls, e.source, out):
                return
            full = False
        if (not full and waiting >= p.high_watermark
                and spec.priority is Priority.LOW and self._queue_hog(spec.tenant)):  # fmt: skip
            ls.status = LoadStatus.DEFERRED
            self.deferred += 1
            self._enqueue(ls)
            out.append(self._decision(ls, Outcome.DEFERRED, "HIGH_WATERMARK", e.source))
            return
        self._enqueue(ls)
        self.since_batch += 1
        self._drain(e.source, out)
        if full and ls.status is LoadStatus.PENDING and self._waiting() > p.max_pending:
            self._dequeue(ls)  # (loads before it took the agent: weighed as it came)
            if not self._make_room(ls, e.source, out):
                return
            self._enqueue(ls)
        if ls.status is LoadStatus.PENDING:
            out.append(self._queued(ls, e.source))

    def _waiting(self) -> int:
        """The loads that wait, against the queue's limit and watermarks: in batched mode,
        less those let in since the last batch that the next one has free slots for (they
        wait for the window only, not for an agent: with idle agents, a burst was shed or
        deferred); a batch that left loads waiting counts them all again."""
        n, p = len(self.pending), self.policy
        if p.mode == "batched" and n >= min(p.max_pending, p.high_watermark):
            n -= min(self.agents.free_slots(), p.batch_max_loads, self.since_batch)
        return n

    def _make_room(self, ls: LoadState, source: Source, out: list[Decision]) -> bool:
        """Sheds the load a full queue gives up for ``ls`` (``_evictable``), or else ``ls``
        itself; returns whether ``ls`` stays."""
        victim = self._evictable(ls.spec)
        if victim is None:
            self._finish(ls, Outcome.SHED, "QUEUE_FULL", source, out)
            return False
        self._finish(victim, Outcome.SHED, "QUEUE_FULL_EVICTED", source, out)
        return True

    def _takes_now(self, ls: LoadState) -> bool:
        """Whether an open agent would take ``ls`` at once, were it first in line."""
        tenant, t = ls.spec.tenant, self.agents
        if not t.open_count or self.policy.mode == "batched":  # (critical: never shed)
            return False
        if tenant in self._at_quota() or tenant in self._held(t.open_count):
            return False
        return self._match(ls)[0].row is not None

    def _queued(self, ls: LoadState, source: Source) -> Decision:
        """Says why a load waits: no agent qualifies, or some do but others come first.

        A load tried at this epoch keeps the match that failed; one not tried
        (its turn has not come, or the batch decides) is only counted against
        the hard constraints, not scored: under a backlog, every arrival waits.
        """
        p = self.policy
        last = ls.last_match if ls.failed_epoch == self.epoch else None
        if last is not None:  # (agents that qualify, none chosen: held for its session's)
            reason = "AFFINITY_WAIT" if last.candidates else "NO_CANDIDATE"
            return self._decision(ls, Outcome.QUEUED, reason, source, last)
        rows, excluded = self.agents.feasible(
            ls.spec, p, p.tenant_deny.get(ls.spec.tenant, frozenset()), ls.tried
        )
        counted = Match(None, None, (), len(rows), excluded, None, None)
        if not len(rows):
            reason = "NO_CANDIDATE"
        elif ls.spec.tenant in self._at_quota():
            reason = "TENANT_QUOTA"
        elif ls.spec.tenant in self._held(self.agents.open_count):
            reason = "FAIR_SHARE_RESERVE"
        elif p.mode == "batched" and ls.spec.priority is not Priority.CRITICAL:
            reason = "AFFINITY_WAIT" if self._affinity(ls)[1] else "BATCH_WINDOW"
        else:
            reason = "WAITING_TURN"
        return self._decision(ls, Outcome.QUEUED, reason, source, counted)

    def _on_load_cancelled(self, e: LoadCancelled, out: list[Decision]) -> None:
        ls = self.loads.get(e.load_id)
        if ls is None and e.load_id in self.done:
            out.append(self._about_done(e.load_id, "ALREADY_FINAL", e.source))
        elif ls is None:
            out.append(self._orphan(e.load_id, Outcome.REJECTED, "UNKNOWN_LOAD", e.source))
        else:
            freed = ls.agent is not None
            self._finish(ls, Outcome.CANCELLED, "CANCELLED", e.source, out)
            if freed:
                self._drain(e.source, out)

    def _on_task_reported(self, e: TaskReported, out: list[Decision]) -> None:
        ls = self.loads.get(e.load_id)
        if ls is None and e.load_id in self.done:  # (a finished load is no agent's: a zombie)
            out.append(self._about_done(e.load_id, "ZOMBIE_RESULT", e.source, agent=e.agent_id))
            return
        if ls is None:
            out.append(self._orphan(e.load_id, Outcome.REJECTED, "UNKNOWN_LOAD", e.source))
            return
        if ls.decision_id != e.decision_id or ls.agent != e.agent_id:
            # A zombie: the load is no longer this agent's (requeued, reassigned or final).
            out.append(
                self._decision(ls, Outcome.REJECTED, "ZOMBIE_RESULT", e.source, agent=e.agent_id)
            )
            return
        action = _RESULTS.get((ls.status, e.outcome))
        if action is None:
            reason = f"ILLEGAL_{ls.status.value}_{e.outcome.value}"[:64]
            out.append(self._decision(ls, Outcome.REJECTED, reason, e.source, agent=e.agent_id))
            return
        if action == "run":
            ls.status = LoadStatus.RUNNING
            return
        if action == "decline":
            self._requeue(ls, "DECLINED", e.source, out)
        elif action == "complete":
            self._finish(ls, Outcome.COMPLETED, "SUCCESS", e.source, out)
        elif action == "fail" and e.retryable:
            self._requeue(ls, "FAILED_RETRYABLE", e.source, out)
        else:  # fail, blocked, need_input: handed back to the producer
            self._finish(ls, Outcome.FAILED, action.upper(), e.source, out)
        self._drain(e.source, out)

    # -- time and policy ---------------------------------------------------------------------

    def _on_tick(self, e: Tick, out: list[Decision]) -> None:
        now, p, t = self.now_ms, self.policy, self.agents
        for row in np.flatnonzero(self._silent(now)):
            # A draining agent was leaving: gone silent, it has left (a heartbeat revives
            # only a lost agent, which then takes new loads again).
            draining = t.status[row] == AgentStatus.DRAINING
            t.set_status(int(row), AgentStatus.OFFLINE if draining else AgentStatus.LOST)
            self._requeue_agent(t.ids[row], "AGENT_LOST", e.source, out)
        while self.ack_due and self.ack_due[0][0] < now:
            ls = self._unacked(heapq.heappop(self.ack_due))
            if ls is not None:
                self._requeue(ls, "ACK_TIMEOUT", e.source, out)
        if p.expire_after_deadline_ms is not None:
            for ls in self._expired(now - p.expire_after_deadline_ms):
                self._finish(ls, Outcome.SHED, "EXPIRED", e.source, out)
        self._prune(now - p.dedupe_window_ms)
        self._forget_departed(now)
        if p.mode == "batched" and now - self.last_batch_ms >= p.batch_window_ms:
            self.last_batch_ms, self.since_batch = now, 0
            self._batch(e.source, out)
        self._drain(e.source, out)

    def _alive(self) -> npt.NDArray[np.bool_]:
        """Which agents are available or draining: those a silence makes lost (``_silent``),
        and the others those ``_departed`` may forget."""
        status = self.agents.status[: self.agents.n]
        alive: npt.NDArray[np.bool_] = (status == AgentStatus.AVAILABLE) | (
            status == AgentStatus.DRAINING
        )
        return alive

    def _silent(self, now_ms: int) -> npt.NDArray[np.bool_]:
        """Which agents are lost at ``now_ms``: alive, and not heard of for longer than the
        policy's heartbeat timeout."""
        t = self.agents
        silent: npt.NDArray[np.bool_] = self._alive() & (
            t.last_seen[: t.n] + self.policy.heartbeat_timeout_ms < now_ms
        )
        return silent

    def _expired(self, before_ms: int) -> list[LoadState]:
        """The loads waiting, below critical (one is never shed), whose deadline is before
        ``before_ms``, in the order they entered ``pending``. (A pass over every load
        waiting at every tick cost 5.9 ms with 100k waiting.)"""
        due = []
        while self.deadlines and self.deadlines[0][0] < before_ms:
            ls = self._still_waiting(heapq.heappop(self.deadlines))
            if ls is not None:
                due.append(ls)
        due.sort(key=lambda ls: ls.entered)
        return due

    def _still_waiting(self, entry: tuple[int, int, str]) -> LoadState | None:
        """The load of a ``deadlines`` entry, if it still waits since it entered then (else
        it left, or left and came back)."""
        ls = self.pending.get(entry[2])
        return ls if ls is not None and ls.entered == entry[1] else None

    def _unacked(self, entry: tuple[int, int, str, str]) -> LoadState | None:
        """The load of an ``ack_due`` entry, if it still waits for the acceptance of that
        same assignment."""
        ls = self.loads.get(entry[2])
        if ls is not None and ls.status is LoadStatus.ASSIGNED and ls.decision_id == entry[3]:
            return ls
        return None

    def idle(self) -> bool:
        """Whether nothing here sets this pool apart from a new one under the same policies
        that goes on from its ``carried``, beyond its tenants' fair-share service: no
        agent, no load waiting, in flight or finished within the dedupe window, no event
        key, no session. (Its fold then drops it: a record naming a pool once, a stray
        tick, made a pool kept for ever and looked at by every timer.)"""
        return not (self.agents.n or self.pending or self.in_flight or self.seen
                    or self.done or self.sessions)  # fmt: skip

    def carried(self) -> tuple[int, int, int] | None:
        """What a pool made anew in this one's place goes on from (``go_on_from``): the
        counts decision ids are made with (arrivals, decisions about unknown load ids),
        else its decisions would repeat ids this one gave, which readers drop as repeats;
        and its clock, which never goes back (a record stamped earlier would be decided
        under an older policy than this pool ran). None when nothing is to be carried: no
        load came, no decision about an unknown one, no agent forgotten (a stray tick:
        the next record is decided as in a pool it never made)."""
        if not (self.arrivals or self.orphans or self.forgotten):
            return None
        return self.arrivals, self.orphans, self.now_ms

    def go_on_from(self, carried: tuple[int, int, int]) -> None:
        """Gives a new pool what the one it replaces ``carried``."""
        self.arrivals, self.orphans, self.now_ms = carried

    def wants_tick(self, now_ms: int) -> bool:
        """Whether a tick at ``now_ms`` can change anything here (``next_tick_ms``)."""
        return self.next_tick_ms() <= now_ms

    def next_tick_ms(self) -> float:
        """When a tick first can change anything here, as the pool stands (-inf: one can
        now; inf: none can before an input comes): what ``_on_tick`` looks at. Loads
        waiting whose time comes (deadline, backoff or affinity wait, escalation, a batch),
        or an open agent and loads in the queue (an event's drain stops after
        ``drain_limit`` tries), or what the last event left to a drain (loads a batch
        passed over, kinds or loads to wake, deferred ones to let in); an assignment not
        acknowledged in time; an agent silent for longer than the heartbeat timeout; a
        policy whose time comes; event keys, sessions or finished loads the dedupe window
        passes; departed agents to forget. Not loads that only wait for an agent to free
        up or to qualify: an input changes that.

        (A pool whose only state is a key of one stray record was ticked five times a
        second for the whole window, an hour by default; and so was every pool with an
        agent available, a load in flight or a load waiting for an agent to qualify, each
        tick a record of the input sequence: a demo of 300 pools at 20 loads/s made 1,500
        ticks a second.) Ticks are inputs: one not given changes the decisions after it
        only through the pool's clock (an event stamped before the tick it would have
        had, or a policy stamped at or before it, applies at its own time), and in
        batched mode through the batches' times (a batch with no load waiting moves them
        too).
        """
        p, t, q = self.policy, self.agents, self.queue
        window = p.dedupe_window_ms
        times: list[float] = [math.inf]
        if self.pending:
            expire = p.expire_after_deadline_ms
            if ((t.open_count and len(q)) or self.aside or self.woken is None or self.woken
                    or (self.unqualified and self.unqualified_profiles != self.profiles)
                    or self._readmits()):  # fmt: skip
                return -math.inf
            if p.mode == "batched":
                times.append(self.last_batch_ms + p.batch_window_ms)
            times.append(q.next_due())
            if self.backing_off:
                times.append(self.backing_off[0][0])
            if expire is not None and self.deadlines:
                times.append(self.deadlines[0][0] + expire + 1)  # (shed once passed by more)
        if self.ack_due:
            times.append(self.ack_due[0][0] + 1)  # (requeued once passed)
        if t.n:  # (an alive agent is lost once silent for longer: ``_silent``)
            # (all available, the common case: one pass, not three)
            alive = None if t.available_count == t.n else self._alive()
            seen = t.last_seen[: t.n] if alive is None else t.last_seen[: t.n][alive]
            if seen.size:
                times.append(int(seen.min()) + p.heartbeat_timeout_ms + 1)
        if self.scheduled:
            times.append(self.scheduled[0].time_ms)
        if self.seen_order:  # (each forgotten once older than the window: ``_prune``)
            times.append((self.seen[self.seen_order[0]] >> _KEY_BITS) + window + 1)
        if self.sessions:
            times.append(next(iter(self.sessions.values()))[1] + window + 1)
        if self.done_order:
            times.append(self.done[self.done_order[0]][0] + window + 1)
        times.append(self._departs_at())
        return min(times)

    def _departs_at(self) -> float:
        """When ``_departed`` first names agents to forget, as the pool stands."""
        t = self.agents
        n = t.n
        k = max(_FORGET_AT_LEAST, n // 8)  # (that many, heard of longest ago)
        if n - t.available_count < k:  # (an idle agent is no available one: too few)
            return math.inf
        seen = t.last_seen[:n][self._idle()]
        if len(seen) < k:
            return math.inf
        return int(np.partition(seen, k - 1)[k - 1]) + self.policy.forget_departed_ms + 1

    def _on_policy_changed(self, e: PolicyChanged, out: list[Decision]) -> None:
        """Applies a newer policy from its time on: now, or at the first event at or after
        it (the pool's clock does not move to a time a policy names)."""
        if not isinstance(e.policy, Policy) or e.policy.version <= self.policy.version:
            return  # policies only move forward; a replayed older one changes nothing
        bisect.insort(self.scheduled, e, key=lambda x: x.time_ms)  # after those due as early
        if e.time_ms <= self.now_ms and self._policy_due():
            self._drain(e.source, out)

    def _policy_due(self) -> bool:
        """Applies the scheduled policies whose time has come (a newer version only);
        whether one did (the queue is then to be drained)."""
        changed = False
        while self.scheduled and self.scheduled[0].time_ms <= self.now_ms:
            policy = self.scheduled.pop(0).policy
            assert isinstance(policy, Policy)  # noqa: S101 - checked when scheduled
            if policy.version > self.policy.version:
                self.policy, changed = policy, True
        if changed:
            # Those scheduled later, older than the policy now, will never apply.
            now = self.policy.version
            self.scheduled = [e for e in self.scheduled if getattr(e.policy, "version", -1) > now]
            self._wake(None)
            self.profiles += 1
        return changed

    def _prune(self, before_ms: int) -> None:
        """Forgets event keys, finished loads and sessions older than the dedupe window.

        Each is visited oldest first and only as far as they are old, so a
        tick costs what it removes, not the size of the window.
        """
        seen, order = self.seen, self.seen_order
        while order and seen[order[0]] >> _KEY_BITS < before_ms:
            del seen[order.popleft()]
        while self.sessions and next(iter(self.sessions.values()))[1] < before_ms:
            _, (agent, _) = self.sessions.popitem(last=False)
            row = self.agents.row.get(agent)
            if self.policy.hard_affinity and row is not None and self.woken is not None:
                # Loads held for the session's agent may go to any agent now: the parked
                # kinds that agent could take are looked at again.
                self.woken.add(row)
        done, order = self.done, self.done_order
        while order and done[order[0]][0] < before_ms:
            del done[order.popleft()]

    def _departed(self, now_ms: int) -> npt.NDArray[np.intp] | None:
        """The rows of the agents to forget at ``now_ms`` (None: too few to bother): not
        available (registered only, offline or lost), holding no load, not heard of for
        the policy's ``forget_departed_ms``, once they are an eighth of the pool's agents
        (at least 64: the table is rebuilt)."""
        t = self.agents
        n = t.n
        if n < _FORGET_AT_LEAST:  # (as few gone as that: none forgotten; a cheap look)
            return None
        gone = self._idle() & (t.last_seen[:n] < now_ms - self.policy.forget_departed_ms)
        if np.count_nonzero(gone) < max(_FORGET_AT_LEAST, n // 8):
            return None
        return np.flatnonzero(gone)

    def _idle(self) -> npt.NDArray[np.bool_]:
        """Which agents ``_departed`` may forget once not heard of for long: not alive (only
        registered, offline or lost) and holding no load."""
        idle: npt.NDArray[np.bool_] = ~self._alive() & (self.agents.active[: self.agents.n] == 0)
        return idle

    def _forget_departed(self, now_ms: int) -> None:
        """Forgets the agents ``_departed`` names. A pool whose agents come and go, a new
        id each time, kept every one it had seen, and its matches looked at them all.
        One that comes back must register again (its events are an unknown agent's until
        then, counted in ``unknown_agent_events``)."""
        rows = self._departed(now_ms)
        if rows is None:
            return
        t = self.agents
        ids = t.ids
        for row in rows:
            self.held.pop(ids[row], None)
        t.forget(rows)
        self.forgotten += len(rows)
        for ls in self.loads.values():  # (explain scores its session's agent by row)
            if ls.affinity_row is not None:
                ls.affinity_row = t.row.get(ids[ls.affinity_row])
        self._wake(None)  # (rows moved: those woken by row before are stale)

    # -- the queue and matching ------------------------------------------------------------

    def _enqueue(self, ls: LoadState) -> None:
        tenant = ls.spec.tenant
        if self.backlog.get(tenant, 0) <= self.stuck.get(tenant, 0):
            # A tenant coming back from idle starts at the least service among the
            # tenants still waiting (none waiting: where service has got to), not with
            # credit it saved while it was away, nor owing what others got meanwhile.
            # (Loads no agent qualifies for do not count: their tenant's service stays
            # where it was, and would give every returning tenant a head start.)
            floor = self.vtime
            if self.backlog and (least := self._least_served()) is not None:  # (else none waits)
                floor = least
            self.served[tenant] = max(self.served.get(tenant, 0.0), floor)
        waits = self.backlog[tenant] = self.backlog.get(tenant, 0) + 1
        if waits == 1:
            self.waiting_named.move(self.policy.tenant_weights, tenant, 1)
        if waits > self.stuck.get(tenant, 0):  # (``_contends``, in short: it can only join)
            self._contend(tenant, True)
            if self.ranked is not None and tenant not in self.ranked:
                self._rank(tenant)
        self.tenant_pending.setdefault((tenant, ls.spec.priority), {})[ls.spec.load_id] = ls
        self.pending[ls.spec.load_id] = ls
        if self.heavy is not None:
            self._weigh(tenant)
        ls.entered, self.entered = self.entered, self.entered + 1
        deadline = ls.spec.deadline_ms
        if deadline is not None and ls.spec.priority is not Priority.CRITICAL:
            heapq.heappush(self.deadlines, (deadline, ls.entered, ls.spec.load_id))
            if len(self.deadlines) > 2 * len(self.pending) + 64:  # (entries of loads gone)
                self.deadlines = _sifted(self.deadlines, self._still_waiting)
        if ls.status is LoadStatus.PENDING:
            self._push(ls)

    def _push(self, ls: LoadState) -> None:
        if ls.not_before_ms > self.now_ms:
            heapq.heappush(self.backing_off, (ls.not_before_ms, ls.seq, ls.spec.load_id))
            return
        spec = ls.spec
        self.queue.push(spec.load_id, spec.tenant, int(spec.priority), ls.seq,
                        latest_start(spec.deadline_ms, spec.duration_ms))  # fmt: skip

    def _dequeue(self, ls: LoadState) -> None:
        self.queue.discard(ls.spec.load_id)
        if self.pending.pop(ls.spec.load_id, None) is not None:
            tenant = ls.spec.tenant
            _less(self.backlog, tenant)
            if tenant not in self.backlog:
                self.waiting_named.move(self.policy.tenant_weights, tenant, -1)
            if not self.backlog and self.ranked is not None:  # (none waits: ranked no more)
                self.by_service, self.ranked = [], None
            waiting = self.tenant_pending[tenant, ls.spec.priority]
            del waiting[ls.spec.load_id]
            if not waiting:
                del self.tenant_pending[tenant, ls.spec.priority]
            if self.unqualified.pop(ls.spec.load_id, None) is not None:
                _less(self.stuck, tenant)
            if tenant not in self.running:  # (``_contends``, in short: it can only leave)
                self._contends(tenant)
            if self.heavy is not None:  # (weighed while the queue is near full)
                if len(self.pending) < self.policy.max_pending // 2:
                    self.heavy = None
                else:
                    self._weigh(tenant)
            if ls.status is LoadStatus.DEFERRED:
                self.deferred -= 1

    def _contends(self, tenant: str) -> None:
        """Notes whether ``tenant`` has loads in flight, or waiting that an agent qualifies
        for (``contending``; the waiting ones ranked by service), after one of those
        counts changed."""
        waits = self.backlog.get(tenant, 0) > self.stuck.get(tenant, 0)
        self._contend(tenant, waits or tenant in self.running)
        if waits:
            self._rank(tenant)

    def _contend(self, tenant: str, contends: bool) -> None:
        """Puts ``tenant`` in ``contending`` or takes it out, its named weight with it."""
        if (tenant in self.contending) is contends:
            return
        if contends:
            self.contending.add(tenant)
        else:
            self.contending.discard(tenant)
        self.on_named.move(self.policy.tenant_weights, tenant, 1 if contends else -1)

    def _books(self) -> None:
        """Makes ``at_quota``, ``on_named`` and ``waiting_named`` anew if the policy is not
        theirs (they follow the tenants as loads come and go, by the policy they were made
        for)."""
        p = self.policy
        if self.books_for is not p:
            running, named = self.running, p.tenant_weights
            self.at_quota = {t for t, q in p.tenant_quotas.items() if running.get(t, 0) >= q}
            self.on_named = _NamedSum(named, self.contending)
            self.waiting_named = _NamedSum(named, self.backlog)
            self.books_for = p

    def _rank(self, tenant: str) -> None:
        """Ranks ``tenant``, whose loads wait now, by service, if tenants are ranked."""
        ranked = self.ranked
        if ranked is not None and tenant not in ranked:
            ranked[tenant] = service = self.served.get(tenant, 0.0)
            heapq.heappush(self.by_service, (service, tenant))

    def _least_served(self) -> float | None:
        """The least service of the tenants with loads waiting that an agent qualifies for
        (None: none waits), called while some wait. They are ranked in a heap
        (``by_service``) from the first call until none waits (``_dequeue``); entries are
        put right as they surface: a tenant served since is ranked again (service only
        grows), one no longer waiting goes (a look at each tenant cost 0.9 ms an arrival
        with 10,000 of them waiting)."""
        backlog, stuck = self.backlog, self.stuck
        heap, ranked = self.by_service, self.ranked
        if ranked is None or len(ranked) > 2 * len(backlog) + 64:  # (or most have gone)
            ranked = self.ranked = {t: self.served.get(t, 0.0) for t, n in backlog.items()
                                    if n > stuck.get(t, 0)}  # fmt: skip
            heap = self.by_service = [(v, t) for t, v in ranked.items()]
            heapq.heapify(heap)
        while heap:
            service, tenant = heap[0]
            if backlog.get(tenant, 0) <= stuck.get(tenant, 0):
                heapq.heappop(heap)
                del ranked[tenant]
            elif (now := self.served.get(tenant, 0.0)) != service and not math.isnan(now):
                heapq.heapreplace(heap, (now, tenant))
                ranked[tenant] = now
            else:
                return service
        return None

    def _evictable(self, spec: LoadSpec) -> LoadState | None:
        """The load a full queue sheds to admit ``spec`` (None: ``spec`` itself is shed).

        Priority first, then fair share: the least important class waiting, never
        critical nor more important than ``spec``; within it, the newest load of
        the tenant holding most of the queue for its weight (so one tenant's flood
        cannot crowd the others out of admission), and in ``spec``'s own class
        only if that is more than ``spec``'s tenant would hold with it.
        """
        p = self.policy
        mine = (self.backlog.get(spec.tenant, 0) + 1) / p.tenant_weight(spec.tenant)
        for cls in _SHED_ORDER:
            if cls < spec.priority:  # (a lower value is more important)
                return None
            heavy = self._heaviest(cls)
            if heavy is None:
                continue
            if cls == spec.priority and heavy[0] <= mine:
                return None
            return next(reversed(self.tenant_pending[heavy[1], cls].values()))
        return None

    def _heaviest(self, cls: Priority) -> tuple[float, str] | None:
        """The tenant with loads of class ``cls`` waiting that holds the most waiting loads
        for its weight (ties: the greatest name), and that share; None: none waits. From
        heaps of the tenants (``heavy``) kept while the queue is near full: a look at each
        tenant cost 2.1 ms an arrival at a full queue with 10,000 tenants waiting."""
        p, backlog, pending = self.policy, self.backlog, self.tenant_pending
        if self.heavy is None or self.heavy_policy is not p:
            self.heavy = {c: [] for c in _SHED_ORDER}
            self.heavy_policy = p
            for t, c in pending:
                if c in self.heavy:
                    self.heavy[c].append((-(backlog[t] / p.tenant_weight(t)), _Desc(t)))
            for heap in self.heavy.values():
                heapq.heapify(heap)
        heap = self.heavy[cls]
        while heap:
            share, tenant = heap[0]
            if (tenant, cls) in pending and share == -(backlog[tenant] / p.tenant_weight(tenant)):
                return -share, str(tenant)
            heapq.heappop(heap)  # (not as it is now: a newer entry of it says how it is)
        return None

    def _weigh(self, tenant: str) -> None:
        """Weighs ``tenant``, whose waiting loads changed, anew in ``heavy`` (its heaps go
        once they are mostly entries that no longer hold: made anew when next asked)."""
        assert self.heavy is not None  # noqa: S101 - called while kept
        share = -(self.backlog.get(tenant, 0) / self.policy.tenant_weight(tenant))
        for cls, heap in self.heavy.items():
            if (tenant, cls) in self.tenant_pending:
                heapq.heappush(heap, (share, _Desc(tenant)))
                if len(heap) > 2 * len(self.pending) + 64:
                    self.heavy = None
                    return

    def _queue_hog(self, tenant: str) -> bool:
        """Whether ``tenant``, with one more load waiting, would hold at least its weighted
        share of the waiting loads (a flood's low loads are deferred, not the others')."""
        p, backlog = self.policy, self.backlog
        mine = p.tenant_weight(tenant)
        # The weights of the others waiting: those the policy names, and 1 for each other
        # (exactly rounded, so alike in any order the tenants came).
        self._books()
        waiting = self.waiting_named
        if tenant in backlog and tenant in p.tenant_weights:
            rest = waiting.exact - Fraction(mine)
            others = len(backlog) - waiting.count
            weights = mine + float(rest + others)
        else:
            weights = mine + waiting.total(len(backlog) - (tenant in backlog) - waiting.count)
        return (self.backlog.get(tenant, 0) + 1) * weights >= (len(self.pending) + 1) * mine

    def _readmits(self) -> bool:
        """Whether the deferred loads are let in again: the others waiting are below the low
        watermark, or none waits (with a watermark of 0 they would never leave)."""
        others = len(self.pending) - self.deferred
        return bool(self.deferred) and others < max(self.policy.low_watermark, 1)

    def _drain(self, source: Source, out: list[Decision]) -> None:
        """Serves waiting loads, in order of service, while agents have room; first readmits
        the deferred ones if the others waiting are below the low watermark, or none waits
        (counting the deferred ones, or with a watermark of 0, they never left)."""
        if self._readmits():
            for ls in [x for x in self.pending.values() if x.status is LoadStatus.DEFERRED]:
                ls.status = LoadStatus.PENDING
                self.deferred -= 1
                self._push(ls)
                out.append(self._decision(ls, Outcome.QUEUED, "READMITTED", source))
        self._unpark()
        self.queue.escalate(self.now_ms)
        self._serve(source, out)
        if self.woken is None:  # (a session moved: its loads held for its old agent may go)
            self._unpark()
            self._serve(source, out)

    def _serve(self, source: Source, out: list[Decision]) -> None:
        """``_drain``'s loop: the next loads in order of service, while agents have room."""
        limit, tries = self.policy.drain_limit, 0
        free = self.agents.open_count > 0  # changes only when this loop assigns
        critical_only = self.policy.mode == "batched"  # the rest waits for the batch
        reserve = self.policy.fair_share_reserve * self.agents.available_count
        aside = self.queue.closed()  # (live: the kinds set aside, ``_hold``)
        while free and tries < limit and self.queue:  # (an arrival taken leaves it empty)
            quota = self._at_quota()  # (the reserve, checked here: most pops are far from it)
            open_count = self.agents.open_count
            skip = self._held(open_count, also=quota) if open_count <= reserve else quota
            load_id = self.queue.pop(
                self.served, tenant_first=self.policy.tenant_first, critical_only=critical_only,
                skip=skip,
            )  # fmt: skip
            if load_id is None:
                break
            ls = self.pending[load_id]
            if aside and self._held_back(ls):
                continue  # (no try: a kind set aside is not looked at load by load)
            tries += 1
            self._try_assign(ls, source, out)
            if ls.status is not LoadStatus.PENDING:  # (else parked, until agents change)
                free = self.agents.open_count > 0

    def _held(
        self, open_agents: int, extra: dict[str, int] | None = None,
        also: AbstractSet[str] = frozenset(),
    ) -> Container[str]:  # fmt: skip
        """The tenants that may not take the last open agents (policy ``fair_share_reserve``),
        and those in ``also``: with ``open_agents`` down to the reserve, those whose loads
        in flight (plus ``extra``) are more than a quarter above their weighted share of all
        loads in flight, among the tenants with loads in flight or waiting (tenants sharing
        the pool evenly are not held back from each other). Their loads wait, critical ones
        too (they come first again once an agent beyond the reserve is free). Asked tenant
        by tenant (``_Over``): a set of them cost every pop a look at each tenant with
        loads in flight (0.9 ms a task result, 10,000 agents busy for 10,000 tenants)."""
        p = self.policy
        reserve = p.fair_share_reserve * self.agents.available_count
        # (None kept: none held, though a batch, counting each load it takes as closing an
        # agent, counts fewer open agents than 0.)
        if not reserve or open_agents > reserve:
            return also
        active = self.contending  # (their loads' tenants, and those with loads in flight)
        joining: set[str] = set()
        total = len(self.in_flight)  # (the loads in flight: ``running`` summed)
        if extra:
            joining = extra.keys() - active
            total += sum(extra.values())
        if len(active) + len(joining) < 2:
            return also
        # The sum of their weights (exactly rounded, so alike in any order the tenants
        # came): those the policy names, and 1 for each other.
        self._books()
        named, on = p.tenant_weights, self.on_named
        more = _named_weights(named, joining)
        others = len(active) + len(joining) - on.count - len(more)
        weights = on.total(others, more) / _OVER_SHARE
        return _Over(self.running, extra or {}, weights, total, named, also)

    def _at_quota(self, extra: dict[str, int] | None = None) -> AbstractSet[str]:
        """Tenants whose loads in flight (plus ``extra``) have reached their quota (without
        ``extra``, ``at_quota`` itself: to be asked, not kept)."""
        quotas, running = self.policy.tenant_quotas, self.running
        if not quotas:
            return frozenset()
        self._books()
        if not extra:
            return self.at_quota
        return self.at_quota | {
            t for t, n in extra.items()
            if (q := quotas.get(t)) is not None and running.get(t, 0) + n >= q
        }  # fmt: skip

    def _unpark(self) -> None:
        """Returns to the queue the loads that may match now."""
        if self.unqualified and self.unqualified_profiles != self.profiles:
            for ls in self.unqualified.values():
                self._park(ls)
            stuck, self.unqualified, self.stuck = self.stuck, {}, {}
            for tenant in stuck:
                self._contends(tenant)
            self.woken = None
        back: list[LoadState] = []
        if self.woken is None or self.woken:  # (kept while empty: most events wake none)
            if self.parked or self.queue.holds():
                back = self._woken_kinds()
            self.woken = set()
        if self.aside:  # (a batch passed them over: the next one looks again)
            back, self.aside = back + self.aside, []
        if back:
            for ls in back:
                load_id = ls.spec.load_id
                if (self.pending.get(load_id) is ls and ls.status is LoadStatus.PENDING
                        and load_id not in self.queue
                        and load_id not in self.unqualified):  # fmt: skip
                    self._push(ls)
        while self.backing_off and self.backing_off[0][0] <= self.now_ms:
            load_id = heapq.heappop(self.backing_off)[2]
            due = self.pending.get(load_id)
            if (due is not None and due.status is LoadStatus.PENDING and load_id not in self.queue
                    and load_id not in self.unqualified):  # fmt: skip
                self._push(due)

    def _woken_kinds(self) -> list[LoadState]:
        """Reopens the queue's lanes (``_hold``) of the kinds an agent ``woken`` could take,
        and returns the loads parked by those kinds."""
        woken = None if self.woken is None else np.fromiter(self.woken, np.intp)
        if woken is None and self.queue.holds():
            self._requalify()
        back: list[LoadState] = []
        for kind, (spec, loads) in list(self.parked.items()):
            if woken is None or self.agents.any_of_kind(woken, spec, self.policy):
                back += loads
                del self.parked[kind]
        for lane, tag in list(self.queue.closed().items()):
            assert isinstance(tag, LoadSpec)  # noqa: S101 - ``_hold``'s tags
            if woken is None or self.agents.any_of_kind(woken, tag, self.policy):
                self.queue.reopen(lane)
        return back

    def _requalify(self) -> None:
        """After a profile, the policy or the agents changed (woken None): the loads set aside
        (``_hold``) that no agent could take now go to the unqualified, as they would when
        their turn came; else one still in its kind's lane when it closed again stayed
        there, and ``stuck`` missed it (a review: only with more than 64 loads of the kind,
        which stay a lane when it reopens)."""
        p, ceilings = self.policy, {}
        for load_id in self.queue.held():
            ls = self.pending[load_id]
            spec = ls.spec
            key = (_kind_of(spec), spec.tenant)
            if key not in ceilings:
                denied = p.tenant_deny.get(spec.tenant, _NOTHING)
                ceilings[key] = self.agents.risk_ceiling(spec, p, denied)
            ceiling = ceilings[key]
            if ceiling is None or (p.enforced("risk") and not ceiling >= spec.risk):
                self.queue.take(load_id)
                self._unqualify(ls)

    def _unqualify(self, ls: LoadState) -> None:
        if ls.spec.load_id not in self.unqualified:
            self.unqualified[ls.spec.load_id] = ls
            self.stuck[ls.spec.tenant] = self.stuck.get(ls.spec.tenant, 0) + 1
            self._contends(ls.spec.tenant)
        self.unqualified_profiles = self.profiles

    def _hold(self, ls: LoadState) -> None:
        """Sets ``ls`` aside with the other loads of its kind, in the queue's lane of the kind,
        which is passed over until an agent that could take the kind changes (``_unpark``)."""
        spec = ls.spec
        start = latest_start(spec.deadline_ms, spec.duration_ms)
        self.queue.hold(spec.load_id, spec.tenant, int(spec.priority), ls.seq, start,
                        _kind_of(spec), spec)  # fmt: skip

    def _held_back(self, ls: LoadState) -> bool:
        """Whether ``ls``, just taken from the queue, is of a kind set aside (``_hold``); it
        joins them unmatched (or, if no agent could ever take it, the unqualified)."""
        if _kind_of(ls.spec) not in self.queue.closed():
            return False
        if self._qualified(ls.spec).size:
            self._hold(ls)
        else:
            self._unqualify(ls)
        return True

    def _park(self, ls: LoadState) -> None:
        """Keeps ``ls``, which found no agent, out of the queue until an agent that could
        take its kind changes."""
        self.parked.setdefault(_kind_of(ls.spec), (ls.spec, []))[1].append(ls)

    def _affinity(self, ls: LoadState) -> tuple[int | None, bool]:
        """The row of the agent that served the load's session last (None: none known; kept
        as ``ls.affinity_row``, which explain scores with), and whether hard affinity holds
        the load for that agent now (only one available, that the load could go to and has
        not been taken back from, is waited for)."""
        p, t, spec = self.policy, self.agents, ls.spec
        last = self.sessions.get(spec.session_id) if spec.session_id else None
        row = t.row.get(last[0]) if last is not None else None
        waiting = (
            p.hard_affinity
            and row is not None
            and t.status[row] == AgentStatus.AVAILABLE
            and self.now_ms < spec.created_ms + p.affinity_wait_ms
            and not (t.ids[row] in ls.tried and p.enforced("tried"))  # (a decline says no)
            and bool((self._qualified(spec) == row).any())
        )
        ls.affinity_row = row
        return row, waiting

    def _qualified(self, spec: LoadSpec) -> npt.NDArray[np.intp]:
        """The rows of the agents ``spec`` could ever go to (``AgentTable.qualified``)."""
        denied = self.policy.tenant_deny.get(spec.tenant, _NOTHING)
        return self.agents.qualified(spec, self.policy, denied)

    def _match(self, ls: LoadState) -> tuple[Match, bool]:
        """The best agent for ``ls`` now (held by hard affinity: its session's agent if that
        qualifies, else none), and whether hard affinity holds it."""
        spec, p = ls.spec, self.policy
        affinity_row, waiting = self._affinity(ls)
        denied = p.tenant_deny.get(spec.tenant, frozenset())
        m = self.agents.match(spec, p, self.now_ms, denied=denied, affinity_row=affinity_row,
                              tried=ls.tried)  # fmt: skip
        if waiting and m.row != affinity_row:
            s = self.agents.evaluate(spec, p, self.now_ms, denied=denied,
                                     affinity_row=affinity_row, tried=ls.tried)  # fmt: skip
            hit = np.flatnonzero(s.rows == affinity_row)
            # The session's agent, though another scores better; or, if it is full, none.
            m = s.pick(int(hit[0])) if hit.size else replace(m, row=None)
        return m, waiting

    def _try_assign(self, ls: LoadState, source: Source, out: list[Decision]) -> None:
        m, waiting = self._match(ls)
        if m.row is None:
            self._unmatched(ls, m, waiting)
            return
        ls.last_match = m
        self._assign(ls, m, "AFFINITY" if waiting else "BEST_SCORE", source, out)

    def _unmatched(self, ls: LoadState, m: Match, waiting: bool) -> None:
        """Parks ``ls``, which found no agent at this epoch, until agents change (one no agent
        could ever take, ``AgentTable.qualified``: until a profile or the policy does; one
        that no open agent of its kind could take: set aside with its kind, ``_hold``); held
        by hard affinity, it is also tried again when the wait for its agent ends.

        (A load no agent could ever take, tried again whenever an agent came free, kept
        the loads behind it from the free agents: a drain spent its tries on such loads.)
        """
        ls.last_match, ls.failed_epoch = m, self.epoch
        if not waiting and not self._qualified(ls.spec).size:
            self._unqualify(ls)
            return
        if not waiting and not m.candidates and not any(n for _, n in m.excluded[_STATIC:]):
            # No open agent passes the constraints of its kind alone (capability,
            # clearance, region): no other load of the kind can go either.
            self._hold(ls)
            return
        self._park(ls)
        ends = ls.spec.created_ms + self.policy.affinity_wait_ms
        if waiting and ls.wait_ends != ends:  # (once: not again at every try while it waits)
            ls.wait_ends = ends
            heapq.heappush(self.backing_off, (ends, ls.seq, ls.spec.load_id))

    def _assign(self, ls: LoadState, m: Match, reason: str, source: Source,
                out: list[Decision]) -> None:  # fmt: skip
        spec, t = ls.spec, self.agents
        assert m.row is not None  # noqa: S101 - callers pass a match that chose an agent
        agent_id = t.ids[m.row]
        t.add_load(m.row, spec.risk, 1)
        self._dequeue(ls)
        ls.status, ls.agent, ls.assigned_ms = LoadStatus.ASSIGNED, agent_id, self.now_ms
        ls.last_match = m
        self.in_flight[spec.load_id] = ls
        self.held.setdefault(agent_id, {})[spec.load_id] = None
        runs = self.running[spec.tenant] = self.running.get(spec.tenant, 0) + 1
        if (quota := self.policy.tenant_quotas.get(spec.tenant)) is not None and runs >= quota:
            self.at_quota.add(spec.tenant)
        self._contend(spec.tenant, True)
        weight = self.policy.tenant_weight(spec.tenant)
        before = self.served.get(spec.tenant, 0.0)
        self.vtime = max(self.vtime, before)
        self.served[spec.tenant] = before + 1.0 / weight
        if spec.session_id:
            # (to the end: the order is by last use)
            last = self.sessions.pop(spec.session_id, None)
            self.sessions[spec.session_id] = (agent_id, self.now_ms)
            if last is not None and last[0] != agent_id and self.policy.hard_affinity:
                # Its loads held for the agent it had wait for this one now, or for none
                # (this one may not take their kind): every parked load is looked at again
                # (a session moves only when its agent could not take a load: seldom).
                self.woken = None
        d = self._decision(ls, Outcome.ASSIGNED, reason, source, m, agent=agent_id)
        ls.decision_id = d.decision_id
        self.assignments += 1
        heapq.heappush(self.ack_due, (self.now_ms + self.policy.ack_timeout_ms, self.assignments,
                                      spec.load_id, d.decision_id))  # fmt: skip
        if len(self.ack_due) > 2 * len(self.in_flight) + 64:  # (entries of loads accepted)
            # (kept until their time came: a soak at 300 loads/s with an hour's ack timeout
            # grew the worker by 6.7 MB a minute, all in flight accepted at once)
            self.ack_due = _sifted(self.ack_due, self._unacked)
        out.append(d)
        if self.on_assign is not None:
            self.on_assign(self, d)

    def _batch(self, source: Source, out: list[Decision]) -> None:
        """Assigns the next loads in service order together, maximising their total score.

        Loads are taken in service order, each tenant's service counted as if
        the loads taken so far were served (so one tenant does not take the
        whole batch), until they could fill every free slot (each slot listed by
        a load of the batch; loads that would fill none, once there are as many
        loads as slots, wait), or ``batch_max_loads`` are taken, or
        ``batch_max_loads + drain_limit`` were scored. Each keeps its best
        ``batch_candidates`` agents (held by hard affinity, its session's agent
        only); a load no agent can take now waits outside the batch, unscored,
        so it does not keep the loads behind it from the slots; so does, under
        hard affinity, a second load of a session whose agent this batch
        chooses (none known, or not available), until it has. The fair-share reserve
        counts the agents still open, at the fewest, once the loads taken fill
        the agents with the least room first.

        ``batch.solve`` picks the pairs class by class, most important first,
        each class from the slots the ones before it left (so a lower class
        never takes an agent from a higher one), and within a class the loads
        earlier batches left without an agent before the others, the most often
        left first (so newer loads that score better cannot keep one waiting for
        ever), each agent's later slots scored with its load-balance term for
        the loads before. The pairs are
        then made class by class, in service order within a class, each scored
        anew on the agents as they stand (so score, parts, runner-up and margin
        mean what they mean for a greedy decision; the margin may be negative:
        the runner-up scored more, and the batch gave it to another load). One
        whose agent no longer passes (the loads before it took its risk room)
        waits. Last, a load the batch left without an agent takes the best agent
        still free for it, as greedy mode would (its best ``batch_candidates``
        may all have gone to others).
        """
        self._unpark()
        self.queue.escalate(self.now_ms)
        batch, candidates = self._gather()
        left: list[tuple[LoadState, Scored, bool]] = []
        for k, row in self._solve_by_class(batch, candidates):
            ls, _, waiting = batch[k]
            m = self._rescored(ls, row) if row is not None else None
            if m is None:
                left.append(batch[k])
            else:
                self._assign(ls, m, "AFFINITY" if waiting else "BATCH_OPTIMAL", source, out)
        for ls, s, held in left:
            m, waiting = self._match(ls) if self.agents.open_count else (s.none(), held)
            if m.row is None:
                ls.passed += 1
                self._unmatched(ls, m, waiting)
            else:
                self._assign(ls, m, "AFFINITY" if waiting else "BEST_SCORE", source, out)

    def _gather(
        self,
    ) -> tuple[list[tuple[LoadState, Scored, bool]], list[list[tuple[int, float]]]]:
        """The loads of a batch, in service order (each scored, and whether hard affinity
        holds it), and each one's (agent row, score) pairs; see ``_batch``."""
        p, t = self.policy, self.agents
        open_rows = np.flatnonzero(t.open[: t.n])
        room = t.capacity[open_rows] - t.active[open_rows]
        slots = int(room.sum())
        fill = np.cumsum(np.sort(room))  # agents closed by k loads, at most: fill <= k
        batch: list[tuple[LoadState, Scored, bool]] = []
        candidates: list[list[tuple[int, float]]] = []
        taken: dict[str, int] = {}
        served = dict(self.served)  # as if the loads taken were served
        unlisted = np.zeros(t.n, np.int64)  # per row, free slots no load of the batch lists
        unlisted[open_rows] = room
        covered = scored = popped = 0  # free slots listed by the batch's loads; loads scored
        new_sessions: set[str] = set()
        looks = p.batch_max_loads + p.drain_limit
        while (len(batch) < p.batch_max_loads and min(len(batch), covered) < slots
               and scored < looks and popped < 4 * looks):  # fmt: skip
            closed = int(np.searchsorted(fill, len(batch), side="right"))
            skip = self._held(len(open_rows) - closed, taken, also=self._at_quota(taken))
            load_id = self.queue.pop(served, tenant_first=p.tenant_first, skip=skip)
            if load_id is None:
                break
            ls = self.pending[load_id]
            if self._held_back(ls):
                continue
            popped += 1
            session = ls.spec.session_id if p.hard_affinity else None
            if session and session in new_sessions:
                self.aside.append(ls)  # (back in the queue for the next batch)
                continue
            found = self._batch_pairs(ls, unlisted if len(batch) >= slots else None)
            if found is None:
                continue
            scored += 1
            s, pairs, waiting = found
            listing = np.array([row for row, _ in pairs], np.intp)
            fills = int(np.count_nonzero(unlisted.take(listing)))
            if len(batch) >= slots and not fills:
                self.aside.append(ls)  # (the slots of its best agents have loads enough)
                continue
            covered += fills
            unlisted[listing] = np.maximum(unlisted.take(listing) - 1, 0)
            if session and not waiting:  # (its agent gives the session one)
                new_sessions.add(session)
            tenant = ls.spec.tenant
            taken[tenant] = taken.get(tenant, 0) + 1
            served[tenant] = served.get(tenant, 0.0) + 1.0 / p.tenant_weight(tenant)
            batch.append((ls, s, waiting))
            candidates.append(pairs)
        return batch, candidates

    def _batch_pairs(
        self, ls: LoadState, unlisted: npt.NDArray[np.int64] | None
    ) -> tuple[Scored, list[tuple[int, float]], bool] | None:
        """``ls`` scored, its best ``batch_candidates`` (agent row, score) pairs (held by
        hard affinity: its session's agent), and whether hard affinity holds it; None when
        it waits outside the batch, unscored: no agent can take it now (it is parked), or
        no agent it could take has a slot left that no load of the batch lists
        (``unlisted``, once the batch has a load per free slot)."""
        p, t, spec = self.policy, self.agents, ls.spec
        affinity_row, waiting = self._affinity(ls)
        denied = p.tenant_deny.get(spec.tenant, _NOTHING)
        feasible, screened = t.screen(spec, p, denied, ls.tried)
        rows = feasible[feasible == affinity_row] if waiting else feasible
        if not rows.size:
            none = Match(None, None, (), len(feasible), screened[2], None, None)
            self._unmatched(ls, none, waiting)
            return None
        if unlisted is not None and not unlisted.take(rows).any():
            self.aside.append(ls)  # (every slot it could take has loads enough)
            return None
        s = t.evaluate(spec, p, self.now_ms, affinity_row=affinity_row, denied=denied,
                       tried=ls.tried, screened=screened)  # fmt: skip
        best = np.flatnonzero(s.rows == affinity_row)[:1] if waiting else s.best(p.batch_candidates)
        return s, [(int(s.rows[i]), float(s.total[i])) for i in best], waiting

    def _rescored(self, ls: LoadState, row: int) -> Match | None:
        """``ls``'s match with agent ``row``, scored on the agents as they stand (None: the
        agent no longer passes every hard constraint for it)."""
        spec, p = ls.spec, self.policy
        s = self.agents.evaluate(spec, p, self.now_ms, affinity_row=ls.affinity_row,
                                 denied=p.tenant_deny.get(spec.tenant, _NOTHING),
                                 tried=ls.tried)  # fmt: skip
        hit = np.flatnonzero(s.rows == row)
        if not hit.size or not np.isfinite(s.total[hit[0]]):
            return None
        return s.pick(int(hit[0]))

    def _solve_by_class(
        self, batch: list[tuple[LoadState, Scored, bool]], candidates: list[list[tuple[int, float]]]
    ) -> list[tuple[int, int | None]]:
        """``batch.solve`` for each class of the batch's loads in turn (the class the queue
        served it in: one up once its latest start came; within it, by how many batches
        left the load without an agent, most first), most important first, on the
        slots the classes before it left: (index in ``batch``, agent row or None) of each
        load, class by class, in service order within a class (the order to make them in,
        so the risk room goes by class too)."""
        t = self.agents
        free = {
            row: int(t.capacity[row] - t.active[row]) for pairs in candidates for row, _ in pairs
        }
        classes: dict[tuple[int, int], list[int]] = {}
        for k, (ls, _, _) in enumerate(batch):
            cls = int(ls.spec.priority) - self.queue.escalated(ls.spec.load_id)
            classes.setdefault((cls, -ls.passed), []).append(k)
        balance = self.policy.weight("balance")
        step = {row: balance / max(int(t.capacity[row]), 1) for row in free}
        given: dict[int, int] = {}  # row -> loads the classes before gave it
        chosen: list[tuple[int, int | None]] = []
        for group in sorted(classes):  # (a lower class is served first; then the most passed)
            members = classes[group]
            wants = [[(row, score - given.get(row, 0) * step[row]) for row, score in candidates[k]]
                     for k in members]  # fmt: skip
            picks = solve(wants, free, step if balance else None)
            for k, row in zip(members, picks, strict=True):
                chosen.append((k, row))
                if row is not None:
                    free[row] -= 1
                    given[row] = given.get(row, 0) + 1
        return chosen

    # -- endings and requeues --------------------------------------------------------------

    def _release(self, ls: LoadState) -> None:
        if ls.agent is None:
            return
        row = self.agents.row[ls.agent]
        self.agents.add_load(row, ls.spec.risk, -1)
        tenant = ls.spec.tenant
        _less(self.running, tenant)
        if tenant in self.at_quota and (
            self.running.get(tenant, 0) < self.policy.tenant_quotas.get(tenant, 0)
        ):  # (a quota lowered while loads ran may still be reached)
            self.at_quota.discard(tenant)
        self._contends(tenant)
        self.held[ls.agent].pop(ls.spec.load_id, None)
        self.in_flight.pop(ls.spec.load_id, None)
        ls.agent, ls.decision_id = None, None
        self._wake(row)

    def _wake(self, row: int | None) -> None:
        """Notes that agent ``row`` may take more now (a slot, risk room, or its status;
        None: any agent, after a profile or the policy changed): a new ``epoch``, and the
        parked loads of its kinds go back (``_unpark``)."""
        self.epoch += 1
        if row is None:
            self.woken = None
        elif self.woken is not None:
            self.woken.add(row)

    def _requeue(self, ls: LoadState, reason: str, source: Source, out: list[Decision]) -> None:
        agent = ls.agent
        self._release(ls)
        if ls.attempt >= self.policy.max_attempts:
            self._finish(ls, Outcome.DEAD_LETTERED, f"MAX_ATTEMPTS_{reason}"[:64], source, out,
                         agent=agent)  # fmt: skip
            return
        ls.attempt += 1
        if agent is not None and reason in _REFUSED and agent not in ls.tried:
            ls.tried += (agent,)
        ls.status = LoadStatus.PENDING
        # Before its deadline, the backoff ends by the load's latest start (at once past
        # that: an agent faster than the estimate may still make it); waiting longer would
        # only make it late. Past the deadline it stands: retries back to back would only
        # use up the attempts.
        ls.not_before_ms = self.now_ms + self.policy.backoff_ms(ls.attempt)
        deadline = ls.spec.deadline_ms
        if deadline is not None and self.now_ms < deadline:
            latest = deadline - ls.spec.duration_ms
            ls.not_before_ms = max(self.now_ms, min(ls.not_before_ms, latest))
        ls.failed_epoch = -1
        self._enqueue(ls)
        out.append(self._decision(ls, Outcome.REQUEUED, reason, source, agent=agent))

    def _finish(self, ls: LoadState, outcome: Outcome, reason: str, source: Source,
                out: list[Decision], *, agent: str | None = None) -> None:  # fmt: skip
        """Ends the load; the decision names the agent it had (or ``agent``, released just now)."""
        agent = ls.agent or agent
        self._release(ls)
        self._dequeue(ls)
        ls.status, ls.final, ls.finished_ms = LoadStatus.FINAL, outcome, self.now_ms
        ls.last_match, ls.tried = None, ()  # (a parked or batched list may still hold it)
        out.append(self._decision(ls, outcome, reason, source, agent=agent))
        del self.loads[ls.spec.load_id]
        self.done[ls.spec.load_id] = _bury(ls)
        self.done_order.append(ls.spec.load_id)

    def load(self, load_id: str) -> LoadState | None:
        """The load ``load_id`` as the pool knows it (None: never seen, or its dedupe window
        passed); a finished one rebuilt from what is kept of it (``_Done``: a copy, with
        neither its last match nor its needs; the decision log has them)."""
        ls = self.loads.get(load_id)
        if ls is None and (done := self.done.get(load_id)) is not None:
            return _revive(load_id, done)
        return ls

    def _about_done(
        self, load_id: str, reason: str, source: Source, *, agent: str | None = None
    ) -> Decision:
        """The rejection of an event about a finished load (counted among its decisions)."""
        ls = _revive(load_id, self.done[load_id])
        d = self._decision(ls, Outcome.REJECTED, reason, source, agent=agent)
        self.done[load_id] = _bury(ls)
        return d

    # -- decisions ----------------------------------------------------------------------------

    def _decision(
        self, ls: LoadState, outcome: Outcome, reason: str, source: Source,
        m: Match | None = None, *, agent: str | None = None,
    ) -> Decision:  # fmt: skip
        spec, p, t = ls.spec, self.policy, self.agents
        n = ls.decisions
        ls.decisions += 1
        assigned = outcome is Outcome.ASSIGNED
        return Decision(
            decision_id=decision_id(self.pool, spec.load_id, ls.attempt, p.version, ls.seq, n),
            pool=self.pool, load_id=spec.load_id, attempt=ls.attempt, outcome=outcome,
            reason=reason, agent_id=agent, policy_version=p.version, time_ms=self.now_ms,
            source=source,
            score=m.score if m and assigned else None,
            score_parts=m.parts if m and assigned else (),
            candidates=m.candidates if m else 0,
            excluded=m.excluded if m else (),
            runner_up=t.ids[m.runner_up] if m and assigned and m.runner_up is not None else None,
            margin=m.margin if m and assigned else None,
            tenant=spec.tenant, priority=spec.priority, deadline_ms=spec.deadline_ms,
            ack_by_ms=self.now_ms + p.ack_timeout_ms if assigned else None,
        )  # fmt: skip

    def _orphan(self, load_id: str, outcome: Outcome, reason: str, source: Source) -> Decision:
        n = self.orphans
        self.orphans += 1
        return Decision(
            decision_id=decision_id(self.pool, load_id, 1, self.policy.version, -1, n),
            pool=self.pool, load_id=load_id, attempt=1, outcome=outcome, reason=reason,
            agent_id=None, policy_version=self.policy.version, time_ms=self.now_ms, source=source,
        )  # fmt: skip


def _keyed(event: LoadArrived | LoadCancelled | TaskReported) -> tuple[str, int, str]:
    """An event's key in its key space; what it says, as far as its repeats must say it
    too, as a CRC-32 (deterministic, unlike ``hash``, for snapshots): its kind and load,
    and a result's decision, agent and outcome, not its time, which a producer's retry may
    stamp anew; and its load."""
    match event:
        case LoadArrived():
            load_id = event.load.load_id
            said = f"arrival\0{load_id}"
        case LoadCancelled():
            load_id = event.load_id
            said = f"cancel\0{load_id}"
        case TaskReported():
            load_id = event.load_id
            said = (
                f"result\0{load_id}\0{event.decision_id}\0{event.agent_id}\0{event.outcome.value}"
            )
    return _KEY_SPACE[type(event)] + event.key, zlib.crc32(said.encode()), load_id


def _named_weights(named: Mapping[str, float], tenants: Collection[str]) -> list[float]:
    """The weights ``named`` gives those of ``tenants`` it names (looking over the fewer:
    a policy may name many tenants, and many may wait)."""
    if len(named) <= len(tenants):
        return [float(w) for t, w in named.items() if t in tenants]
    return [float(named[t]) for t in tenants if t in named]


def _less(counts: dict[str, int], tenant: str) -> None:
    """One less for ``tenant``; a count of 0 goes (tenant names are free text: every
    tenant ever seen, kept, made each load cost more)."""
    left = counts[tenant] - 1
    if left:
        counts[tenant] = left
    else:
        del counts[tenant]


def _sifted(heap: list[_T], live: Callable[[_T], object]) -> list[_T]:
    """The entries of ``heap`` that ``live`` finds something for, a heap again (in the same
    order of popping: the entries are unique)."""
    kept = [entry for entry in heap if live(entry) is not None]
    heapq.heapify(kept)
    return kept


# A finished load, kept for the dedupe window: what decisions about it name, and what its
# spec needs besides: (finished_ms, seq, attempt, decisions, tenant, priority, sensitivity,
# created_ms, deadline_ms, duration_ms, risk, outcome). A tuple of plain values, which the
# garbage collector stops walking: a finished LoadState and its spec were two objects every
# full collection walked (114-126 ms with 100k finished loads, 7 ms now with the dicts of
# ``done`` and ``seen``; 947 -> 571 bytes per finished load with three short event keys).
_Done = tuple[int, int, int, int, str, int, int, int, int | None, int, float, str]


def _bury(ls: LoadState) -> _Done:
    s = ls.spec
    assert ls.final is not None  # noqa: S101 - only finished loads are buried
    return (ls.finished_ms, ls.seq, ls.attempt, ls.decisions, s.tenant, int(s.priority),
            int(s.sensitivity), s.created_ms, s.deadline_ms, s.duration_ms, s.risk,
            ls.final.value)  # fmt: skip


def _revive(load_id: str, done: _Done) -> LoadState:
    finished, seq, attempt, decisions, tenant, priority, sensitivity, created, deadline, \
        duration, risk, final = done  # fmt: skip
    spec = LoadSpec(load_id, tenant, Priority(priority), _NOTHING, (), Sensitivity(sensitivity),
                    "", created, deadline, duration, risk)  # fmt: skip
    return LoadState(spec, seq, LoadStatus.FINAL, attempt, decisions=decisions,
                     final=Outcome(final), finished_ms=finished)  # fmt: skip


def decide(state: PoolState, event: Event) -> tuple[PoolState, list[Decision]]:
    """The core as a fold: the state after ``event``, and the decisions it caused."""
    return state, state.apply(event)
