"""The command line as a user runs it: a real process, its output and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.topics import DEFAULT_TOPICS_FILE
from tests.samples import SAMPLES


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


def _pipe(args: list[str], text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], input=text,
                          capture_output=True, text=True, check=False)  # fmt: skip


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("fmt", ["base64", "hex"])
def test_codec_cli_round_trips_json_lines(name: str, fmt: str) -> None:
    lines = "".join(r.model_dump_json() + "\n" for r in SAMPLES[name])
    encoded = _pipe(["codec", "encode", "--schema", name, "--format", fmt], lines)
    assert encoded.returncode == 0, encoded.stderr
    assert len(encoded.stdout.splitlines()) == len(SAMPLES[name])
    decoded = _pipe(["codec", "decode", "--schema", name, "--format", fmt], encoded.stdout)
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout == lines


def test_codec_cli_reports_each_bad_line_and_keeps_going() -> None:
    good = _pipe(["codec", "encode", "--schema", "Tick"], SAMPLES["Tick"][0].model_dump_json())
    text = f"AAAAAAU=\nnot base64!\n{good.stdout}"
    result = _pipe(["codec", "decode"], text)
    assert result.returncode == 1
    assert result.stdout == SAMPLES["Tick"][0].model_dump_json() + "\n"
    errors = result.stderr.splitlines()
    assert errors[0].startswith("line 1: ?[-1]@1: MALFORMED")
    assert errors[1].startswith("line 2: ")
    bad_json = _pipe(["codec", "encode", "--schema", "Tick"], '{"pool": ""}\n')
    assert bad_json.returncode == 1
    assert "line 1: not a valid Tick" in bad_json.stderr


def test_schemas_check_says_every_schema_is_registered() -> None:
    result = dispatcher("schemas", "check")
    assert result.returncode == 0, result.stderr


def test_run_cleans_up_after_runs_that_died_only(tmp_path: Path) -> None:
    """`dispatcher run` deletes what a run killed with -9 left (its lock file is unheld), and
    nothing of a run still alive (its worker holds the lock too), nor what no run recorded
    (before, every `demo-*` topic and directory went, a live run's too)."""
    from dispatcher.cli import _DemoRun  # noqa: PLC0415 - the helper under test
    from dispatcher.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env({"DISPATCHER_STATE_DIR": str(tmp_path)})
    alive, mine = _DemoRun.claim(settings), _DemoRun.claim(settings)
    assert alive.prefix != mine.prefix
    died = "demo-1-"
    (tmp_path / "demo-runs" / f"{died}lock").touch()  # its lock file, which nobody holds
    data = {
        prefix: [tmp_path / f"faust/{prefix}dispatcher-data",
                 tmp_path / f"snapshots/{prefix}input-sequence-0"]
        for prefix in (alive.prefix, died)
    }  # fmt: skip
    unknown = [tmp_path / "faust/dispatcher-data", tmp_path / "faust/demo-10-dispatcher-data",
               tmp_path / "snapshots/demo-orders-0"]  # fmt: skip
    for path in [*data[alive.prefix], *data[died], *unknown]:
        path.mkdir(parents=True)
    # The live run's worker holds its lock, and outlives the run (say, killed with -9).
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              pass_fds=(alive.lock,))  # fmt: skip
    try:
        os.close(alive.lock)
        dead = mine.dead_runs()
        assert [d.prefix for d in dead] == [died]
        dead[0].forget()
        assert not any(p.exists() for p in data[died])
        assert all(p.exists() for p in data[alive.prefix] + unknown)
    finally:
        worker.kill()
        worker.wait()
    (gone,) = mine.dead_runs()  # now it is
    assert gone.prefix == alive.prefix
    gone.forget()
    mine.forget()
    assert [p.name for p in (tmp_path / "demo-runs").iterdir()] == [".lock"]


