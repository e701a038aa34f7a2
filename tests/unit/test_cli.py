"""The command line as a user runs it: a real process, its output and exit code."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dispatcher import cli as cli_module
from dispatcher.errors import BrokerError
from dispatcher.topics import DEFAULT_TOPICS_FILE, TopicNames
from tests.samples import SAMPLES


def dispatcher(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # (bounded: a worker that starts after all runs until stopped)
        [sys.executable, "-m", "dispatcher", *args], capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip


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
    assert result.stderr.startswith(f"Error: {bad}: topic 'policy-update', field 'partitions'")


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
    assert "Error: connecting to Kafka at 127.0.0.1:1 failed" in result.stderr


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
    # (one line per bad line, naming each field: not pydantic's three lines per problem)
    assert bad_json.stderr.splitlines() == [
        "line 1: not a valid Tick: field 'pool': String should have at least 1 character (got "
        "''); field 'event_time_ms': required field is missing"
    ]


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
        # Before: a tick of 0 ms spun the timer, negative values were taken, and an unknown
        # log level or port was a Faust traceback once the worker had started.
        (["worker", "--tick-ms", "0"], "'--tick-ms': 0 is not in the range x>=1"),
        (["worker", "--snapshot-every", "-1"], "'--snapshot-every': -1 is not in the range"),
        (["worker", "--web-port", "0"], "'--web-port': 0 is not in the range 1<=x<=65535"),
        (["worker", "--web-port", "65536"], "'--web-port': 65536 is not in the range"),
        (["worker", "--loglevel", "bogus"], "'--loglevel': 'bogus' is not one of 'critical',"),
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
    assert result.stderr.startswith(f"Error: {policy}: {says}")


def test_simulate_prints_a_dash_for_what_an_empty_run_cannot_measure() -> None:
    result = dispatcher("simulate", "--scenario", "steady", "--agents", "1", "--duration", "0.001")
    assert result.returncode == 0, result.stderr
    assert "loads    arrived 0  assigned 0  shed 0  expired 0  outcomes (none)" in result.stdout
    assert "jain(weighted) -   total match score 0.0" in result.stdout  # (was 0.000)
    assert "critical       -        -        -        -" in result.stdout  # (SLA was nan)
    assert "wait p50       - p99       - ms" in result.stdout  # (was 0)
    assert " nan" not in result.stdout


def test_simulate_writes_every_count_with_thousands_separators() -> None:
    """Before: "decisions 21967  (23,337/s in the core)", and the loads as JSON."""
    result = dispatcher("simulate", "--scenario", "steady", "--agents", "100", "--duration", "20")
    assert result.returncode == 0, result.stderr
    decisions = re.search(r"^decisions (\S+)  \(", result.stdout, re.MULTILINE)
    assert decisions is not None
    assert re.fullmatch(r"\d{1,3}(,\d{3})+", decisions[1]), decisions[1]
    loads = next(line for line in result.stdout.splitlines() if line.startswith("loads "))
    assert re.search(r"arrived \d{1,3},\d{3}  assigned \d{1,3},\d{3}  ", loads), loads
    assert "COMPLETED " in loads
    assert not re.search(r"\d{4}", result.stdout.split("\ndigest")[1].split("\n", 1)[1])


@pytest.mark.parametrize(
    ("args", "warns"),
    [
        (["--duration", "20"], "the surge (x5 arrivals from 20 s to 40 s) does not start before "
                               "the 20 s run ends, so this run is steady: simulate more than "
                               "20 s (at least 40 s for the whole surge)"),
        (["--duration", "21"], None),
    ],
)  # fmt: skip
def test_simulate_warns_when_the_run_ends_before_the_surge(
    args: list[str], warns: str | None
) -> None:
    """Before, `--scenario surge --duration 20` was steady, and said nothing."""
    result = dispatcher("simulate", "--scenario", "surge", "--agents", "5", *args, "--json")
    assert result.returncode == 0, result.stderr
    said = [line.removeprefix("warning: ") for line in result.stderr.splitlines()]
    assert said == ([warns] if warns else [])
    assert json.loads(result.stdout)["warnings"] == said


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
        assert "Error: reading the partitions of" in result.stderr
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


@pytest.mark.parametrize(
    "verb",
    [("policy", "validate"), ("policy", "publish"), ("whatif", "--policy"),
     ("simulate", "--scenario", "steady", "--duration", "1", "--policy")],
)  # fmt: skip
def test_every_command_says_a_policys_problems_alike(tmp_path: Path, verb: tuple[str]) -> None:
    """Semantic problems, as the schema's: one line each under the file's name (validate
    printed them bare; publish on one line, without the file)."""
    path = tmp_path / "p.yaml"
    text = EXAMPLE_POLICY.read_bytes().replace(b"tenant_quotas: {}", b"tenant_quotas: {acme: 0}")
    path.write_bytes(text.replace(b"  constraints: {}", b"  constraints: {bogus: true}"))
    result = dispatcher(*verb, str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: {path}: not a valid policy:",
        "  constraints.bogus: unknown (capability, capacity, clearance, hard_affinity, region, "
        "risk, status, tenant_deny, tried)",
        "  tenant_quotas.acme: 0, so none of its loads can ever run",
    ]


def test_a_worker_refuses_a_web_port_in_use_before_it_starts() -> None:
    """Before, Faust started, then failed to bind with an ERROR and a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = dispatcher("worker", "--app-id", "fix-cli", "--web-port", str(port))
    assert result.returncode == 2
    assert f"'--web-port': port {port} on 127.0.0.1 is not free" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_without_a_broker_fails_clearly(tmp_path: Path) -> None:
    """Before, the decision log's reader leaked aiokafka's KafkaConnectionError (a traceback)
    and was left unclosed."""
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "demo", "--duration", "1"],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
             "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr
    assert "Error: reading 'decision-log' at 127.0.0.1:1: KafkaConnectionError" in result.stderr


