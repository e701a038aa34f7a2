"""A policy from a YAML file: any field of ``dispatcher.core.Policy`` by name."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from dispatcher.core import Policy
from dispatcher.errors import ConfigError

__all__ = ["load_policy"]


def load_policy(path: Path, base: Policy) -> Policy:
    """``base`` with the fields the file sets.

    Raises:
        ConfigError: unreadable file, unknown field, or a value of the wrong kind.
    """
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the policy: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a policy file is a mapping of Policy fields")
    fields = {f.name: f for f in dataclasses.fields(Policy) if f.init}
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown policy field(s): {', '.join(unknown)}")
    types = typing.get_type_hints(Policy)
    values: dict[str, Any] = {}
    for name, value in doc.items():
        try:  # (a list becomes a frozenset, "10" an int; a value of another kind is refused)
            values[name] = TypeAdapter(types[name]).validate_python(value)
        except ValidationError as exc:
            problem = "; ".join(e["msg"] for e in exc.errors())
            raise ConfigError(f"{path}: {name}: {problem}") from exc
    try:
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