def test_policy_publish_refuses_a_time_that_is_none() -> None:
    example = str(Path(__file__).resolve().parents[2] / "ops/policies/example.yaml")
    result = dispatcher("policy", "publish", example, "--at", "next tuesday")
    assert result.returncode == 2
    assert "'next tuesday': not an ISO 8601 time" in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--agents", "0"], "'--agents': 0 is not in the range x>=1"),
        (["--duration", "0.0001"], "'--duration': 0.0001 is not in the range"),
        (["--duration", "nan"], "'--duration': 'nan' is not a number"),
        (["--duration", "inf"], "'--duration': inf is not in the range"),
        (["--seed", "-1"], "'--seed': -1 is not in the range x>=0"),  # (a numpy traceback)
    ],
)
def test_simulate_refuses_sizes_it_cannot_run(args: list[str], says: str) -> None:
    result = dispatcher("simulate", "--scenario", "steady", *args)
    assert result.returncode == 2
    assert says in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["demo", "--rate", "0"], "'--rate': 0.0 is not in the range 0<x<=1000000"),
        (["demo", "--rate", "nan"], "'--rate': 'nan' is not a number"),
        (["demo", "--pools", "0"], "'--pools': 0 is not in the range 1<=x<=1000"),
        (["demo", "--duration", "inf"], "'--duration': inf is not in the range"),
        (["run", "--rate", "-1"], "'--rate': -1.0 is not in the range"),
        (["run", "--agents", "0"], "'--agents': 0 is not in the range"),
        (["watch", "--duration", "0"], "'--duration': 0.0 is not in the range"),
    ],
)
def test_demo_options_are_checked_before_anything_starts(args: list[str], says: str) -> None:
    """Before, a rate of 0 failed inside the demo's producer task and the demo printed an
    empty summary; NaN or a negative rate sent loads as fast as it could."""
    result = dispatcher(*args)
    assert result.returncode == 2
    assert says in result.stderr


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mode: fast\n", "mode: Input should be 'greedy' or 'batched'"),
        ("tenant_deny: {acme: 5}\n", "tenant_deny: Input should be a valid frozenset"),
        ("max_pending: [1]\n", "max_pending: Input should be a valid integer"),
        ("1: 2\n", "a policy field is named by a word, not by 1"),  # (a TypeError)
        ("tenant_weights: {acme: 0}\n", "tenant_weights.acme: 0.0 (tenant weights are"),
    ],
)
def test_simulate_names_the_policy_field_of_the_wrong_kind(
    tmp_path: Path, text: str, says: str
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(text)
    result = dispatcher("simulate", "--scenario", "steady", "--policy", str(policy),
                        "--duration", "1", "--agents", "5")  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {policy}: {says}")


def test_simulate_prints_a_dash_for_what_an_empty_run_cannot_measure() -> None:
    result = dispatcher("simulate", "--scenario", "steady", "--agents", "1", "--duration", "0.001")
    assert result.returncode == 0, result.stderr
    assert '"arrived": 0' in result.stdout
    assert "jain(weighted) -   total match score 0.0" in result.stdout  # (was 0.000)
    assert "critical       -        -        -        -" in result.stdout  # (SLA was nan)
    assert "wait p50       - p99       - ms" in result.stdout  # (was 0)
    assert " nan" not in result.stdout


def test_simulate_warns_when_the_run_is_too_short_for_its_scenario() -> None:
    result = dispatcher("simulate", "--scenario", "agent-churn", "--agents", "30",
                        "--duration", "5", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: ")
    assert "simulate at least 20 s" in result.stderr
    assert json.loads(result.stdout)["warnings"] == [result.stderr.removeprefix("warning: ")[:-1]]


@pytest.mark.parametrize(
    "args", [["audit"], ["audit", "--from", "²"], ["explain", "L1"], ["whatif", "--policy", "P"]]
)
def test_replays_without_a_broker_fail_clearly(tmp_path: Path, args: list[str]) -> None:
    example = str(Path(__file__).resolve().parents[2] / "ops/policies/example.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", *[example if a == "P" else a for a in args]],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
             "HOME": str(tmp_path)},
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    if "²" in args:
        assert result.returncode == 2
        assert "'²': an offset or an ISO 8601 time" in result.stderr
    else:
        assert result.returncode == 1
        assert "error: reading the partitions of" in result.stderr
        assert "127.0.0.1:1" in result.stderr
        assert "Unclosed" not in result.stderr


EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "ops/policies/example.yaml"


@pytest.mark.parametrize(
    ("command", "content", "says"),
    [
        # What every worker would refuse is no what-if (before, it replayed with it).
        ("whatif", EXAMPLE_POLICY.read_bytes().replace(b"    embedding:", b"    embeding:"),
         "weights.embeding: not a score term"),
        ("validate", b"\xff\xfe\x00", "cannot read the policy"),  # (before: a traceback)
    ],
)  # fmt: skip
def test_policy_files_a_worker_would_refuse_or_cannot_read_are_refused(
    tmp_path: Path, command: str, content: bytes, says: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(content)
    verb = ["whatif", "--policy"] if command == "whatif" else ["policy", "validate"]
    result = dispatcher(*verb, str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert says in result.stderr
