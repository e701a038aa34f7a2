"""Session fixtures: one real Kafka broker and one real Redis for every test.

Where they come from, in order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL``: servers the user already runs;
2. testcontainers, when a Docker engine answers;
3. the project's own local servers (``dispatcher stack up``): the broker from
   its Maven Central jars, Debian's redis-server.

A test that needs a server and cannot have one fails with the reason; tests
under tests/integration are never skipped (a skip there fails the session).
Servers this session started are stopped at its end, unless
``DISPATCHER_KEEP_STACK=1`` keeps them for a faster next run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from dispatcher.errors import DispatcherError
from dispatcher.settings import Settings
from dispatcher.stack import Stack

INTEGRATION_DIR = Path(__file__).parent / "integration"
_skipped_integration: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "integration" in report.keywords:
        _skipped_integration.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_integration:
        print(f"\nintegration tests must not skip; skipped: {_skipped_integration}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@functools.cache
def _docker_engine_answers() -> bool:
    # Asked in a child process: docker-py leaves a socket open when no engine
    # answers, which the session's warnings-as-errors would turn into a failure.
    probe = "import docker, sys; sys.exit(0 if docker.from_env(timeout=3).ping() else 1)"
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def _keep() -> bool:
    return os.environ.get("DISPATCHER_KEEP_STACK", "") == "1"


_INSTALL_HINT = {
    "kafka": "it installs Java and Maven), or set KAFKA_BOOTSTRAP_SERVERS",
    "redis": "it installs redis-server), or set REDIS_URL",
}


@contextmanager
def _local_server(settings: Settings, name: str) -> Iterator[None]:
    """Runs the project's own server ``name`` for the session; fails (never skips) if it cannot."""
    stack = Stack(settings)
    with stack.in_use((name,)):  # (a `dispatcher run` beside the tests leaves it running)
        try:
            started = stack.up(kafka=name == "kafka", redis=name == "redis").started
        except DispatcherError as exc:
            pytest.fail(
                f"no {name} for the integration tests: {exc}\nRun `make test` "
                f"({_INSTALL_HINT[name]}.",
                pytrace=False,
            )
        yield
    if started and not _keep():
        stack.down(only=started, unused_only=True)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: Settings) -> Iterator[str]:
    """The bootstrap servers of a real, running Kafka broker."""
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    if _docker_engine_answers():
        from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415

        # Confluent Platform 7.9 is Apache Kafka 3.9, and the image testcontainers knows.
        with KafkaContainer("confluentinc/cp-kafka:7.9.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with _local_server(settings, "kafka"):
        yield settings.local_bootstrap


@pytest.fixture(scope="session")
def redis_url(settings: Settings) -> Iterator[str]:
    """The URL of a real, running Redis."""
    if settings.redis_url:
        yield settings.redis_url
        return
    if _docker_engine_answers():
        from testcontainers.community.redis import RedisContainer  # noqa: PLC0415

        with RedisContainer("redis:7.0") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    with _local_server(settings, "redis"):
        yield settings.local_redis_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's Redis; tests name their keys with ``unique``."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Makes names no other test (or earlier run on a kept broker) uses."""
    run = uuid.uuid4().hex[:8]
    return lambda base: f"test-{base}-{run}"


@pytest.fixture
def new_topics(kafka_bootstrap: str) -> Iterator[Callable[..., list[str]]]:
    """Creates topics for one test and deletes them after it."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    created: list[str] = []

    async def _admin(action: Callable[[AIOKafkaAdminClient], object]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await action(admin)  # type: ignore[misc]
        finally:
            await admin.close()

    def create(*names: str, partitions: int = 1) -> list[str]:
        asyncio.run(_admin(lambda a: a.create_topics([NewTopic(n, partitions, 1) for n in names])))
        created.extend(names)
        return list(names)

    yield create
    if created:
        asyncio.run(_admin(lambda a: a.delete_topics(created)))
