"""ManagedProcess against real processes: start, find again, stale pid files, stop."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dispatcher.stack.kafka import broker_config, new_cluster_id
from dispatcher.stack.process import LogScan, ManagedProcess, port_open, tail

if TYPE_CHECKING:
    from dispatcher.settings import Settings
    from dispatcher.stack import Stack

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
    assert proc.stop(timeout=5) is False
    assert not proc.pid_file.exists()  # stop (under the stack lock) removes it
    proc.pid_file.write_text("garbage\n")
    assert proc.pid() is None


def test_reading_the_pid_never_removes_the_pid_file(proc: ManagedProcess) -> None:
    """`stack status` reads without the stack lock: before, a pid() that read a file being
    written (empty, or the pid alone) removed it once complete, and a started server was
    lost (2 in 3 starts, with status running in a loop)."""
    for text in ("", f"{os.getpid()}", f"{os.getpid()} 1\n"):  # half written, or stale
        proc.pid_file.write_text(text)
        assert proc.pid() is None
        assert proc.pid_file.read_text() == text


# `stack status` in a loop in another shell: reads the pid file given as argv[1], for ever.
READER = [
    sys.executable,
    "-c",
    """if True:
    import sys
    from pathlib import Path
    from dispatcher.stack.process import ManagedProcess
    p = ManagedProcess("sleeper", Path(sys.argv[1]), Path("unused.log"), "time.sleep(60)")
    print("reading", flush=True)
    while True:
        p.pid()
""",
]


def test_a_start_beside_a_reader_in_a_loop_keeps_its_pid_file(proc: ManagedProcess) -> None:
    with subprocess.Popen(
        [*READER, str(proc.pid_file)], stdout=subprocess.PIPE, text=True
    ) as reader:
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline() == "reading\n"
            for _ in range(10):
                pid = proc.start(SLEEPER)
                time.sleep(0.05)  # (the reader reads the file many times meanwhile)
                assert proc.pid() == pid
                assert proc.stop(timeout=5) is True
        finally:
            reader.kill()
    assert [f.name for f in proc.pid_file.parent.iterdir() if f.suffix == ".tmp"] == []


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


@pytest.fixture
def unused_port() -> Iterator[Callable[[], int]]:
    """Gives ports nothing listens on, held bound (not listening) until the test ends: a
    connection there is refused, and no other program can start serving on one meanwhile
    (before, a port picked and released was once answered during the test, by whatever
    had taken it since)."""
    held: list[socket.socket] = []

    def port() -> int:
        s = socket.socket()
        held.append(s)
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

    yield port
    for s in held:
        s.close()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:{port}, 127.0.0.1:{port}"}, "no broker answers"),
        ({"REDIS_URL": "redis://127.0.0.1:{port}/0"}, "no Redis answers there"),
    ],
)
def test_stack_up_says_when_an_external_server_does_not_answer(
    tmp_path: Path, env: dict[str, str], says: str, unused_port: Callable[[], int]
) -> None:
    """Before, `stack up` (and `dispatcher run`) went on as if it were there."""
    from dispatcher.errors import StackError  # noqa: PLC0415
    from dispatcher.settings import Settings  # noqa: PLC0415
    from dispatcher.stack import Stack  # noqa: PLC0415

    port = unused_port()
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


def _stand_in(stack: Stack, name: str, settings: Settings) -> int:
    """A process the stack takes for its server `name` started with ``settings`` (it serves
    nothing: these tests are about what `up` makes of it)."""
    if name == "kafka":
        kafka = stack.kafka
        kafka.home.mkdir(parents=True)
        config = broker_config(settings, kafka.data_dir)
        kafka.config_file.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        title = "kafka.Kafka"
    else:  # as redis-server shows itself once started
        title = f"redis-server 127.0.0.1:{settings.redis_port}"
    server = stack.kafka if name == "kafka" else stack.redis
    return server.process.start([*SLEEPER, title])


@pytest.mark.parametrize("name", ["kafka", "redis"])
@pytest.mark.parametrize("ports", ["other", "same"])
def test_up_refuses_a_server_of_ours_running_elsewhere_than_the_settings_say(
    tmp_path: Path, name: str, ports: str, unused_port: Callable[[], int]
) -> None:
    """Before, `stack up` took a server started with other ports for up, and clients
    looked for it where it was not."""
    from dispatcher.errors import StackError  # noqa: PLC0415
    from dispatcher.settings import Settings  # noqa: PLC0415
    from dispatcher.stack import Stack  # noqa: PLC0415

    def settings() -> Settings:
        return Settings.from_env({
            "DISPATCHER_STATE_DIR": str(tmp_path), "DISPATCHER_CACHE_DIR": str(tmp_path / "c"),
            "DISPATCHER_KAFKA_PORT": str(unused_port()),
            "DISPATCHER_KAFKA_CONTROLLER_PORT": str(unused_port()),
            "DISPATCHER_REDIS_PORT": str(unused_port()),
        })  # fmt: skip

    before = settings()
    now = settings() if ports == "other" else before
    stack = Stack(now)
    pid = _stand_in(stack, name, before)
    port = before.kafka_port if name == "kafka" else before.redis_port
    says = (
        f"is running on .*{port}\\b.*, not on"
        if ports == "other"
        else "is running but does not answer"
    )
    try:
        with pytest.raises(StackError, match=f"\\(pid {pid}\\) {says} .*stack down` first"):
            stack.up(kafka=name == "kafka", redis=name == "redis")
    finally:
        (stack.kafka if name == "kafka" else stack.redis).process.stop(timeout=5)


def test_a_storage_format_that_hangs_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, `stack up` waited for ever for a storage tool that hung."""
    from dispatcher.errors import StackError  # noqa: PLC0415
    from dispatcher.settings import Settings  # noqa: PLC0415
    from dispatcher.stack import kafka as kafka_module  # noqa: PLC0415

    kafka = kafka_module.LocalKafka(Settings.from_env({"DISPATCHER_STATE_DIR": str(tmp_path)}))
    kafka.home.mkdir(parents=True)
    monkeypatch.setattr(kafka_module, "FORMAT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(kafka, "_jvm", lambda *_: [*SLEEPER[:2], "import time; time.sleep(5)"])
    started = time.monotonic()
    with pytest.raises(StackError, match=r"formatting KRaft storage in .* took over 0\.5s"):
        kafka._format()
    assert time.monotonic() - started < 4
