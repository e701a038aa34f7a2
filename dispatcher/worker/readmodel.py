"""The live read model in Redis: what the dashboard and the API show.

Never the source of truth (the topics are): everything here can be rebuilt
by replay, so when Redis is down the worker says so once, keeps deciding,
and tries again a little later.

Keys, under the worker's app id ``A``:

- ``A:pool:<pool>`` (hash): agents (known: those departed and forgotten are counted
  in ``forgotten``; status events of agents not registered, ignored, in
  ``unknown_agent_events``), available, pending, in_flight, queued per
  priority class (every pending load), of those the deferred ones and those no
  agent could take (``unqualified``: they wait for a profile or policy to
  change, not for a free agent), policy_version, the next policy waiting for its time
  (policy_next_version, policy_next_ms), now_ms; and the pool's counters since its
  log began: decisions per outcome (``decided_ASSIGNED``, ...) and deadline loads
  completed in time or not (``sla_met``, ``sla_missed``), from the fold
  (``PartitionFold.counts``), so a restart or a takeover, which decide some inputs
  again, count nothing twice, and a Redis outage loses no count;
- ``A:recent`` (list, newest first, 200 kept): recent decisions as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from dispatcher import core

if TYPE_CHECKING:
    from dispatcher.worker.fold import PartitionFold

__all__ = ["ReadModel"]

log = logging.getLogger("dispatcher.worker.readmodel")
RECENT = 200
RETRY_S = 5.0
POOL_EVERY_S = 0.5  # pool gauges are recounted at most this often (and flushed after)
PUBLISH_EVERY_S = 0.1  # and the counters and recent decisions sent (a round trip each)


class ReadModel:
    """Publishes gauges and recent decisions; degrades, never raises."""

    def __init__(self, url: str | None, prefix: str) -> None:
        self.prefix = prefix
        # No retries and short timeouts: an unreachable Redis must cost the worker nothing.
        self.client: Any = None
        if url:
            self.client = aioredis.Redis.from_url(
                url, socket_connect_timeout=1.0, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
            )
        self._inflight: asyncio.Task[None] | None = None
        self._recent: deque[core.Decision] = deque(maxlen=RECENT)
        self.degraded = url is None
        self._retry_at = 0.0
        self._pools_at = 0.0
        self._publish_at = 0.0
        self._stale = False  # the pools changed since their gauges were last sent
        self._shown: set[str] = set()  # the pools whose gauges were sent last time

    def publish(self, folds: Mapping[int, PartitionFold], decisions: list[core.Decision]) -> None:
        """Takes ``decisions`` in as recent, and starts a publish in the background unless
        one is running or one started less than PUBLISH_EVERY_S ago (deciding never waits
        for Redis, and a trickle of small batches does not cost a round trip each). The
        recent decisions a failed publish carried are dropped: the read model is a view,
        not a record."""
        self._recent.extend(decisions[-RECENT:])
        self._stale = True
        self._start(folds)

    def flush(self, folds: Mapping[int, PartitionFold]) -> None:
        """Publishes what the last publishes left out (called on a timer: the state after
        a worker's last batch, which ``publish`` may have let wait, shows up too)."""
        if self._stale or self._recent:
            self._start(folds)

    def _start(self, folds: Mapping[int, PartitionFold]) -> None:
        now = time.monotonic()
        if self.client is None or now < max(self._retry_at, self._publish_at):
            return
        if self._inflight is not None and not self._inflight.done():
            return
        self._publish_at = now + PUBLISH_EVERY_S
        self._inflight = asyncio.ensure_future(self._guarded(folds))

    async def _guarded(self, folds: Mapping[int, PartitionFold]) -> None:
        try:
            await self._publish(folds)
        except (RedisError, OSError) as exc:
            if not self.degraded:
                log.warning("redis unavailable, read model paused (deciding goes on): %r", exc)
            self.degraded, self._retry_at = True, time.monotonic() + RETRY_S
            self._stale = True  # (sent again once Redis is back)
            return
        if self.degraded and self.client is not None:
            log.warning("redis is back, read model resumed")
        self.degraded = False

    async def _publish(self, folds: Mapping[int, PartitionFold]) -> None:
        p = self.prefix
        recent = list(self._recent)
        self._recent.clear()
        pipe = self.client.pipeline(transaction=False)
        if recent:
            pipe.lpush(f"{p}:recent", *[json.dumps({
                "id": d.decision_id, "pool": d.pool, "load": d.load_id,
                "outcome": d.outcome.value, "reason": d.reason, "agent": d.agent_id,
                "time_ms": d.time_ms}) for d in recent])  # fmt: skip
            pipe.ltrim(f"{p}:recent", 0, RECENT - 1)
        now = time.monotonic()
        if now >= self._pools_at:
            self._pools_at, self._stale = now + POOL_EVERY_S, False
            shown: set[str] = set()
            for fold in folds.values():
                for name, state in fold.pools.items():
                    counts = fold.counts.get(name, {})
                    pipe.hset(f"{p}:pool:{name}", mapping=_gauges(state) | {
                        ("sla_" if k in {"met", "missed"} else "decided_") + k: n
                        for k, n in counts.items()})  # fmt: skip
                    shown.add(name)
            # A pool its fold dropped (nothing left in it) shows so, not its last gauges
            # for ever; one gone with its partition to another worker is that one's to show.
            for name in self._shown - shown:
                if any(name in fold.dropped for fold in folds.values()):
                    pipe.hset(f"{p}:pool:{name}", mapping=_EMPTY)
            self._shown = shown
        await pipe.execute()


def _gauges(state: core.PoolState) -> dict[str, int]:
    """What the read model shows of a pool."""
    queued = dict.fromkeys(("critical", "high", "normal", "low"), 0)
    for (_, priority), loads in state.tenant_pending.items():  # (not a pass over the loads)
        queued[priority.name.lower()] += len(loads)
    t = state.agents
    nxt = state.scheduled[0] if state.scheduled else None  # a policy waiting for its time
    return {
        "agents": t.n,
        "forgotten": state.forgotten,
        "unknown_agent_events": state.unknown_agent_events,
        "available": t.available_count,
        "open": t.open_count,
        "pending": len(state.pending),
        "in_flight": len(state.in_flight),
        "deferred": state.deferred,
        "unqualified": len(state.unqualified),
        **{f"queued_{k}": v for k, v in queued.items()},
        "policy_version": state.policy.version,
        "policy_next_version": getattr(nxt.policy, "version", 0) if nxt else 0,
        "policy_next_ms": nxt.time_ms if nxt else 0,
        "now_ms": state.now_ms,
    }


# The gauges of a pool with nothing in it (its policy and clock left as they were shown).
_EMPTY = {k: v for k, v in _gauges(core.PoolState("")).items()
          if not k.startswith("policy_") and k != "now_ms"}  # fmt: skip
