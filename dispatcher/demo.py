"""A simulated world on the real topics: producers publish loads, a fleet of agents answers.

Used by ``dispatcher demo`` / ``dispatcher run`` (a workload a newcomer can
watch), by the end-to-end and crash tests, and by the pipeline benchmark.
Everything goes through the SDK's producer and the codecs; randomness is
seeded, so a run's inputs repeat (their interleaving on the topics does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from dispatcher.codecs import models as m
from dispatcher.codecs.codec import Codec, CodecError
from dispatcher.codecs.signing import content_hash
from dispatcher.core import DEFAULT_POLICY, FINAL_OUTCOMES
from dispatcher.errors import BrokerError
from dispatcher.patience import patient
from dispatcher.policytool import signed
from dispatcher.reading import closing, partitions
from dispatcher.sdk.producer import DispatcherProducer, now_ms
from dispatcher.topics import TopicNames

FINAL = frozenset(o.value for o in FINAL_OUTCOMES)

__all__ = ["Behaviour", "DecisionTally", "Fleet", "LoadDriver", "agent_profile", "load_event"]

VOCAB = ("python", "sql", "go", "rust", "search", "vision", "speech", "legal")
TENANTS = ("acme", "globex", "initech")
DIM = 8
# A demo run without --duration goes on for as long as it is left: what it keeps is bounded.
REMEMBER = 200_000  # the latest ids kept (to drop repeats by) per kind
LATENCY_SAMPLE = 200_000  # latencies kept for the summary's percentiles
CHECK_EVERY_S = 1.0  # how soon a record the broker refused stops the demo (flush raises)
CATCH_UP_S = 10.0  # the summary reads the decision log to its end this long at most


def _remember(recent: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Adds ``key``, letting the oldest go beyond REMEMBER."""
    recent[key] = value
    if len(recent) > REMEMBER:
        recent.popitem(last=False)


def _when_delivered(future: asyncio.Future[Any], count: Callable[[], None]) -> None:
    """Calls ``count`` once the broker acknowledged the record of ``future`` (the
    producer's flush raises for one refused: it is never counted)."""
    future.add_done_callback(lambda f: None if f.cancelled() or f.exception() else count())


def agent_profile(rng: np.random.Generator, *, capacity: int | None = None) -> m.AgentProfile:
    return m.AgentProfile(
        tools=sorted(rng.choice(VOCAB, size=int(rng.integers(2, 5)), replace=False).tolist()),
        credentials=[], model_types=[], cpu_millicores=1000, memory_mb=1024,
        capacity=capacity if capacity is not None else int(rng.integers(1, 4)),
        personality=[float(x) for x in rng.normal(size=DIM)], risk_budget=100.0,
        abstention_threshold=1.0, clearance=m.Sensitivity.CONFIDENTIAL, regions=["eu", "us"],
        zone=f"z{int(rng.integers(3))}", speed=math.exp(rng.normal(0, 0.2)),
    )  # fmt: skip


def load_event(
    rng: np.random.Generator, pool: str, load_id: str, *, tenant: str | None = None,
    priority: m.Priority | None = None, duration_ms: int = 200, deadline: bool = True,
) -> m.LoadEvent:  # fmt: skip
    now = now_ms()
    k = int(rng.integers(0, 2))
    spec = m.LoadSpec(
        source=m.LoadSource.USER,
        priority=priority or m.Priority(str(rng.choice(
            ["CRITICAL", "HIGH", "NORMAL", "LOW"], p=[0.05, 0.15, 0.6, 0.2]))),
        required_capabilities=sorted(rng.choice(VOCAB, size=k, replace=False).tolist()),
        intent=[float(x) for x in rng.normal(size=DIM)], sensitivity=m.Sensitivity.INTERNAL,
        region="eu", created_at_ms=now,
        deadline_ms=now + duration_ms * int(rng.integers(5, 20)) if deadline else None,
        estimated_duration_ms=duration_ms, risk_score=float(rng.uniform(0.1, 1.0)),
        session_id=None, zone=f"z{int(rng.integers(3))}",
    )  # fmt: skip
    return m.LoadEvent(
        idempotency_key=f"arrive:{pool}:{load_id}", kind=m.LoadEventKind.ARRIVAL,
        load_id=load_id, pool=pool, tenant=tenant or str(rng.choice(TENANTS)),
        event_time_ms=now, load=spec,
    )  # fmt: skip


