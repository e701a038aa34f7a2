"""kill -9 the worker mid-stream, again and again; nothing is lost, nothing is decided twice.

20,000 loads flow from a scheduled producer to a fleet of simulated agents
while worker processes are killed with SIGKILL at random moments and
restarted (one worker), or killed while another takes over and a third joins
(two workers, rebalances). Afterwards: every load has exactly one final
decision, no agent was ever over capacity in the log, assignments and
decision log match 1:1, and the audit re-derives every logged decision.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from dispatcher.audit import audit
from dispatcher.codecs import models as m
from dispatcher.demo import (
    Behaviour,
    DecisionTally,
    Fleet,
    LoadDriver,
    agent_profile,
    policy_update,
)
from dispatcher.sdk import DispatcherProducer
from tests.integration.pipeline import (
    Pipeline,
    assert_audit_clean,
    assignments_ids,
    over_capacity,
    wait_until,
)

pytestmark = pytest.mark.integration
LOADS = 20_000
RATE = 250.0  # loads/s: about 80 s of traffic


def run_under_faults(p: Pipeline, faults: Callable[[float], Coroutine[Any, Any, None]]) -> None:
    """Runs the traffic; ``faults(duration_s)`` is run beside it and does the killing."""
    rng = np.random.default_rng(11)
    pools = [f"crash-{i}" for i in range(4)]
    agents = {f"agent-{i:03d}": (pools[i % 4], agent_profile(rng, capacity=3)) for i in range(120)}

    async def scenario() -> tuple[DecisionTally, LoadDriver]:
        producer = DispatcherProducer(p.bootstrap, topics=p.topics)
        await producer.start()
        await producer.publish_policy(policy_update(1, ack_ms=5_000, heartbeat_ms=20_000))
        await producer.stop()
        tally = DecisionTally(p.bootstrap, p.topics)
        await tally.start()
        driver = LoadDriver(p.bootstrap, pools, topics=p.topics, seed=2, duration_ms=100)
        fleet = Fleet(p.bootstrap, agents, topics=p.topics, seed=4, published=driver.published,
                      behaviour=Behaviour(decline=0.02, fail=0.02, work_ms=(50, 150)))  # fmt: skip
        await fleet.start()
        await driver.producer.start()
        done = asyncio.Event()
        background = [asyncio.create_task(fleet.run(done.is_set)),
                      asyncio.create_task(faults(LOADS / RATE))]  # fmt: skip
        await driver.run(LOADS, rate=RATE, prefix="crash")
        await background[1]
        await wait_until(lambda: len(tally.finals) >= LOADS, 240, tally.poll)
        await asyncio.sleep(2.0)
        await tally.poll()
        done.set()
        await background[0]
        await fleet.stop()
        await driver.producer.stop()
        await tally.stop()
        return tally, driver

    tally, driver = asyncio.run(scenario())
    assert driver.sent == LOADS
    lost = LOADS - len(tally.finals)
    twice = [load for load, ids in tally.finals.items() if len(ids) > 1]
    assert (lost, twice) == (0, [])
    results = asyncio.run(audit(p.bootstrap, p.topics, keep=True))
    checked = assert_audit_clean(results)
    assert checked == len(tally.ids)
    assert sum(r.repeats for r in results) >= 0  # repeats are allowed, and identical
    assert over_capacity(results, agents) == []
    assigned = {rec.decision_id for r in results for rec in r.records
                if rec.outcome is m.DecisionOutcome.ASSIGNED}  # fmt: skip
    assert set(asyncio.run(assignments_ids(p))) == assigned
    assert "folded" in p.log_text()  # a restarted worker rebuilt its state from the log
    # Snapshots every 2,000 records of a partition (the default is 100,000): restarted
    # workers start from one and fold only the rest, and the audit above finds the
    # decisions made after that identical to a fold from the start.
    snapshots = p.logs / "state" / "snapshots"
    assert len(list(snapshots.glob("*/*.snap"))) >= 4


@pytest.mark.timeout(900)
def test_kill_9_a_single_worker_three_times(pipeline: Pipeline) -> None:
    p = pipeline
    p.worker_args = ["--snapshot-every", "2000"]
    p.start_worker()
    rng = random.Random(5)  # noqa: S311 - when to kill, not a secret
    kills = sorted(rng.uniform(0.1, 0.8) for _ in range(3))  # one seed, three moments

    async def faults(duration_s: float) -> None:
        start = time.monotonic()
        for at in kills:
            await asyncio.sleep(max(0.0, start + at * duration_s - time.monotonic()))
            p.kill(p.workers[-1])
            await asyncio.to_thread(p.start_worker)

    run_under_faults(p, faults)
    assert sum(w.returncode == -9 for w in p.workers) == 3
    assert p.log_text().count("starts from the snapshot") >= 3  # each restart, every partition


@pytest.mark.timeout(900)
def test_two_workers_one_killed_another_joining(pipeline: Pipeline) -> None:
    p = pipeline
    p.worker_args = ["--snapshot-every", "2000"]
    first, second = p.start_worker(), p.start_worker()

    async def faults(duration_s: float) -> None:
        await asyncio.sleep(0.25 * duration_s)
        p.kill(first)  # its partitions move to the other worker
        await asyncio.sleep(0.2 * duration_s)
        await asyncio.to_thread(p.start_worker)  # a third joins: partitions move again
        await asyncio.sleep(0.2 * duration_s)
        p.kill(second)

    run_under_faults(p, faults)
    assert [w.returncode for w in p.workers[:2]] == [-9, -9]
