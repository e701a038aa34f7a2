"""The command line as a user runs it: a real process, its output and exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dispatcher.topics import DEFAULT_TOPICS_FILE


def dispatcher(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args], capture_output=True, text=True, check=False
    )


def test_topics_check_accepts_the_project_file() -> None:
    result = dispatcher("topics", "check", "--file", str(DEFAULT_TOPICS_FILE))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_topics_check_refuses_a_broken_file_with_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "topics.yaml"
    bad.write_text(DEFAULT_TOPICS_FILE.read_text().replace("partitions: 1\n", "partitions: 0\n", 1))
    result = dispatcher("topics", "check", "--file", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {bad}: topic 'policy-update', field 'partitions'")


def test_topics_apply_without_a_broker_fails_clearly(tmp_path: Path) -> None:
    env_port = "1"  # nothing listens on port 1
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "topics", "apply"],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{env_port}",
             "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: connecting to Kafka at 127.0.0.1:1 failed" in result.stderr
