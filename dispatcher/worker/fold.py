"""The dispatch state of one input-sequence partition: the fold of its records.

No Faust and no I/O here: the worker, ``dispatcher audit`` and the tests all
fold the same bytes through this class, so they reach the same decisions.

A partition holds many pools. Each record names its pool; a PolicyUpdate
(fanned out to every partition by the sequencer) goes to every pool of the
partition, in pool-name order, and to the pools that appear later; each pool
applies it from its effective time on (``core.PoolState``). A pool left with nothing in
it (``core.PoolState.idle``) is dropped, but for what a new one goes on from (its id
counts and clock), and made anew by the next record naming it: the fold of the same
records drops it at the same record, so replays decide alike.
"""

from __future__ import annotations

from dispatcher import core
from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import to_event
from dispatcher.codecs.codec import Codec, CodecError

__all__ = ["INPUTS", "PartitionFold"]

_POOLED = (m.AgentEvent, m.LoadEvent, m.TaskResult, m.Tick)  # inputs that name their pool
INPUTS = (*_POOLED, m.PolicyUpdate)  # what an input sequence holds
Input = m.AgentEvent | m.LoadEvent | m.TaskResult | m.Tick | m.PolicyUpdate  # (one of INPUTS)


class PartitionFold:
    """Folds one partition of the input sequence through the core, record by record."""

    def __init__(
        self, topic: str, partition: int, codec: Codec, policy: core.Policy = core.DEFAULT_POLICY
    ) -> None:
        self.topic, self.partition, self.codec = topic, partition, codec
        self.policy = policy  # new pools start with it, then get ``policies``
        # The policy updates seen, less those a version as new and no later makes moot.
        self.policies: list[core.PolicyChanged] = []
        # The content hash each policy version came with: a version names one document.
        self.versions: dict[int, str] = {}
        self.pools: dict[str, core.PoolState] = {}
        # What the pools dropped carry over (``core.PoolState.carried``) to the pool a later
        # record makes in their place: three numbers a name, not a pool.
        self.dropped: dict[str, tuple[int, int, int]] = {}
        self.next_offset = 0  # the offset of the next record to apply
        self.last: bytes = b""  # the bytes of the record applied last (snapshots name it)
        # Per pool, its decisions per outcome and its deadline loads completed in time
        # ("met") or not ("missed"): a fold of the log like the rest, so the read model's
        # counters stay exact across restarts and takeovers.
        self.counts: dict[str, dict[str, int]] = {}

    def apply(self, value: bytes | None, offset: int) -> list[core.Decision]:
        """Applies the record at ``offset``; returns the decisions it caused.

        Raises:
            CodecError: the bytes do not decode, or there are none (a record with no
                value), or a policy's version came before with another document
                (``_conflict``); the caller dead-letters them; the same records fail the
                same way on every replay, so skipping them is deterministic.
        """
        value = value or b""  # a tombstone fails as empty bytes do (no frame), not as a TypeError
        self.next_offset, self.last = offset + 1, value
        record = self.taken(value, offset)
        return self.apply_event(record, to_event(record, (self.topic, self.partition, offset)))

    def taken(self, value: bytes | None, offset: int) -> Input:
        """The record at ``offset`` as this fold takes it (``whatif`` replays the same ones).

        Raises:
            CodecError: as ``apply``.
        """
        value = value or b""
        where = {"topic": self.topic, "partition": self.partition, "offset": offset}
        record = self.codec.decode(value, trusted=True, **where)  # type: ignore[arg-type]
        if not isinstance(record, INPUTS):  # (written there by something else than a worker)
            detail = f"a {type(record).__name__} is no input of the core"
            raise CodecError(m.DeadLetterReason.WRONG_SCHEMA, detail, value, **where)  # type: ignore[arg-type]
        if isinstance(record, m.PolicyUpdate) and (problem := self._conflict(record)) is not None:
            raise CodecError(m.DeadLetterReason.INVALID, problem, value, **where)  # type: ignore[arg-type]
        return record

    def _conflict(self, update: m.PolicyUpdate) -> str | None:
        """Why ``update`` is refused, if it is: its version came before with another
        document. (Such a policy was ignored, or, were the first one scheduled for later,
        applied in its place: neither said.)"""
        known = self.versions.get(update.version)
        if known is None or known == update.content_hash:
            return None
        return (f"policy {update.policy_id} version {update.version} came before with another "
                f"document (content hash {known[:12]}..., this one {update.content_hash[:12]}"
                "...): a version names one document; publish a newer version")  # fmt: skip

    def apply_event(self, record: m.Record, event: core.Event) -> list[core.Decision]:
        """Applies a decoded input (``whatif`` rewrites some events before they apply)."""
        if isinstance(event, core.PolicyChanged):
            if isinstance(record, m.PolicyUpdate):  # (what to_event makes one of)
                self.versions.setdefault(record.version, record.content_hash)
            self._remember(event)
            out: list[core.Decision] = []
            for name in sorted(self.pools):
                out += self.pools[name].apply(event)
        else:
            assert isinstance(record, _POOLED)  # noqa: S101 - to_event accepted it as an input
            pool = record.pool
            state = self.pool(pool)
            out = state.apply(event)
            if state.idle():  # (what any later record finds again: a new pool)
                del self.pools[pool]
                if (carried := state.carried()) is not None:
                    self.dropped[pool] = carried
        for d in out:
            counts = self.counts.setdefault(d.pool, {})
            counts[d.outcome.value] = counts.get(d.outcome.value, 0) + 1
            if d.outcome is core.Outcome.COMPLETED and d.deadline_ms is not None:
                met = "met" if d.time_ms <= d.deadline_ms else "missed"
                counts[met] = counts.get(met, 0) + 1
        return out

    def pool(self, name: str) -> core.PoolState:
        """The pool ``name``, made if there is none (going on from what the one dropped in
        its place carried, if any, then under the policies seen)."""
        state = self.pools.get(name)
        if state is None:
            state = self.pools[name] = core.PoolState(name, self.policy)
            if (kept := self.dropped.pop(name, None)) is not None:
                state.go_on_from(kept)
            for update in self.policies:  # (an empty pool: no decisions)
                state.apply(update)
        return state

    def _remember(self, e: core.PolicyChanged) -> None:
        def moot(old: core.PolicyChanged, new: core.PolicyChanged) -> bool:
            """Whether ``old`` can never apply where ``new`` is known (a copy of it, too)."""
            return _version(new) >= _version(old) and new.time_ms <= old.time_ms

        if _version(e) > self.policy.version and not any(moot(e, x) for x in self.policies):
            self.policies = [x for x in self.policies if not moot(x, e)] + [e]


def _version(e: core.PolicyChanged) -> int:
    return e.policy.version if isinstance(e.policy, core.Policy) else -1
