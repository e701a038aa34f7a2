"""The one error tree of the project.

::

    DispatcherError
     ├── ConfigError        a setting or configuration file is invalid
     │    └── TopicsFileError   topics.yaml is invalid (names file, topic, field)
     ├── StackError         a local server could not be fetched, started or stopped
     ├── KafkaAdminError    the broker refused or failed an admin request
     └── CodecError         bytes from a topic cannot be decoded or validated
                            (dispatcher.codecs.codec; carries topic, offset, reason, raw bytes)

Third-party errors are wrapped once, where they enter (``raise X(...) from exc``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DispatcherError",
    "KafkaAdminError",
    "StackError",
    "TopicsFileError",
]


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


class KafkaAdminError(DispatcherError):
    """Raised when the broker cannot be reached for, refuses or fails an admin request."""
