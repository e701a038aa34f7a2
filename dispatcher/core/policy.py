"""The policy: every weight, constraint, quota and limit the core obeys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["CONSTRAINTS", "DEFAULT_POLICY", "SCORE_TERMS", "Policy"]

# Hard constraints, in the order they are applied (and their exclusions counted).
CONSTRAINTS = (
    "status",
    "capacity",
    "capability",
    "clearance",
    "region",
    "risk",
    "tenant_deny",
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
