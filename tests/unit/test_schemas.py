"""The contracts: registry, topics, schema/model agreement, evolution, bounded decoding."""

from __future__ import annotations

import io
import json
import types
import typing
from enum import StrEnum
from typing import Any

import annotated_types
import pytest
from fastavro import schemaless_writer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.codecs.codec import MODELS
from dispatcher.codecs.schemas import SCHEMA_DIR, SchemaRegistry
from dispatcher.topics import load_topics
from tests.samples import SAMPLES

REGISTRY = SchemaRegistry()


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())  # type: ignore[no-any-return]


def test_every_schema_file_is_registered_and_ids_are_contiguous() -> None:
    assert REGISTRY.pending() == [], "run `dispatcher schemas register` and commit registry.json"
    assert sorted(REGISTRY.by_id) == list(range(1, len(REGISTRY.by_id) + 1))
    assert set(REGISTRY.names()) == set(MODELS)


def test_every_topic_names_a_schema_that_exists() -> None:
    for name, topic in load_topics().topics.items():
        for schema in topic.schemas:
            assert schema in REGISTRY.latest, f"{name}: {schema}"
            assert (SCHEMA_DIR / f"{schema}.avsc").exists()


def test_namespace_carries_a_version() -> None:
    for name in MODELS:
        assert _schema(name)["namespace"] == "dispatcher.v1"


