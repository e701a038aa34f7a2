"""Fixtures of the pipeline tests: private topics and worker processes on the real servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.pipeline import Pipeline


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[Pipeline]:
    """Every declared topic under a fresh prefix; the workers started on them stop after,
    and the topics go."""
    p = Pipeline(kafka_bootstrap, redis_url, unique("p") + "-", tmp_path)
    p.create_topics()
    yield p
    p.stop_all()
    p.delete_topics()
