"""kill -9 the worker mid-stream, again and again; nothing is lost, nothing is decided twice.

20,000 loads flow from a scheduled producer to a fleet of simulated agents
while worker processes are killed with SIGKILL at random moments (seeded) and
restarted (one worker), or killed while another takes over and a third joins
(two workers, rebalances). Each kill lands while the worker decides: it had
caught up on its partitions, loads were in flight, and (over the kills) it had
sent decisions for inputs it had not committed yet. Afterwards: every load has
exactly one final decision, nearly all of them completed; no agent was ever
over capacity in the log; every assignment is its decision's, byte for byte;
the audit re-derives every logged decision, and the decisions sent again are
identical repeats; the workers that took the partitions over rebuilt their
state from snapshots and the log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from dispatcher.audit import PartitionAudit, audit
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
    Kill,
    Pipeline,
    assert_audit_clean,
    assignment_problems,
    deciding,
    in_flight,
    kill_deciding,
    over_capacity,
    pool_partition,
    takeovers,
    uncommitted_decisions,
    wait_until,
)

pytestmark = pytest.mark.integration
LOADS = 20_000
RATE = 250.0  # loads/s: about 80 s of traffic
POOLS = [f"crash-{i}" for i in range(4)]
BUSY = {pool_partition(pool) for pool in POOLS}  # the partitions that get the traffic
DECLINE = FAIL = 0.02  # each attempt of a load is refused with about 4% probability


def run_under_faults(
    p: Pipeline, faults: Callable[[float], Coroutine[Any, Any, None]]
) -> list[PartitionAudit]:
    """Runs the traffic; ``faults(duration_s)`` is run beside it and does the killing.
    Returns the audit (which kept the decisions)."""
    rng = np.random.default_rng(11)
    agents = {f"agent-{i:03d}": (POOLS[i % 4], agent_profile(rng, capacity=3)) for i in range(120)}

    async def scenario() -> tuple[DecisionTally, LoadDriver]:
        producer = DispatcherProducer(p.bootstrap, topics=p.topics)
        await producer.start()
        # (timeouts of a minute: a worker restarted behind a backlog of 10-15 s could see
        # the answers to its assignments only after its ticks had passed 5 s, each timeout
        # one decision more to catch up with, and loads dead-lettered for it)
        await producer.publish_policy(policy_update(1, ack_ms=60_000, heartbeat_ms=60_000))
        await producer.stop()
        tally = DecisionTally(p.bootstrap, p.topics)
        await tally.start()
        driver = LoadDriver(p.bootstrap, POOLS, topics=p.topics, seed=2, duration_ms=100)
        behaviour = Behaviour(decline=DECLINE, fail=FAIL, work_ms=(50, 150))
        fleet = Fleet(p.bootstrap, agents, topics=p.topics, seed=4, published=driver.published,
                      behaviour=behaviour)  # fmt: skip
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
    # Nearly every load completed. The agents fail no load for good (their failures are
    # retryable), and nothing is shed (no queue limit or expiry is near): a load ends
    # otherwise only when each of its 4 attempts was declined, failed or timed out. An
    # attempt is declined or failed with probability 0.04 (0.04^4: none expected in
    # 20,000), and times out only if an answer is a minute late.
    finals = {o: tally.outcomes.get(o, 0) for o in ("COMPLETED", "DEAD_LETTERED", "SHED",
                                                    "FAILED", "CANCELLED")}  # fmt: skip
    assert finals["COMPLETED"] + finals["DEAD_LETTERED"] == LOADS, finals
    assert finals["DEAD_LETTERED"] <= LOADS // 1000, finals
    results = asyncio.run(audit(p.bootstrap, p.topics, keep=True))
    checked = assert_audit_clean(results)
    assert checked == len(tally.ids)
    assert over_capacity(results, agents) == []
    assert asyncio.run(assignment_problems(p, results, repeats=True)) == []
    # Snapshots every 2,000 records of a partition (the default is 100,000): the workers
    # that take a partition start from one and fold only the rest, and the audit above
    # finds the decisions made after that identical to a fold from the start.
    snapshots = p.logs / "state" / "snapshots"
    assert len(list(snapshots.glob("*/*.snap"))) >= 4
    return results


def assert_killed_mid_work(p: Pipeline, results: list[PartitionAudit], kills: list[Kill]) -> None:
    """Each kill landed while its worker decided, and what it had not committed was decided
    again, identically, by the worker that took its partitions over."""
    assert all(k.owned for k in kills), kills
    flying = [in_flight(results, k) for k in kills]
    assert all(flying), flying
    uncommitted = asyncio.run(uncommitted_decisions(p, kills))
    # (per kill, none only when it fell within milliseconds of a commit: not all of them)
    assert sum(uncommitted) > 0, uncommitted
    assert sum(r.repeats for r in results) >= sum(uncommitted)  # each sent again (audited)
    for kill in kills:
        taken = takeovers(p, kill)
        assert {c.partition for c in taken} == kill.owned, (kill, taken)
        assert any(c.folded > 0 for c in taken), taken  # the log after the last snapshot
        assert all(c.snapshot is not None for c in taken), taken


@pytest.mark.timeout(900)
def test_kill_9_a_single_worker_three_times(pipeline: Pipeline) -> None:
    p = pipeline
    p.worker_args = ["--snapshot-every", "2000"]
    p.start_worker()
    rng = random.Random(5)  # noqa: S311 - when to kill, not a secret
    # Three moments in the first 55% of the traffic. At each, the worker is killed a
    # pause after it has caught up on every partition: a restarted one has not, for a
    # while (the broker first waits out the killed worker's session, about 10 s), and a
    # kill then would find no decision in flight.
    kills = sorted(rng.uniform(0.1, 0.55) for _ in range(3))
    pauses = [rng.uniform(0.2, 1.5) for _ in kills]
    killed: list[Kill] = []

    async def faults(duration_s: float) -> None:
        start = time.monotonic()
        for at, pause in zip(kills, pauses, strict=True):
            await asyncio.sleep(max(0.0, start + at * duration_s - time.monotonic()))
            worker = len(p.workers) - 1
            await deciding(p, worker, BUSY, every=True)
            await asyncio.sleep(pause)
            killed.append(await kill_deciding(p, worker, BUSY, every=True))
            await asyncio.to_thread(p.start_worker)

    results = run_under_faults(p, faults)
    assert sum(w.returncode == -9 for w in p.workers) == 3
    assert_killed_mid_work(p, results, killed)
    # Each restart took every partition over from a snapshot (the worker was alone).
    assert [k.owned for k in killed] == [frozenset(BUSY)] * 3


@pytest.mark.timeout(900)
def test_two_workers_one_killed_another_joining(pipeline: Pipeline) -> None:
    p = pipeline
    p.worker_args = ["--snapshot-every", "2000"]
    first, second = p.start_worker(), p.start_worker()
    killed: list[Kill] = []

    async def faults(duration_s: float) -> None:
        await asyncio.sleep(0.25 * duration_s)
        killed.append(await kill_deciding(p, 0, BUSY))  # its partitions move to the other
        await asyncio.sleep(0.2 * duration_s)
        # (once the other has them: session timeout, rebalance and catch-up can outlast
        # the pause on a loaded machine, and the third could take one of them first)
        took = killed[0].owned
        await wait_until(lambda: {c.partition for c in takeovers(p, killed[0])} == took, 120,
                         lambda: asyncio.sleep(0.5))  # fmt: skip
        await asyncio.to_thread(p.start_worker)  # a third joins: partitions move again
        await asyncio.sleep(0.2 * duration_s)
        killed.append(await kill_deciding(p, 1, BUSY))

    results = run_under_faults(p, faults)
    assert [w.returncode for w in (first, second)] == [-9, -9]
    assert_killed_mid_work(p, results, killed)
    # The first kill's partitions went to the second worker, the second's to the third.
    assert [{c.worker for c in takeovers(p, k)} for k in killed] == [{1}, {2}]
