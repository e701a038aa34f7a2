"""The one error tree of the project.

::

    DispatcherError
     ├── ConfigError        a setting or configuration file is invalid
     │    └── TopicsFileError   topics.yaml is invalid (names file, topic, field)
     ├── StackError         a local server could not be fetched, started or stopped
     ├── BrokerError        the Kafka broker cannot be reached or refuses a request
     └── CodecError         bytes from a topic cannot be decoded or validated
                            (dispatcher.codecs.codec; carries topic, offset, reason, raw bytes)

Third-party errors are wrapped once, where they enter (``raise X(...) from exc``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "BrokerError",
    "ConfigError",
    "DispatcherError",
    "StackError",
    "TopicsFileError",
    "field_at",
    "validation_problems",
]

Where = tuple[int | str, ...]  # a place in a document, as pydantic gives it


class DispatcherError(Exception):
    """Raised for every failure the project itself reports; the root of the tree."""


class ConfigError(DispatcherError):
    """Raised when an environment variable or configuration file is invalid."""


class TopicsFileError(ConfigError):
    """Raised when topics.yaml cannot be read or breaks its schema.

    Attributes:
        path: the file that was read.
        problems: one line per problem, each naming the topic and field.
    """

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class StackError(DispatcherError):
    """Raised when the local Kafka broker or Redis cannot be fetched, started or stopped."""


class BrokerError(DispatcherError):
    """Raised when the Kafka broker cannot be reached, or refuses or fails a request."""


def field_at(loc: Where) -> str:
    """A place in a document in words: field 'a.b', or the top level."""
    return f"field '{'.'.join(map(str, loc))}'" if loc else "top level"


def validation_problems(
    exc: ValidationError, describe: Callable[[Where], str] = field_at, under: Where = ()
) -> list[str]:
    """One line per problem pydantic found in a document a person wrote: where (``describe``
    of its place, below ``under``) and what, in words (pydantic's own text names each
    problem on three lines, with the whole input and a link)."""
    out = []
    for err in exc.errors(include_url=False):
        where, kind = describe((*under, *err["loc"])), err["type"]
        if kind == "missing":
            out.append(f"{where}: required field is missing")
        elif kind == "extra_forbidden":
            out.append(f"{where}: unknown field")
        else:
            got = repr(err["input"])
            got = got if len(got) <= 60 else got[:57] + "..."
            out.append(f"{where}: {err['msg']} (got {got})")
    return out
