"""topics.yaml: the declared topics, their validation, and ``topics apply``.

The file is the contract for every topic the system uses: name, partitions,
key, value schema, cleanup policy, retention, and the groups of topics that
must be co-partitioned (same partition count, same key) so one worker owns a
pool across all its inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from dispatcher.errors import BrokerError, TopicsFileError, field_at, validation_problems
from dispatcher.reading import closing
from dispatcher.settings import PROJECT_ROOT
from dispatcher.yamlfile import load_yaml

__all__ = [
    "DEFAULT_TOPICS_FILE",
    "CoPartitionGroup",
    "TopicNames",
    "TopicReport",
    "TopicSpec",
    "TopicsFile",
    "apply_topics",
    "delete_topics",
    "load_topics",
    "topic_names",
]

DEFAULT_TOPICS_FILE = PROJECT_ROOT / "topics.yaml"
_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS: someone created it meanwhile

TopicName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
SchemaName = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]*$")]
ConfigKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9.]*$")]
_MANAGED_KEYS = frozenset({"cleanup.policy", "retention.ms"})
_DOUBLE_KEYS = frozenset({"min.cleanable.dirty.ratio"})  # the topic configs of type double
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?[0-9]*\.?[0-9]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TopicSpec(_Strict):
    """One declared topic."""

    description: str = Field(min_length=1)
    partitions: int = Field(ge=1, le=10_000)
    key: str = Field(min_length=1)
    value_schema: SchemaName | list[SchemaName]  # a list: a log of several record kinds
    cleanup_policy: Literal["delete", "compact", "compact,delete"]
    retention_ms: int = Field(ge=-1)
    config: dict[ConfigKey, str] = Field(default_factory=dict)

    @field_validator("config", mode="before")
    @classmethod
    def _scalars_as_text(cls, value: Any) -> Any:
        """YAML reads ``max.message.bytes: 2000000`` as an int, ``true`` as a bool and
        ``0.5`` as a float: each becomes the text the broker reports for it (any other
        kind is left to be refused)."""
        if not isinstance(value, dict):
            return value
        return {k: _config_text(k, v) if isinstance(k, str) else v for k, v in value.items()}

    @property
    def schemas(self) -> tuple[str, ...]:
        """The record names the topic carries."""
        v = self.value_schema
        return (v,) if isinstance(v, str) else tuple(v)

    def kafka_configs(self) -> dict[str, str]:
        """The topic-level broker configs this spec declares."""
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            **self.config,
        }


class CoPartitionGroup(_Strict):
    """Topics that must have the same partition count and the same key."""

    key: str = Field(min_length=1)
    topics: list[TopicName] = Field(min_length=2)


class TopicsFile(_Strict):
    """The whole of topics.yaml."""

    version: Literal[1]
    replication_factor: int = Field(ge=1, le=16)
    topics: dict[TopicName, TopicSpec] = Field(min_length=1)
    co_partitioned: dict[str, CoPartitionGroup] = Field(default_factory=dict)

    def prefixed(self, prefix: str) -> TopicsFile:
        """The same declaration with ``prefix`` before every topic name (see TopicNames)."""
        groups = {name: g.model_copy(update={"topics": [prefix + t for t in g.topics]})
                  for name, g in self.co_partitioned.items()}  # fmt: skip
        return self.model_copy(update={
            "topics": {prefix + name: spec for name, spec in self.topics.items()},
            "co_partitioned": groups,
        })  # fmt: skip


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The topic names clients use, so they need no topics.yaml at run time.

    The defaults are topics.yaml's names (a test holds them equal); tests and
    multi-tenant deployments pass their own.
    """

    agent_availability: str = "agent-availability"
    load_arrival: str = "load-arrival"
    task_results: str = "task-results"
    ticks: str = "ticks"
    input_sequence: str = "input-sequence"
    policy_update: str = "policy-update"
    assignments: str = "assignments"
    decision_log: str = "decision-log"
    dead_letter: str = "dead-letter"

    @classmethod
    def prefixed(cls, prefix: str) -> TopicNames:
        """The declared names with ``prefix`` in front (tests, several systems on one cluster)."""
        base = cls()
        return cls(**{f: prefix + getattr(base, f) for f in cls.__dataclass_fields__})


