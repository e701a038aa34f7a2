"""The policy: every weight, constraint, quota and limit the core obeys."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["CONSTRAINTS", "DEFAULT_POLICY", "SCORE_TERMS", "Policy", "policy_problems"]

# Hard constraints, in the order they are applied (and their exclusions counted).
CONSTRAINTS = (
    "status",
    "capacity",
    "capability",
    "clearance",
    "region",
    "risk",
    "tenant_deny",
    # A requeued load does not go back to an agent that had it (declined it, failed it,
    # timed out), while another agent passes every other constraint.
    "tried",
)
# Soft score terms, each in [0, 1], summed with the policy's weights.
SCORE_TERMS = (
    "embedding",
    "capability_fit",
    "balance",
    "locality",
    "affinity",
    "speed",
    "deadline_fit",  # 1 when the agent's expected finish (duration / speed) meets the deadline
)


def _frozen(d: dict[str, float] | None = None) -> MappingProxyType[str, float]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True, slots=True)
class Policy:
    """One policy version. ``Policy()`` is the built-in version 0."""

    version: int = 0
    mode: Literal["greedy", "batched"] = "greedy"
    batch_window_ms: int = 50
    batch_max_loads: int = 512  # loads solved together in one batch
    batch_candidates: int = 16  # best agents kept per load in a batch
    weights: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"embedding": 1.0, "capability_fit": 0.5, "balance": 0.5, "locality": 0.2,
             "affinity": 0.5, "speed": 0.3, "deadline_fit": 1.0}
        )
    )  # fmt: skip
    disabled_constraints: frozenset[str] = frozenset()
    hard_affinity: bool = False
    # Below critical, pick the least-served tenant before the class (a flood of one
    # tenant's high-priority work cannot starve another); False: classes strict.
    tenant_first: bool = True
    tenant_weights: Mapping[str, float] = field(default_factory=_frozen)
    # When no more than this share of the pool's available agents can take a load, they
    # are kept from tenants running more than a quarter above their weighted share of the
    # loads in flight: such a tenant waits (its critical loads too), so the others' next
    # loads start at once instead of queueing behind its flood. 0: every free agent goes
    # to the queue.
    fair_share_reserve: float = 0.1
    tenant_quotas: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    tenant_deny: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    ack_timeout_ms: int = 30_000
    heartbeat_timeout_ms: int = 60_000
    affinity_wait_ms: int = 5_000
    # A waiting load this long past its deadline is shed as EXPIRED (a critical one never).
    expire_after_deadline_ms: int | None = None
    # deadline_fit counts an agent when its expected finish, with this share of the
    # expected run time added as a safety margin, meets the deadline.
    deadline_margin: float = 0.2
    max_attempts: int = 3
    backoff_base_ms: int = 1_000
    backoff_max_ms: int = 60_000
    # How long event keys and finished loads are kept to recognise duplicates: memory is
    # about the arrival rate x this x 1 KB (a day at 100 loads/s would be 8.6 GB).
    dedupe_window_ms: int = 3_600_000
    # An agent not available (registered only, offline or lost), holding no load, not
    # heard of for this long is forgotten: its events are an unknown agent's (ignored)
    # until it registers again (a fleet whose agents come and go under new ids would
    # pile up otherwise).
    forget_departed_ms: int = 86_400_000
    drain_limit: int = 256  # loads tried per event, so one event's cost stays bounded
    max_pending: int = 100_000
    high_watermark: int = 80_000
    low_watermark: int = 60_000
    # Every weight, and the nonzero ones, in SCORE_TERMS order (derived from ``weights``).
    all_weights: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)
    active_weights: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fair_share_reserve < 1.0:
            raise ValueError(f"fair_share_reserve {self.fair_share_reserve} is not in [0, 1)")
        # Read-only views of private copies: a policy cannot change under a decision.
        for name in ("weights", "tenant_weights", "tenant_quotas", "tenant_deny"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        every = tuple((t, self.weight(t)) for t in SCORE_TERMS)
        object.__setattr__(self, "all_weights", every)
        object.__setattr__(self, "active_weights", tuple((t, w) for t, w in every if w))

    def __reduce__(self) -> tuple[Any, ...]:
        # Read-only views do not pickle (state snapshots do): rebuild from plain copies.
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return (_rebuild, ({k: dict(v) if isinstance(v, MappingProxyType) else v
                            for k, v in values.items()},))  # fmt: skip

    def weight(self, term: str) -> float:
        return float(self.weights.get(term, 0.0)) + 0.0  # + 0.0: no weight of -0.0

    def tenant_weight(self, tenant: str) -> float:
        return float(self.tenant_weights.get(tenant, 1.0))

    def enforced(self, constraint: str) -> bool:
        return constraint not in self.disabled_constraints

    def backoff_ms(self, attempt: int) -> int:
        """Exponential backoff before attempt ``attempt`` (2, 3, ...), capped."""
        return int(min(self.backoff_max_ms, self.backoff_base_ms * 2 ** max(0, attempt - 2)))


DEFAULT_POLICY = Policy()


def _rebuild(values: dict[str, Any]) -> Policy:
    return Policy(**values)


# Bounds no sane policy comes near, and past which sums overflow or times leave the int range.
MAX_WEIGHT = 1e6
MAX_TIMEOUT_MS = 366 * 86_400_000
# A batch solves a loads x slots matrix, in time growing with the cube of its loads, and
# the worker decides nothing meanwhile: 1,024 loads took 0.4-0.8 s a tick here, 2,048
# 3-12 s, 4,096 110 s (a review's fuzzer; 10,000 were allowed).
MAX_BATCH_LOADS = 1_024
MAX_BATCH_CANDIDATES = 1_000
TIMEOUT_FIELDS = ("ack_timeout_ms", "heartbeat_timeout_ms", "affinity_wait_ms",
                  "expire_after_deadline_ms", "dedupe_window_ms", "forget_departed_ms")  # fmt: skip
_NONZERO = ("ack_timeout_ms", "heartbeat_timeout_ms", "dedupe_window_ms", "forget_departed_ms")
_ALWAYS_ENFORCED = ("status", "capacity")


def policy_problems(policy: Policy, names: Mapping[str, str] | None = None) -> list[str]:
    """What a policy's types allow but no sane dispatcher should run (a worker refuses such
    a policy, ``policy publish`` does not publish it, ``simulate`` does not run it).

    Args:
        policy: the policy to check.
        names: how the caller's source spells a field, to name it so in the problems
            (e.g. ``{"ack_timeout_ms": "timeouts_ms.ack"}``); other fields by their name.

    Returns:
        One line per problem; empty if there is none.
    """
    spelt = dict(names or {})

    def n(name: str) -> str:
        return spelt.get(name, name)

    return [*_choice_problems(policy, n), *_time_problems(policy, n), *_size_problems(policy, n)]


def _choice_problems(p: Policy, n: Callable[[str], str]) -> list[str]:
    """Mode, weights, constraints and tenants."""
    out = []
    if p.version < 0:
        out.append(f"{n('version')}: {p.version} (versions start at 0)")
    if p.mode not in ("greedy", "batched"):
        out.append(f"{n('mode')}: {p.mode!r} (greedy or batched)")
    for name, w in sorted(p.weights.items()):
        if name not in SCORE_TERMS:
            out.append(f"{n('weights')}.{name}: not a score term ({', '.join(SCORE_TERMS)})")
        elif not 0 <= w <= MAX_WEIGHT:  # (NaN too)
            out.append(f"{n('weights')}.{name}: {w} (weights are from 0 to {MAX_WEIGHT:g})")
    if not any(w > 0 for w in p.weights.values()):
        out.append(f"{n('weights')}: none is positive, so every agent scores 0 and ties decide")
    for c in sorted(p.disabled_constraints):
        if c not in CONSTRAINTS:
            out.append(f"{n('disabled_constraints')}.{c}: unknown ({', '.join(CONSTRAINTS)})")
        elif c in _ALWAYS_ENFORCED:
            out.append(f"{n('disabled_constraints')}.{c}: cannot be disabled (agents would be "
                       "double-booked, or work would go to agents that are not there)")  # fmt: skip
    out += [f"{n('tenant_weights')}.{t}: {w} (tenant weights are from {1 / MAX_WEIGHT:g} to "
            f"{MAX_WEIGHT:g}: fair share counts 1 / weight per load)"
            for t, w in sorted(p.tenant_weights.items())
            if not 1 / MAX_WEIGHT <= w <= MAX_WEIGHT]  # fmt: skip
    out += [f"{n('tenant_quotas')}.{t}: {q}, so none of its loads can ever run"
            for t, q in sorted(p.tenant_quotas.items()) if q < 1]  # fmt: skip
    return out


def _time_problems(p: Policy, n: Callable[[str], str]) -> list[str]:
    out = []
    for name in (*TIMEOUT_FIELDS, "backoff_base_ms", "backoff_max_ms", "batch_window_ms"):
        v = getattr(p, name)
        if v is None:
            continue
        if v < 0:
            out.append(f"{n(name)}: {v} ms, a negative time")
        elif v > MAX_TIMEOUT_MS:
            out.append(f"{n(name)}: {v} ms, more than a year")
        elif v == 0 and name in _NONZERO:
            out.append(f"{n(name)}: 0 (every load would time out at once, or duplicates pass)")
    if p.backoff_base_ms > p.backoff_max_ms:
        out.append(f"{n('backoff_base_ms')} {p.backoff_base_ms} > backoff_max_ms "
                   f"{p.backoff_max_ms}")  # fmt: skip
    if p.mode == "batched" and p.batch_window_ms == 0:
        out.append(f"{n('batch_window_ms')}: 0 in batched mode (every tick a batch of one)")
    if not 0 <= p.deadline_margin <= 100:  # (NaN too)
        out.append(f"{n('deadline_margin')}: {p.deadline_margin} (from 0 to 100)")
    return out


def _size_problems(p: Policy, n: Callable[[str], str]) -> list[str]:
    out = []
    for name, most in (("batch_max_loads", MAX_BATCH_LOADS),
                       ("batch_candidates", MAX_BATCH_CANDIDATES)):  # fmt: skip
        v = getattr(p, name)
        if not 1 <= v <= most:
            out.append(f"{n(name)}: {v} ({'at least 1' if v < 1 else f'at most {most:,}'})")
    if p.drain_limit < 1:
        out.append(f"{n('drain_limit')}: {p.drain_limit} (loads tried per event: at least 1)")
    if p.max_attempts < 1:
        out.append(f"{n('max_attempts')}: {p.max_attempts} (at least 1)")
    if p.max_pending < 1 or not 0 <= p.low_watermark <= p.high_watermark <= p.max_pending:
        out.append(f"{n('low_watermark')} {p.low_watermark}, {n('high_watermark')} "
                   f"{p.high_watermark}, {n('max_pending')} {p.max_pending}: need "
                   "0 <= low <= high <= max_pending, and max_pending >= 1")  # fmt: skip
    return out
