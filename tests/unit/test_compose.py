"""docker-compose.kafka.yml cannot run here (no Docker engine), so this holds it
equal to the broker and Redis the project runs itself."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from dispatcher.settings import KAFKA_VERSION, PROJECT_ROOT, Settings
from dispatcher.stack.kafka import broker_config

COMPOSE = PROJECT_ROOT / "docker-compose.kafka.yml"
# Keys whose values differ for a reason: container networking and paths.
CONTAINER_SPECIFIC = {"listeners", "controller.quorum.voters", "log.dirs"}


@pytest.fixture(scope="module")
def compose() -> Any:
    return yaml.safe_load(COMPOSE.read_text())


def _env_name(key: str) -> str:
    return "KAFKA_" + key.upper().replace(".", "_")


def test_kafka_is_apache_kafka_in_kraft_mode(compose: Any) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    cluster_id = kafka["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16  # KRaft wants a base64 UUID


def test_broker_settings_agree_with_the_local_broker(compose: Any) -> None:
    env = {k: str(v) for k, v in compose["services"]["kafka"]["environment"].items()}
    ours = broker_config(Settings.from_env({}), "/unused")
    for key, value in ours.items():
        if key in CONTAINER_SPECIFIC:
            continue
        assert env.get(_env_name(key)) == value, key
    s = Settings.from_env({})
    assert f":{s.kafka_port}" in env["KAFKA_LISTENERS"]
    assert f":{s.kafka_controller_port}" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].endswith(f":{s.kafka_controller_port}")


def test_ports_are_published_on_loopback_only_and_match(compose: Any) -> None:
    s = Settings.from_env({})
    services = compose["services"]
    assert services["kafka"]["ports"] == [f"127.0.0.1:{s.kafka_port}:{s.kafka_port}"]
    assert services["redis"]["ports"] == [f"127.0.0.1:{s.redis_port}:6379"]
    for service in services.values():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), mapping