def policy_update(
    version: int, *, ack_ms: int = 2_000, heartbeat_ms: int = 5_000,
    mode: m.MatchingMode = m.MatchingMode.GREEDY, tenant_weights: dict[str, float] | None = None,
    max_pending: int = 100_000, effective_from_ms: int | None = None,
) -> m.PolicyUpdate:  # fmt: skip
    """A complete policy document: the core's default weights, timeouts sized for a demo; in
    effect from now (event time), or from ``effective_from_ms``."""
    doc = m.PolicyDocument(
        matching_mode=mode, batch_window_ms=50, weights=dict(DEFAULT_POLICY.weights),
        constraints={}, tenant_weights=tenant_weights or {}, tenant_quotas={}, tenant_deny={},
        timeouts_ms={"ack": ack_ms, "heartbeat": heartbeat_ms},
        retry=m.RetryPolicy(max_attempts=4, backoff_base_ms=100, backoff_max_ms=2_000),
        backpressure=m.Backpressure(max_pending=max_pending, high_watermark=max_pending * 8 // 10,
                                    low_watermark=max_pending * 6 // 10),
    )  # fmt: skip
    return m.PolicyUpdate(
        policy_id="dispatch", version=version, author="demo",
        effective_from_ms=now_ms() if effective_from_ms is None else effective_from_ms,
        document=doc, content_hash=content_hash(doc),
    )  # fmt: skip


@dataclass
class Behaviour:
    """How the simulated agents answer."""

    accept_ms: int = 5  # from receiving an assignment to answering it
    work_ms: tuple[int, int] = (100, 400)  # how long a load runs
    decline: float = 0.03
    fail: float = 0.03  # retryable failures
    silent: float = 0.0  # never answer (the dispatcher's ack timeout requeues)
    heartbeat_ms: int = 1000


@dataclass
class FleetStats:
    received: int = 0
    repeats: int = 0  # the same decision again (after a worker restart): dropped
    answered: dict[str, int] = field(default_factory=dict)  # acknowledged by the broker
    # Load published -> assignment seen (ms): every one, or past LATENCY_SAMPLE a uniform
    # sample of them all (reservoir sampling, seeded, with a generator of its own so that
    # the agents' draws stay the same); the summary's p50/p99 are then the sample's: close
    # to the run's, not exactly them.
    latency_ms: list[float] = field(default_factory=list)
    measured: int = 0  # latencies seen, in the sample or not
    recent_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    _sampler: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def add_latency(self, ms: float) -> None:
        self.measured += 1
        self.recent_latency_ms.append(ms)
        if len(self.latency_ms) < LATENCY_SAMPLE:
            self.latency_ms.append(ms)
        elif (slot := int(self._sampler.integers(self.measured))) < LATENCY_SAMPLE:
            self.latency_ms[slot] = ms


class Fleet:
    """Simulated agents of one or more pools: one consumer for all of their assignments."""

    def __init__(
        self, bootstrap: str, agents: dict[str, tuple[str, m.AgentProfile]], *,
        topics: TopicNames | None = None, behaviour: Behaviour | None = None, seed: int = 0,
        published: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        self.bootstrap, self.agents = bootstrap, agents  # agent id -> (pool, profile)
        self.topics = topics or TopicNames()
        self.behaviour = behaviour or Behaviour()
        self.rng = np.random.default_rng(seed)
        self.codec = Codec()
        self.stats = FleetStats()
        # Load id -> wall time published, until its first assignment is seen.
        self.published = published if published is not None else {}
        self.seq = dict.fromkeys(agents, 0)
        self.running: dict[str, set[str]] = {a: set() for a in agents}  # agent -> its work
        self.offline: set[str] = set()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._due: list[tuple[float, int, Callable[[], Any]]] = []
        self._n = 0
        self.producer = DispatcherProducer(bootstrap, topics=self.topics, linger_ms=2)
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Listens from the end of the assignments topic, then registers every agent."""
        await self.producer.start()
        self._consumer = await reader_at_end(self.bootstrap, self.topics.assignments)
        for agent_id, (pool, profile) in self.agents.items():
            await self._agent_event(agent_id, pool, m.AgentEventKind.REGISTERED, profile)
            await self._agent_event(agent_id, pool, m.AgentEventKind.AVAILABLE)
        await self.producer.flush()

    async def stop(self) -> None:
        try:
            if self._consumer is not None:
                await closing(self._consumer.stop())
        finally:
            await self.producer.stop()

    async def leave(self) -> None:
        """Every agent still here goes offline (their pools stop being ticked once their
        loads are gone)."""
        for agent_id in sorted(self.agents.keys() - self.offline):
            await self.go_offline(agent_id)
        await self.producer.flush()

    async def _agent_event(
        self,
        agent_id: str,
        pool: str,
        kind: m.AgentEventKind,
        profile: m.AgentProfile | None = None,
    ) -> None:
        self.seq[agent_id] += 1
        seq = self.seq[agent_id]
        await self.producer.send(self.topics.agent_availability, pool, m.AgentEvent(
            event_id=f"{agent_id}:{seq}:{kind.value}", kind=kind, agent_id=agent_id, pool=pool,
            seq=seq, event_time_ms=now_ms(), profile=profile))  # fmt: skip

    async def go_offline(self, agent_id: str) -> None:
        """The agent leaves (mid-task, if it has work): it answers nothing from now on."""
        self.offline.add(agent_id)
        await self._agent_event(agent_id, self.agents[agent_id][0], m.AgentEventKind.OFFLINE)

    def _later(self, delay_ms: float, action: Callable[[], Any]) -> None:
        self._n += 1
        heapq.heappush(self._due, (time.monotonic() + delay_ms / 1000, self._n, action))

    async def run(self, until: Callable[[], bool]) -> None:
        """Answers assignments and sends heartbeats until ``until()`` says stop."""
        assert self._consumer is not None  # noqa: S101 - start() first
        next_beat = time.monotonic()
        while not until():
            batch = await self._consumer.getmany(timeout_ms=5, max_records=2000)
            for records in batch.values():
                for r in records:
                    self._on_assignment(r.value)
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                await heapq.heappop(self._due)[2]()
            if now >= next_beat:
                next_beat = now + self.behaviour.heartbeat_ms / 1000
                for agent_id, (pool, _) in self.agents.items():
                    if agent_id not in self.offline:
                        await self._agent_event(agent_id, pool, m.AgentEventKind.HEARTBEAT)
                await self.producer.flush()  # a refused record stops the fleet now (it raises)

    def _on_assignment(self, value: bytes) -> None:
        try:
            a = self.codec.decode(value, "Assignment")
        except CodecError:
            return
        assert isinstance(a, m.Assignment)  # noqa: S101 - decode checked the schema
        if a.agent_id not in self.agents:
            return  # another fleet's
        if a.decision_id in self._seen:
            self.stats.repeats += 1
            return
        _remember(self._seen, a.decision_id, None)
        self.stats.received += 1
        sent = self.published.pop(a.load_id, None)
        if sent is not None and a.attempt == 1:
            self.stats.add_latency((time.time() - sent) * 1000)
        if a.agent_id in self.offline:
            return
        self.running[a.agent_id].add(a.decision_id)
        b, roll = self.behaviour, float(self.rng.random())
        if roll < b.silent:
            self.running[a.agent_id].discard(a.decision_id)  # it forgets the load at once
            return
        if roll < b.silent + b.decline:
            self._later(b.accept_ms, lambda: self._answer(a, m.TaskOutcome.DECLINED))
            return
        self._later(b.accept_ms, lambda: self._answer(a, m.TaskOutcome.ACCEPTED, done=False))
        work = b.accept_ms + float(self.rng.uniform(*b.work_ms))
        failed = float(self.rng.random()) < b.fail
        self._later(work, lambda: self._answer(
            a, m.TaskOutcome.FAILED if failed else m.TaskOutcome.SUCCESS))  # fmt: skip

    async def _answer(self, a: m.Assignment, outcome: m.TaskOutcome, *, done: bool = True) -> None:
        if a.agent_id in self.offline:
            return
        if done:
            self.running[a.agent_id].discard(a.decision_id)
        future = await self.producer.send(self.topics.task_results, a.pool, m.TaskResult(
            event_id=f"{a.decision_id}:{outcome.value}", decision_id=a.decision_id,
            load_id=a.load_id, agent_id=a.agent_id, pool=a.pool, outcome=outcome,
            retryable=outcome is m.TaskOutcome.FAILED, event_time_ms=now_ms()))  # fmt: skip
        _when_delivered(future, lambda: self._answered(outcome))

    def _answered(self, outcome: m.TaskOutcome) -> None:
        self.stats.answered[outcome.value] = self.stats.answered.get(outcome.value, 0) + 1


class LoadDriver:
    """Publishes loads on a schedule (send times fixed in advance, so backlog counts)."""

    def __init__(
        self, bootstrap: str, pools: list[str], *, topics: TopicNames | None = None,
        seed: int = 0, duration_ms: int = 200,
    ) -> None:  # fmt: skip
        self.pools, self.topics = pools, topics or TopicNames()
        self.rng = np.random.default_rng(seed)
        self.duration_ms = duration_ms
        self.producer = DispatcherProducer(bootstrap, topics=self.topics, linger_ms=2)
        # Load id -> wall time published (a Fleet lets it go once it is assigned).
        self.published: OrderedDict[str, float] = OrderedDict()
        self.sent = 0  # acknowledged by the broker

    async def run(self, count: int, rate: float, prefix: str = "load") -> None:
        """Publishes ``count`` loads at ``rate`` per second over the pools, round robin.

        Raises:
            BrokerError: the broker refused a load (within CHECK_EVERY_S).
        """
        start = checked = time.monotonic()
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pool = self.pools[i % len(self.pools)]
            load_id = f"{prefix}-{i:07d}"
            event = load_event(self.rng, pool, load_id, duration_ms=self.duration_ms)
            _remember(self.published, load_id, time.time())
            _when_delivered(await self.producer.send_load(event), self._delivered)
            if time.monotonic() - checked >= CHECK_EVERY_S:
                await self.producer.flush()
                checked = time.monotonic()
        await self.producer.flush()

    def _delivered(self) -> None:
        self.sent += 1


class DecisionTally:
    """Reads the decision log from now on and counts each decision id once."""

    def __init__(
        self, bootstrap: str, topics: TopicNames | None = None, *,
        pools: Collection[str] | None = None,
    ) -> None:  # fmt: skip
        self.bootstrap, self.topics = bootstrap, topics or TopicNames()
        self.pools = None if pools is None else frozenset(pools)  # None: every pool
        self.codec = Codec()
        self.outcomes: dict[str, int] = {}
        self.decisions = 0
        self.undecodable = 0  # records of the decision log skipped
        self.finals: OrderedDict[str, set[str]] = OrderedDict()  # load id -> final decision ids
        self.ids: OrderedDict[str, None] = OrderedDict()  # the latest decision ids
        self.first_ms: int | None = None  # broker timestamps of the first and last decision
        self.last_ms = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = await reader_at_end(self.bootstrap, self.topics.decision_log)

    async def stop(self) -> None:
        if self._consumer is not None:
            await closing(self._consumer.stop())

    async def poll(self, *, reads: int = 20) -> None:
        """Counts what has arrived: reads until a read comes back empty, ``reads`` at most
        (aiokafka fetches a partition again only once its last fetch was read, so one read
        may hand over old records only)."""
        assert self._consumer is not None  # noqa: S101 - start() first
        for _ in range(reads):
            batch = await self._consumer.getmany(timeout_ms=10, max_records=5000)
            if not batch:
                return
            for records in batch.values():
                for r in records:
                    self._read(r.value or b"", r.timestamp)

    async def catch_up(self, timeout_s: float = CATCH_UP_S) -> bool:
        """Counts every decision the log holds now; False when ``timeout_s`` ran out first
        (the figures may be short)."""
        assert self._consumer is not None  # noqa: S101 - start() first
        try:
            ends = await self._consumer.end_offsets(sorted(self._consumer.assignment()))
        except KafkaError as exc:
            raise BrokerError(f"the end of {self.topics.decision_log}: {exc!r}") from exc
        deadline = time.monotonic() + timeout_s
        while [tp for tp, end in ends.items() if await self._consumer.position(tp) < end]:
            if time.monotonic() >= deadline:
                return False
            await self.poll()
        return True

    def _read(self, value: bytes, timestamp_ms: int) -> None:
        try:
            d = self.codec.decode(value, "DecisionRecord", trusted=True)
        except CodecError:
            self.undecodable += 1  # (not ours to dead-letter: the summary says how many)
            return
        assert isinstance(d, m.DecisionRecord)  # noqa: S101 - decode checked the schema
        if d.decision_id in self.ids or (self.pools is not None and d.pool not in self.pools):
            return
        _remember(self.ids, d.decision_id, None)
        self.decisions += 1
        self.first_ms = min(self.first_ms or timestamp_ms, timestamp_ms)
        self.last_ms = max(self.last_ms, timestamp_ms)
        self.outcomes[d.outcome.value] = self.outcomes.get(d.outcome.value, 0) + 1
        if d.outcome.value in FINAL:  # the load's end: each load must have exactly one
            if d.load_id in self.finals:
                self.finals[d.load_id].add(d.decision_id)
            else:
                _remember(self.finals, d.load_id, {d.decision_id})

    @property
    def rate(self) -> float:
        """Decisions per second since the first, by the broker's clock (over a second at
        least: the first records of a run do not make a rate of thousands)."""
        if self.first_ms is None:
            return 0.0
        return self.decisions / max(1.0, (self.last_ms - self.first_ms) / 1000)


async def reader_at_end(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A consumer of every partition of ``topic`` (no group) that reads only what comes next.

    Raises:
        BrokerError: the broker cannot be reached, or has no such topic.
    """
    consumer = patient(AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False))
    try:
        await consumer.start()
        tps = await partitions(bootstrap, topic)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolved now, so records sent after this are seen
    except BaseException as exc:
        await closing(consumer.stop())  # (one that failed to start is stopped too: not unclosed)
        if isinstance(exc, KafkaError):
            raise BrokerError(f"reading {topic!r} at {bootstrap}: {exc!r}") from exc
        raise
    return consumer


