"""The Avro schemas under schemas/ and their committed, append-only id map.

``schemas/<Name>.avsc`` is the current, human-edited schema of each record.
``schemas/registry.json`` lists every version ever written to a topic: its
id (the Confluent wire format's 4-byte schema id), name, CRC-64-AVRO
fingerprint (for single-object encoding) and Parsing Canonical Form. Entries
are only ever appended (``dispatcher schemas register``), so any record ever
written can be read again; the newest entry of a name is what writers use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from dispatcher.errors import ConfigError
from dispatcher.settings import PROJECT_ROOT

__all__ = ["SCHEMA_DIR", "RegisteredSchema", "SchemaRegistry"]

SCHEMA_DIR = PROJECT_ROOT / "schemas"
REGISTRY_FILE = "registry.json"


def _parse(schema: Any) -> Any:
    # Each schema parses on its own: files repeat shared named types (Priority,
    # Sensitivity), which one shared namespace would refuse as redefinitions.
    return parse_schema(schema, named_schemas={})


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of one record, as written in registry.json."""

    id: int
    name: str
    fingerprint: bytes  # CRC-64-AVRO, little-endian, as single-object encoding writes it
    canonical: str
    parsed: Any = field(compare=False, repr=False)  # fastavro's parsed form of ``canonical``

    @classmethod
    def of(cls, id: int, name: str, canonical: str) -> RegisteredSchema:
        return cls(id, name, _fingerprint(canonical), canonical, _parse(json.loads(canonical)))


def _fingerprint(canonical: str) -> bytes:
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def canonical_form(schema_file: Path) -> str:
    """The Parsing Canonical Form of a .avsc file."""
    return str(to_parsing_canonical_form(json.loads(schema_file.read_text())))


class SchemaRegistry:
    """The schemas of one schemas/ directory: every registered version, and the current ones."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self.directory = directory
        path = directory / REGISTRY_FILE
        try:
            entries = json.loads(path.read_text())["schemas"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path}: cannot read the schema registry: {exc}") from exc
        self.by_id: dict[int, RegisteredSchema] = {}
        self.by_fingerprint: dict[bytes, RegisteredSchema] = {}
        self.latest: dict[str, RegisteredSchema] = {}
        for e in entries:
            reg = RegisteredSchema.of(e["id"], e["name"], e["canonical"])
            if reg.id in self.by_id or reg.fingerprint.hex() != e["fingerprint"]:
                raise ConfigError(
                    f"{path}: entry {reg.id} is duplicated or its fingerprint is wrong"
                )
            self.by_id[reg.id] = reg
            self.by_fingerprint[reg.fingerprint] = reg
            self.latest[reg.name] = reg  # entries are in id order; the last one wins

    def names(self) -> list[str]:
        """Record names that have a current schema file."""
        return sorted(p.stem for p in self.directory.glob("*.avsc"))

    def pending(self) -> list[str]:
        """Names whose .avsc file differs from their newest registered version."""
        out = []
        for name in self.names():
            latest = self.latest.get(name)
            if (
                latest is None
                or canonical_form(self.directory / f"{name}.avsc") != latest.canonical
            ):
                out.append(name)
        return out

    def register(self) -> list[RegisteredSchema]:
        """Appends a new version for every changed or new .avsc file; returns them."""
        path = self.directory / REGISTRY_FILE
        doc = json.loads(path.read_text())
        next_id = max(self.by_id, default=0) + 1
        added = []
        for name in self.pending():
            canonical = canonical_form(self.directory / f"{name}.avsc")
            reg = RegisteredSchema.of(next_id, name, canonical)  # refuses what fastavro cannot use
            doc["schemas"].append(
                {
                    "id": reg.id,
                    "name": name,
                    "fingerprint": reg.fingerprint.hex(),
                    "canonical": canonical,
                }
            )
            added.append(reg)
            next_id += 1
        if added:
            path.write_text(json.dumps(doc, indent=1) + "\n")
        return added
