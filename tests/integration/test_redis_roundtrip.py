"""A real Redis: values round-trip and SET NX fences a second claimant."""

from __future__ import annotations

from collections.abc import Callable

import redis


def test_value_round_trips(redis_client: redis.Redis, unique: Callable[[str], str]) -> None:
    key = unique("roundtrip")
    payload = bytes(range(256))  # binary-safe, as encoded records will be
    try:
        assert redis_client.set(key, payload, ex=60)
        assert redis_client.get(key) == payload
        assert 0 < redis_client.ttl(key) <= 60
    finally:
        redis_client.delete(key)


def test_set_nx_lets_only_the_first_claimant_win(
    redis_client: redis.Redis, unique: Callable[[str], str]
) -> None:
    key = unique("claim")
    try:
        assert redis_client.set(key, b"worker-a", nx=True, ex=60) is True
        assert redis_client.set(key, b"worker-b", nx=True, ex=60) is None
        assert redis_client.get(key) == b"worker-a"
    finally:
        redis_client.delete(key)
