"""Synthetic workloads for ``dispatcher simulate``: who works, what arrives, when."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["SCENARIOS", "Scenario"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A workload. Arrival rate is set from the target utilisation of all agents' slots."""

    name: str
    agents: int = 1000
    duration_s: float = 60.0
    utilisation: float = 0.7  # arrivals x mean duration / total slots
    mean_duration_ms: int = 2000
    tenants: tuple[tuple[str, float], ...] = (("acme", 1.0), ("globex", 1.0), ("initech", 1.0))
    tenant_traffic: tuple[float, ...] = (1.0, 1.0, 1.0)  # relative arrival rates
    priority_mix: tuple[float, float, float, float] = (0.05, 0.15, 0.6, 0.2)  # crit/high/norm/low
    deadline_share: float = 0.5  # loads that carry a deadline
    deadline_slack: tuple[float, float] = (2.0, 6.0)  # deadline = duration x U(a, b) after arrival
    surge: tuple[float, float, float] | None = None  # (from s, to s, rate factor)
    crash_share: float = 0.0  # agents that crash mid-run and never come back
    capabilities: int = 12  # vocabulary size; agents have 3-6, loads need 0-2
    embedding_dim: int = 8
    accept_share: float = 0.97
    success_share: float = 0.95
    extra: dict[str, float] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        """What this scenario's duration cuts off of what it is about (the simulator says
        the same of crashed agents it cannot find)."""
        if self.surge is None or self.duration_s > self.surge[0]:
            return []
        start, end, factor = self.surge
        return [f"the surge (x{factor:g} arrivals from {start:g} s to {end:g} s) does not start "
                f"before the {self.duration_s:g} s run ends, so this run is steady: simulate more "
                f"than {start:g} s (at least {end:g} s for the whole surge)"]  # fmt: skip

    def scaled(self, *, agents: int | None = None, duration_s: float | None = None) -> Scenario:
        return replace(
            self,
            agents=self.agents if agents is None else agents,
            duration_s=self.duration_s if duration_s is None else duration_s,
        )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("steady"),
        Scenario("surge", surge=(20.0, 40.0, 5.0)),
        Scenario("tenant-flood", tenant_traffic=(10.0, 1.0, 1.0)),
        Scenario(
            "deadline-crunch",
            utilisation=0.85,
            deadline_share=0.9,
            deadline_slack=(1.2, 2.5),
            priority_mix=(0.1, 0.3, 0.5, 0.1),
        ),
        Scenario("agent-churn", crash_share=0.2),
        Scenario("large", agents=10_000, duration_s=20.0),
    )
}
