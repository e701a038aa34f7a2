"""Synthetic workloads through the matching core on a virtual clock (no broker)."""

from dispatcher.sim.engine import SIM_POLICY, SimReport, sim_policy, simulate
from dispatcher.sim.policyfile import load_policy
from dispatcher.sim.scenarios import SCENARIOS, Scenario

__all__ = [
    "SCENARIOS",
    "SIM_POLICY",
    "Scenario",
    "SimReport",
    "load_policy",
    "sim_policy",
    "simulate",
]