# -- topics under a prefix ---------------------------------------------------------------


def test_topics_check_and_apply_take_a_topic_prefix() -> None:
    """Before, neither had --topic-prefix (README starts a new input sequence under one)."""
    ok = dispatcher("topics", "check", "--topic-prefix", "fix-cli-v2-")
    assert ok.returncode == 0, ok.stderr
    assert "9 topics" in ok.stdout
    for verb in ("check", "apply"):  # (apply: refused before it connects)
        bad = dispatcher("topics", verb, "--topic-prefix", "fix cli/")
        assert bad.returncode == 1
        assert bad.stderr.startswith(f"Error: {DEFAULT_TOPICS_FILE}: --topic-prefix 'fix cli/' "
                                     "makes 'fix cli/")  # fmt: skip


# -- times: the option is named, a time without a zone is refused --------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["audit", "--to=-5"], "Invalid value for '--to': '-5': an offset or an ISO 8601 time"),
        (["audit", "--from", "2026-01-01T10:00"],
         "Invalid value for '--from': '2026-01-01T10:00' has no zone"),
        (["policy", "publish", str(EXAMPLE_POLICY), "--at", "2026-01-01T10:00"],
         "Invalid value for '--at': '2026-01-01T10:00' has no zone"),
        # A scope that covers nothing was an audit of nothing that said OK.
        (["audit", "--from", "100", "--to", "50"],
         "Invalid value for '--from': 100 is not before --to 50: the scope is empty"),
    ],
)  # fmt: skip
def test_times_must_name_their_zone_and_errors_name_the_option(args: list[str], says: str) -> None:
    """Before, "Invalid value: '-5'" named no option, and a time without a zone was read as
    this machine's local time."""
    result = dispatcher(*args)
    assert result.returncode == 2
    assert says in result.stderr


