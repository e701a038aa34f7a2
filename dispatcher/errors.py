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

__all__ = [
    "BrokerError",
    "ConfigError",
    "DispatcherError",
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


class BrokerError(DispatcherError):
    """Raised when the Kafka broker cannot be reached, or refuses or fails a request."""
