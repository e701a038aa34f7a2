"""The agents of one pool as numpy columns, and vectorised matching against them.

One row per agent, in registration order (rows are never reused, so row
order, and with it every tie-break, depends only on the input order).
Capabilities are an inverted index (capability -> the rows that have it), regions a
bitmask; both over vocabularies that grow in input order.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from dispatcher.core.policy import CONSTRAINTS, SCORE_TERMS, Policy
from dispatcher.core.types import AgentProfile, LoadSpec

__all__ = ["AgentStatus", "AgentTable", "Match", "unit"]

Bool = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
Floats2 = npt.NDArray[np.float64]  # two-dimensional

_GRID = 2.0**20  # embeddings are rounded to multiples of 1 / _GRID (see ``unit``)
# Bytes of agent columns the kinds of load may keep (saves gathering them per load), per
# agent of the pool and at most; kinds beyond it gather theirs each time.
_COLS_BUDGET_PER_AGENT = 2 << 10
_COLS_BUDGET = 64 << 20


class AgentStatus(IntEnum):
    REGISTERED = 0  # known, not yet available
    AVAILABLE = 1
    DRAINING = 2  # keeps its loads, takes no new ones
    OFFLINE = 3
    LOST = 4  # missed its heartbeats


_AVAILABLE = int(AgentStatus.AVAILABLE)

# The per-row columns of AgentTable: name, dtype, a new row's value, and None for one value
# per row or the ``_alloc`` argument giving the row's number of values.
_COLUMNS: tuple[tuple[str, type, float, str | None], ...] = (
    ("regions", np.uint64, 0, "region_words"),
    ("embedding", np.float64, 0, "dims"),
    ("capacity", np.int32, 0, None),
    ("active", np.int32, 0, None),
    ("status", np.int8, 0, None),
    ("clearance", np.int8, 0, None),
    ("risk_budget", np.float64, 0, None),
    ("risk_used", np.float64, 0, None),
    ("max_risk", np.float64, 0, None),
    ("risk_room", np.float64, 0, None),
    ("speed", np.float64, 1.0, None),
    ("zone", np.int32, -1, None),
    ("seq", np.int64, -1, None),
    ("last_seen", np.int64, 0, None),
    ("open", np.bool_, 0, None),
    ("inv_caps", np.float64, 1.0, None),
    ("balance", np.float64, 0, None),
    ("speed_term", np.float64, 0.5, None),
)

# The columns a load taken or given back changes (``add_load``: ``released`` copies them).
_PER_LOAD = ("active", "risk_used", "balance", "risk_room", "open")

# What a match reports of a score term left out: one pair each, shared by every decision
# (a decision keeps its pairs, most of them these: fewer new objects for the garbage
# collector to count and walk).
_NO_PARTS = tuple((t, (t, 0.0)) for t in SCORE_TERMS)


class _Cols(NamedTuple):
    """Agent-only columns of some rows, gathered for scoring."""

    rows: npt.NDArray[np.intp]
    # The rows' embeddings / 2 (exact), one column per row, and a last row of 0.5 each
    half_embedding: Floats2
    inv_caps: Floats
    zone: npt.NDArray[np.int32]
    speed_term: Floats


@dataclass(frozen=True, slots=True)
class _Kind:
    """The agents passing the profile-only constraints for one kind of load.

    Of the agents having the capabilities, ``no_clearance`` fail the clearance
    check, ``no_region`` pass it and fail the region check, and ``cand`` pass
    both (three disjoint sets of rows, each ascending).
    """

    no_clearance: npt.NDArray[np.intp]
    no_region: npt.NDArray[np.intp]
    cand: npt.NDArray[np.intp]
    cols: _Cols | None  # cand's columns, when the budget for them allowed keeping them
    # With ``cols``: weighted score terms of cand on their profiles alone, by (term, the
    # load's part of the term, weight).
    static: dict[tuple[str, int, float], Floats] = field(default_factory=dict)


# What AgentTable.screen says of a load: its kind, which of the kind's candidates pass
# every enforced hard constraint now, how many agents each constraint excluded, and how
# many pass.
Screened = tuple[_Kind, Bool, tuple[tuple[str, int], ...], int]


@dataclass(frozen=True, slots=True)
class Match:
    """The result of matching one load against every agent."""

    row: int | None  # the chosen agent's row, None when no agent qualifies
    score: float | None
    parts: tuple[tuple[str, float], ...]
    candidates: int
    excluded: tuple[tuple[str, int], ...]
    runner_up: int | None
    margin: float | None


class _Vocab:
    """Names to bit positions, in order of first sight."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def bits(self, names: frozenset[str] | set[str]) -> list[int]:
        for name in sorted(names):  # sorted: the same set always grows the vocabulary alike
            self.index.setdefault(name, len(self.index))
        return [self.index[n] for n in names]

    def known(self, names: frozenset[str]) -> list[int] | None:
        """Bit positions of names already seen; None if one was never seen."""
        out = []
        for n in names:
            bit = self.index.get(n)
            if bit is None:
                return None
            out.append(bit)
        return out