def test_the_time_options_read_a_time_with_its_zone() -> None:
    from dispatcher.cli import _Position, _Time  # noqa: PLC0415 - the types under test

    assert _Time().convert("1970-01-01T00:00:01Z", None, None) == 1000
    assert _Time().convert("1970-01-01T02:00:01+02:00", None, None) == 1000
    assert _Position().convert("42", None, None) == ("offset", 42)
    assert _Position().convert("1970-01-01T00:00:01Z", None, None) == ("time", 1000)


# -- what-if and explain read as tables and sentences ------------------------------------


def test_whatif_columns_stay_aligned_and_examples_say_what_changed() -> None:
    """Before, the p50/p99 cells were not padded (the columns drifted), an example showed only
    its first agent (`a0 -> a0` when only the end changed) and its why as a dict."""
    from dispatcher.cli import _whatif_lines  # noqa: PLC0415 - the table under test
    from dispatcher.codecs.adapt import policy_from  # noqa: PLC0415
    from dispatcher.demo import policy_update  # noqa: PLC0415
    from dispatcher.whatif import compare  # noqa: PLC0415
    from tests.unit.test_policy_whatif import recorded_run  # noqa: PLC0415

    records = recorded_run(policy_update(1))
    report = compare([(0, records)], policy_from(policy_update(2, tenant_weights={"acme": 4.0})),
                     examples=8)  # fmt: skip
    lines = _whatif_lines(report)
    table = lines[1 : -len(report.examples)]
    assert any("wait p50/p99 ms" in line for line in table)
    assert len({len(line) for line in table}) == 1, table  # every column ends where it should
    examples = lines[-len(report.examples) :]
    assert not any("{" in line for line in examples), examples  # (a dict's repr)
    # The same agent, later and not finished (made up: the answers of such a load reach the
    # what-if run now, as long after its assignment there as they came after the recorded).
    ex = next(ex for ex in report.examples if ex["alternative"]["agent"] is not None)
    same = ex | {"alternative": ex["alternative"] | {"agent": ex["recorded"]["agent"],
                                                     "final": None}}  # fmt: skip
    line = _whatif_lines(dataclasses.replace(report, examples=[same]))[-1]
    assert f"agent {ex['recorded']['agent']} both times; end COMPLETED -> not yet" in line
    assert re.search(r"why: score \d\.\d{3} = embedding \d\.\d{3}, ", line), line
    assert any(line.endswith("why: last decision QUEUED, reason NO_CANDIDATE") for line in examples)


def test_explain_says_no_agent_and_rounds_the_margin() -> None:
    """Before: "agent None", and the runner-up's margin unrounded."""
    from dispatcher.cli import _explain_lines  # noqa: PLC0415 - the lines under test

    assigned = SAMPLES["DecisionRecord"][0].model_dump(mode="json") | {"margin": 0.123456789}
    queued = assigned | {"outcome": "QUEUED", "reason_code": "NO_CANDIDATE", "agent_id": None,
                         "score": None, "runner_up": None, "margin": None}  # fmt: skip
    alone = assigned | {"runner_up": None, "margin": None}
    lines = _explain_lines({"decisions": [assigned, queued, alone], "verdicts": []})
    assert "  runner-up agent-2 by 0.123" in lines
    assert "reason NO_CANDIDATE no agent policy v2" in next(x for x in lines if "QUEUED" in x)
    assert lines[-1] == "  no runner-up"
    assert not any("None" in line for line in lines), lines