def percentile(values: Iterable[float], q: float) -> float | None:
    v = list(values)
    return float(np.percentile(v, q)) if v else None


@dataclass
class DemoReport:
    published: int
    outcomes: dict[str, int]
    decisions: int
    decisions_per_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    repeats: int
    seconds: float
    undecodable: int  # decision records skipped
    complete: bool  # the decision log was read to its end
    decision_log: str = "decision-log"  # the topic the decisions were read from

    def lines(self) -> list[str]:
        o = self.outcomes
        lines = [
            f"loads published {self.published:,} in {self.seconds:.0f}s; "
            f"decisions {self.decisions:,} ({self.decisions_per_s:,.0f}/s)",
            f"assigned {o.get('ASSIGNED', 0):,}  completed {o.get('COMPLETED', 0):,}  "
            f"requeued {o.get('REQUEUED', 0):,}  failed {o.get('FAILED', 0):,}  "
            f"shed {o.get('SHED', 0):,}  dead-lettered {o.get('DEAD_LETTERED', 0):,}",
            f"arrival -> assignment p50 {_ms(self.latency_p50_ms)}  p99 {_ms(self.latency_p99_ms)}"
            f"  (repeated assignments dropped by the agents: {self.repeats})",
        ]
        if self.undecodable:
            lines.append(f"undecodable decision records skipped: {self.undecodable:,}")
        if not self.complete:
            lines.append("the decision log was not read to its end: the figures may be short")
        if self.published and not (self.decisions or self.undecodable):  # (before: no hint)
            lines.append(f"no decisions in {self.decision_log!r}: is a worker running on "
                         "these topics (`dispatcher worker` with the demo's "
                         "--topic-prefix)?")  # fmt: skip
        return lines


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f} ms"


