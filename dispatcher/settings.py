"""Settings read from the environment, validated once at start-up.

Every variable is optional:

- ``KAFKA_BOOTSTRAP_SERVERS``: use this cluster; the project starts no broker.
- ``REDIS_URL``: use this Redis; the project starts no redis-server.
- ``DISPATCHER_KAFKA_PORT`` / ``DISPATCHER_KAFKA_CONTROLLER_PORT`` /
  ``DISPATCHER_REDIS_PORT``: loopback ports of the servers the project starts.
- ``DISPATCHER_STATE_DIR``: data, logs and pid files of those servers.
- ``DISPATCHER_CACHE_DIR``: downloaded broker jars (kept across runs).
- ``DISPATCHER_POLICY_KEYS``: ``id=secret[,id=secret...]``: workers apply only
  policies signed with one of these keys, and ``dispatcher policy publish``
  signs with one. Unset: policies are not signed, and workers say so.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dispatcher.errors import ConfigError

__all__ = ["KAFKA_VERSION", "PROJECT_ROOT", "Settings"]

KAFKA_VERSION = "3.9.1"
LOOPBACK = "127.0.0.1"
# The source checkout: ops/ and topics.yaml live beside the package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}={port} is outside 1..65535")
    return port


def _bootstrap(raw: str) -> str:
    if not raw:
        return raw
    for entry in (e.strip() for e in raw.split(",")):
        # An empty entry would reach the client as the default 127.0.0.1:9092.
        if not entry:
            raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS={raw!r} has an empty entry")
        host, sep, port = entry.rpartition(":")
        # isdigit() also takes digits of other scripts and superscripts ("¹"), which
        # int() refuses or the client does not read.
        if not (sep and host and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS: {entry!r} is not host:port")
    return raw


def _redis_url(raw: str) -> str:
    if not raw:
        return raw
    parts = urlsplit(raw)
    try:
        _ = parts.port  # raises ValueError when the port is not a number
    except ValueError:
        valid = False
    else:
        valid = (parts.scheme in ("redis", "rediss") and bool(parts.hostname)) or (
            parts.scheme == "unix" and bool(parts.path)
        )
    if not valid:
        raise ConfigError(
            f"REDIS_URL={raw!r} is not a redis://host[:port][/db], rediss:// or unix:// URL"
        )
    # redis-py reads port 0 as the default port and a db that is not a number as db 0.
    if parts.port == 0:
        raise ConfigError(f"REDIS_URL={raw!r}: the port is outside 1..65535")
    db = parts.path[1:]
    if parts.scheme != "unix" and db and not (db.isascii() and db.isdigit()):
        raise ConfigError(f"REDIS_URL={raw!r}: the db {db!r} is not a non-negative integer")
    return raw


MIN_KEY_BYTES = 16
MAX_KEY_ID = 128  # a PolicyUpdate's signature_key_id is a Name


def _policy_keys(raw: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        key_id, sep, secret = entry.partition("=")
        key_id, secret = key_id.strip(), secret.strip()
        if not sep or not key_id:
            raise ConfigError(f"DISPATCHER_POLICY_KEYS: {key_id or entry!r} is not id=secret")
        if len(key_id) > MAX_KEY_ID:
            raise ConfigError(f"DISPATCHER_POLICY_KEYS: key id {key_id[:20]!r}... is longer "
                              f"than {MAX_KEY_ID} characters")  # fmt: skip
        if len(secret.encode()) < MIN_KEY_BYTES:
            raise ConfigError(
                f"DISPATCHER_POLICY_KEYS: the secret of {key_id!r} has fewer than "
                f"{MIN_KEY_BYTES} bytes (make one with: python -c "
                "'import secrets; print(secrets.token_hex(32))')"
            )
        if key_id in keys:
            raise ConfigError(f"DISPATCHER_POLICY_KEYS: key {key_id!r} is given twice")
        keys[key_id] = secret.encode()
    return keys


def _dir(env: Mapping[str, str], name: str, xdg: str, fallback: str) -> Path:
    explicit = env.get(name, "").strip()
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = env.get(xdg, "").strip() or str(Path.home() / fallback)
    return Path(base).expanduser().resolve() / "dispatcher"


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the servers are, or where the project runs its own."""

    kafka_bootstrap: str | None
    redis_url: str | None
    kafka_port: int
    kafka_controller_port: int
    redis_port: int
    state_dir: Path
    cache_dir: Path
    policy_keys: Mapping[str, bytes]  # key id -> secret

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads the settings from ``env`` (default: ``os.environ``).

        Raises:
            ConfigError: a variable is set to something unusable.
        """
        env = os.environ if env is None else env
        kafka_port = _port(env, "DISPATCHER_KAFKA_PORT", 9092)
        controller_port = _port(env, "DISPATCHER_KAFKA_CONTROLLER_PORT", 9093)
        redis_port = _port(env, "DISPATCHER_REDIS_PORT", 6379)
        ports = {"DISPATCHER_KAFKA_PORT": kafka_port,
                 "DISPATCHER_KAFKA_CONTROLLER_PORT": controller_port,
                 "DISPATCHER_REDIS_PORT": redis_port}  # fmt: skip
        for (a, port_a), (b, port_b) in itertools.combinations(ports.items(), 2):
            if port_a == port_b:
                raise ConfigError(f"{a} and {b} are both {port_a}")
        return cls(
            kafka_bootstrap=_bootstrap(env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()) or None,
            redis_url=_redis_url(env.get("REDIS_URL", "").strip()) or None,
            kafka_port=kafka_port,
            kafka_controller_port=controller_port,
            redis_port=redis_port,
            state_dir=_dir(env, "DISPATCHER_STATE_DIR", "XDG_STATE_HOME", ".local/state"),
            cache_dir=_dir(env, "DISPATCHER_CACHE_DIR", "XDG_CACHE_HOME", ".cache"),
            policy_keys=_policy_keys(env.get("DISPATCHER_POLICY_KEYS", "")),
        )

    @property
    def local_bootstrap(self) -> str:
        """The bootstrap address of the broker the project runs itself."""
        return f"{LOOPBACK}:{self.kafka_port}"

    @property
    def local_redis_url(self) -> str:
        """The URL of the redis-server the project runs itself."""
        return f"redis://{LOOPBACK}:{self.redis_port}/0"
