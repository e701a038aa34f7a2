"""Policy integrity and signatures: what a worker holding keys applies, and what it refuses."""

from __future__ import annotations

import io

import pytest
from fastavro import schemaless_writer

from dispatcher.codecs import Codec
from dispatcher.codecs import models as m
from dispatcher.codecs.signing import content_hash, sign, verify
from dispatcher.demo import policy_update
from dispatcher.errors import ConfigError
from dispatcher.policytool import signed
from dispatcher.settings import Settings

KEYS = {"ops": b"0123456789abcdef0123456789abcdef", "ci": b"fedcba9876543210fedcba9876543210"}


def test_a_signed_policy_verifies_after_the_round_trip_through_the_codec() -> None:
    update = sign(policy_update(3), "ops", KEYS["ops"])
    codec = Codec()
    back = codec.decode(codec.encode(update), "PolicyUpdate")
    assert isinstance(back, m.PolicyUpdate)
    assert verify(back, KEYS) is None
    assert verify(back, {"ops": KEYS["ops"]}) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"version": 4}, "signature by key 'ops' does not match"),
        ({"author": "mallory"}, "signature by key 'ops' does not match"),
        ({"effective_from_ms": 1}, "signature by key 'ops' does not match"),
        ({"signature_key_id": "ci"}, "signature by key 'ci' does not match"),
        ({"signature_key_id": "old"}, "signed with key 'old', not one of 'ci', 'ops'"),
        ({"signature": None}, "unsigned, and this worker applies only policies signed by"),
    ],
)
def test_a_changed_policy_or_signature_is_refused(change: dict[str, object], problem: str) -> None:
    update = sign(policy_update(3), "ops", KEYS["ops"]).model_copy(update=change)
    found = verify(update, KEYS)
    assert found is not None
    assert problem in found


def test_the_content_hash_binds_the_document_with_or_without_keys() -> None:
    update = sign(policy_update(3), "ops", KEYS["ops"])
    doc = update.document.model_copy(update={"batch_window_ms": 999})
    forged = update.model_copy(update={"document": doc})  # same hash, same signature
    for keys in (KEYS, {}):
        assert verify(forged, keys) == "its content_hash is not the SHA-256 of its document"
    # and re-hashing the forged document breaks the signature instead
    rehashed = forged.model_copy(update={"content_hash": content_hash(doc)})
    assert "does not match" in (verify(rehashed, KEYS) or "")
    assert verify(rehashed, {}) is None  # without keys, any consistent policy applies


def test_publishing_signs_with_the_only_key_or_the_chosen_one() -> None:
    plain = policy_update(3)
    assert signed(plain, {}) is plain
    assert signed(plain, {"ops": KEYS["ops"]}).signature_key_id == "ops"
    assert signed(plain, KEYS, "ci").signature_key_id == "ci"
    with pytest.raises(ConfigError, match="--key-id"):
        signed(plain, KEYS)
    with pytest.raises(ConfigError, match="no policy key 'nope'"):
        signed(plain, KEYS, "nope")


def test_keys_come_from_the_environment() -> None:
    raw = " ops = 0123456789abcdef0123456789abcdef , ci=fedcba9876543210fedcba9876543210 "
    assert Settings.from_env({"DISPATCHER_POLICY_KEYS": raw}).policy_keys == KEYS
    assert Settings.from_env({}).policy_keys == {}
    for bad, problem in (("ops", "is not id=secret"), ("=abcdefabcdefabcdef", "is not id="),
                         ("ops=short", "fewer than 16 bytes"),
                         ("a=0123456789abcdef,a=0123456789abcdef", "given twice"),
                         ("k" * 129 + "=0123456789abcdef", "longer than 128")):  # fmt: skip
        with pytest.raises(ConfigError, match=problem):
            Settings.from_env({"DISPATCHER_POLICY_KEYS": bad})


def test_a_policy_written_with_an_older_schema_is_hashed_as_written() -> None:
    # The content hash covers the document's Avro encoding under the writer's schema: a
    # producer on schema 6 (before the newer document fields) hashes what it wrote, and
    # the worker, which reads the record resolved to the current schema, checks that.
    codec = Codec()
    old = codec.registry.by_id[6]
    assert old.name == "PolicyUpdate"
    (doc_schema,) = [f["type"] for f in old.parsed["fields"] if f["name"] == "document"]
    known = {f["name"] for f in doc_schema["fields"]}
    datum = policy_update(2).model_dump()
    datum["document"] = {k: v for k, v in datum["document"].items() if k in known}
    assert len(datum["document"]) < len(policy_update(2).document.model_dump())

    def framed(d: dict[str, object]) -> bytes:
        out = io.BytesIO()
        schemaless_writer(out, old.parsed, d)
        return b"\x00" + old.id.to_bytes(4, "big") + out.getvalue()

    datum["content_hash"] = codec.field_digest(framed(datum), "document")
    data = framed(datum)
    rec = codec.decode(data, "PolicyUpdate")
    assert isinstance(rec, m.PolicyUpdate)
    written = codec.field_digest(data, "document")
    assert content_hash(rec.document) != rec.content_hash  # the current encoding differs
    assert verify(rec, {}, written=written) is None
    assert verify(sign(rec, "ops", KEYS["ops"]), KEYS, written=written) is None
    assert verify(rec, {}) is not None  # hashed as if written now, it would not match
