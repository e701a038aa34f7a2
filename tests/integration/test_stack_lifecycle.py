"""`dispatcher stack` and `dispatcher run` from a shell, on a private broker and Redis.

These start a second broker and redis-server on free ports with their own
state directory (the jar cache is shared), so they can stop what they start
without disturbing the session's servers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dispatcher.settings import Settings
from dispatcher.topics import load_topics

TOPICS = len(load_topics().topics)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_env(tmp_path: Path, settings: Settings) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env |= {
        "DISPATCHER_STATE_DIR": str(tmp_path / "state"),
        "DISPATCHER_CACHE_DIR": str(settings.cache_dir),
        "DISPATCHER_KAFKA_PORT": str(_free_port()),
        "DISPATCHER_KAFKA_CONTROLLER_PORT": str(_free_port()),
        "DISPATCHER_REDIS_PORT": str(_free_port()),
    }
    yield env
    subprocess.run([sys.executable, "-m", "dispatcher", "stack", "down"], env=env, check=False,
                   capture_output=True, timeout=120)  # fmt: skip


def dispatcher(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], env=env, text=True,
                          capture_output=True, check=False, timeout=timeout)  # fmt: skip


def _status(env: dict[str, str]) -> dict[str, dict[str, object]]:
    result = dispatcher(env, "stack", "status", "--json")
    return {s["name"]: s for s in json.loads(result.stdout)}


def test_stack_up_status_topics_down_from_a_shell(private_env: dict[str, str]) -> None:
    env = private_env
    kafka_at = f"127.0.0.1:{env['DISPATCHER_KAFKA_PORT']}"
    before = dispatcher(env, "stack", "status")
    assert before.returncode == 1  # nothing runs yet, and status says so
    assert "stopped" in before.stdout

    up = dispatcher(env, "stack", "up")
    assert up.returncode == 0, up.stderr
    assert "started: kafka, redis" in up.stdout
    status = _status(env)
    assert status["kafka"]["running"]
    assert status["redis"]["running"]
    assert status["kafka"]["endpoint"] == kafka_at
    assert status["redis"]["endpoint"] == f"redis://127.0.0.1:{env['DISPATCHER_REDIS_PORT']}/0"
    assert status["kafka"]["mode"] == status["redis"]["mode"] == "local"

    # Asked about other settings, status does not call our servers theirs.
    elsewhere = _status(env | {"DISPATCHER_KAFKA_PORT": str(_free_port())})["kafka"]
    assert not elsewhere["running"]
    assert f"is running on PLAINTEXT://{kafka_at}" in str(elsewhere["detail"])
    other_dir = _status(env | {"DISPATCHER_STATE_DIR": env["DISPATCHER_STATE_DIR"] + "-other"})
    assert not other_dir["kafka"]["running"]
    assert f"something answers on {kafka_at}" in str(other_dir["kafka"]["detail"])

    again = dispatcher(env, "stack", "up")  # idempotent: nothing new starts
    assert again.returncode == 0, again.stderr
    assert "started: nothing" in again.stdout
    assert _status(env)["kafka"]["pid"] == status["kafka"]["pid"]

    applied = dispatcher(env, "topics", "apply")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert applied.stdout.count("created ") == TOPICS
    reapplied = dispatcher(env, "topics", "apply")
    assert reapplied.stdout.count("ok ") == TOPICS

    down = dispatcher(env, "stack", "down")
    assert down.returncode == 0, down.stderr
    assert "stopped: redis, kafka" in down.stdout
    assert not any(s["running"] for s in _status(env).values())
    assert "nothing was running" in dispatcher(env, "stack", "down").stdout


def test_up_refuses_a_port_held_by_another_program(private_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(private_env["DISPATCHER_KAFKA_PORT"])))
        squatter.listen()
        result = dispatcher(private_env, "stack", "up", "--no-redis")
    assert result.returncode == 1
    assert (
        f"Error: port 127.0.0.1:{private_env['DISPATCHER_KAFKA_PORT']} is in use" in result.stderr
    )
    assert "Traceback" not in result.stderr


def _run(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`dispatcher run` with ``args``, its output in a pipe."""
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "dispatcher", "run", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _read_until(proc: subprocess.Popen[str], pattern: str, lines: list[str]) -> re.Match[str]:
    """Reads ``proc``'s output into ``lines`` until a line matches ``pattern`` (4 min at most)."""
    deadline = time.monotonic() + 240
    assert proc.stdout is not None
    while not (found := re.search(pattern, lines[-1] if lines else "")):
        assert time.monotonic() < deadline, "".join(lines)
        line = proc.stdout.readline()
        assert line, "dispatcher run ended early:\n" + "".join(lines)
        lines.append(line)
    return found


