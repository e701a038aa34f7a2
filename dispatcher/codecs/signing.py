"""Policy integrity and signatures.

A policy changes every decision after it, so a worker applies a PolicyUpdate
only when its ``content_hash`` is the SHA-256 of its document's canonical
(Avro binary) encoding and, when the worker holds policy keys
(``DISPATCHER_POLICY_KEYS``), when it carries a valid HMAC-SHA256 signature
by one of them. The signature covers the policy id, version, author,
effective time and the content hash (so the document too). Keys have ids, so
a new key can be added before the old one is retired.

The check happens once, where policies enter the input sequence (the worker's
sequencer); the sequence holds only policies that passed it, so replaying it
(audit, what-if) needs no key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Mapping

from dispatcher.codecs import models as m
from dispatcher.codecs.codec import Codec

__all__ = ["content_hash", "sign", "verify"]

_DOMAIN = b"dispatcher-policy-v1\0"  # a signature over anything else never verifies here


@functools.cache
def _codec() -> Codec:
    return Codec()


def content_hash(document: m.PolicyDocument) -> str:
    """The ``content_hash`` of a PolicyUpdate written now with ``document``: the hex SHA-256
    of the document's canonical (Avro binary) encoding under the current schema (what
    the schema's doc says; a producer in any language can compute it)."""
    return _codec().datum_digest("PolicyUpdate", "document", document.model_dump())


def _signed_bytes(update: m.PolicyUpdate) -> bytes:
    # A JSON array: no two different field tuples give the same bytes.
    parts = [update.policy_id, update.version, update.author, update.effective_from_ms,
             update.content_hash]  # fmt: skip
    return _DOMAIN + json.dumps(parts, separators=(",", ":")).encode()


def _mac(key: bytes, update: m.PolicyUpdate) -> bytes:
    return hmac.new(key, _signed_bytes(update), hashlib.sha256).digest()


def sign(update: m.PolicyUpdate, key_id: str, key: bytes) -> m.PolicyUpdate:
    """``update`` signed with ``key`` (named ``key_id``)."""
    return update.model_copy(update={"signature": _mac(key, update), "signature_key_id": key_id})


def verify(
    update: m.PolicyUpdate, keys: Mapping[str, bytes], *, written: str | None = None
) -> str | None:
    """What is wrong with ``update`` for a worker holding ``keys``, or None.

    ``written``: the hash of its document as written (``Codec.field_digest`` of
    the record's bytes: an older schema encodes it differently); default: as
    it would be written now. Without keys, only the content hash is checked
    (and any signature ignored).
    """
    if (written or content_hash(update.document)) != update.content_hash:
        return "its content_hash is not the SHA-256 of its document"
    if not keys:
        return None
    if update.signature is None or update.signature_key_id is None:
        return f"unsigned, and this worker applies only policies signed by {_names(keys)}"
    key = keys.get(update.signature_key_id)
    if key is None:
        return f"signed with key {update.signature_key_id!r}, not one of {_names(keys)}"
    if not hmac.compare_digest(_mac(key, update), update.signature):
        return f"its signature by key {update.signature_key_id!r} does not match its content"
    return None


def _names(keys: Mapping[str, bytes]) -> str:
    return ", ".join(repr(k) for k in sorted(keys))