def _describe(loc: tuple[int | str, ...]) -> str:
    """Turns a pydantic error location into 'topic X, field Y' words."""
    if len(loc) >= 2 and loc[0] == "topics":
        where = f"topic '{loc[1]}'"
        return f"{where}, field '{'.'.join(map(str, loc[2:]))}'" if len(loc) > 2 else where
    if len(loc) >= 2 and loc[0] == "co_partitioned":
        where = f"co-partition group '{loc[1]}'"
        return f"{where}, field '{'.'.join(map(str, loc[2:]))}'" if len(loc) > 2 else where
    return field_at(loc)


def _canonical(key: str, value: str) -> str:
    """``value`` as the broker reports it back: it trims values and list items and
    parses numbers and booleans (so "01000" comes back "1000", "True" "true")."""
    v = value.strip()
    if _INTEGER.fullmatch(v) and key not in _DOUBLE_KEYS:
        return str(int(v))
    if _DECIMAL.fullmatch(v):
        return repr(float(v))  # Java's Double.toString, for the ratios topics take
    if v.lower() in ("true", "false"):
        return v.lower()
    return ",".join(item.strip() for item in v.split(","))


def _config_text(key: str, value: Any) -> Any:
    """A config value YAML read as a bool, int or float, as the broker reports it;
    anything else unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and math.isfinite(value):
        return _canonical(key, repr(value))
    return value


def _cross_checks(spec: TopicsFile) -> list[str]:
    out = []
    for group_name, group in spec.co_partitioned.items():
        where = f"co-partition group '{group_name}'"
        unknown = [t for t in group.topics if t not in spec.topics]
        if unknown:
            out.append(f"{where}, field 'topics': unknown topic(s) {', '.join(unknown)}")
            continue
        counts = {t: spec.topics[t].partitions for t in group.topics}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{t}={n}" for t, n in counts.items())
            out.append(f"{where}: topics must have equal 'partitions' ({listed})")
        for t in group.topics:
            if spec.topics[t].key != group.key:
                out.append(
                    f"topic '{t}', field 'key': is '{spec.topics[t].key}' but {where} "
                    f"is keyed by '{group.key}'"
                )
    for name, topic in spec.topics.items():
        clash = sorted(_MANAGED_KEYS & topic.config.keys())
        if clash:
            out.append(
                f"topic '{name}', field 'config': {', '.join(clash)} belong in "
                "'cleanup_policy' / 'retention_ms'"
            )
        # `topics apply` compares the declared values with the broker's as text: another
        # spelling of the same value would be drift on every run.
        for key, value in topic.config.items():
            if (canonical := _canonical(key, value)) != value:
                out.append(
                    f"topic '{name}', field 'config.{key}': the broker reports {value!r} as "
                    f"{canonical!r}; write {canonical!r}"
                )
        isr = topic.config.get("min.insync.replicas", "").strip()
        if _INTEGER.fullmatch(isr) and int(isr) > spec.replication_factor:
            out.append(
                f"topic '{name}', field 'config.min.insync.replicas': {int(isr)} is more than "
                f"replication_factor {spec.replication_factor} (every write with acks=all "
                "would fail)"
            )
    return out


def load_topics(path: Path | str = DEFAULT_TOPICS_FILE) -> TopicsFile:
    """Reads and validates a topics file.

    Raises:
        TopicsFileError: the file is missing, not YAML, or breaks the schema;
            every problem names the file, the topic and the field.
    """
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopicsFileError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:  # (before: a traceback)
        raise TopicsFileError(str(path), [f"cannot read: {exc}"]) from exc
    except yaml.YAMLError as exc:
        raise TopicsFileError(str(path), [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise TopicsFileError(str(path), ["top level: must be a mapping"])
    try:
        spec = TopicsFile.model_validate(raw)
    except ValidationError as exc:
        raise TopicsFileError(str(path), validation_problems(exc, _describe)) from exc
    problems = _cross_checks(spec)
    if problems:
        raise TopicsFileError(str(path), problems)
    return spec


@dataclass(frozen=True, slots=True)
class TopicReport:
    """What ``apply_topics`` found or did for one topic."""

    name: str
    action: Literal["created", "ok", "drift", "altered"]
    drift: tuple[str, ...] = ()

    def line(self) -> str:
        detail = "; ".join(self.drift)
        return f"{self.action:<8} {self.name}" + (f"  ({detail})" if detail else "")


def _norm(key: str, value: str) -> str:
    # The broker may list a cleanup policy's parts in either order.
    return ",".join(sorted(value.split(","))) if key == "cleanup.policy" else value


async def _admin_call(what: str, coro: Any, seconds: float) -> Any:
    try:
        async with asyncio.timeout(seconds):
            return await coro
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerError(f"{what} failed: {exc!r}") from exc


@contextlib.asynccontextmanager
async def _admin(bootstrap_servers: str, seconds: float) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed after."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(seconds * 1000)
    )
    try:
        await _admin_call(f"connecting to Kafka at {bootstrap_servers}", admin.start(), seconds)
        yield admin
    finally:
        await closing(admin.close())


async def apply_topics(
    spec: TopicsFile,
    bootstrap_servers: str,
    *,
    alter_configs: bool = False,
    request_timeout_s: float = 30.0,
) -> list[TopicReport]:
    """Creates the missing topics and compares the others with the declaration.

    Partition counts are never changed (that would move keys between
    partitions and break co-partitioning); differing configs are reported,
    or set to the declared values with ``alter_configs`` (a full AlterConfigs:
    other topic-level overrides fall back to the broker's defaults).

    Raises:
        BrokerError: the broker could not be reached or refused a request.
    """
    async with _admin(bootstrap_servers, request_timeout_s) as admin:
        return await _apply(admin, spec, alter_configs=alter_configs, seconds=request_timeout_s)


async def topic_names(bootstrap_servers: str, *, request_timeout_s: float = 30.0) -> list[str]:
    """The names of the topics on the broker.

    Raises:
        BrokerError: the broker could not be reached or refused a request.
    """
    async with _admin(bootstrap_servers, request_timeout_s) as admin:
        return list(await _admin_call("listing topics", admin.list_topics(), request_timeout_s))


async def delete_topics(
    names: list[str], bootstrap_servers: str, *, request_timeout_s: float = 30.0
) -> None:
    """Deletes the named topics that exist (tests and benchmarks remove what they made:
    every partition left behind slows the broker's start).

    Raises:
        BrokerError: the broker could not be reached or refused a request.
    """
    async with _admin(bootstrap_servers, request_timeout_s) as admin:
        existing = set(await _admin_call("listing topics", admin.list_topics(), request_timeout_s))
        present = [n for n in names if n in existing]
        if present:
            await _admin_call("deleting topics", admin.delete_topics(present), request_timeout_s)


async def _apply(
    admin: AIOKafkaAdminClient, spec: TopicsFile, *, alter_configs: bool, seconds: float
) -> list[TopicReport]:
    existing = set(await _admin_call("listing topics", admin.list_topics(), seconds))
    missing = [name for name in spec.topics if name not in existing]
    if missing:
        new = [
            NewTopic(name, spec.topics[name].partitions, spec.replication_factor,
                     topic_configs=spec.topics[name].kafka_configs())
            for name in missing
        ]  # fmt: skip
        response = await _admin_call("creating topics", admin.create_topics(new), seconds)
        for err in response.to_object()["topic_errors"]:
            if err["error_code"] not in (0, _TOPIC_EXISTS):
                message = err.get("error_message") or f"error code {err['error_code']}"
                raise BrokerError(f"creating topic '{err['topic']}' failed: {message}")
        await _listed(admin, missing, seconds)

    present = [name for name in spec.topics if name in existing]
    partitions: dict[str, int] = {}
    replicas: dict[str, set[int]] = {}  # topic -> its partitions' replica counts
    broker_configs: dict[str, dict[str, str]] = {}
    if present:
        described = await _admin_call("describing topics", admin.describe_topics(present), seconds)
        partitions = {t["topic"]: len(t["partitions"]) for t in described}
        replicas = {t["topic"]: {len(p["replicas"]) for p in t["partitions"]} for t in described}
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in present]
        responses = await _admin_call(
            "describing topic configs", admin.describe_configs(resources), seconds
        )
        for response in responses:
            for res in response.to_object()["resources"]:
                broker_configs[res["resource_name"]] = {
                    e["config_names"]: e["config_value"] for e in res["config_entries"]
                }

    reports = []
    for name, topic in spec.topics.items():
        if name in missing:
            reports.append(TopicReport(name, "created"))
            continue
        drift = []
        if partitions.get(name) != topic.partitions:
            drift.append(
                f"partitions: {partitions.get(name)} on the broker, {topic.partitions} declared"
                " (not changed: it would move keys between partitions)"
            )
        if replicas.get(name, set()) - {spec.replication_factor}:
            counts = ", ".join(map(str, sorted(replicas[name])))
            drift.append(
                f"replication_factor: {counts} on the broker, {spec.replication_factor} declared"
                " (not changed: reassign the partitions' replicas)"
            )
        actual = broker_configs.get(name, {})
        wrong = {
            k: v for k, v in topic.kafka_configs().items()
            if _norm(k, actual.get(k, "")) != _norm(k, v)
        }  # fmt: skip
        if wrong and alter_configs:
            await _alter(admin, name, topic.kafka_configs(), seconds)
            altered = [f"{k}: set to {v!r} (was {actual.get(k)!r})" for k, v in wrong.items()]
            action: Literal["drift", "altered"] = "drift" if drift else "altered"
            reports.append(TopicReport(name, action, tuple(drift + altered)))
            continue
        drift += [f"{k}: {actual.get(k)!r} on the broker, {v!r} declared" for k, v in wrong.items()]
        reports.append(TopicReport(name, "drift" if drift else "ok", tuple(drift)))
    return reports


async def _listed(admin: AIOKafkaAdminClient, names: list[str], seconds: float) -> None:
    """Waits until the topics just created are listed: the broker's metadata follows its
    controller's a moment later, and a listing right after could miss them (a second
    apply on a loaded machine found them missing and reported them created again).

    Raises:
        BrokerError: they were not listed within ``seconds``.
    """
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        listed = set(await _admin_call("listing topics", admin.list_topics(), seconds))
        if listed.issuperset(names):
            return
        if asyncio.get_running_loop().time() > deadline:
            missing = ", ".join(sorted(set(names) - listed))
            raise BrokerError(f"topics created but not listed after {seconds:g} s: {missing}")
        await asyncio.sleep(0.05)


async def _alter(
    admin: AIOKafkaAdminClient, name: str, configs: dict[str, str], seconds: float
) -> None:
    resource = ConfigResource(ConfigResourceType.TOPIC, name, configs)
    responses = await _admin_call(
        f"altering configs of '{name}'", admin.alter_configs([resource]), seconds
    )
    for response in responses:
        for res in response.to_object()["resources"]:
            if res["error_code"] != 0:
                message = res.get("error_message") or f"error code {res['error_code']}"
                raise BrokerError(f"altering configs of '{name}' failed: {message}")
