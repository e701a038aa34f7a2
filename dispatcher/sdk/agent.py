"""The agent's side: its own assignments in, its answers out."""

from __future__ import annotations

from collections import OrderedDict

from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from dispatcher.codecs import Codec
from dispatcher.codecs.models import Assignment, TaskOutcome, TaskResult
from dispatcher.errors import BrokerError
from dispatcher.sdk._lifecycle import CommittingIterator
from dispatcher.sdk.consumer import DecodingConsumer
from dispatcher.sdk.producer import DispatcherProducer, now_ms
from dispatcher.topics import TopicNames

__all__ = ["AgentClient", "partition_for"]

_partitioner = DefaultPartitioner()


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in Java) puts ``key`` on."""
    all_partitions = list(range(partitions))
    return int(_partitioner(key.encode(), all_partitions, all_partitions))


class AgentClient(CommittingIterator):
    """One agent's client: iterate over its assignments, answer each one.

    Assignments are keyed by agent id, so the client reads only the one
    partition its id hashes to, keeps only records for this agent in its pool
    (an id may be an agent in two pools, each its own client), and drops
    repeats of a decision id it has already yielded (the dispatcher may
    publish a decision again after a crash). Offsets are committed under the
    group ``agent-<length of pool>-<pool>-<id>``, so a restarted agent resumes
    where it stopped (one upgraded from a release that committed under
    ``agent-<id>`` starts where that group had got to).

    Raises:
        BrokerError: the broker cannot be reached or refuses a request.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        agent_id: str,
        pool: str,
        *,
        topics: TopicNames | None = None,
        codec: Codec | None = None,
        remember: int = 100_000,
    ) -> None:
        self.agent_id = agent_id
        self.pool = pool
        self.topics = topics or TopicNames()
        self.codec = codec or Codec()
        self.duplicates = 0
        self._bootstrap = bootstrap_servers
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._producer = DispatcherProducer(bootstrap_servers, topics=self.topics, codec=self.codec)
        self._consumer: DecodingConsumer | None = None

    async def _partition_count(self) -> int:
        try:
            partitions = await self._producer.kafka.partitions_for(self.topics.assignments)
        except KafkaError as exc:
            raise BrokerError(f"topic {self.topics.assignments}: {exc!r}") from exc
        return len(partitions)

    async def start(self) -> None:
        await self._producer.start()
        try:
            partition = partition_for(self.agent_id, await self._partition_count())
            self._consumer = DecodingConsumer(
                self._bootstrap, self.topics.assignments, "Assignment",
                group_id=f"agent-{len(self.pool)}-{self.pool}-{self.agent_id}",
                resume_from=f"agent-{self.agent_id}",  # (the group of earlier releases)
                dead_letter_topic=self.topics.dead_letter,
                partitions=[partition], codec=self.codec, producer=self._producer.kafka,
            )  # fmt: skip
            await self._consumer.start()
        except BaseException:
            await self._producer.stop()
            raise

    async def stop(self, *, commit: bool = True) -> None:
        """Commits the assignments yielded so far (unless ``commit`` is False) and disconnects."""
        try:
            if self._consumer is not None:
                await self._consumer.stop(commit=commit)
        finally:
            await self._producer.stop()

    async def __anext__(self) -> Assignment:
        """This agent's next assignment, each decision once, in the order they were made."""
        if self._consumer is None:
            raise RuntimeError("AgentClient.start() first")  # our misuse, not their input
        while True:
            record = (await anext(self._consumer)).record
            if (not isinstance(record, Assignment) or record.agent_id != self.agent_id
                    or record.pool != self.pool):  # fmt: skip
                continue  # another agent's on the same partition, or another pool's
            if record.decision_id in self._seen:
                self.duplicates += 1
                continue
            self._seen[record.decision_id] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            return record

    # -- answers -------------------------------------------------------------------

    async def _answer(
        self, a: Assignment, outcome: TaskOutcome, *, retryable: bool = False,
        reason_code: str | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        result = TaskResult(
            # One id per (decision, outcome): a retried publish is a harmless repeat.
            event_id=f"{a.decision_id}:{outcome.value}", decision_id=a.decision_id,
            load_id=a.load_id, agent_id=self.agent_id, pool=a.pool, outcome=outcome,
            retryable=retryable, reason_code=reason_code, event_time_ms=now_ms(),
        )  # fmt: skip
        return await self._producer.publish_result(result)

    async def accept(self, a: Assignment) -> tuple[int, int]:
        """Takes the assignment on."""
        return await self._answer(a, TaskOutcome.ACCEPTED)

    async def decline(self, a: Assignment, reason_code: str | None = None) -> tuple[int, int]:
        """Refuses it; the dispatcher requeues the load."""
        return await self._answer(a, TaskOutcome.DECLINED, reason_code=reason_code)

    async def succeed(self, a: Assignment) -> tuple[int, int]:
        """Reports it done."""
        return await self._answer(a, TaskOutcome.SUCCESS)

    async def fail(
        self, a: Assignment, *, retryable: bool, reason_code: str | None = None
    ) -> tuple[int, int]:
        """Reports it failed; ``retryable`` lets the dispatcher try it again."""
        return await self._answer(
            a, TaskOutcome.FAILED, retryable=retryable, reason_code=reason_code
        )

    async def blocked(self, a: Assignment, reason_code: str | None = None) -> tuple[int, int]:
        """Reports it blocked on something outside the agent."""
        return await self._answer(a, TaskOutcome.BLOCKED, reason_code=reason_code)

    async def need_input(self, a: Assignment, reason_code: str | None = None) -> tuple[int, int]:
        """Reports it waiting for input (e.g. a human approval)."""
        return await self._answer(a, TaskOutcome.NEED_INPUT, reason_code=reason_code)
