"""A policy from a YAML file: any field of ``dispatcher.core.Policy`` by name.

    version: 2
    mode: batched
    weights: {embedding: 2.0}      # the other weights keep the base policy's values
    tenant_weights: {acme: 3}      # the other tenants keep theirs (the scenario's)

A field the file leaves out keeps the base policy's value; so does each entry
of a mapping field (``weights``, ``tenant_weights``, ``tenant_quotas``,
``tenant_deny``) the file leaves out: to turn a score term off, give it 0.
(A ``policy publish`` document differs: its ``weights`` are the whole set.)
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from dispatcher.core import Policy
from dispatcher.core.policy import policy_problems
from dispatcher.errors import ConfigError
from dispatcher.yamlfile import load_yaml

__all__ = ["load_policy"]

_MERGED = ("weights", "tenant_weights", "tenant_quotas", "tenant_deny")


def load_policy(path: Path, base: Policy) -> Policy:
    """``base`` with the fields the file sets, mapping fields merged over ``base``'s (see
    the module docstring), checked as a worker checks a policy (``core.policy_problems``).

    Raises:
        ConfigError: unreadable file, unknown field, a value of the wrong kind, or a
            policy no dispatcher should run (every problem named).
    """
    try:
        doc = load_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the policy: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a policy file is a mapping of Policy fields")
    if odd := [k for k in doc if not isinstance(k, str)]:  # (YAML keys can be anything)
        said = ", ".join(yaml.safe_dump(k).removesuffix("\n...\n").strip() for k in odd)
        raise ConfigError(f"{path}: a policy field is named by a word, not by {said}")
    fields = {f.name: f for f in dataclasses.fields(Policy) if f.init}
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        # (the published format names them otherwise: matching_mode, timeouts_ms, ...)
        raise ConfigError(
            f"{path}: unknown policy field(s): {', '.join(unknown)}; the fields are "
            f"{', '.join(sorted(fields))} (`simulate --policy` also takes a whole policy "
            "file as `policy publish` does, with policy_id, version, author and document: "
            "ops/policies/example.yaml)"
        )
    types = typing.get_type_hints(Policy)
    values: dict[str, Any] = {}
    for name, value in doc.items():
        try:  # (a list becomes a frozenset, "10" an int; a value of another kind is refused)
            values[name] = TypeAdapter(types[name]).validate_python(value)
        except ValidationError as exc:
            problem = "; ".join(_said(e) for e in exc.errors())
            raise ConfigError(f"{path}: {name}: {problem}") from exc
        if name in _MERGED:
            over: Mapping[str, Any] = getattr(base, name)
            values[name] = {**over, **values[name]}
    try:
        policy = dataclasses.replace(base, **values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if problems := policy_problems(policy):
        raise ConfigError(f"{path}: {'; '.join(problems)}")
    return policy


def _said(error: Any) -> str:
    """A pydantic error; for a key of a mapping, which key."""
    loc = error["loc"]
    return f"key {loc[0]!r}: {error['msg']}" if loc[-1:] == ("[key]",) else str(error["msg"])