def test_explain_says_the_agent_asked_about_is_the_chosen_one() -> None:
    """Before: "why not agent-1: scores 0.875, 0.000 below the chosen one"."""
    from dispatcher.cli import _explain_lines  # noqa: PLC0415 - the lines under test

    assigned = SAMPLES["DecisionRecord"][0].model_dump(mode="json")  # to agent-1
    again = assigned | {"agent_id": "agent-3", "attempt": 2}
    verdict = {"failed": [], "score": 0.875, "gap": 0.0, "parts": {}}
    verdicts = [verdict | {"agent_id": "agent-1"}, verdict | {"agent_id": "agent-2"}]
    lines = _explain_lines({"decisions": [assigned], "verdicts": verdicts})
    assert lines[-2:] == ["why not agent-1: it was chosen (score 0.875)",
                          "why not agent-2: scores 0.875, 0.000 below the chosen one"]  # fmt: skip
    # Taken back and assigned again: the verdicts stand at the last assignment.
    lines = _explain_lines({"decisions": [assigned, again], "verdicts": verdicts})
    assert lines[-2] == "why not agent-1: scores 0.875, 0.000 below the chosen one"
    ghost = verdict | {"agent_id": "agnet-2", "failed": ["unknown_agent"], "score": None}
    lines = _explain_lines({"decisions": [assigned], "verdicts": [ghost]})
    assert lines[-1] == (f"why not agnet-2: no agent of pool {assigned['pool']} has that id "
                         "(a typo, or of another pool?)")  # fmt: skip


# -- simulate and codec ---------------------------------------------------------------------


def test_simulate_header_sits_over_its_columns() -> None:
    result = dispatcher("simulate", "--scenario", "steady", "--agents", "5", "--duration", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("class "))
    # Every header word ends where the numbers under it end.
    ends = [m.end() for m in re.finditer(r"\S+", lines[header + 1])]
    assert [m.end() for m in re.finditer(r"SLA%|p50|p95|p99", lines[header])] == ends[1:]


def test_codec_decode_refuses_an_unknown_schema_as_encode_does() -> None:
    """Before, decode took any name and refused every record as one of another schema."""
    for verb in ("encode", "decode"):
        result = _pipe(["codec", verb, "--schema", "Bogus"], "")
        assert result.returncode == 2
        assert "'--schema': unknown schema 'Bogus'; one of AgentEvent, LoadEvent" in result.stderr


def test_simulate_takes_a_policy_file_as_policy_publish_does(tmp_path: Path) -> None:
    """Before: "unknown policy field(s): author, document, policy_id" for the documented
    format. The file is the whole policy (its weights are the whole set: nothing merged)."""
    args = ["simulate", "--scenario", "steady", "--agents", "5", "--duration", "5", "--json"]
    result = dispatcher(*args, "--policy", str(EXAMPLE_POLICY))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy_version"] == 2  # the file's
    refused = tmp_path / "p.yaml"  # one a worker would refuse is refused here too
    refused.write_bytes(EXAMPLE_POLICY.read_bytes().replace(b"embedding:", b"embeding:"))
    bad = dispatcher(*args, "--policy", str(refused))
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"Error: {refused}: not a valid policy:\n"
                                 "  weights.embeding: not a score term")  # fmt: skip


# -- SIGTERM stops the demo as Ctrl-C does ---------------------------------------------------

_FAKE_DEMO = """
import asyncio
import dispatcher.cli as cli

async def run_demo(bootstrap, *, echo, **_):  # the demo's shape: run, then summarise and leave
    try:
        echo("started")
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        echo("summary:")
    await asyncio.sleep(1)  # the agents leaving: a second SIGTERM must not cut it short
    echo("agents offline")

cli.run_demo = run_demo
cli.main()
"""


