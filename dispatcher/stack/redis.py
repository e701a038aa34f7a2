"""The project's own redis-server (Debian's package) on loopback.

Redis holds only derived data (claim ledger, live read model) that a replay of
Kafka rebuilds, so it runs without persistence.
"""

from __future__ import annotations

import shutil

import redis

from dispatcher.errors import StackError
from dispatcher.settings import LOOPBACK, Settings
from dispatcher.stack.process import ManagedProcess, argv, port_open

__all__ = ["LocalRedis", "redis_ping"]


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _port_of(pid: int) -> str:
    """The port a redis-server we started listens on, from its command line: ours
    (``--port N``) until it replaces it with its title ("redis-server 127.0.0.1:N")."""
    words = " ".join(argv(pid)).split()
    if "--port" in words[:-1]:
        return words[words.index("--port") + 1]
    return next((w.partition(":")[2] for w in words if w.startswith(f"{LOOPBACK}:")), "?")


class LocalRedis:
    """Start, stop and report the project's own redis-server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.state_dir / "redis"
        self.url = settings.local_redis_url
        self.process = ManagedProcess(
            name="redis",
            pid_file=self.home / "redis.pid",
            log_file=self.home / "redis.log",
            marker="redis-server",
        )

    def pid(self) -> int | None:
        return self.process.pid()

    def serving_problem(self, pid: int) -> str | None:
        """Why the running redis-server is not the one the settings ask for (None: it is):
        started with another port, it is not the Redis clients now look for."""
        port = self.settings.redis_port
        running = _port_of(pid)
        if running != str(port):
            return (f"redis-server (pid {pid}) is running on port {running}, not on {port} as "
                    "the settings ask")  # fmt: skip
        if not port_open(LOOPBACK, port):
            return (f"redis-server (pid {pid}) is running but does not answer on "
                    f"{LOOPBACK}:{port} (log {self.process.log_file})")  # fmt: skip
        return None

    def up(self, timeout: float = 30.0) -> bool:
        """Starts redis-server and waits for PING. True if it started it now.

        Raises:
            StackError: redis-server is not installed, the port is taken by
                something that is not Redis, it did not answer in time, or it
                runs already but not where the settings say.
        """
        port = self.settings.redis_port
        pid = self.pid()
        if pid is not None:
            if (problem := self.serving_problem(pid)) is not None:
                raise StackError(f"{problem}; run `dispatcher stack down` first")
            return False
        if port_open(LOOPBACK, port):
            raise StackError(
                f"port {LOOPBACK}:{port} is in use by a program the project did not start; "
                "set REDIS_URL to use that Redis, or DISPATCHER_REDIS_PORT to pick another port"
            )
        server = shutil.which("redis-server")
        if server is None:
            raise StackError(
                "redis-server not found: run `make` (ops/bootstrap-system.sh installs "
                "Debian's redis-server) or set REDIS_URL to a Redis you run"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self.process.start_ready(
            [server, "--bind", LOOPBACK, "--port", str(port), "--dir", str(self.home),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"],
            lambda: redis_ping(self.url, timeout=0.5),
            what="redis-server", timeout=timeout, poll=0.05, cwd=self.home,
        )  # fmt: skip
        return True

    def down(self) -> bool:
        """Stops redis-server. False if it was not running."""
        return self.process.stop(timeout=15.0)

    def purge(self) -> None:
        """Removes redis-server's working directory."""
        if self.pid() is not None:
            raise StackError("stop redis-server before purging its data")
        shutil.rmtree(self.home, ignore_errors=True)
