"""Codecs at the edge: the only package that imports fastavro.

Everything that crosses a topic is encoded and decoded here, against the
contracts in schemas/ (see ``dispatcher.codecs.schemas``) and validated by the
edge models (``dispatcher.codecs.models``).
"""

from dispatcher.codecs.codec import CONFLUENT, SINGLE_OBJECT, Codec, CodecError, dead_letter

__all__ = ["CONFLUENT", "SINGLE_OBJECT", "Codec", "CodecError", "dead_letter"]
