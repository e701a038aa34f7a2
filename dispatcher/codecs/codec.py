"""Encode edge models to framed Avro and decode untrusted bytes strictly.

Wire formats, told apart by the first byte:

- Confluent: ``00`` + 4-byte big-endian schema id + Avro body (what Kafka
  tools and schema registries read); the id comes from schemas/registry.json.
- Avro single-object: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + body.

Decoding is bounded: a size cap first; then, since no schema repeats an
item that encodes to zero bytes (a test holds that), a declared count of N
items needs N bytes, so work is linear in the capped size however large the
counts a hostile record declares. Every failure is one ``CodecError``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from typing import Any, Literal

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import ValidationError

from dispatcher.codecs import models
from dispatcher.codecs.models import DeadLetter, DeadLetterReason, Record
from dispatcher.codecs.schemas import SCHEMA_DIR, RegisteredSchema, SchemaRegistry
from dispatcher.errors import DispatcherError

__all__ = ["CONFLUENT", "MAX_RECORD_BYTES", "SINGLE_OBJECT", "Codec", "CodecError", "dead_letter"]

CONFLUENT: Literal["confluent"] = "confluent"
SINGLE_OBJECT: Literal["single-object"] = "single-object"
MAX_RECORD_BYTES = 1024 * 1024
_CONFLUENT_MAGIC = 0
_SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_DEAD_LETTER_PAYLOAD_CAP = 64 * 1024

MODELS: dict[str, type[Record]] = {
    "AgentEvent": models.AgentEvent,
    "LoadEvent": models.LoadEvent,
    "TaskResult": models.TaskResult,
    "Tick": models.Tick,
    "PolicyUpdate": models.PolicyUpdate,
    "Assignment": models.Assignment,
    "DecisionRecord": models.DecisionRecord,
    "DeadLetter": models.DeadLetter,
}


class CodecError(DispatcherError):
    """Raised when bytes from a topic cannot be decoded or validated.

    Attributes:
        reason: the dead-letter reason code.
        detail: what was wrong, for a human.
        raw: the bytes as received.
        topic, partition, offset: where they came from ('' / -1 when unknown).
    """

    def __init__(
        self,
        reason: DeadLetterReason,
        detail: str,
        raw: bytes,
        *,
        topic: str = "",
        partition: int = -1,
        offset: int = -1,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.raw = raw
        self.topic = topic
        self.partition = partition
        self.offset = offset
        where = f"{topic or '?'}[{partition}]@{offset}"
        super().__init__(f"{where}: {reason.value}: {detail}")


def _summarise(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(x) for x in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class Codec:
    """Encodes and decodes every record of schemas/; safe to share, holds no per-call state."""

    def __init__(
        self, registry: SchemaRegistry | None = None, *, max_bytes: int = MAX_RECORD_BYTES
    ):
        self.registry = registry or SchemaRegistry(SCHEMA_DIR)
        self.max_bytes = max_bytes
        # Current schemas as written (with defaults), the reader side of evolution.
        self._current: dict[str, Any] = {}
        for name in MODELS:
            text = (self.registry.directory / f"{name}.avsc").read_text()
            self._current[name] = parse_schema(json.loads(text), named_schemas={})
        self._by_model = {model: name for name, model in MODELS.items()}
        self._field_schemas: dict[tuple[int, str], Any] = {}  # (id(schema), field) -> parsed
        self._union_records: dict[int, dict[str, str]] = {}  # id(schema) -> its hints

    def writer_schema(self, name: str) -> RegisteredSchema:
        """The registered version writers use now for record ``name``."""
        return self.registry.latest[name]

    def encode(
        self, record: Record, *, framing: Literal["confluent", "single-object"] = CONFLUENT
    ) -> bytes:
        """Frames and encodes a validated edge model."""
        return self.encode_datum(self._by_model[type(record)], record.model_dump(),
                                 framing=framing)  # fmt: skip

    def encode_datum(
        self, name: str, datum: dict[str, Any],
        *, framing: Literal["confluent", "single-object"] = CONFLUENT,
    ) -> bytes:  # fmt: skip
        """Frames and encodes record ``name`` from the datum its model would dump, unchecked:
        for records made by our own code (``encode`` validates through the model)."""
        reg = self.registry.latest[name]
        if framing == CONFLUENT:
            head = bytes([_CONFLUENT_MAGIC]) + reg.id.to_bytes(4, "big")
        else:
            head = _SINGLE_OBJECT_MAGIC + reg.fingerprint
        return head + self._write(self._current[name], datum)

    def _write(self, schema: Any, datum: dict[str, Any]) -> bytes:
        # Name the branch of ["null", record] unions, so fastavro need not try
        # each branch against the datum (about 7 us a record): by the names of
        # ``schema``, which for an older writer may not be the current ones.
        hints = self.hints(schema)
        if hints:
            datum = dict(datum)
            for field, branch in hints.items():
                if datum.get(field) is not None:
                    datum[field] = (branch, datum[field])
        out = io.BytesIO()
        schemaless_writer(out, schema, datum)
        return out.getvalue()

    def hints(self, schema: Any) -> dict[str, str]:
        """The fields of ``schema`` holding a ["null", record] union, with the record's name
        (as ``schema`` spells it: an older writer's may differ from the current one's)."""
        hints = self._union_records.get(id(schema))
        if hints is None:
            hints = self._union_records[id(schema)] = {
                f["name"]: branch["name"]
                for f in schema["fields"]
                if isinstance(f["type"], list)
                for branch in f["type"]
                if isinstance(branch, dict) and branch.get("type") == "record"
            }
        return hints

    def field_digest(self, data: bytes, field: str) -> str:
        """The hex SHA-256 of the canonical (Avro binary) encoding of field ``field`` of the
        framed record ``data``, under the schema it was written with: what a PolicyUpdate's
        ``content_hash`` holds for its document, computable in any language.

        Raises:
            CodecError: ``data`` is not a framed record that has ``field``.
        """

        def fail(reason: DeadLetterReason, detail: str) -> CodecError:
            return CodecError(reason, detail, bytes(data))

        writer, start = self._framing(data, fail)
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            raw: Any = schemaless_reader(buf, writer.parsed, None)
            value = raw[field]
        except Exception as exc:  # as in decode: fastavro raises many kinds
            raise fail(DeadLetterReason.MALFORMED, f"no {field} to hash: {exc}"[:500]) from exc
        return self._digest(writer.parsed, field, value)

    def datum_digest(self, name: str, field: str, value: Any) -> str:
        """``field_digest`` of a record ``name`` written now, whose ``field`` is ``value``
        (as its model dumps it)."""
        return self._digest(self._current[name], field, value)

    def _digest(self, schema: Any, field: str, value: Any) -> str:
        key = (id(schema), field)
        sub = self._field_schemas.get(key)
        if sub is None:
            (ftype,) = [f["type"] for f in schema["fields"] if f["name"] == field]
            sub = self._field_schemas[key] = parse_schema(ftype, named_schemas={})
        out = io.BytesIO()
        schemaless_writer(out, sub, value)
        return hashlib.sha256(out.getvalue()).hexdigest()

    def decode(
        self,
        data: bytes,
        expect: str | None = None,
        *,
        topic: str = "",
        partition: int = -1,
        offset: int = -1,
        trusted: bool = False,
    ) -> Record:
        """Decodes and validates bytes from a topic.

        Args:
            data: the record value as received.
            expect: the record name the topic carries (topics.yaml's value_schema);
                a record of another name is refused.
            topic, partition, offset: where the bytes came from, for the error.
            trusted: the bytes were decoded strictly before (the worker's input
                sequence holds only such): skips the canonical-encoding check.

        Raises:
            CodecError: with a reason code for every way the bytes can be wrong.
        """

        def fail(reason: DeadLetterReason, detail: str) -> CodecError:
            return CodecError(
                reason, detail, bytes(data), topic=topic, partition=partition, offset=offset
            )

        size = len(data)
        if size > self.max_bytes:
            raise fail(
                DeadLetterReason.TOO_LARGE, f"{size} bytes, more than the {self.max_bytes} cap"
            )
        writer, start = self._framing(data, fail)
        if expect is not None and writer.name != expect:
            raise fail(
                DeadLetterReason.WRONG_SCHEMA, f"a {writer.name} record where {expect} belongs"
            )
        latest = self.registry.latest[writer.name]
        writer_schema = self._current[writer.name] if writer is latest else writer.parsed
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            raw = schemaless_reader(buf, writer_schema, None)
        except Exception as exc:  # fastavro raises EOFError, IndexError, MemoryError, ...
            detail = f"not a valid {writer.name} body: {type(exc).__name__}: {exc}"
            raise fail(DeadLetterReason.MALFORMED, detail[:500]) from exc
        if not isinstance(raw, dict):  # every schema of ours is a record
            raise fail(DeadLetterReason.MALFORMED, f"{writer.name} did not decode to a record")
        if buf.tell() != size:
            detail = f"{size - buf.tell()} bytes after a complete {writer.name}"
            raise fail(DeadLetterReason.TRAILING_BYTES, detail)
        # fastavro indexes enum symbols and union branches the Python way, so a
        # negative index on the wire decodes as a symbol counted from the end.
        # Requiring the one canonical encoding refuses that and any other
        # ambiguity (non-minimal varints, split blocks).
        if not trusted and not self._canonical(writer_schema, raw, memoryview(data)[start:]):
            detail = f"not the canonical Avro encoding of a {writer.name} (bad index or padding)"
            raise fail(DeadLetterReason.MALFORMED, detail)
        if writer is not latest:  # an older version: resolve it to the current schema
            buf.seek(start)
            try:
                raw = schemaless_reader(buf, writer.parsed, self._current[writer.name])
            except Exception as exc:  # e.g. SchemaResolutionError: versions not compatible
                detail = f"schema id {writer.id} does not resolve to the current {writer.name}"
                raise fail(DeadLetterReason.INVALID, f"{detail}: {exc}"[:500]) from exc
        try:
            return MODELS[writer.name].model_validate(raw)
        except ValidationError as exc:
            raise fail(DeadLetterReason.INVALID, f"{writer.name}: {_summarise(exc)}") from exc

    def _canonical(self, schema: Any, raw: dict[str, Any], body: memoryview) -> bool:
        """Whether ``body`` is what writing ``raw``, decoded from it, gives again (anything
        that fails to write is not)."""
        try:
            return self._write(schema, raw) == body
        except (ValueError, TypeError, OverflowError):  # what fastavro raises on such data
            return False

    def _framing(
        self, data: bytes, fail: Callable[[DeadLetterReason, str], CodecError]
    ) -> tuple[RegisteredSchema, int]:
        """The writer schema a frame names, and where the Avro body starts."""
        size = len(data)
        writer: RegisteredSchema | None
        if size >= 5 and data[0] == _CONFLUENT_MAGIC:
            schema_id, start = int.from_bytes(data[1:5], "big"), 5
            writer = self.registry.by_id.get(schema_id)
            if writer is None:
                raise fail(
                    DeadLetterReason.UNKNOWN_SCHEMA, f"schema id {schema_id} is not registered"
                )
        elif size >= 10 and data[:2] == _SINGLE_OBJECT_MAGIC:
            writer, start = self.registry.by_fingerprint.get(bytes(data[2:10])), 10
            if writer is None:
                raise fail(
                    DeadLetterReason.UNKNOWN_SCHEMA,
                    f"schema fingerprint {bytes(data[2:10]).hex()} is not registered",
                )
        else:
            raise fail(
                DeadLetterReason.BAD_FRAME,
                f"{size} bytes starting {bytes(data[:2]).hex() or '(empty)'}: neither "
                "Confluent (00 + schema id) nor single-object (c3 01) framing",
            )
        return writer, start


def dead_letter(
    error: CodecError,
    *,
    failed_at_ms: int,
    source_key: bytes | None = None,
    source_timestamp_ms: int | None = None,
) -> DeadLetter:
    """The dead-letter record for a decode failure: where, why, and the bytes (or their hash).

    Never refuses what Kafka hands over about the source record (a poison record that
    could not be dead-lettered would stop its consumer for good): a timestamp out of the
    record's range (Kafka's -1 "none", or far in the future) is left out, a topic name too
    long is cut, and an impossible partition or offset is recorded as unknown (-1).
    """
    raw = error.raw
    ts = source_timestamp_ms
    return DeadLetter(
        source_topic=error.topic[: models.MAX_TOPIC_CHARS] or "?",
        source_partition=error.partition if -1 <= error.partition <= models.INT_MAX else -1,
        source_offset=error.offset if -1 <= error.offset <= models.LONG_MAX else -1,
        source_timestamp_ms=ts if ts is not None and 0 <= ts <= models.MAX_EPOCH_MS else None,
        source_key=source_key[:4096] if source_key is not None else None,
        reason=error.reason,
        error=error.detail[:2000],
        payload=raw if len(raw) <= _DEAD_LETTER_PAYLOAD_CAP else None,
        payload_sha256=hashlib.sha256(raw).hexdigest(),
        payload_size=len(raw),
        failed_at_ms=failed_at_ms,
    )
