"""A server process the project starts, finds again and stops, by pid file.

The process runs in its own session so that it outlives the command that
started it (``dispatcher stack up`` returns; the broker keeps running) and so
that Ctrl-C in a terminal does not reach it before we stop it in order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dispatcher.errors import StackError

__all__ = ["LogScan", "ManagedProcess", "argv", "port_open", "tail"]

# Popen objects of the children this interpreter started, so that stop() can
# reap them and Python does not warn about a child it forgot.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port.

    A connection to a port of the ephemeral range that nothing listens on can be joined
    to itself by the kernel (TCP simultaneous open, when the source port it picks is that
    port): that is no server.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return bool(sock.getsockname() != sock.getpeername())
    except OSError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file, or '' when it does not exist."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LogScan:
    """Finds a line in a growing log, reading only what was added since the last look.

    (Looking at the tail alone misses a line that more output has pushed out
    of it between two looks: a broker with many consumer groups logs hundreds
    of lines right after it says it started.)
    """

    def __init__(self, path: Path, marker: str) -> None:
        self.path, self.marker = path, marker.encode()
        self._offset = 0
        self._found = False

    def found(self) -> bool:
        if not self._found:
            try:
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    added = f.read()
            except FileNotFoundError:
                return False
            self._found = self.marker in added
            # The next look starts early enough to see a marker cut by this one's end.
            self._offset = max(self._offset, self._offset + len(added) - len(self.marker))
        return self._found


def _stat(pid: int) -> tuple[bytes, int] | None:
    """The state letter and start time (clock ticks since boot) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Fields after the ')' that closes the command name: state is the first,
            # starttime (field 22 of the whole line) the 20th.
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in (b"Z", b"X")  # a zombie has exited


def argv(pid: int) -> list[str]:
    """The command line of a process ([] when it has gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]  # each argument ends with a NUL


@dataclass(frozen=True, slots=True)
class ManagedProcess:
    """One server process known by its pid file.

    Attributes:
        name: for messages ("kafka", "redis").
        pid_file: where the pid is kept while it runs.
        log_file: stdout and stderr of the process.
        marker: a string its command line must contain; a pid file whose pid
            now belongs to another program is stale, not ours.
    """

    name: str
    pid_file: Path
    log_file: Path
    marker: str

    def pid(self) -> int | None:
        """The pid of our running process, or None.

        The pid file holds the pid and the process's start time, so a pid that
        the system has since given to another program is not taken for ours.
        A stale pid file is left in place: this only reads (``stack status``
        reads without the stack lock, and removing what it read could remove a
        file a start had written meanwhile); ``start`` replaces it, ``stop``
        removes it.
        """
        try:
            pid_text, started_text = self.pid_file.read_text().split()
            pid, started = int(pid_text), int(started_text)
        except (FileNotFoundError, ValueError):
            return None
        stat = _stat(pid)
        if (
            stat is not None
            and stat[0] not in (b"Z", b"X")
            and stat[1] == started
            and self.marker in " ".join(argv(pid))
        ):
            return pid
        return None

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Starts the process detached, logging to ``log_file``; returns its pid."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists():  # keep the previous run's log for post-mortems
            self.log_file.replace(self.log_file.with_suffix(self.log_file.suffix + ".1"))
        with self.log_file.open("wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        _CHILDREN[proc.pid] = proc
        stat = _stat(proc.pid)
        # Written aside and renamed, so that a reader never sees it half written.
        aside = self.pid_file.with_name(f".{self.pid_file.name}.{os.getpid()}.tmp")
        aside.write_text(f"{proc.pid} {stat[1] if stat else -1}\n")
        aside.replace(self.pid_file)
        return proc.pid

    def start_ready(
        self,
        argv: Sequence[str],
        ready: Callable[[], bool],
        *,
        what: str,
        timeout: float,
        poll: float = 0.1,
        cwd: Path | None = None,
    ) -> int:
        """Starts the process and waits until ``ready()``; stops it again if that fails.

        Raises:
            StackError: it exited during start-up, or was not ready in ``timeout`` s
                (the log tail says why). Whatever the failure, Ctrl-C included,
                no half-started server is left behind.
        """
        pid = self.start(argv, cwd=cwd)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if self.exited(pid):
                    self.pid_file.unlink(missing_ok=True)
                    raise StackError(
                        f"{what} exited during start-up; log {self.log_file}:\n"
                        + tail(self.log_file)
                    )
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{what} was not ready after {timeout:.0f}s; log {self.log_file}:\n"
                        + tail(self.log_file)
                    )
                time.sleep(poll)
        except BaseException:
            self.stop()
            raise
        return pid

    def exited(self, pid: int) -> bool:
        """True when the process has ended (and reaps it if it is our child)."""
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return True
        return not _alive(pid)

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. False if it was not running
        (a stale pid file is removed). Callers hold the stack lock, as for ``start``.

        Raises:
            StackError: the process cannot be signalled, or outlives SIGKILL.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal(pid, signal.SIGTERM)
        if not self._wait(pid, timeout):
            self._signal(pid, signal.SIGKILL)
            if not self._wait(pid, 10.0):
                raise StackError(f"{self.name} (pid {pid}) is still running after SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return True

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)  # the server and anything it started
        except ProcessLookupError:
            pass  # already gone
        except OSError as exc:
            raise StackError(f"cannot signal {self.name} (pid {pid}): {exc}") from exc

    def _wait(self, pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.exited(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True
