"""Kafka clients that pause between metadata requests while no broker answers.

aiokafka's producer and consumer ask their client for fresh metadata whenever
a partition has no known leader, and ask again as soon as the answer comes
(aiokafka#496). With the broker down, every attempt fails at once (connection
refused), so those loops spun: in a 15 s broker outage, a worker burned 14.6 s
of CPU and logged 121k lines, and the demo as much, printing 247k lines to its
terminal. A patient client answers a failed update only after a pause, from the
client's retry backoff (100 ms by default) doubling with each failure in a row
up to ``MAX_PAUSE_S``, as Java's client backs off its reconnects
(reconnect.backoff.ms up to reconnect.backoff.max.ms); the first update that
succeeds ends it. ``Repeats`` keeps aiokafka's warnings and errors meanwhile to
a line per kind every 10 s (the worker's and the commands' handlers hold it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient

__all__ = ["MAX_PAUSE_S", "REPEATS_EVERY_S", "Repeats", "patient"]

MAX_PAUSE_S = 1.0
REPEATS_EVERY_S = 10.0

_Kafka = TypeVar("_Kafka", AIOKafkaProducer, AIOKafkaConsumer)


class _PatientClient(AIOKafkaClient):  # type: ignore[misc]  # aiokafka is untyped
    _failed_in_a_row = 0

    async def _metadata_update(self, cluster_metadata: Any, topics: Any) -> bool:
        updated = bool(await super()._metadata_update(cluster_metadata, topics))
        if updated:
            self._failed_in_a_row = 0
        else:
            self._failed_in_a_row = min(self._failed_in_a_row + 1, 32)
            await asyncio.sleep(pause_s(self._retry_backoff, self._failed_in_a_row))
        return updated


def pause_s(backoff_s: float, failed_in_a_row: int) -> float:
    """How long a client whose metadata updates failed ``failed_in_a_row`` times in a row
    pauses before it answers the last."""
    return float(min(backoff_s * 2 ** (failed_in_a_row - 1), MAX_PAUSE_S))


def patient(kafka: _Kafka) -> _Kafka:
    """``kafka`` (a producer or consumer, before it starts), with a patient client (one
    holding no aiokafka client, a test's stand-in, as it is)."""
    # (a consumer's client is its ``_client``, a producer's its ``client``)
    client = getattr(kafka, "_client", None) or getattr(kafka, "client", None)
    if type(client) is AIOKafkaClient:  # (the class swapped: its state stays as it is)
        client.__class__ = _PatientClient
    return kafka


class Repeats(logging.Filter):
    """Lets each of aiokafka's warnings and errors through once per ``every_s`` (per logger
    and message text before its arguments), and says how many like it it held back since
    (when one comes again after that: a last burst's count may go unsaid).

    Paused, the clients still try every broker now and then, and each try logs
    its failure: with a few clients, about 50 lines a second at the demo's
    terminal while the broker was away (746 lines in 15 s). Other loggers'
    records pass as they are.
    """

    def __init__(
        self, every_s: float = REPEATS_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.every_s, self.clock = every_s, clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (let through, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or (
            record.name != "aiokafka" and not record.name.startswith("aiokafka.")
        ):
            return True  # (info comes a line per step: a rebalance's joins, each said)
        key, now = (record.name, str(record.msg)), self.clock()
        let, held = self._seen.get(key, (-float("inf"), 0))
        if now - let < self.every_s:
            self._seen[key] = (let, held + 1)
            return False
        if len(self._seen) >= 1024:  # (aiokafka's messages are few; a bound all the same)
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:  # (no "%" added: the text is %-formatted with its arguments after this)
            record.msg = f"{record.msg} [{held} more like it in the last {now - let:.0f} s]"
        return True