def _named_types(schema: Any, out: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for s in schema:
            _named_types(s, out)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            out.setdefault(schema["name"], []).append(schema)
        for key in ("fields", "items", "values", "type"):
            if key in schema:
                _named_types(
                    schema[key] if key != "fields" else [f["type"] for f in schema[key]], out
                )


def test_types_repeated_across_files_are_identical() -> None:
    seen: dict[str, Any] = {}
    for name in MODELS:
        _named_types(_schema(name), seen)
    for type_name, definitions in seen.items():
        assert all(d == definitions[0] for d in definitions), type_name


def _min_size(schema: Any) -> int:
    """The fewest bytes a value of this schema can encode to."""
    if isinstance(schema, list):
        return 1 + min(_min_size(s) for s in schema)  # the branch index, then the value
    if isinstance(schema, str):
        return {"null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8,
                "bytes": 1, "string": 1}[schema]  # fmt: skip
    kind = schema["type"]
    if kind == "record":
        return sum(_min_size(f["type"]) for f in schema["fields"])
    if kind in ("array", "map", "enum"):
        return 1
    if kind == "fixed":
        return int(schema["size"])
    return _min_size(kind)


def _repeated(schema: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(schema, list):
        for s in schema:
            found += _repeated(s)
    elif isinstance(schema, dict):
        if schema["type"] == "array":
            found += [schema["items"], *_repeated(schema["items"])]
        elif schema["type"] == "map":
            found += [schema["values"], *_repeated(schema["values"])]
        elif schema["type"] == "record":
            for f in schema["fields"]:
                found += _repeated(f["type"])
        elif isinstance(schema["type"], (dict, list)):
            found += _repeated(schema["type"])
    return found


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_schema_repeats_an_item_that_can_encode_to_zero_bytes(name: str) -> None:
    # What bounds decoding: a declared count of N items then needs N bytes, so a
    # hostile 20-byte record cannot make fastavro build a 2^40-item list.
    for item in _repeated(_schema(name)):
        assert _min_size(item) >= 1, f"{name}: {item}"


# -- schema and model agree, field by field --------------------------------------------


def _models() -> dict[str, type[BaseModel]]:
    return {cls.__name__: cls for cls in vars(m).values()
            if isinstance(cls, type) and issubclass(cls, m.Record)}  # fmt: skip


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def _base(annotation: Any) -> tuple[Any, list[Any]]:
    """The type under any Annotated layers, and the metadata those layers held."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *more = typing.get_args(annotation)
        metadata += more
    return annotation, metadata


PRIMITIVES = {"string": str, "long": int, "int": int, "double": float, "float": float,
              "boolean": bool, "bytes": bytes}  # fmt: skip
# What the Avro spec allows (32- and 64-bit signed): written independently of the models.
AVRO_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _bounds(metadata: list[Any]) -> tuple[int | None, int | None]:
    """The least and greatest integer the constraints in ``metadata`` allow (None: unbounded)."""
    lows: list[int] = []
    highs: list[int] = []
    for c in metadata:
        if isinstance(c, FieldInfo):  # Field(ge=..., le=...) inside Annotated
            lo, hi = _bounds(c.metadata)
            lows += [] if lo is None else [lo]
            highs += [] if hi is None else [hi]
        # (The bounds of an int field are ints; annotated_types types them as comparables.)
        elif isinstance(c, annotated_types.Ge):
            lows.append(typing.cast(int, c.ge))
        elif isinstance(c, annotated_types.Gt):
            lows.append(typing.cast(int, c.gt) + 1)
        elif isinstance(c, annotated_types.Le):
            highs.append(typing.cast(int, c.le))
        elif isinstance(c, annotated_types.Lt):
            highs.append(typing.cast(int, c.lt) - 1)
    return max(lows, default=None), min(highs, default=None)


def _agree(avro: Any, annotation: Any, where: str, metadata: tuple[Any, ...] = ()) -> None:
    annotation, more = _base(annotation)
    constraints = [*metadata, *more]
    if isinstance(avro, list):
        inner, optional = _strip_optional(annotation)
        assert "null" in avro, where
        assert optional, f"{where}: nullable in the schema, not in the model"
        (branch,) = [b for b in avro if b != "null"]
        _agree(branch, inner, where, tuple(constraints))
        return
    if isinstance(avro, str):
        assert annotation is PRIMITIVES[avro], f"{where}: {avro} vs {annotation}"
        if avro in AVRO_RANGE:
            # A value the model lets through must be one the Avro type can carry: fastavro
            # writes an "int" above 2^31-1 that Java readers refuse, and fails a "long"
            # above 2^63-1 with OverflowError rather than a validation error.
            least, most = AVRO_RANGE[avro]
            lo, hi = _bounds(constraints)
            assert lo is not None, f"{where}: {avro}, no lower bound in the model"
            assert hi is not None, f"{where}: {avro}, no upper bound in the model"
            assert least <= lo <= hi <= most, f"{where}: {avro}, model allows {lo} to {hi}"
        return
    kind = avro["type"]
    if kind == "record":
        model = _models()[avro["name"]]
        names = [f["name"] for f in avro["fields"]]
        assert names == list(model.model_fields), f"{where}: fields differ"
        for f in avro["fields"]:
            info = model.model_fields[f["name"]]
            _agree(f["type"], info.annotation, f"{where}.{f['name']}", tuple(info.metadata))
            has_default = "default" in f
            assert has_default == (not model.model_fields[f["name"]].is_required()), (
                f"{where}.{f['name']}: default in one, not the other"
            )
    elif kind == "enum":
        assert issubclass(annotation, StrEnum), where
        assert [e.value for e in annotation] == avro["symbols"], f"{where}: symbols differ"
        assert annotation.__name__ == avro["name"], where
    elif kind == "array":
        assert typing.get_origin(annotation) is list, where
        _agree(avro["items"], typing.get_args(annotation)[0], f"{where}[]")
    elif kind == "map":
        assert typing.get_origin(annotation) is dict, where
        _agree(avro["values"], typing.get_args(annotation)[1], f"{where}{{}}")
    else:
        _agree(kind, annotation, where)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_schema_and_model_agree_field_by_field(name: str) -> None:
    schema = _schema(name)
    _agree({**schema, "name": name}, MODELS[name], name)


# -- evolution ---------------------------------------------------------------------------


def test_old_agent_events_read_with_the_current_schema() -> None:
    """A real step in the registry: AgentProfile gained `speed` (default 1.0) after v1."""
    codec = Codec()
    old = REGISTRY.by_id[1]
    assert old.name == "AgentEvent"
    assert codec.writer_schema("AgentEvent").id > old.id
    assert '"speed"' not in old.canonical
    record = SAMPLES["AgentEvent"][0].model_dump()
    del record["profile"]["speed"]
    body = io.BytesIO()
    schemaless_writer(body, old.parsed, {**record, "profile": ("dispatcher.v1.AgentProfile",
                                                               record["profile"])})  # fmt: skip
    decoded = codec.decode(b"\x00" + old.id.to_bytes(4, "big") + body.getvalue(), "AgentEvent")
    assert isinstance(decoded, m.AgentEvent)
    assert decoded.profile is not None
    assert decoded.profile.speed == 1.0
    assert (
        decoded.model_copy(update={"profile": decoded.profile.model_copy(update={"speed": 1.5})})
        == SAMPLES["AgentEvent"][0]
    )


def test_a_registered_version_that_does_not_resolve_is_a_codec_error(tmp_path) -> None:
    """register() cannot know compatibility; decode must still never crash on it."""
    import shutil  # noqa: PLC0415

    from dispatcher.codecs import CodecError  # noqa: PLC0415

    for f in SCHEMA_DIR.iterdir():
        if f.suffix in (".avsc", ".json"):
            shutil.copy(f, tmp_path / f.name)
    old_tick = Codec().encode(m.Tick(pool="pool-a", event_time_ms=5))
    tick = _schema("Tick")
    tick["fields"].append({"name": "seq", "type": "long"})  # no default: an incompatible change
    (tmp_path / "Tick.avsc").write_text(json.dumps(tick))
    registry = SchemaRegistry(tmp_path)
    (added,) = registry.register()
    assert added.name == "Tick"
    codec = Codec(SchemaRegistry(tmp_path))
    with pytest.raises(CodecError) as info:
        codec.decode(old_tick, "Tick")
    assert info.value.reason is m.DeadLetterReason.INVALID
    assert "does not resolve" in info.value.detail


def test_old_policy_updates_read_with_the_current_schema() -> None:
    """PolicyDocument gained `fair_share_reserve` and five other core policy fields (with the
    core's defaults) after id 6."""
    codec = Codec()
    old = REGISTRY.by_id[6]
    assert old.name == "PolicyUpdate"
    assert '"fair_share_reserve"' not in old.canonical
    record = SAMPLES["PolicyUpdate"][0].model_dump()
    added = ("fair_share_reserve", "tenant_first", "deadline_margin", "drain_limit",
             "batch_max_loads", "batch_candidates")  # fmt: skip
    for name in added:
        del record["document"][name]
    body = io.BytesIO()
    schemaless_writer(body, old.parsed, record)
    decoded = codec.decode(b"\x00" + old.id.to_bytes(4, "big") + body.getvalue(), "PolicyUpdate")
    assert isinstance(decoded, m.PolicyUpdate)
    doc = decoded.document
    assert [getattr(doc, name) for name in added] == [0.1, True, 0.2, 256, 512, 16]
