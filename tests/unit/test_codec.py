"""The codec: round trips, an independent Avro implementation, every failure reason."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from pathlib import Path

import avro.io
import avro.schema
import pytest
from fastavro import parse_schema, schemaless_writer
from pydantic import ValidationError

from dispatcher.codecs import SINGLE_OBJECT, Codec, CodecError, dead_letter
from dispatcher.codecs import models as m
from dispatcher.codecs.codec import MODELS
from dispatcher.codecs.schemas import SCHEMA_DIR, SchemaRegistry
from tests.samples import LOAD, PROFILE, SAMPLES

CODEC = Codec()
ALL = [(name, rec) for name, recs in SAMPLES.items() for rec in recs]
IDS = [f"{name}-{i}" for name, recs in SAMPLES.items() for i in range(len(recs))]


def test_every_schema_has_samples() -> None:
    assert set(SAMPLES) == set(MODELS)


@pytest.mark.parametrize(("name", "record"), ALL, ids=IDS)
@pytest.mark.parametrize("framing", ["confluent", "single-object"])
def test_round_trip(name: str, record: m.Record, framing: str) -> None:
    data = CODEC.encode(record, framing=framing)  # type: ignore[arg-type]
    if framing == "confluent":
        assert data[0] == 0
        assert int.from_bytes(data[1:5], "big") == CODEC.writer_schema(name).id
    else:
        assert data[:2] == b"\xc3\x01"
        assert data[2:10] == CODEC.writer_schema(name).fingerprint
    assert CODEC.decode(data, name) == record


def _avro_schema(name: str) -> avro.schema.Schema:
    return avro.schema.parse((SCHEMA_DIR / f"{name}.avsc").read_text())


@pytest.mark.parametrize(("name", "record"), ALL, ids=IDS)
def test_apache_avro_reads_our_bytes(name: str, record: m.Record) -> None:
    body = CODEC.encode(record)[5:]  # strip the Confluent frame
    reader = avro.io.DatumReader(_avro_schema(name))
    decoder = avro.io.BinaryDecoder(io.BytesIO(body))
    assert reader.read(decoder) == record.model_dump()


@pytest.mark.parametrize(("name", "record"), ALL, ids=IDS)
def test_we_read_apache_avro_bytes(name: str, record: m.Record) -> None:
    out = io.BytesIO()
    avro.io.DatumWriter(_avro_schema(name)).write(
        json.loads(record.model_dump_json()) | _bytes_fields(record), avro.io.BinaryEncoder(out)
    )
    frame = b"\x00" + CODEC.writer_schema(name).id.to_bytes(4, "big")
    assert CODEC.decode(frame + out.getvalue(), name) == record


def _bytes_fields(record: m.Record) -> dict[str, object]:
    # JSON turns bytes into text; hand Avro the real bytes back.
    return {k: v for k, v in record.model_dump().items() if isinstance(v, bytes)}


def test_single_object_fingerprint_matches_apache_avro() -> None:
    for name in MODELS:
        assert (
            _avro_schema(name).fingerprint("CRC-64-AVRO") == CODEC.writer_schema(name).fingerprint
        )


# -- failures ------------------------------------------------------------------------

GOOD = CODEC.encode(SAMPLES["LoadEvent"][0])


def _raw(name: str, datum: dict[str, object]) -> bytes:
    """Bytes a careless producer could write: valid Avro, never validated by a model."""
    schema = parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()), named_schemas={})
    out = io.BytesIO()
    out.write(b"\x00" + CODEC.writer_schema(name).id.to_bytes(4, "big"))
    schemaless_writer(out, schema, datum)
    return out.getvalue()


def _load_event(**load: object) -> dict[str, object]:
    event = SAMPLES["LoadEvent"][0].model_dump()
    event["load"] = {**LOAD.model_dump(), **load}
    return event


def _agent_event(**profile: object) -> dict[str, object]:
    event = SAMPLES["AgentEvent"][0].model_dump()
    event["profile"] = {**PROFILE.model_dump(), **profile}
    return event


FAILURES = [
    # (case, bytes, expected name, reason, words in the detail)
    ("empty", b"", None, m.DeadLetterReason.BAD_FRAME, "(empty)"),
    ("json", b'{"load_id": 1}', None, m.DeadLetterReason.BAD_FRAME, "7b22"),
    ("short frame", b"\x00\x00\x00", None, m.DeadLetterReason.BAD_FRAME, "3 bytes"),
    (
        "unknown id",
        b"\x00\x00\x00\x30\x39" + GOOD[5:],
        None,
        m.DeadLetterReason.UNKNOWN_SCHEMA,
        "12345",
    ),
    (
        "unknown fingerprint",
        b"\xc3\x01" + b"\xff" * 8 + GOOD[5:],
        None,
        m.DeadLetterReason.UNKNOWN_SCHEMA,
        "ffffffffffffffff",
    ),
    (
        "wrong schema",
        GOOD,
        "AgentEvent",
        m.DeadLetterReason.WRONG_SCHEMA,
        "a LoadEvent record where AgentEvent",
    ),
    ("truncated", GOOD[:-4], None, m.DeadLetterReason.MALFORMED, "EOFError"),
    ("trailing", GOOD + b"\x00", None, m.DeadLetterReason.TRAILING_BYTES, "1 bytes after"),
    ("too large", b"\x00" + b"\x01" * (1024 * 1024), None, m.DeadLetterReason.TOO_LARGE, "cap"),
    ("unknown enum", GOOD[:8] + b"\x7e" + GOOD[9:], None, m.DeadLetterReason.MALFORMED, "Error"),
    (
        "negative capacity",
        _raw("AgentEvent", _agent_event(capacity=-1)),
        None,
        m.DeadLetterReason.INVALID,
        "profile.capacity",
    ),
    (
        "NaN in embedding",
        _raw("AgentEvent", _agent_event(personality=[0.1, math.nan])),
        None,
        m.DeadLetterReason.INVALID,
        "personality",
    ),
    (
        "infinite risk",
        _raw("LoadEvent", _load_event(risk_score=math.inf)),
        None,
        m.DeadLetterReason.INVALID,
        "load.risk_score",
    ),
    (
        "a risk past the bound",  # (an agent's sum of them rounded to infinity: out for good)
        _raw("LoadEvent", _load_event(risk_score=1.1e9)),
        None,
        m.DeadLetterReason.INVALID,
        "load.risk_score: Input should be less than or equal to 1000000000",
    ),
    (
        "a risk budget past the bound",
        _raw("AgentEvent", _agent_event(risk_budget=1e308)),
        None,
        m.DeadLetterReason.INVALID,
        "profile.risk_budget: Input should be less than or equal to 1000000000",
    ),
    (
        "deadline before created",
        _raw("LoadEvent", _load_event(deadline_ms=1)),
        None,
        m.DeadLetterReason.INVALID,
        "deadline_ms 1 is before created_at_ms",
    ),
    (
        "arrival without load",
        _raw("LoadEvent", {**_load_event(), "load": None}),
        None,
        m.DeadLetterReason.INVALID,
        "needs a load",
    ),
    (
        "cancel with a load",  # (the load would be dropped unread)
        _raw("LoadEvent", {**_load_event(), "kind": "CANCEL"}),
        None,
        m.DeadLetterReason.INVALID,
        "a CANCEL event carries no load",
    ),
    (
        "heartbeat with a profile",  # (the profile would be dropped unread)
        _raw("AgentEvent", {**_agent_event(), "kind": "HEARTBEAT"}),
        None,
        m.DeadLetterReason.INVALID,
        "a HEARTBEAT event carries no profile",
    ),
    (
        "empty id",
        _raw("Tick", {"pool": "", "event_time_ms": 1}),
        None,
        m.DeadLetterReason.INVALID,
        "pool",
    ),
    (
        "personality too wide",  # a pool's rows are as wide as its widest agent's
        _raw("AgentEvent", _agent_event(personality=[0.5] * 1025)),
        None,
        m.DeadLetterReason.INVALID,
        "profile.personality: List should have at most 1024 items",
    ),
    (
        "NUL in an id",  # decision ids join pool and load id with NUL
        _raw("LoadEvent", {**_load_event(), "load_id": "b\x00c"}),
        None,
        m.DeadLetterReason.INVALID,
        "load_id: String should match pattern",
    ),
    (
        "bidi override in an id",  # shows in logs as another id
        _raw("LoadEvent", {**_load_event(), "load_id": "load-\u202e1"}),
        None,
        m.DeadLetterReason.INVALID,
        "load_id: String should match pattern",
    ),
    (
        "an Avro int above 2^31-1",  # fastavro reads it; Java readers refuse it
        _raw("Assignment", {**SAMPLES["Assignment"][0].model_dump(), "attempt": 2**31}),
        None,
        m.DeadLetterReason.INVALID,
        "attempt: Input should be less than or equal to 2147483647",
    ),
]


@pytest.mark.parametrize(("case", "data", "expect", "reason", "words"), FAILURES,
                         ids=[f[0] for f in FAILURES])  # fmt: skip
def test_bad_bytes_become_one_codec_error(
    case: str, data: bytes, expect: str | None, reason: m.DeadLetterReason, words: str
) -> None:
    with pytest.raises(CodecError) as info:
        CODEC.decode(data, expect, topic="load-arrival", partition=2, offset=99)
    err = info.value
    assert err.reason is reason, f"{case}: {err}"
    assert words in err.detail, f"{case}: {err.detail}"
    assert (err.topic, err.partition, err.offset, err.raw) == ("load-arrival", 2, 99, data)
    assert str(err).startswith(f"load-arrival[2]@99: {reason.value}: ")


def test_enum_index_out_of_range_is_malformed_not_a_crash() -> None:
    # After the 5-byte frame and the key "k1" (length byte + 2 bytes) comes the kind's index.
    assert GOOD[5:9] == b"\x04k1\x00"  # zigzag 0: ARRIVAL
    for index in (b"\x7e", b"\x03", b"\x04"):  # 63, -2, and 2 (one past CANCEL)
        with pytest.raises(CodecError) as info:
            CODEC.decode(GOOD[:8] + index + GOOD[9:])
        assert info.value.reason is m.DeadLetterReason.MALFORMED


def test_dead_letter_records_where_why_and_what() -> None:
    bad = GOOD + b"junk"
    with pytest.raises(CodecError) as info:
        CODEC.decode(bad, "LoadEvent", topic="load-arrival", partition=3, offset=12)
    dl = dead_letter(info.value, failed_at_ms=5, source_key=b"pool-a", source_timestamp_ms=4)
    assert (dl.source_topic, dl.source_partition, dl.source_offset) == ("load-arrival", 3, 12)
    assert dl.reason is m.DeadLetterReason.TRAILING_BYTES
    assert dl.payload == bad
    assert dl.payload_size == len(bad)
    assert dl.payload_sha256 == hashlib.sha256(bad).hexdigest()
    assert CODEC.decode(CODEC.encode(dl), "DeadLetter") == dl  # the dead letter is itself a record


def test_dead_letter_of_a_huge_record_keeps_only_its_hash() -> None:
    huge = b"\x00" + bytes(2 * 1024 * 1024)
    with pytest.raises(CodecError) as info:
        CODEC.decode(huge)
    dl = dead_letter(info.value, failed_at_ms=1)
    assert dl.payload is None
    assert dl.payload_size == len(huge)
    assert dl.payload_sha256 == hashlib.sha256(huge).hexdigest()


def test_embeddings_are_float32_so_a_record_equals_itself_after_a_round_trip() -> None:
    event = SAMPLES["LoadEvent"][0].model_copy()
    made = m.LoadSpec.model_validate({**LOAD.model_dump(), "intent": [0.1, 1 / 3]})
    assert made.intent != [0.1, 1 / 3]  # rounded to 32-bit on the way in
    event = event.model_copy(update={"load": made})
    assert CODEC.decode(CODEC.encode(event)) == event
    assert CODEC.decode(CODEC.encode(event, framing=SINGLE_OBJECT)) == event


@pytest.mark.parametrize(
    ("timestamp", "kept"),
    [(None, None), (-1, None), (0, 0), (2**53, 2**53), (2**53 + 1, None), (2**63, None)],
)
def test_dead_letter_leaves_out_a_source_timestamp_it_cannot_hold(
    timestamp: int | None, kept: int | None
) -> None:
    # A poison record with a far-future Kafka timestamp must still be dead-lettered:
    # raising here would wedge the consumer on it for good.
    error = CodecError(m.DeadLetterReason.BAD_FRAME, "x", b"", topic="t", partition=0, offset=1)
    dl = dead_letter(error, failed_at_ms=5, source_timestamp_ms=timestamp)
    assert dl.source_timestamp_ms == kept
    assert CODEC.decode(CODEC.encode(dl), "DeadLetter") == dl


def test_dead_letter_cuts_a_topic_name_longer_than_kafka_allows() -> None:
    error = CodecError(m.DeadLetterReason.BAD_FRAME, "x", b"", topic="t" * 300, partition=0)
    dl = dead_letter(error, failed_at_ms=5)
    assert dl.source_topic == "t" * 249
    assert CODEC.decode(CODEC.encode(dl), "DeadLetter") == dl


@pytest.mark.parametrize(("partition", "offset"), [(-2, -2), (2**31, 2**63), (-(2**40), 2**64)])
def test_dead_letter_records_an_impossible_position_as_unknown(partition: int, offset: int) -> None:
    error = CodecError(m.DeadLetterReason.BAD_FRAME, "x", b"", partition=partition, offset=offset)
    dl = dead_letter(error, failed_at_ms=5)
    assert (dl.source_topic, dl.source_partition, dl.source_offset) == ("?", -1, -1)
    assert CODEC.decode(CODEC.encode(dl), "DeadLetter") == dl


@pytest.mark.parametrize(
    ("name", "path", "most"),
    [
        ("AgentEvent", ("seq",), 2**63 - 1),  # Avro long
        ("Assignment", ("attempt",), 2**31 - 1),  # Avro int
        ("DecisionRecord", ("attempt",), 2**31 - 1),
        ("DecisionRecord", ("input", "partition"), 2**31 - 1),
        ("DecisionRecord", ("input", "offset"), 2**63 - 1),
        ("DeadLetter", ("source_partition",), 2**31 - 1),
        ("DeadLetter", ("source_offset",), 2**63 - 1),
        ("PolicyUpdate", ("document", "backpressure", "max_pending"), 2**31 - 1),
    ],
)
def test_models_refuse_integers_their_avro_type_cannot_carry(
    name: str, path: tuple[str, ...], most: int
) -> None:
    # Else an int field is written that Java readers refuse, or encode fails with an
    # OverflowError for a long field, far from where the value came in.
    datum = SAMPLES[name][0].model_dump()
    *parents, field = path
    inner = datum
    for key in parents:
        inner = inner[key]
    for value in (most + 1, 2**64):
        inner[field] = value
        with pytest.raises(ValidationError, match=f"less than or equal to {most}"):
            MODELS[name].model_validate(datum)
    inner[field] = most
    record = MODELS[name].model_validate(datum)
    assert CODEC.decode(CODEC.encode(record), name) == record


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\u200b", "\u200e", "\u200f",
     "\u2028", "\u2029", "\u202a", "\u202e", "\u2066", "\u2069", "\ufeff"],
)  # fmt: skip
def test_ids_and_names_refuse_control_and_invisible_characters(char: str) -> None:
    # Decision ids join ids with NUL; and two ids that look alike in a log (a zero-width
    # space, a BOM) or read backwards (a bidi override) are not to be told apart by eye.
    tick = {"pool": f"pool{char}a", "event_time_ms": 1}
    with pytest.raises(ValidationError, match="String should match pattern"):
        m.Tick.model_validate(tick)
    with pytest.raises(CodecError) as info:
        CODEC.decode(_raw("Tick", tick), "Tick")
    assert info.value.reason is m.DeadLetterReason.INVALID


@pytest.mark.parametrize("name", ["pool-a", "Zürich", "東京", "pool \U0001d11e", "a\u00a0b", "é"])
def test_ids_and_names_may_be_any_other_printable_text(name: str) -> None:
    assert m.Tick(pool=name, event_time_ms=1).pool == name


def test_a_record_of_an_older_version_decodes_after_a_union_branch_was_renamed(
    tmp_path: Path,
) -> None:
    # schemas/README.md rule 6 allows renaming a record with an alias; the records written
    # before must still read (the canonical check wrote them with the new branch name).
    old = Codec().encode(SAMPLES["AgentEvent"][0])
    shutil.copytree(SCHEMA_DIR, tmp_path, dirs_exist_ok=True)
    doc = json.loads((tmp_path / "AgentEvent.avsc").read_text())
    (profile,) = [f for f in doc["fields"] if f["name"] == "profile"]
    branch = profile["type"][1]
    branch["aliases"], branch["name"] = [branch["name"]], branch["name"] + "V2"
    (tmp_path / "AgentEvent.avsc").write_text(json.dumps(doc))
    (added,) = SchemaRegistry(tmp_path).register()
    codec = Codec(SchemaRegistry(tmp_path))
    assert codec.decode(old, "AgentEvent") == SAMPLES["AgentEvent"][0]
    assert codec.encode(SAMPLES["AgentEvent"][0])[1:5] == added.id.to_bytes(4, "big")