async def run_demo(
    bootstrap: str, *, topics: TopicNames | None = None, agents: int = 60, pools: int = 2,
    rate: float = 50.0, duration_s: float | None = None, seed: int = 1,
    echo: Callable[[str], None] = print, policy_keys: Mapping[str, bytes] | None = None,
    publish_policy: bool = False,
) -> DemoReport:  # fmt: skip
    """Registers a fleet in pools of the demo's own, sends loads at ``rate`` until
    ``duration_s`` (or until cancelled: Ctrl-C), printing progress every second and a
    summary of the demo's pools at the end; the agents then leave (go offline).

    With ``publish_policy``, first publishes the demo's policy (signed with the first of
    ``policy_keys``, if any). Every pool of the workers reading ``topics`` gets it, and
    its version is the time: only for workers of the demo's own (``dispatcher run``).

    Raises:
        Whatever stopped the producer or the agents early (after the summary).
    """
    topics = topics or TopicNames()
    run = f"demo{time.time_ns() // 1000}"  # (two demos on the same topics keep apart)
    rng = np.random.default_rng(seed)
    pool_names = [f"{run}-pool-{i}" for i in range(pools)]
    fleet_agents = {f"{run}-agent-{i:03d}": (pool_names[i % pools], agent_profile(rng))
                    for i in range(agents)}  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        if publish_policy:
            producer = DispatcherProducer(bootstrap, topics=topics)
            await producer.start()
            stack.push_async_callback(producer.stop)
            keys = policy_keys or {}
            await producer.publish_policy(
                signed(policy_update(int(time.time())), keys, min(keys, default=None))
            )
        tally = DecisionTally(bootstrap, topics, pools=pool_names)
        await tally.start()
        stack.push_async_callback(tally.stop)
        driver = LoadDriver(bootstrap, pool_names, topics=topics, seed=seed, duration_ms=300)
        fleet = Fleet(bootstrap, fleet_agents, topics=topics, seed=seed, published=driver.published,
                      behaviour=Behaviour(work_ms=(200, 1500)))  # fmt: skip
        stack.push_async_callback(fleet.stop)
        await fleet.start()
        stack.push_async_callback(fleet.leave)
        stack.push_async_callback(driver.producer.stop)
        await driver.producer.start()
        more = ", ..." if pools > 3 else ""  # (ids to give `dispatcher explain`)
        echo(f"loads {run}-0000000 on, in pools {', '.join(pool_names[:3])}{more}")
        return await _drive(fleet, driver, tally, rate=rate, duration_s=duration_s,
                            prefix=run, echo=echo)  # fmt: skip


