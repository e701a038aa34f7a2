"""topics.yaml validation: the real file is valid, broken ones are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.errors import TopicsFileError
from dispatcher.topics import DEFAULT_TOPICS_FILE, load_topics

REQUIRED_TOPICS = {
    "agent-availability",
    "load-arrival",
    "task-results",
    "policy-update",
    "assignments",
    "decision-log",
    "dead-letter",
}


def test_project_topics_file_is_valid_and_complete() -> None:
    spec = load_topics(DEFAULT_TOPICS_FILE)
    assert spec.topics.keys() >= REQUIRED_TOPICS
    group = spec.co_partitioned["dispatch-input"]
    assert {"agent-availability", "load-arrival", "task-results"} <= set(group.topics)
    assert len({spec.topics[t].partitions for t in group.topics}) == 1
    assert all(spec.topics[t].key == "pool" for t in group.topics)


def _base() -> Any:
    return yaml.safe_load(DEFAULT_TOPICS_FILE.read_text())


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def _drop(field: str):
    def edit(doc):
        del doc["topics"]["load-arrival"][field]

    return edit


def _set(topic: str, field: str, value: object):
    def edit(doc):
        doc["topics"][topic][field] = value

    return edit


def _group_partitions(doc):
    doc["topics"]["ticks"]["partitions"] = 8


def _group_unknown(doc):
    doc["co_partitioned"]["dispatch-input"]["topics"].append("no-such-topic")


def _group_key(doc):
    doc["topics"]["task-results"]["key"] = "tenant"


def _top_unknown(doc):
    doc["replication"] = 3


def _managed_in_config(doc):
    doc["topics"]["assignments"]["config"] = {"retention.ms": "1"}


def _config(key: str, value: object):
    def edit(doc):
        doc["topics"]["assignments"]["config"] = {key: value}

    return edit


BROKEN = [
    # (what breaks, edit, words the message must contain)
    ("missing field", _drop("partitions"), ["load-arrival", "partitions", "missing"]),
    (
        "unknown key",
        _set("load-arrival", "partitionz", 4),
        ["load-arrival", "partitionz", "unknown"],
    ),
    (
        "partitions 0",
        _set("load-arrival", "partitions", 0),
        ["load-arrival", "partitions", "greater than or equal to 1"],
    ),
    ("partitions as text", _set("ticks", "partitions", "4"), ["ticks", "partitions"]),
    (
        "bad cleanup",
        _set("dead-letter", "cleanup_policy", "forever"),
        ["dead-letter", "cleanup_policy"],
    ),
    ("bad retention", _set("assignments", "retention_ms", -5), ["assignments", "retention_ms"]),
    ("bad schema name", _set("ticks", "value_schema", "tick event"), ["ticks", "value_schema"]),
    ("bad topic name", _set("ticks", "key", ""), ["ticks", "key"]),
    ("co-partition mismatch", _group_partitions, ["dispatch-input", "ticks=8", "partitions"]),
    ("co-partition unknown topic", _group_unknown, ["dispatch-input", "no-such-topic"]),
    ("co-partition key", _group_key, ["task-results", "key", "dispatch-input"]),
    ("unknown top-level key", _top_unknown, ["replication", "unknown"]),
    ("managed key in config", _managed_in_config, ["assignments", "config", "retention.ms"]),
    # Spellings the broker reports otherwise: before, drift on every `topics apply`, and
    # "altered" on every `--alter-configs`.
    (
        "leading zero",
        _config("max.message.bytes", "01000"),
        ["assignments", "config.max.message.bytes", "write '1000'"],
    ),
    (
        "spaces around a value",
        _config("segment.bytes", " 1048576"),
        ["assignments", "config.segment.bytes", "write '1048576'"],
    ),
    (
        "capital boolean",
        _config("unclean.leader.election.enable", "True"),
        ["config.unclean.leader.election.enable", "write 'true'"],
    ),
    (
        "double as integer",
        _config("min.cleanable.dirty.ratio", "1"),
        ["config.min.cleanable.dirty.ratio", "write '1.0'"],
    ),
    # (before: accepted, and every write with acks=all to the topic failed)
    (
        "min.insync.replicas above the replication factor",
        _config("min.insync.replicas", "2"),
        ["assignments", "config.min.insync.replicas", "2 is more than replication_factor 1"],
    ),
]


@pytest.mark.parametrize(("case", "edit", "words"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_file_is_refused_naming_file_topic_and_field(
    tmp_path: Path, case: str, edit, words: list[str]
) -> None:
    doc = _base()
    edit(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(TopicsFileError) as info:
        load_topics(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


def test_configs_spelled_as_the_broker_reports_them_are_accepted(tmp_path: Path) -> None:
    doc = _base()
    config = {"max.message.bytes": "1000", "unclean.leader.election.enable": "false",
              "min.cleanable.dirty.ratio": "0.5", "min.insync.replicas": "1",
              "retention.bytes": "-1", "message.timestamp.type": "CreateTime"}  # fmt: skip
    doc["topics"]["assignments"]["config"] = config
    assert load_topics(_write(tmp_path, doc)).topics["assignments"].config == config


def test_configs_yaml_reads_as_numbers_and_booleans_become_the_brokers_text(
    tmp_path: Path,
) -> None:
    """Before, `max.message.bytes: 2000000` unquoted was refused ("Input should be a valid
    string"), though the README writes them so."""
    doc = _base()
    doc["topics"]["assignments"]["config"] = {
        "max.message.bytes": 2000000, "unclean.leader.election.enable": True,
        "min.cleanable.dirty.ratio": 0.5, "preallocate": False,
    }  # fmt: skip
    assert load_topics(_write(tmp_path, doc)).topics["assignments"].config == {
        "max.message.bytes": "2000000", "unclean.leader.election.enable": "true",
        "min.cleanable.dirty.ratio": "0.5", "preallocate": "false",
    }  # fmt: skip


@pytest.mark.parametrize("value", [[1, 2], {"a": "b"}, None, float("inf")])
def test_configs_of_other_kinds_are_still_refused(tmp_path: Path, value: object) -> None:
    doc = _base()
    _config("max.message.bytes", value)(doc)
    with pytest.raises(TopicsFileError, match=r"config\.max\.message\.bytes"):
        load_topics(_write(tmp_path, doc))


def test_a_file_that_is_not_utf8_is_refused_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TopicsFileError, match="cannot read: 'utf-8' codec can't decode"):
        load_topics(path)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("version: 1\ntopics: [unclosed\n", ["not valid YAML", "line"]),
        ("- just\n- a list\n", ["top level", "mapping"]),
        (
            "version: 1\nreplication_factor: 1\ntopics:\n  a: {}\n  a: {}\n",
            ["duplicate key 'a'"],
        ),
    ],
    ids=["syntax", "not a mapping", "duplicate topic"],
)
def test_unreadable_file_is_refused(tmp_path: Path, text: str, words: list[str]) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(TopicsFileError) as info:
        load_topics(path)
    for word in words:
        assert word in str(info.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TopicsFileError, match="cannot read"):
        load_topics(tmp_path / "nope.yaml")


def test_client_topic_names_are_the_declared_ones() -> None:
    from dispatcher.topics import TopicNames  # noqa: PLC0415

    spec = load_topics(DEFAULT_TOPICS_FILE)
    names = TopicNames()
    assert {getattr(names, f) for f in TopicNames.__dataclass_fields__} == set(spec.topics)
    for field in TopicNames.__dataclass_fields__:
        assert field.replace("_", "-") == getattr(names, field)


def test_a_prefixed_declaration_renames_every_topic_and_group_member() -> None:
    spec = load_topics(DEFAULT_TOPICS_FILE)
    moved = spec.prefixed("x-")
    assert set(moved.topics) == {"x-" + t for t in spec.topics}
    for name, group in moved.co_partitioned.items():
        assert group.topics == ["x-" + t for t in spec.co_partitioned[name].topics]
    assert moved.topics["x-ticks"] == spec.topics["ticks"]
