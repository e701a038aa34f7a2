"""YAML that people write (topics.yaml, policy files): a key written twice is refused.

PyYAML keeps the last of a key written twice, so a policy with `ack: 30000, ack: 5` was
valid with an ack timeout of 5 ms, and one with two `version`s valid as the second.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["load_yaml"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The document ``text`` holds, as ``yaml.safe_load`` reads it.

    Raises:
        yaml.YAMLError: not YAML, or a mapping with a key written twice.
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