def _mask(bits: list[int], words: int) -> npt.NDArray[np.uint64]:
    out = np.zeros(words, np.uint64)
    for b in bits:
        out[b // 64] |= np.uint64(1 << (b % 64))
    return out


class AgentTable:
    """Columns of agent state for the hot path."""

    regions: npt.NDArray[np.uint64]  # permitted-region bitmask words
    embedding: Floats2  # personality vectors, ``unit``
    capacity: npt.NDArray[np.int32]
    active: npt.NDArray[np.int32]  # loads assigned or running
    status: npt.NDArray[np.int8]  # AgentStatus
    clearance: npt.NDArray[np.int8]  # Sensitivity
    risk_budget: npt.NDArray[np.float64]
    risk_used: npt.NDArray[np.float64]
    max_risk: npt.NDArray[np.float64]  # abstention: the most risk one load may carry
    risk_room: npt.NDArray[np.float64]  # the most risk the next load may carry
    speed: npt.NDArray[np.float64]
    zone: npt.NDArray[np.int32]  # -1: none
    seq: npt.NDArray[np.int64]  # the newest agent event applied
    last_seen: npt.NDArray[np.int64]  # event time of the last sign of life
    # Kept up to date by upsert/set_status/add_load, so matching recomputes nothing
    # that only depends on the agent:
    open: npt.NDArray[np.bool_]  # available and below capacity
    inv_caps: npt.NDArray[np.float64]  # 1 / (1 + capabilities): the fit term's agent part
    balance: npt.NDArray[np.float64]  # 1 - active / capacity
    speed_term: npt.NDArray[np.float64]  # speed / (1 + speed)

    def __init__(self, capacity_hint: int = 64) -> None:
        self.ids: list[str] = []
        self.row: dict[str, int] = {}
        self.open_count = 0  # agents that can take a load now
        self.available_count = 0
        # Capability bit -> the rows that have it (an inverted index), and sorted arrays
        # of them built when first needed after a change.
        self._cap_rows: dict[int, set[int]] = {}
        self._cap_array: dict[int, npt.NDArray[np.intp]] = {}
        self._row_bits: list[list[int]] = []
        self._kinds: dict[tuple[frozenset[str] | None, int, str | None], _Kind] = {}
        self._cols_bytes = 0  # held by the kinds' columns
        # At most every agent's risk room: loads within it skip the risk check. Loose once
        # a room grew, made tight again when a load's risk exceeds it.
        self._room_floor = math.inf
        self._floor_loose = False
        self._caps_vocab, self._region_vocab, self._zone_vocab = _Vocab(), _Vocab(), _Vocab()
        self._alloc(max(8, capacity_hint), region_words=1, dims=0)

    def __getstate__(self) -> dict[str, Any]:
        # Snapshots leave out what is rebuilt on demand (it decides nothing).
        state = dict(self.__dict__)
        state.update(_kinds={}, _cols_bytes=0, _cap_array={})
        return state

    def _alloc(self, rows: int, *, region_words: int, dims: int) -> None:
        """Every column with room for ``rows`` rows (and values per row), the old ones'
        values kept."""
        widths = {"region_words": region_words, "dims": dims}
        for name, dtype, fill, width in _COLUMNS:
            new: npt.NDArray[Any] = np.full(
                (rows,) if width is None else (rows, widths[width]), fill, dtype
            )
            old = self.__dict__.get(name)
            if old is not None:
                new[tuple(slice(0, s) for s in old.shape)] = old
            setattr(self, name, new)

    def forget(self, rows: npt.NDArray[np.intp]) -> None:
        """Drops the agents of ``rows`` (none may hold a load); the others move up, in the
        order they had (ties still go to the earlier registered). One that comes back
        registers anew."""
        kept = np.flatnonzero(np.isin(np.arange(self.n), rows, invert=True))
        for name, *_ in _COLUMNS:
            setattr(self, name, getattr(self, name)[kept])  # (a compact copy; grows on upsert)
        self.ids = [self.ids[r] for r in kept]
        self.row = {agent_id: r for r, agent_id in enumerate(self.ids)}
        self._row_bits = [self._row_bits[r] for r in kept]
        self._cap_rows = {}
        for r, bits in enumerate(self._row_bits):
            for bit in bits:
                self._cap_rows.setdefault(bit, set()).add(r)
        self._cap_array.clear()
        self._kinds.clear()
        self._cols_bytes = 0
        self._floor_loose = True  # (the least room may have gone with them)
        self.available_count = int(np.count_nonzero(self.status[: self.n] == _AVAILABLE))
        self.open_count = int(np.count_nonzero(self.open[: self.n]))

    @property
    def n(self) -> int:
        return len(self.ids)

    def _fit(self, *, rows: int, region_words: int, dims: int) -> None:
        have = self.regions.shape[0]
        if rows > have or region_words > self.regions.shape[1] or dims > self.embedding.shape[1]:
            self._alloc(
                max(rows, have * 2 if rows > have else have),
                region_words=max(region_words, self.regions.shape[1]),
                dims=max(dims, self.embedding.shape[1]),
            )

    def upsert(self, agent_id: str, seq: int, time_ms: int, profile: AgentProfile) -> int:
        """Registers an agent or updates its profile; returns its row."""
        row = self.row.get(agent_id)
        if row is None:
            row = self.n
            self.ids.append(agent_id)
            self.row[agent_id] = row
            self._row_bits.append([])
        else:  # a profile update is a sign of life, not a clock going back
            time_ms = max(time_ms, int(self.last_seen[row]))
        cap_bits = self._caps_vocab.bits(profile.capabilities)
        for bit in self._row_bits[row]:
            holders = self._cap_rows[bit]
            holders.discard(row)
            if not holders:  # (a tool renamed, a version replaced: none has it now)
                del self._cap_rows[bit]
            self._cap_array.pop(bit, None)
        for bit in cap_bits:
            self._cap_rows.setdefault(bit, set()).add(row)
            self._cap_array.pop(bit, None)
        self._row_bits[row] = cap_bits
        self._kinds.clear()
        self._cols_bytes = 0
        region_bits = self._region_vocab.bits(profile.regions)
        self._fit(rows=row + 1, region_words=len(self._region_vocab.index) // 64 + 1,
                  dims=len(profile.personality))  # fmt: skip
        self.regions[row] = _mask(region_bits, self.regions.shape[1])
        self.embedding[row] = unit(profile.personality, self.embedding.shape[1])
        self.capacity[row] = profile.capacity
        self.clearance[row] = int(profile.clearance)
        self.risk_budget[row] = profile.risk_budget
        self.max_risk[row] = profile.abstention_threshold * profile.risk_budget
        self.speed[row] = profile.speed
        self.zone[row] = self._zone_vocab.bits({profile.zone})[0] if profile.zone else -1
        self.seq[row] = seq
        self.last_seen[row] = time_ms
        self.inv_caps[row] = 1.0 / (1.0 + len(cap_bits))
        self.speed_term[row] = profile.speed / (1.0 + profile.speed)
        self._refresh(row)
        return row

    def set_status(self, row: int, status: AgentStatus) -> None:
        self.available_count += int(status == _AVAILABLE) - int(self.status[row] == _AVAILABLE)
        self.status[row] = status
        self._refresh(row)

    def released(self, row: int, risk: float) -> AgentTable:
        """A copy of the table with a load of ``risk`` given back by agent ``row`` (explain
        judges a load in flight as if its agent had not taken it). The columns a load
        changes (``_PER_LOAD``) are copied, the others shared, unchanged by the copy, and
        so are the kinds' caches, which hold nothing a load changes (a deep copy took
        0.8 s at 100k agents)."""
        out = copy.copy(self)  # (through __getstate__, which leaves the caches out)
        for name in _PER_LOAD:
            setattr(out, name, getattr(self, name).copy())
        out._kinds, out._cap_array = dict(self._kinds), dict(self._cap_array)
        out._cols_bytes = self._cols_bytes  # (what its kinds hold, counted against the budget)
        out.add_load(row, risk, -1)
        return out

    def add_load(self, row: int, risk: float, sign: int) -> None:
        """Counts a load in (sign 1) or out (sign -1) of the agent's active set."""
        self.active[row] = self.active.item(row) + sign
        used = self.risk_used.item(row) + sign * risk
        self.risk_used[row] = used if used > 1e-12 else 0.0
        self._refresh(row)

    def _refresh(self, row: int) -> None:
        # (.item: Python numbers, cheaper than numpy's scalars; the same arithmetic)
        cap, active = self.capacity.item(row), self.active.item(row)
        self.balance[row] = 1.0 - active / max(cap, 1)
        room = min(self.risk_budget.item(row) - self.risk_used.item(row), self.max_risk.item(row))
        if room > self.risk_room.item(row):
            self._floor_loose = True
        if not room >= self._room_floor:  # (NaN too)
            self._room_floor = room
        self.risk_room[row] = room
        now_open = self.status.item(row) == _AVAILABLE and active < cap
        self.open_count += int(now_open) - int(self.open.item(row))
        self.open[row] = now_open

    def free_slots(self) -> int:
        """How many more loads the open agents can take, in all."""
        if not self.open_count:
            return 0
        is_open = self.open[: self.n]
        return int((self.capacity[: self.n][is_open] - self.active[: self.n][is_open]).sum())

    # -- matching -------------------------------------------------------------------

    def feasible(
        self, load: LoadSpec, policy: Policy, denied: frozenset[str] = frozenset(),
        tried: tuple[str, ...] = (),
    ) -> tuple[npt.NDArray[np.intp], tuple[tuple[str, int], ...]]:  # fmt: skip
        """The rows of the agents that pass every enforced hard constraint, in row order,
        and how many agents each constraint excluded."""
        kind, ok, excluded, _ = self._screen(load, policy, denied, tried)
        return kind.cand[ok], excluded

    def any_of_kind(self, rows: npt.NDArray[np.intp], load: LoadSpec, policy: Policy) -> bool:
        """Whether any of ``rows`` passes the profile-only constraints (capability,
        clearance, region) for loads like ``load``."""
        cand = self._kind(load, policy).cand
        at = np.searchsorted(cand, rows)
        return (
            bool((cand.take(np.minimum(at, len(cand) - 1)) == rows).any()) if cand.size else False
        )

    def screen(
        self, load: LoadSpec, policy: Policy, denied: frozenset[str] = frozenset(),
        tried: tuple[str, ...] = (),
    ) -> tuple[npt.NDArray[np.intp], Screened]:  # fmt: skip
        """``feasible``, and the screen that found it, for ``evaluate`` to score on."""
        screened = self._screen(load, policy, denied, tried)
        kind, ok, _, _ = screened
        return kind.cand[ok], screened

    def _screen(
        self, load: LoadSpec, policy: Policy, denied: frozenset[str], tried: tuple[str, ...]
    ) -> Screened:
        """The kind of ``load``, which of its candidates pass every enforced hard
        constraint now, how many agents each constraint excluded, and how many pass.

        Constraints apply in CONSTRAINTS order; each counts the agents it
        removed from those the earlier ones left, so the counts add up. The
        constraints on the agent's profile alone (capability, clearance, region)
        are resolved once per kind of load and kept until a profile changes
        (``_Kind``); per load, only status, capacity, risk, tenant rules and
        the agents ``tried`` are looked at, and only on the agents that pass the
        static ones. The agents that had the load before (``tried``) are left
        out only while another agent passes: then they count as excluded.
        """
        n = self.n
        off = policy.disabled_constraints
        # How many each constraint excluded, in CONSTRAINTS order.
        if "status" not in off and "capacity" not in off:  # the common case, from counts kept
            base: Bool = self.open[:n]
            counts = [n - self.available_count, self.available_count - self.open_count]
            left = self.open_count
        else:
            mask = np.ones(n, np.bool_)
            if "status" not in off:
                mask &= self.status[:n] == _AVAILABLE
            if "capacity" not in off:
                mask &= self.active[:n] < self.capacity[:n]
            left = int(np.count_nonzero(mask))
            counts = [n - left if "status" not in off else 0, 0]
            base = mask
        kind = self._kind(load, policy)
        ok: Bool = base.take(kind.cand)
        no_clearance = _count(base, kind.no_clearance)
        no_region = _count(base, kind.no_region)
        now_left = int(np.count_nonzero(ok))
        counts += (left - now_left - no_clearance - no_region, no_clearance, no_region)
        left = now_left
        keep = self._risk_ok(load, kind.cand) if left and "risk" not in off else None
        left = _narrow(ok, keep, left, counts)
        if denied and left and "tenant_deny" not in off:
            keep = self._allowed(load, denied, kind.cand)
        else:
            keep = None
        left = _narrow(ok, keep, left, counts)
        keep = self._untried(tried, kind.cand) if tried and left and "tried" not in off else None
        if keep is not None and (others := ok & keep).any():
            now_left = int(np.count_nonzero(others))
            counts.append(left - now_left)
            ok, left = others, now_left
        else:
            counts.append(0)
        return kind, ok, _exclusions(tuple(counts)), left

    def qualified(
        self, load: LoadSpec, policy: Policy, denied: frozenset[str] = frozenset()
    ) -> npt.NDArray[np.intp]:
        """The rows of the agents ``load`` could ever go to as their profiles and the policy
        stand (capability, clearance, region, the most risk they take, the tenant's deny
        list), whatever their status and what they run now; ascending."""
        rows = self._kind(load, policy).cand
        if policy.enforced("risk") and rows.size:
            most = np.minimum(self.risk_budget.take(rows), self.max_risk.take(rows))
            rows = rows[most >= load.risk]
        if denied and policy.enforced("tenant_deny") and rows.size:
            allowed = self._allowed(load, denied, rows)
            rows = rows[allowed] if allowed is not None else rows
        return rows

    def risk_ceiling(
        self, load: LoadSpec, policy: Policy, denied: frozenset[str] = frozenset()
    ) -> float | None:
        """What decides ``qualified`` for loads like ``load`` of its tenant, whatever their
        risk: None when no agent passes the rest, else the most risk one of them takes (with
        risk a constraint, a load qualifies when that is at least its risk: the same answer
        as ``qualified(...).size`` for every risk, NaN included, as rows taking NaN take
        nothing and a NaN risk goes nowhere; inf when risk is no constraint)."""
        rows = self._kind(load, policy).cand
        if denied and policy.enforced("tenant_deny") and rows.size:
            allowed = self._allowed(load, denied, rows)
            rows = rows[allowed] if allowed is not None else rows
        if not rows.size:
            return None
        if not policy.enforced("risk"):
            return math.inf
        most = np.minimum(self.risk_budget.take(rows), self.max_risk.take(rows))
        return float(np.fmax.reduce(most))  # (NaN only if every row's is)

    def _kind(self, load: LoadSpec, policy: Policy) -> _Kind:
        """The agents passing the capability check for loads like ``load``, and which of
        the clearance and region checks each fails first (cached until a profile
        changes)."""
        off = policy.disabled_constraints  # (policy.enforced, without three calls per load)
        cap_on, clear_on = "capability" not in off, "clearance" not in off
        region_on = "region" not in off
        key = (load.required if cap_on else None, int(load.sensitivity) if clear_on else -1,
               load.region if region_on else None)  # fmt: skip
        kind = self._kinds.get(key)
        if kind is None:
            if cap_on and load.required:
                rows = self._capable(load.required)
            else:
                rows = np.arange(self.n, dtype=np.intp)
            stage = np.full(len(rows), 2, np.int8)  # 0: fails clearance, 1: region, 2: none
            if region_on:
                stage[~self._in_region(load.region, rows)] = 1
            if clear_on:
                stage[self.clearance.take(rows) < int(load.sensitivity)] = 0
            if len(self._kinds) >= 4096:  # kinds of load: bounded, oldest go first
                oldest = self._kinds.pop(next(iter(self._kinds)))
                self._cols_bytes -= _nbytes(oldest.cols) + _nbytes(oldest.static.values())
            cand = rows[stage == 2]
            no_clearance, no_region = rows[stage == 0], rows[stage == 1]
            size = cand.size * (8 * self.embedding.shape[1] + 36)  # what _nbytes will count
            budget = min(_COLS_BUDGET, _COLS_BUDGET_PER_AGENT * self.n)
            cols = self.columns(cand) if self._cols_bytes + size <= budget else None
            self._cols_bytes += _nbytes(cols)
            for shared in (cand, no_clearance, no_region, *(cols or ())):
                shared.setflags(write=False)  # kept for every load of the kind
            kind = self._kinds[key] = _Kind(no_clearance, no_region, cand, cols)
        return kind

    def columns(self, rows: npt.NDArray[np.intp]) -> _Cols:
        """The agent-only columns of ``rows``."""
        dims = self.embedding.shape[1]
        half = np.empty((dims + 1, len(rows)))
        np.divide(self.embedding.take(rows, axis=0).T, 2.0, out=half[:dims])
        half[dims] = 0.5
        return _Cols(rows, half, self.inv_caps.take(rows),
                     self.zone.take(rows), self.speed_term.take(rows))  # fmt: skip

    def _risk_ok(self, load: LoadSpec, rows: npt.NDArray[np.intp]) -> Bool | None:
        if load.risk <= self._room_floor:
            return None  # every agent has room for it
        if self._floor_loose:
            self._floor_loose = False
            self._room_floor = float(self.risk_room[: self.n].min()) if self.n else math.inf
            if load.risk <= self._room_floor:
                return None
        ok: Bool = self.risk_room.take(rows) >= load.risk
        return ok

    def _capable(self, required: frozenset[str]) -> npt.NDArray[np.intp]:
        """Rows having every capability in ``required``, ascending."""
        bits = self._caps_vocab.known(required)
        if bits is None:  # a capability no agent ever declared
            return np.zeros(0, np.intp)
        arrays = sorted((self._rows_with(b) for b in bits), key=len)
        rows = arrays[0]
        for other in arrays[1:]:
            rows = np.intersect1d(rows, other, assume_unique=True)
        return rows

    def _rows_with(self, bit: int) -> npt.NDArray[np.intp]:
        cached = self._cap_array.get(bit)
        if cached is None:
            cached = np.array(sorted(self._cap_rows.get(bit, ())), dtype=np.intp)
            self._cap_array[bit] = cached
        return cached

    def _in_region(self, region: str, rows: npt.NDArray[np.intp]) -> Bool:
        bit = self._region_vocab.index.get(region)
        if bit is None:
            return np.zeros(len(rows), np.bool_)
        word, shift = divmod(bit, 64)
        bits = (self.regions[:, word].take(rows) >> np.uint64(shift)) & np.uint64(1)
        inside: Bool = bits.astype(np.bool_)
        return inside

    def _untried(self, tried: tuple[str, ...], rows: npt.NDArray[np.intp]) -> Bool | None:
        """Which of ``rows`` are none of the agents ``tried`` (None: all of them)."""
        tried_rows = [r for a in tried if (r := self.row.get(a)) is not None]
        if not tried_rows:
            return None
        untried: Bool = ~np.isin(rows, tried_rows)
        return untried

    def _allowed(
        self, _: LoadSpec, denied: frozenset[str], rows: npt.NDArray[np.intp]
    ) -> Bool | None:
        if not denied:
            return None
        denied_rows = [r for a in denied if (r := self.row.get(a)) is not None]
        allowed: Bool = ~np.isin(rows, denied_rows)
        return allowed

    def weighted(
        self, cols: _Cols, load: LoadSpec, policy: Policy, now_ms: int, *,
        affinity_row: int | None = None, kind: _Kind | None = None,
    ) -> dict[str, Floats]:  # fmt: skip
        """Each score term with a nonzero weight (the term in [0, 1] times its weight) of
        each of ``cols``' rows for ``load``; a term left out is 0 for every row.

        Every term is computed element by element (the embedding's dot product
        exactly, see ``unit``), so a row's terms do not depend on which other
        rows are scored with it, nor on the machine. The terms on the agents'
        profiles alone (capability fit, locality) are kept with ``kind``, whose
        candidates ``cols`` are.
        """
        rows = cols.rows
        out: dict[str, Floats] = {}
        for t, w in policy.active_weights:
            if t == "embedding":
                dims = self.embedding.shape[1]
                intent = _unit(load.intent, dims, 1.0) if load.intent and dims else None
                if intent is not None:
                    # (similarity + 1) / 2, exactly: half the similarity plus 1 x the 0.5
                    # ``columns`` puts under each row's half embedding (sums exact: ``unit``)
                    term = intent @ cols.half_embedding
                    if w != 1.0:  # (times 1 changes no bit: the default weight skips a pass)
                        term *= w
                    out[t] = term
            elif t == "capability_fit":
                out[t] = self._static(kind, cols, t, len(load.required), w)
            elif t == "balance":
                term = self.balance.take(rows)
                term *= w
                out[t] = term
            elif t == "locality":
                zone = self._zone_vocab.index.get(load.zone) if load.zone else None
                if zone is not None:
                    out[t] = self._static(kind, cols, t, zone, w)
            elif t == "affinity":
                if affinity_row is not None:
                    out[t] = w * (rows == affinity_row).astype(np.float64)
            elif load.deadline_ms is None:
                continue  # (speed and deadline fit are 0 for every row without a deadline)
            elif (late := _deadline_term(t, cols.speed_term, load, now_ms, policy)) is not None:
                out[t] = w * late
        return out

    def _static(self, kind: _Kind | None, cols: _Cols, term: str, part: int, w: float) -> Floats:
        """A weighted term on the agents' profiles alone: capability fit for a load needing
        ``part`` capabilities, or locality in zone ``part``; kept with ``kind``."""
        cached = kind.static.get((term, part, w)) if kind is not None else None
        if cached is not None:
            return cached
        if term == "capability_fit":
            value = w * ((1.0 + part) * cols.inv_caps)
        else:
            value = w * (cols.zone == part).astype(np.float64)
        if kind is not None and kind.cols is not None and len(kind.static) < 16:
            size = value.nbytes
            if self._cols_bytes + size <= min(_COLS_BUDGET, _COLS_BUDGET_PER_AGENT * self.n):
                self._cols_bytes += size
                value.setflags(write=False)  # shared by every load of the kind
                kind.static[term, part, w] = value
        return value

    def evaluate(
        self, load: LoadSpec, policy: Policy, now_ms: int, *,
        denied: frozenset[str] = frozenset(), affinity_row: int | None = None,
        tried: tuple[str, ...] = (), screened: Screened | None = None,
    ) -> Scored:  # fmt: skip
        """Every agent that qualifies for ``load``, with its weighted score (``screened``:
        what ``screen`` said of the load just before, on these agents)."""
        screened = screened or self._screen(load, policy, denied, tried)
        kind, ok, excluded, _ = screened
        if kind.cols is None:  # gather the qualifying rows' columns only
            return self.scored(kind.cand[ok], load, policy, now_ms, affinity_row=affinity_row,
                               excluded=excluded)  # fmt: skip
        s = self._score_kind(screened, load, policy, now_ms, affinity_row)
        if s.candidates in (0, len(ok)):  # none qualifies, or all do
            return s
        weighted = {t: term[ok] for t, term in s.weighted.items()}
        return Scored(kind.cand[ok], s.total[ok], weighted, excluded, s.candidates)

    def scored(
        self, rows: npt.NDArray[np.intp], load: LoadSpec, policy: Policy, now_ms: int, *,
        affinity_row: int | None = None, excluded: tuple[tuple[str, int], ...] = (),
    ) -> Scored:  # fmt: skip
        """The weighted score of ``rows`` for ``load`` (explain uses this)."""
        weighted = self.weighted(self.columns(rows), load, policy, now_ms,
                                 affinity_row=affinity_row)  # fmt: skip
        return Scored(rows, _total(weighted, len(rows)), weighted, excluded, len(rows))

    def match(
        self, load: LoadSpec, policy: Policy, now_ms: int, *,
        denied: frozenset[str] = frozenset(), affinity_row: int | None = None,
        tried: tuple[str, ...] = (),
    ) -> Match:  # fmt: skip
        """The best agent for ``load`` under ``policy``: ties go to the earliest registered."""
        s = self._score_kind(self._screen(load, policy, denied, tried), load, policy, now_ms,
                             affinity_row)  # fmt: skip
        if not s.candidates:
            return s.none()
        return s.pick(int(s.total.argmax()))  # the first maximum: lowest row

    def _score_kind(
        self, screened: Screened, load: LoadSpec, policy: Policy, now_ms: int,
        affinity_row: int | None,
    ) -> Scored:  # fmt: skip
        """Every agent of the load's kind (``screened``) scored (their columns are cached),
        those failing a hard constraint now at -inf: the same scores as gathering the
        qualifying rows' columns anew would give."""
        kind, ok, excluded, count = screened
        if not count:
            return Scored(kind.cand[:0], np.zeros(0), {}, excluded, 0)
        cols = kind.cols or self.columns(kind.cand)
        weighted = self.weighted(cols, load, policy, now_ms, affinity_row=affinity_row, kind=kind)
        total = _total(weighted, len(ok))
        if count < len(ok):
            total[~ok] = -np.inf
        return Scored(kind.cand, total, weighted, excluded, count)


def _nbytes(arrays: Iterable[npt.NDArray[Any]] | None) -> int:
    return sum(a.nbytes for a in arrays) if arrays is not None else 0


def _narrow(ok: Bool, keep: Bool | None, left: int, counts: list[int]) -> int:
    """Applies a constraint's ``keep`` (None: it excludes none) to the ``left`` agents
    ``ok`` in place, counts those it excluded, and returns how many are left."""
    if keep is None:
        counts.append(0)
        return left
    ok &= keep
    now_left = int(np.count_nonzero(ok))
    counts.append(left - now_left)
    return now_left


@functools.lru_cache(maxsize=4096)
def _exclusions(counts: tuple[int, ...]) -> tuple[tuple[str, int], ...]:
    """Each constraint with how many agents it excluded, in CONSTRAINTS order: one tuple per
    distinct counts, shared by every decision that has them (fewer new objects for the
    garbage collector to count and walk)."""
    return tuple(zip(CONSTRAINTS, counts, strict=True))


def _count(mask: Bool, rows: npt.NDArray[np.intp]) -> int:
    """How many of ``rows`` are set in ``mask``."""
    return int(np.count_nonzero(mask.take(rows))) if rows.size else 0


def _deadline_term(
    term: str, speed: Floats, load: LoadSpec, now_ms: int, policy: Policy
) -> Floats | None:
    """The speed or deadline-fit term (None: 0 for every row, as without a deadline)."""
    deadline_ms = load.deadline_ms
    if deadline_ms is None:
        return None
    if term == "speed":
        slack = deadline_ms - now_ms - load.duration_ms
        tight = 1.0 if slack <= 0 else min(1.0, load.duration_ms / slack)
        return tight * speed if tight else None
    # speed = s / (1 + s), so duration / s = duration * (1 - speed) / speed
    finish = now_ms + load.duration_ms * (1.0 - speed) / speed * (1.0 + policy.deadline_margin)
    fits: Floats = (finish <= deadline_ms).astype(np.float64)
    return fits


def _total(weighted: dict[str, Floats], k: int) -> Floats:
    """The sum of the weighted terms, in SCORE_TERMS order (float sums are not associative)."""
    terms = list(weighted.values())  # made in that order
    if len(terms) < 2:
        return terms[0] + 0.0 if terms else np.zeros(k)  # (a new array)
    total = terms[0] + terms[1]
    for term in terms[2:]:
        total += term
    return total


def unit(values: tuple[float, ...], dims: int) -> Floats:
    """``values``, cut or padded to ``dims``, scaled to length 1 and rounded to a grid of
    2^-20 (the zero vector stays zero).

    On that grid the product of two components is a whole number of 2^-40, and
    so is every partial sum of a dot product of two such vectors, all below
    2^42 of them: float64 holds each exactly, so a similarity is the same
    whichever BLAS kernel, machine or summation order computes it. (An
    unrounded float dot product is not: here, a row's product computed alone
    and inside a matrix product differed in the last bit half the time, which
    would break replay on another machine.) The norm is summed with fsum,
    exactly rounded.
    """
    out = _unit(values, dims)
    return np.zeros(dims) if out is None else out


def _unit(values: tuple[float, ...], dims: int, *tail: float) -> Floats | None:
    """``unit`` with ``tail`` after it, or None for the zero vector."""
    head = [float(x) for x in values[:dims]]
    norm = math.sqrt(math.fsum([x * x for x in head]))
    if not norm or not math.isfinite(norm):
        return None
    # (in Python: a few numpy calls cost more than the arithmetic of a short vector; round
    # is np.rint's round-half-to-even, and the same float operations give the same bits)
    out = [round(x / norm * _GRID) / _GRID for x in head]
    out += [0.0] * (dims - len(head))
    out += tail
    return np.array(out)


@dataclass(frozen=True, slots=True)
class Scored:
    """Agents scored for one load: ``candidates`` of them qualify (the others, if any,
    score -inf)."""

    rows: npt.NDArray[np.intp]
    total: Floats
    weighted: dict[str, Floats]  # AgentTable.weighted
    excluded: tuple[tuple[str, int], ...]
    candidates: int

    def best(self, k: int) -> npt.NDArray[np.intp]:
        """The indexes of the ``k`` best candidates, best first; ties go to the lower row.

        The same as the first ``k`` of a stable sort by descending score, without
        sorting them all.
        """
        n = len(self.total)
        if n <= k:
            return np.argsort(-self.total, kind="stable")
        cut = np.partition(self.total, n - k)[n - k]  # the k-th greatest score
        above = np.flatnonzero(self.total > cut)
        chosen = np.concatenate([above, np.flatnonzero(self.total == cut)[: k - len(above)]])
        return chosen[np.argsort(-self.total[chosen], kind="stable")]

    def none(self) -> Match:
        """The match that chooses no agent (its candidates and exclusions counted)."""
        return Match(None, None, (), self.candidates, self.excluded, None, None)

    def pick(self, i: int) -> Match:
        """The match that chooses candidate ``i``; the runner-up is the best of the others."""
        runner_up = margin = None
        total, weighted = self.total, self.weighted
        best = total.item(i)
        if self.candidates > 1:
            total[i] = -np.inf  # hide the chosen one for a moment
            r = int(total.argmax())
            total[i] = best
            runner_up, margin = self.rows.item(r), best - total.item(r)
        # (the terms of weight 0 as shared pairs; a list, not a generator: cheaper to build)
        parts = [
            none if (a := weighted.get(t)) is None else (t, a.item(i)) for t, none in _NO_PARTS
        ]
        return Match(
            row=self.rows.item(i),
            score=best,
            parts=tuple(parts),
            candidates=self.candidates,
            excluded=self.excluded,
            runner_up=runner_up,
            margin=margin,
        )
