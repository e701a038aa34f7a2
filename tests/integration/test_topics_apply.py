"""`topics apply` on the real broker: creates, is idempotent, reports and fixes drift."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dispatcher.topics import (
    TopicReport,
    apply_topics,
    delete_topics,
    load_topics,
    topic_names,
)


@pytest.fixture
def topics_file(tmp_path: Path, unique: Callable[[str], str], kafka_bootstrap: str):
    names = {"in": unique("in"), "out": unique("out"), "log": unique("log")}
    doc = {
        "version": 1,
        "replication_factor": 1,
        "topics": {
            names["in"]: {"description": "input", "partitions": 3, "key": "pool",
                          "value_schema": "LoadEvent", "cleanup_policy": "delete",
                          "retention_ms": 86_400_000},
            names["out"]: {"description": "output", "partitions": 3, "key": "pool",
                           "value_schema": "Assignment", "cleanup_policy": "delete",
                           "retention_ms": 3_600_000, "config": {"max.message.bytes": "2097152"}},
            names["log"]: {"description": "compacted", "partitions": 1, "key": "id",
                           "value_schema": "PolicyUpdate", "cleanup_policy": "compact",
                           "retention_ms": -1},
        },
        "co_partitioned": {"g": {"key": "pool", "topics": [names["in"], names["out"]]}},
    }  # fmt: skip
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(doc))
    yield path, names
    asyncio.run(_admin(kafka_bootstrap, lambda a: a.delete_topics(list(names.values()))))


async def _admin(bootstrap: str, action):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await action(admin)
    finally:
        await admin.close()


def _apply(path: Path, bootstrap: str, **kw) -> dict[str, TopicReport]:
    return {r.name: r for r in asyncio.run(apply_topics(load_topics(path), bootstrap, **kw))}


def test_apply_creates_then_is_idempotent_then_reports_drift(
    topics_file, kafka_bootstrap: str
) -> None:
    path, names = topics_file

    first = _apply(path, kafka_bootstrap)
    assert {r.action for r in first.values()} == {"created"}
    described = asyncio.run(
        _admin(kafka_bootstrap, lambda a: a.describe_topics(list(names.values())))
    )
    assert {t["topic"]: len(t["partitions"]) for t in described} == {
        names["in"]: 3,
        names["out"]: 3,
        names["log"]: 1,
    }

    second = _apply(path, kafka_bootstrap)
    assert {r.action for r in second.values()} == {"ok"}, [r.line() for r in second.values()]

    # Someone changes a topic behind our back.
    resource = ConfigResource(ConfigResourceType.TOPIC, names["out"],
                              {"retention.ms": "1000", "cleanup.policy": "delete",
                               "max.message.bytes": "2097152"})  # fmt: skip
    asyncio.run(_admin(kafka_bootstrap, lambda a: a.alter_configs([resource])))
    drifted = _apply(path, kafka_bootstrap)
    assert drifted[names["out"]].action == "drift"
    assert drifted[names["out"]].drift == (
        "retention.ms: '1000' on the broker, '3600000' declared",
    )
    assert drifted[names["in"]].action == "ok"

    fixed = _apply(path, kafka_bootstrap, alter_configs=True)
    assert fixed[names["out"]].action == "altered"
    assert {r.action for r in _apply(path, kafka_bootstrap).values()} == {"ok"}


def test_partition_drift_is_reported_and_never_changed(topics_file, kafka_bootstrap: str) -> None:
    path, names = topics_file
    _apply(path, kafka_bootstrap)
    doc = yaml.safe_load(path.read_text())
    for name in (names["in"], names["out"]):
        doc["topics"][name]["partitions"] = 6
    path.write_text(yaml.safe_dump(doc))

    report = _apply(path, kafka_bootstrap, alter_configs=True)
    assert report[names["in"]].action == "drift"
    assert "partitions: 3 on the broker, 6 declared" in report[names["in"]].drift[0]
    described = asyncio.run(_admin(kafka_bootstrap, lambda a: a.describe_topics([names["in"]])))
    assert len(described[0]["partitions"]) == 3


def test_replication_factor_drift_is_reported_and_never_changed(
    topics_file, kafka_bootstrap: str
) -> None:
    """Before, a topic with fewer replicas than declared was reported "ok"."""
    path, names = topics_file
    _apply(path, kafka_bootstrap)
    doc = yaml.safe_load(path.read_text())
    doc["replication_factor"] = 2
    path.write_text(yaml.safe_dump(doc))

    report = _apply(path, kafka_bootstrap, alter_configs=True)
    assert {r.action for r in report.values()} == {"drift"}
    assert report[names["in"]].drift == (
        "replication_factor: 1 on the broker, 2 declared"
        " (not changed: reassign the partitions' replicas)",
    )


def test_delete_topics_removes_the_named_ones_and_ignores_absent_ones(
    topics_file, kafka_bootstrap: str
) -> None:
    path, names = topics_file
    _apply(path, kafka_bootstrap)
    asyncio.run(delete_topics([names["in"], names["out"], "never-created-topic"], kafka_bootstrap))

    async def left() -> set[str]:
        for _ in range(50):  # deletion is asynchronous on the broker
            listed = set(await topic_names(kafka_bootstrap))
            if names["in"] not in listed and names["out"] not in listed:
                return listed & set(names.values())
            await asyncio.sleep(0.1)
        return listed & set(names.values())

    assert asyncio.run(left()) == {names["log"]}
