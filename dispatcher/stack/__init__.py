"""The servers the dispatcher needs: a Kafka broker and Redis.

Each is either *external* (``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` set, or
for Redis a server already answering on the port) and then only checked, or
*local*: started, found again and stopped by the project itself.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dispatcher.errors import StackError
from dispatcher.settings import LOOPBACK, Settings
from dispatcher.stack.kafka import LocalKafka
from dispatcher.stack.process import port_open
from dispatcher.stack.redis import LocalRedis, redis_ping

__all__ = ["Endpoints", "ServiceStatus", "Stack"]


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What runs where, for ``dispatcher stack status``."""

    name: str
    endpoint: str
    mode: str  # "local" (the project runs it) or "external"
    running: bool
    pid: int | None
    detail: str

    def line(self) -> str:
        state = "running" if self.running else "stopped"
        pid = f" pid {self.pid}" if self.pid else ""
        return f"{self.name:<6} {state:<8} {self.endpoint:<28} {self.mode}{pid}  {self.detail}"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where clients connect, and which servers ``up`` started just now."""

    kafka_bootstrap: str
    redis_url: str
    started: tuple[str, ...]


def _host_port(server: str) -> tuple[str, int]:
    """Host and port of one bootstrap server (``host:port``, or a URL)."""
    server = server.strip()
    parts = urlsplit(server if "//" in server else f"//{server}")
    return parts.hostname or LOOPBACK, parts.port or 9092


class Stack:
    """Brings the servers up and down, idempotently and safely from two shells at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = LocalKafka(settings)
        self.redis = LocalRedis(settings)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.settings.state_dir / "stack.lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _server(self, name: str) -> LocalKafka | LocalRedis:
        return self.kafka if name == "kafka" else self.redis

    def _users(self, name: str) -> Path:
        """The file whose shared locks mark server ``name`` in use (see ``in_use``)."""
        return self.settings.state_dir / f"{name}.users"

    def _kafka_answers(self) -> bool:
        """Whether any of the external bootstrap servers accepts connections."""
        servers = (self.settings.kafka_bootstrap or "").split(",")
        return any(port_open(*_host_port(server)) for server in servers)

    def _redis_is_external(self) -> bool:
        if self.settings.redis_url:
            return True
        # Some Redis already answers on our port and is not ours: use it.
        return self.redis.pid() is None and redis_ping(self.settings.local_redis_url)

    def up(self, *, kafka: bool = True, redis: bool = True) -> Endpoints:
        """Starts what is not running yet, checks that the external servers answer, and
        returns where everything is.

        Raises:
            StackError: a server could not be fetched or started, or an external one
                does not answer.
        """
        s = self.settings
        if kafka and s.kafka_bootstrap and not self._kafka_answers():
            raise StackError(f"KAFKA_BOOTSTRAP_SERVERS={s.kafka_bootstrap}: no broker answers")
        if redis and s.redis_url and not redis_ping(s.redis_url):
            raise StackError(f"REDIS_URL={s.redis_url}: no Redis answers there")
        started: list[str] = []
        with self._lock():
            try:
                if kafka and not self.settings.kafka_bootstrap and self.kafka.up():
                    started.append("kafka")
                if redis and not self._redis_is_external() and self.redis.up():
                    started.append("redis")
            except BaseException:
                # All or nothing: what this call started goes down with it.
                for name in started:
                    self._server(name).down()
                raise
        return Endpoints(
            kafka_bootstrap=self.settings.kafka_bootstrap or self.settings.local_bootstrap,
            redis_url=self.settings.redis_url or self.settings.local_redis_url,
            started=tuple(started),
        )

    @contextmanager
    def in_use(self, services: tuple[str, ...] = ("kafka", "redis")) -> Iterator[None]:
        """Marks the servers named in use by this caller (a shared lock each) until the
        block ends: ``down(..., unused_only=True)`` by another caller leaves them alone."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            for name in services:
                f = held.enter_context(self._users(name).open("a"))
                fcntl.flock(f, fcntl.LOCK_SH)
            yield

    def down(
        self, *, only: tuple[str, ...] = ("kafka", "redis"), unused_only: bool = False
    ) -> list[str]:
        """Stops the local servers named in ``only``; returns those it stopped. With
        ``unused_only``, not those another caller holds ``in_use`` (a `dispatcher run` and
        a test session may share the servers whichever started them)."""
        stopped: list[str] = []
        with self._lock(), contextlib.ExitStack() as held:
            # Redis first: the broker takes longer and nothing depends on Redis's order.
            for name in ("redis", "kafka"):
                if name not in only:
                    continue
                if unused_only:
                    f = held.enter_context(self._users(name).open("a"))
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # in use: left running
                if self._server(name).down():
                    stopped.append(name)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """What runs where."""
        s = self.settings
        if s.kafka_bootstrap:
            kafka = ServiceStatus("kafka", s.kafka_bootstrap, "external", self._kafka_answers(),
                                  None, "from KAFKA_BOOTSTRAP_SERVERS")  # fmt: skip
        else:
            pid = self.kafka.pid()
            jars = "jars cached" if self.kafka.fetched else "jars not fetched yet"
            detail = f"log {self.kafka.process.log_file} ({jars})"
            running, detail = _local(pid, self.kafka, s.kafka_port, detail)
            kafka = ServiceStatus("kafka", s.local_bootstrap, "local", running, pid, detail)
        if self._redis_is_external():
            url = s.redis_url or s.local_redis_url
            why = "from REDIS_URL" if s.redis_url else "already running, not started by dispatcher"
            redis_status = ServiceStatus("redis", url, "external", redis_ping(url), None, why)
        else:
            pid = self.redis.pid()
            detail = f"log {self.redis.process.log_file}"
            running, detail = _local(pid, self.redis, s.redis_port, detail)
            redis_status = ServiceStatus("redis", s.local_redis_url, "local", running, pid, detail)
        return [kafka, redis_status]


def _local(
    pid: int | None, server: LocalKafka | LocalRedis, port: int, detail: str
) -> tuple[bool, str]:
    """Whether a server of ours runs where the settings say, and what to say of it: one
    started with other settings is not running here (and says where it is); with none
    started, a program answering on the port is named (another state directory's?)."""
    if pid is not None:
        problem = server.serving_problem(pid)
        return (True, detail) if problem is None else (False, problem)
    if port_open(LOOPBACK, port):
        return False, (f"not started from this state directory, but something answers on "
                       f"{LOOPBACK}:{port}")  # fmt: skip
    return False, detail
