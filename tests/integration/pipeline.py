"""A private copy of the system's topics and real worker processes, for pipeline tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.audit import PartitionAudit
from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.reading import partitions, read_partition
from dispatcher.topics import TopicNames, apply_topics, delete_topics, load_topics

READY = "[^Worker]: Ready"
CODEC = Codec()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pipeline:
    """Topics under one prefix, and the workers started on them."""

    bootstrap: str
    redis_url: str
    prefix: str
    logs: Path
    workers: list[subprocess.Popen[Any]] = field(default_factory=list)
    worker_args: list[str] = field(default_factory=list)  # more `dispatcher worker` options
    worker_env: dict[str, str] = field(default_factory=dict)  # more environment variables

    @property
    def topics(self) -> TopicNames:
        return TopicNames.prefixed(self.prefix)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}dispatcher"

    def create_topics(self) -> None:
        asyncio.run(apply_topics(load_topics().prefixed(self.prefix), self.bootstrap))

    def delete_topics(self) -> None:
        asyncio.run(delete_topics(list(load_topics().prefixed(self.prefix).topics), self.bootstrap))

    def start_worker(self, *, wait: bool = True, timeout_s: float = 90.0) -> subprocess.Popen[Any]:
        n = len(self.workers)
        log = self.logs / f"worker-{n}.log"
        env = os.environ | self.worker_env | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "REDIS_URL": self.redis_url,
            "DISPATCHER_STATE_DIR": str(self.logs / "state"),
        }  # fmt: skip
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "worker", "--app-id", self.app_id,
                 "--topic-prefix", self.prefix, "--web-port", str(free_port()),
                 "--loglevel", "info", *self.worker_args],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self.workers.append(proc)
        if wait:
            deadline = time.monotonic() + timeout_s
            while READY not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"worker {n} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        return proc

    def kill(self, proc: subprocess.Popen[Any]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


async def wait_until(
    check: Callable[[], bool], timeout_s: float, poll: Callable[[], Awaitable[object]]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await poll()


def assert_audit_clean(results: list[PartitionAudit]) -> int:
    for r in results:
        assert r.ok, (r.partition, r.mismatches[:3], r.missing[:3], r.unexplained[:3])
    return sum(r.matched for r in results)


def over_capacity(
    results: list[PartitionAudit], agents: dict[str, tuple[str, m.AgentProfile]]
) -> list[str]:
    """Decisions that put an agent over its capacity, replaying the log's holds and releases."""
    bad = []
    for r in results:
        active: dict[str, int] = {}
        for rec in r.records:
            if rec.agent_id is None:
                continue
            if rec.outcome is m.DecisionOutcome.ASSIGNED:
                active[rec.agent_id] = active.get(rec.agent_id, 0) + 1
                if active[rec.agent_id] > agents[rec.agent_id][1].capacity:
                    bad.append(rec.decision_id)
            elif rec.outcome is not m.DecisionOutcome.REJECTED:  # requeued or final: released
                active[rec.agent_id] -= 1
    return bad


async def assignments_ids(p: Pipeline) -> list[str]:
    ids = []
    for tp in await partitions(p.bootstrap, p.topics.assignments):
        for r in await read_partition(p.bootstrap, tp):
            rec = CODEC.decode(r.value, "Assignment")
            assert isinstance(rec, m.Assignment)
            ids.append(rec.decision_id)
    return ids
