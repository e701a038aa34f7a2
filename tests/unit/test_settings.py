from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.errors import ConfigError
from dispatcher.settings import Settings


def test_defaults_are_loopback_ports_and_xdg_dirs(tmp_path: Path) -> None:
    s = Settings.from_env(
        {"XDG_STATE_HOME": str(tmp_path / "s"), "XDG_CACHE_HOME": str(tmp_path / "c")}
    )
    assert (s.kafka_bootstrap, s.redis_url) == (None, None)
    assert s.local_bootstrap == "127.0.0.1:9092"
    assert s.local_redis_url == "redis://127.0.0.1:6379/0"
    assert s.state_dir == tmp_path / "s" / "dispatcher"
    assert s.cache_dir == tmp_path / "c" / "dispatcher"


def test_external_servers_and_ports_come_from_env(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": " broker-1:9092,broker-2:9092 ",
            "REDIS_URL": "redis://cache:6380/2",
            "DISPATCHER_KAFKA_PORT": "19092",
            "DISPATCHER_KAFKA_CONTROLLER_PORT": "19093",
            "DISPATCHER_REDIS_PORT": "16379",
            "DISPATCHER_STATE_DIR": str(tmp_path),
        }
    )
    assert s.kafka_bootstrap == "broker-1:9092,broker-2:9092"
    assert s.redis_url == "redis://cache:6380/2"
    assert s.local_bootstrap == "127.0.0.1:19092"
    assert s.local_redis_url == "redis://127.0.0.1:16379/0"
    assert s.state_dir == tmp_path


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"DISPATCHER_KAFKA_PORT": "kafka"}, "DISPATCHER_KAFKA_PORT='kafka' is not a port"),
        ({"DISPATCHER_REDIS_PORT": "70000"}, "DISPATCHER_REDIS_PORT=70000 is outside"),
        ({"DISPATCHER_KAFKA_PORT": "9093"}, "are both 9093"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379' is not a redis://"),
        ({"REDIS_URL": "redis://cache:port/0"}, "is not a redis://"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2"}, "'broker-2' is not host:port"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "broker-1:x"}, "'broker-1:x' is not host:port"),
        # (before: an empty entry became 127.0.0.1:9092, and "¹" passed isdigit() then
        # made int() raise a ValueError with a traceback)
        ({"KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,"}, "has an empty entry"),
        ({"KAFKA_BOOTSTRAP_SERVERS": ","}, "has an empty entry"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "broker-1:¹"}, "'broker-1:¹' is not host:port"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "broker-1:٩٠٩٢"}, "is not host:port"),
        # (before: accepted, and redis-py read them as port 6379 and db 0)
        ({"REDIS_URL": "redis://cache/abc"}, "the db 'abc' is not a non-negative integer"),
        ({"REDIS_URL": "redis://cache/-1"}, "the db '-1' is not a non-negative integer"),
        ({"REDIS_URL": "redis://cache:0/0"}, "the port is outside 1..65535"),
        # (before: accepted, and Redis and the broker fought over the port)
        ({"DISPATCHER_REDIS_PORT": "9092"}, "DISPATCHER_KAFKA_PORT and DISPATCHER_REDIS_PORT"),
        (
            {"DISPATCHER_REDIS_PORT": "19093", "DISPATCHER_KAFKA_CONTROLLER_PORT": "19093"},
            "DISPATCHER_KAFKA_CONTROLLER_PORT and DISPATCHER_REDIS_PORT are both 19093",
        ),
    ],
)
def test_bad_values_are_refused_by_name(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings.from_env(env)
