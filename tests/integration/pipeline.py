"""A private copy of the system's topics and real worker processes, for pipeline tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.topics import TopicNames, TopicsFile, apply_topics, load_topics

READY = "[^Worker]: Ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefixed_spec(prefix: str) -> TopicsFile:
    spec = load_topics()
    doc = spec.model_dump()
    doc["topics"] = {prefix + k: v for k, v in doc["topics"].items()}
    for group in doc["co_partitioned"].values():
        group["topics"] = [prefix + t for t in group["topics"]]
    return TopicsFile.model_validate(doc, strict=False)


@dataclass
class Pipeline:
    """Topics under one prefix, and the workers started on them."""

    bootstrap: str
    redis_url: str
    prefix: str
    logs: Path
    workers: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def topics(self) -> TopicNames:
        return TopicNames.prefixed(self.prefix)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}dispatcher"

    def create_topics(self) -> None:
        asyncio.run(apply_topics(prefixed_spec(self.prefix), self.bootstrap))

    def start_worker(self, *, wait: bool = True, timeout_s: float = 90.0) -> subprocess.Popen[Any]:
        n = len(self.workers)
        log = self.logs / f"worker-{n}.log"
        env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "REDIS_URL": self.redis_url}
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "worker", "--app-id", self.app_id,
                 "--topic-prefix", self.prefix, "--web-port", str(free_port()),
                 "--loglevel", "info"],
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