def test_sigterm_stops_the_demo_as_ctrl_c_does() -> None:
    """Before, SIGTERM killed `dispatcher demo` at once: no summary, and its agents stayed
    available for the workers until their heartbeats timed out."""
    demo = subprocess.Popen([sys.executable, "-u", "-c", _FAKE_DEMO, "demo"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert demo.stdout is not None
        assert demo.stdout.readline() == "started\n"
        demo.send_signal(signal.SIGTERM)
        assert demo.stdout.readline() == "summary:\n"
        demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=30)
    finally:
        demo.kill()
        demo.wait()
    assert demo.returncode == 0, err
    assert out == "agents offline\n"
    assert "Traceback" not in err


def test_the_audit_table_says_how_many_problems_lay_outside_the_scope() -> None:
    row: dict[str, Any] = {"partition": 0, "inputs": 10, "checked": 4, "matched": 4, "repeats": 0,
           "mismatches": 0, "missing": 0, "unexplained": 0, "expired": 0, "pending": 0,
           "outside": 3, "first_mismatch": None, "missing_ids": [],
           "unexplained_ids": []}  # fmt: skip
    lines = cli_module._audit_lines([row])
    assert any("3 problem(s) outside the scope" in line for line in lines)
    assert not any("outside" in line for line in cli_module._audit_lines([row | {"outside": 0}]))


# -- the worker checks the broker and its topics before Faust starts --------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _without_a_broker(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dispatcher *args`` in a shell whose broker is nowhere (127.0.0.1:1)."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
             "HOME": str(home)},
    )  # fmt: skip


def test_a_worker_without_a_broker_fails_in_one_line(tmp_path: Path) -> None:
    """Before, Faust started and printed aiokafka's KafkaConnectionError: 35 lines of
    traceback."""
    result = _without_a_broker(tmp_path, "worker", "--topic-prefix", "x-",
                               "--web-port", str(_free_port()))  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: connecting to Kafka at 127.0.0.1:1 failed: ")


_X_TOPICS = [getattr(TopicNames.prefixed("x-"), f)
             for f in TopicNames.__dataclass_fields__]  # fmt: skip


@pytest.mark.parametrize(
    ("on_the_broker", "says"),
    [
        # (before: "Topic ... not found" logged, and a worker idle for ever)
        ([], "the worker's topics are missing at b:9: x-agent-availability, x-load-arrival, "
             "x-task-results and 6 more (is the topic prefix right? `dispatcher topics apply "
             "--topic-prefix x-` creates them)"),
        ([t for t in _X_TOPICS if t != "x-ticks"],
         "the worker's topics are missing at b:9: x-ticks (is the topic prefix right?"),
        (_X_TOPICS, None),
    ],
)  # fmt: skip
def test_a_worker_starts_only_when_every_topic_it_uses_exists(
    monkeypatch: pytest.MonkeyPatch, on_the_broker: list[str], says: str | None
) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from dispatcher.worker import app  # noqa: PLC0415

    started: list[Any] = []

    async def topic_names(bootstrap: str, *, request_timeout_s: float) -> list[str]:
        assert (bootstrap, request_timeout_s) == ("b:9", 5)
        return on_the_broker

    class Worker:
        def __init__(self, cfg: Any, **_: Any) -> None:
            started.append(cfg)

        def execute_from_commandline(self) -> None:
            pass

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b:9")
    monkeypatch.setattr(cli_module, "topic_names", topic_names, raising=False)
    monkeypatch.setattr(app, "build_app", lambda cfg: cfg)
    monkeypatch.setattr(app, "Worker", Worker)
    result = CliRunner().invoke(cli_module.cli, ["worker", "--topic-prefix", "x-",
                                                 "--web-port", str(_free_port())])  # fmt: skip
    if says is None:
        assert result.exit_code == 0, result.output
        assert [cfg.topics.ticks for cfg in started] == ["x-ticks"]
    else:
        assert not started
        assert isinstance(result.exception, BrokerError)
        assert str(result.exception).startswith(says)


# -- files that are not UTF-8 ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--scenario", "steady", "--agents", "5", "--duration", "1", "--policy", "F"],
        ["topics", "check", "--file", "F"],
        ["topics", "apply", "--file", "F"],
        ["watch", "--file", "F", "--duration", "1"],
        ["run", "--file", "F", "--duration", "1"],
    ],
)
def test_a_file_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path, args: list[str]) -> None:
    """Before, a UnicodeDecodeError traceback (`policy validate` already said why)."""
    path = tmp_path / "f.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    result = _without_a_broker(tmp_path, *[str(path) if a == "F" else a for a in args])
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {path}: cannot read")
    assert "'utf-8' codec can't decode byte 0xff" in line


