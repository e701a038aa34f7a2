"""Policy files: read, check, and publish a version (``dispatcher policy ...``).

A policy file is YAML holding what a PolicyUpdate carries, less what publishing
adds (effective time, content hash):

    policy_id: dispatch
    version: 3
    author: ops
    document: {matching_mode: GREEDY, batch_window_ms: 50, weights: {...}, ...}

See ops/policies/example.yaml.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dispatcher.codecs import models as m
from dispatcher.codecs.adapt import policy_problems as problems
from dispatcher.codecs.codec import Codec, CodecError
from dispatcher.codecs.signing import content_hash, sign, verify
from dispatcher.errors import ConfigError, Where, validation_problems
from dispatcher.reading import partitions, read_partition
from dispatcher.sdk.producer import DispatcherProducer, now_ms
from dispatcher.topics import TopicNames
from dispatcher.yamlfile import load_yaml

__all__ = [
    "checked_policy_file",
    "current_version",
    "load_policy_file",
    "problems",
    "publish",
    "signed",
]


def load_policy_file(path: Path, *, effective_from_ms: int | None = None) -> m.PolicyUpdate:
    """The PolicyUpdate a policy file describes (schema checks only).

    Raises:
        ConfigError: unreadable file, not YAML, or not a valid policy.
    """
    try:
        doc = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the policy: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("document"), dict):
        raise ConfigError(f"{path}: a policy file maps policy_id, version, author and document")
    # Strictly, as JSON: lax validation read `version: true` as version 1, "3" as 3 and
    # 50.0 ms as 50 (enum names and lists of names stay as YAML writes them).
    head = {k: v for k, v in doc.items() if k != "document"}
    document = None
    try:
        document = m.PolicyDocument.model_validate_json(_json(path, doc["document"]), strict=True)
        return m.PolicyUpdate.model_validate_json(_json(path, {
            **head, "document": document.model_dump(mode="json"),
            "effective_from_ms": now_ms() if effective_from_ms is None else effective_from_ms,
            "content_hash": content_hash(document),
        }), strict=True)  # fmt: skip
    except ValidationError as exc:
        where: Where = ("document",) if document is None else ()
        found = "\n  ".join(validation_problems(exc, under=where))
        raise ConfigError(f"{path}: not a valid policy:\n  {found}") from exc


def checked_policy_file(path: Path, *, effective_from_ms: int | None = None) -> m.PolicyUpdate:
    """``load_policy_file``, and refused if it has a semantic problem (``problems``: every
    worker would refuse it).

    Raises:
        ConfigError: as ``load_policy_file``, or its semantic problems (named as the
            schema's are, one line each).
    """
    update = load_policy_file(path, effective_from_ms=effective_from_ms)
    if found := problems(update):
        raise ConfigError(f"{path}: not a valid policy:\n  " + "\n  ".join(found))
    return update


def _json(path: Path, value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:  # a date, a set, NaN: no policy value is one
        raise ConfigError(f"{path}: not a valid policy: {exc}") from exc


def signed(
    update: m.PolicyUpdate, keys: Mapping[str, bytes], key_id: str | None = None
) -> m.PolicyUpdate:
    """``update`` signed with key ``key_id`` of ``keys`` (with the only key when None);
    unchanged when there are no keys and no key id.

    Raises:
        ConfigError: ``key_id`` is not among ``keys``, or several keys and none chosen.
    """
    if not keys and key_id is None:
        return update
    if key_id is None:
        if len(keys) > 1:
            raise ConfigError(f"choose the signing key with --key-id: one of {sorted(keys)}")
        (key_id,) = keys
    if key_id not in keys:
        raise ConfigError(f"no policy key {key_id!r} in DISPATCHER_POLICY_KEYS")
    return sign(update, key_id, keys[key_id])


async def current_version(bootstrap: str, topics: TopicNames) -> int | None:
    """The newest policy version on the policy topic, whatever its ``policy_id`` (workers
    order every policy by version alone), or None.

    Policies the workers refused for want of a key (unsigned, say) count too:
    which ones they applied depends on the keys each held at the time, and a
    version below one they applied would be ignored. A refused version is
    simply skipped. Those every worker refuses whatever its keys (a content
    hash that is not its document's, a semantic problem) do not count: one such
    record with a high version blocked every later publish.
    """
    codec, newest = Codec(), None
    for tp in await partitions(bootstrap, topics.policy_update):
        for r in await read_partition(bootstrap, tp):
            try:
                rec = codec.decode(r.value or b"", "PolicyUpdate")
                written = codec.field_digest(r.value or b"", "document")
            except CodecError:
                continue  # dead-lettered by the worker
            if not isinstance(rec, m.PolicyUpdate) or verify(rec, {}, written=written):
                continue  # (without keys, verify checks the content hash alone)
            if not problems(rec):
                newest = max(newest or 0, rec.version)
    return newest


async def publish(
    bootstrap: str, topics: TopicNames, update: m.PolicyUpdate,
    keys: Mapping[str, bytes] | None = None,
) -> tuple[int, int]:  # fmt: skip
    """Publishes ``update`` after checking it (workers holding ``keys`` must accept it) and
    that its version is newer than every one published.

    Raises:
        ConfigError: semantic problems, a wrong hash or signature, or a version not
            newer than the current one.
    """
    found = problems(update)
    refused = verify(update, keys or {})
    if refused is not None:
        found.append(f"workers would refuse it: {refused}")
    if found:
        raise ConfigError("refusing an invalid policy:\n  " + "\n  ".join(found))
    current = await current_version(bootstrap, topics)
    if current is not None and update.version <= current:
        raise ConfigError(
            f"refusing version {update.version} of {update.policy_id}: version {current} "
            "is already published (versions only move forward)"
        )
    async with DispatcherProducer(bootstrap, topics=topics) as producer:
        return await producer.publish_policy(update)