async def _drive(
    fleet: Fleet, driver: LoadDriver, tally: DecisionTally, *, rate: float,
    duration_s: float | None, prefix: str, echo: Callable[[str], None],
) -> DemoReport:  # fmt: skip
    """Sends the loads and answers the assignments, with progress lines and a summary."""
    started = time.monotonic()
    done = asyncio.Event()
    count = 10**9 if duration_s is None else int(rate * duration_s)
    agents = asyncio.create_task(fleet.run(done.is_set))
    sending = asyncio.create_task(driver.run(count, rate, prefix=prefix))
    seconds: float | None = None
    complete = False
    try:
        while not sending.done() and not agents.done():
            try:
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None:
                    task.uncancel()  # (handled: what follows is not cancelled, ``closing``)
                break  # Ctrl-C: stop sending, summarise
            await tally.poll()
            o, recent = tally.outcomes, fleet.stats.recent_latency_ms
            echo(f"{time.monotonic() - started:5.0f}s  loads {driver.sent:>7,}  "
                 f"assigned {o.get('ASSIGNED', 0):>7,}  completed {o.get('COMPLETED', 0):>7,}  "
                 f"requeued {o.get('REQUEUED', 0):>5,}  shed {o.get('SHED', 0):>4,}  "
                 f"decisions/s {tally.rate:>7,.0f}  latency p50 {_ms(percentile(recent, 50))} "
                 f"p99 {_ms(percentile(recent, 99))}")  # fmt: skip
        sending.cancel()  # (done already, unless interrupted)
        seconds = time.monotonic() - started
        if not agents.done():
            await asyncio.sleep(2.0)  # the last answers
        complete = await tally.catch_up()
    finally:
        sending.cancel()
        lat = fleet.stats.latency_ms
        report = DemoReport(
            published=driver.sent, outcomes=dict(tally.outcomes), decisions=tally.decisions,
            decisions_per_s=tally.rate, latency_p50_ms=percentile(lat, 50),
            latency_p99_ms=percentile(lat, 99), repeats=fleet.stats.repeats,
            seconds=seconds if seconds is not None else time.monotonic() - started,
            undecodable=tally.undecodable, complete=complete,
            decision_log=tally.topics.decision_log,
        )  # fmt: skip
        for line in ["summary:", *report.lines()]:
            echo(line)
        done.set()
        results = await asyncio.gather(agents, sending, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    return report