def test_run_starts_everything_and_ctrl_c_stops_it(private_env: dict[str, str]) -> None:
    proc = _run(private_env, "--rate", "20", "--agents", "10")
    lines: list[str] = []
    try:
        # Progress lines until the demo's loads are being completed by its agents.
        _read_until(proc, r"completed +[1-9]", lines)
        assert _status(private_env)["kafka"]["running"]
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert output.count("created ") == TOPICS
    assert "Ctrl-C stops everything" in output
    assert "policies: the worker applies only those signed with a key of this run" in output
    (log,) = (Path(private_env["DISPATCHER_STATE_DIR"]) / "demo-runs").glob("*worker.log")
    worker_log = log.read_text()
    assert "policy_fanout" in worker_log
    assert "dead letter" not in worker_log  # the demo's policy was signed with that key
    assert re.search(r"assigned [1-9][\d,]* +completed [1-9]", output), output  # the summary
    assert "arrival -> assignment p50" in output
    assert "stopping: worker" in output
    assert "stopping: redis, kafka" in output
    assert not any(s["running"] for s in _status(private_env).values())


def test_a_start_that_fails_half_way_leaves_nothing_running(private_env: dict[str, str]) -> None:
    from dispatcher.errors import StackError  # noqa: PLC0415
    from dispatcher.stack.kafka import LocalKafka  # noqa: PLC0415
    from dispatcher.stack.process import port_open  # noqa: PLC0415

    kafka = LocalKafka(Settings.from_env(private_env))
    with pytest.raises(StackError, match="not ready after"):
        kafka.up(timeout=0.5)  # the JVM is started, but cannot be ready this soon
    assert kafka.pid() is None
    assert not kafka.process.pid_file.exists()
    deadline = time.monotonic() + 10
    while port_open("127.0.0.1", int(private_env["DISPATCHER_KAFKA_PORT"])):
        assert time.monotonic() < deadline, "the half-started broker still listens"
        time.sleep(0.1)
    assert kafka.up() is True  # and a real start works afterwards
    assert kafka.down() is True


def test_a_run_killed_with_9_takes_its_worker_with_it(private_env: dict[str, str]) -> None:
    """Before, the worker ran on, holding the run's lock: the next run kept its topics."""
    proc = _run(private_env, "--rate", "5", "--agents", "2")
    try:
        worker = int(_read_until(proc, r"^worker: pid (\d+)", []).group(1))
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]  # (a pipe: asked for above)
    deadline = time.monotonic() + 60  # (it stops as on SIGTERM: its consumer leaves the group)
    while _alive(worker):
        assert time.monotonic() < deadline, f"the worker (pid {worker}) outlived its run"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no parent reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cpu_s(pid: int) -> float:
    """The CPU time (user and system) process ``pid`` used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _completed(lines: list[str]) -> int:
    """The completed count of the last progress line in ``lines`` (0 before the first)."""
    for line in reversed(lines):
        if found := re.search(r"completed +([\d,]+)", line):
            return int(found.group(1).replace(",", ""))
    return 0


def test_a_run_waits_out_a_broker_restart_quietly(private_env: dict[str, str]) -> None:
    """Before, with the broker stopped, the worker and the demo each spun a core at asking
    for metadata and logged about 8,000 lines a second (aiokafka#496; patience.py)."""
    from dispatcher.stack.kafka import LocalKafka  # noqa: PLC0415

    kafka = LocalKafka(Settings.from_env(private_env))
    proc = _run(private_env, "--rate", "20", "--agents", "10")
    assert proc.stdout is not None
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]  # (a pipe: asked for)
                              daemon=True)  # fmt: skip
    reader.start()

    def wait_for(ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 240
        while not ready():
            assert proc.poll() is None, f"the run ended {what}:\n" + "".join(out)
            assert time.monotonic() < deadline, f"no {what} in 4 min:\n" + "".join(out)
            time.sleep(0.2)

    try:
        wait_for(lambda: _completed(out) > 0, "load completed")
        (log,) = (Path(private_env["DISPATCHER_STATE_DIR"]) / "demo-runs").glob("*worker.log")
        (worker,) = [int(m.group(1)) for line in out if (m := re.match(r"worker: pid (\d+)", line))]
        printed, logged, done = len(out), len(log.read_text().splitlines()), _completed(out)
        cpu = _cpu_s(worker) + _cpu_s(proc.pid)
        assert kafka.down()
        time.sleep(10)
        printed, logged = len(out) - printed, len(log.read_text().splitlines()) - logged
        cpu = _cpu_s(worker) + _cpu_s(proc.pid) - cpu
        assert kafka.up()
        wait_for(lambda: _completed(out) > done + 20, "load completed after the restart")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
        proc.stdout.close()
    # The worker and the run (the demo's clients) waited: about 1 s of CPU in all here,
    # where asking for metadata again and again took 13.5-17.5 s of the 20 two cores have
    # in 10 s (patience.patient).
    assert cpu < 4, cpu
    # About 10 progress lines and a few of aiokafka's (held back: patience.Repeats); before,
    # over 80,000 in the run's output and as many in the worker's log.
    assert printed < 200, "".join(out[-50:])
    assert logged < 200, log.read_text()[-5000:]
    assert proc.returncode == 0, "".join(out)
    assert "arrival -> assignment p50" in "".join(out)