# -- the README says what the commands and the SDK take -------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(group: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    import click  # noqa: PLC0415

    out: dict[tuple[str, ...], Any] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out |= _commands(command, (*path, name))
        else:
            out[(*path, name)] = command
    return out


def test_the_readme_command_table_names_every_option_and_no_other() -> None:
    """Before, it named `policy validate --at` (no such option) and left out a dozen."""
    import click  # noqa: PLC0415

    commands = _commands(cli_module.cli)
    named: dict[tuple[str, ...], set[str]] = {path: set() for path in commands}
    for row in re.findall(r"^\| `dispatcher ([^`]+)` \|", README.read_text(), re.MULTILINE):
        words = row.replace("\\|", "|").split()
        paths: list[tuple[str, ...]] = [()]
        for word in words:  # the command's words, then its arguments and options
            if any(path in commands for path in paths):
                break
            paths = [(*path, alt) for path in paths for alt in word.split("|")]
        options = set(re.findall(r"--[a-z][a-z-]*", row))
        for path in paths:
            assert path in commands, row
            real = {o for p in commands[path].params if isinstance(p, click.Option)
                    for o in (*p.opts, *p.secondary_opts)}  # fmt: skip
            assert options <= real, f"{' '.join(path)}: {sorted(options - real)} do not exist"
            named[path] |= options
    for path, command in commands.items():
        for p in command.params:
            if isinstance(p, click.Option) and "--help" not in p.opts:
                assert {*p.opts, *p.secondary_opts} & named[path], (
                    f"README leaves out {' '.join(path)} {p.opts[0]}")  # fmt: skip


def test_the_readme_sdk_example_registers_an_agent_before_it_works() -> None:
    """Before, the example skipped registration (no assignment ever came) and never built
    the LoadEvent it published. Here on fakes; the integration tests run the SDK for real."""
    import asyncio  # noqa: PLC0415
    import types  # noqa: PLC0415

    text = README.read_text()
    code = text[text.index("```python\n") + 10 :]
    code = code[: code.index("```")]
    assert code.rstrip().endswith("asyncio.run(main())")
    sent: list[Any] = []

    class Producer:
        def __init__(self, bootstrap: str, **_: Any) -> None:
            pass

        async def __aenter__(self) -> Any:
            return self

        async def __aexit__(self, *_: Any) -> None:
            pass

        async def publish_agent_event(self, event: Any) -> None:
            sent.append(event)

        async def publish_load(self, event: Any) -> None:
            sent.append(event)

        async def heartbeat(self, agent_id: str, pool: str, seq: int) -> None:
            sent.append(("heartbeat", seq))

    class Client(Producer):
        def __init__(self, bootstrap: str, agent_id: str, pool: str, **_: Any) -> None:
            pass

        async def __aiter__(self) -> Any:
            yield types.SimpleNamespace(load_id="load-1")

        async def accept(self, a: Any) -> None:
            sent.append(("accept", a.load_id))

        async def succeed(self, a: Any) -> None:
            sent.append(("succeed", a.load_id))

    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(code.rstrip().removesuffix("asyncio.run(main())"), "README.md", "exec"),  # noqa: S102
         namespace)  # fmt: skip
    namespace |= {"DispatcherProducer": Producer, "AgentClient": Client}

    async def run() -> None:
        await namespace["agent"]()
        await namespace["produce"]()

    asyncio.run(run())
    kinds = [getattr(x, "kind", x) for x in sent]
    assert kinds[:2] == ["REGISTERED", "AVAILABLE"]
    assert sent[0].profile is not None
    assert ("accept", "load-1") in kinds
    assert kinds[-1] == "ARRIVAL"
    assert sent[-1].load.required_capabilities == ["python"]
