"""ManagedProcess against real processes: start, find again, stale pid files, stop."""

from __future__ import annotations

import base64
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatcher.stack.kafka import new_cluster_id
from dispatcher.stack.process import LogScan, ManagedProcess, port_open, tail

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]


@pytest.fixture
def proc(tmp_path: Path):
    p = ManagedProcess("sleeper", tmp_path / "s.pid", tmp_path / "s.log", marker="time.sleep(60)")
    yield p
    p.stop(timeout=5)


def test_start_find_and_stop(proc: ManagedProcess) -> None:
    assert proc.pid() is None
    pid = proc.start(SLEEPER)
    assert proc.pid() == pid
    assert proc.stop(timeout=5) is True
    assert proc.pid() is None
    assert not proc.pid_file.exists()
    assert proc.stop(timeout=5) is False  # idempotent


def test_pid_file_of_another_program_is_stale(proc: ManagedProcess) -> None:
    proc.pid_file.write_text(f"{os.getpid()} 1\n")  # pytest is alive but not ours
    assert proc.pid() is None
    assert not proc.pid_file.exists()
    proc.pid_file.write_text("garbage\n")
    assert proc.pid() is None


def test_a_recycled_pid_is_not_taken_for_ours(proc: ManagedProcess) -> None:
    pid = proc.start(SLEEPER)
    real = proc.pid_file.read_text()
    _, started = real.split()
    # Same pid, same command line, but another start time: the pid was given anew.
    proc.pid_file.write_text(f"{pid} {int(started) + 1}\n")
    assert proc.pid() is None
    proc.pid_file.write_text(real)
    assert proc.pid() == pid


def test_log_is_kept_and_previous_run_rotated(proc: ManagedProcess) -> None:
    proc.start(SLEEPER)
    proc.stop(timeout=5)
    first = proc.log_file.read_text()
    proc.start(SLEEPER)
    assert proc.log_file.with_suffix(".log.1").read_text() == first
    proc.stop(timeout=5)
    assert tail(proc.log_file).strip() in ("", "up")


def test_a_process_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)"]  # fmt: skip
    p = ManagedProcess("stubborn", tmp_path / "p.pid", tmp_path / "p.log", marker="SIG_IGN")
    p.start(stubborn)
    deadline = time.monotonic() + 10
    while "ready" not in tail(p.log_file):
        assert time.monotonic() < deadline, "the stubborn process never started"
        time.sleep(0.02)
    assert p.stop(timeout=0.5) is True
    assert p.pid() is None


def test_port_open() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", port)


def test_log_scan_finds_a_marker_pushed_out_of_the_tail_and_one_cut_between_looks(
    tmp_path: Path,
) -> None:
    log = tmp_path / "server.log"
    scan = LogScan(log, "Server started")
    assert not scan.found()  # no log yet
    log.write_text("booting\nServer sta")
    assert not scan.found()
    with log.open("a") as f:
        f.write("rted\n" + "loading group metadata\n" * 5000)
    assert "Server started" not in tail(log, 400)  # what the old readiness check looked at
    assert scan.found()
    assert scan.found()  # and stays found


def test_log_scan_does_not_match_other_lines(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("Server starting\n")
    scan = LogScan(log, "Server started")
    assert not scan.found()
    with log.open("a") as f:
        f.write("Server stopped\n")
    assert not scan.found()


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8 encodes to "-" first in URL-safe base64: the storage tool took such an id for an
    # option and refused to format (1 fresh broker in 64 failed to start).
    draws = iter([uuid.UUID(bytes=b"\xf8" + b"\0" * 15), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    assert new_cluster_id() == base64.urlsafe_b64encode(b"\x01" * 16).rstrip(b"=").decode()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:{port}, 127.0.0.1:{port}"}, "no broker answers"),
        ({"REDIS_URL": "redis://127.0.0.1:{port}/0"}, "no Redis answers there"),
    ],
)
def test_stack_up_says_when_an_external_server_does_not_answer(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    """Before, `stack up` (and `dispatcher run`) went on as if it were there."""
    from dispatcher.errors import StackError  # noqa: PLC0415
    from dispatcher.settings import Settings  # noqa: PLC0415
    from dispatcher.stack import Stack  # noqa: PLC0415

    port = _unused_port()
    both = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "DISPATCHER_STATE_DIR": str(tmp_path)}  # fmt: skip
    settings = Settings.from_env(both | {k: v.format(port=port) for k, v in env.items()})
    only = "kafka" if "KAFKA_BOOTSTRAP_SERVERS" in env else "redis"
    with pytest.raises(StackError, match=says.format(port=port)):
        Stack(settings).up(kafka=only == "kafka", redis=only == "redis")


def test_down_leaves_servers_another_caller_holds_in_use(tmp_path: Path) -> None:
    """A `dispatcher run` and a test session share the servers whichever started them; the
    one that started them stops them only when the other is done (before: at once)."""
    from dispatcher.settings import Settings  # noqa: PLC0415
    from dispatcher.stack import Stack  # noqa: PLC0415

    stack = Stack(Settings.from_env({"DISPATCHER_STATE_DIR": str(tmp_path)}))
    stops: list[str] = []

    def stop(name: str) -> Callable[[], bool]:
        def down() -> bool:
            stops.append(name)
            return True

        return down

    # (the locks are under test here, not the servers: their stop is recorded, not run)
    stack.kafka.down = stop("kafka")  # type: ignore[method-assign]
    stack.redis.down = stop("redis")  # type: ignore[method-assign]
    with stack.in_use(("kafka",)):  # another caller uses the broker
        assert stack.down(only=("kafka", "redis"), unused_only=True) == ["redis"]
        assert stack.down(only=("kafka",)) == ["kafka"]  # `stack down` stops what it is told
    assert stack.down(only=("kafka",), unused_only=True) == ["kafka"]
    assert stops == ["redis", "kafka", "kafka"]
