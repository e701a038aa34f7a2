"""The project's own Apache Kafka broker: fetched with Maven, run from its jars.

One node in KRaft combined mode (broker and controller) on 127.0.0.1. Jars are
cached under ``Settings.cache_dir``; data, config, log and pid file live under
``Settings.state_dir/kafka``.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from dispatcher.errors import StackError
from dispatcher.settings import KAFKA_VERSION, LOOPBACK, PROJECT_ROOT, Settings
from dispatcher.stack.process import LogScan, ManagedProcess, port_open

__all__ = ["READY_MARKER", "LocalKafka", "broker_config", "new_cluster_id"]

READY_MARKER = "Kafka Server started"
POM = PROJECT_ROOT / "ops" / "kafka" / "pom.xml"
MAIN_CLASS = "kafka.Kafka"
FORMAT_CLASS = "kafka.tools.StorageTool"
HEAP = ("-Xms256m", "-Xmx1g")
FETCH_TIMEOUT_S = 900
FORMAT_TIMEOUT_S = 300  # a JVM start and a few files: seconds, unless something is wrong

_LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
"""


def broker_config(settings: Settings, data_dir: Path | str) -> dict[str, str]:
    """The broker's server.properties as a mapping.

    docker-compose.kafka.yml sets the same values (a test holds them equal).
    """
    port, cport = settings.kafka_port, settings.kafka_controller_port
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{cport}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # A single node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "group.initial.rebalance.delay.ms": "0",
        # Topics come from topics.yaml (`dispatcher topics apply`), never by accident.
        "auto.create.topics.enable": "false",
    }


def new_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64, as ``kafka-storage random-uuid``
    makes, and like it never starting with "-" (1 in 64 would: the storage tool then
    reads it as an option and refuses to format)."""
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not raw.startswith("-"):
            return raw


class LocalKafka:
    """Fetch, format, start, stop and report the project's own broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.state_dir / "kafka"
        self.data_dir = self.home / "data"
        self.config_file = self.home / "server.properties"
        self.log4j_file = self.home / "log4j.properties"
        self.libs = settings.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
        self.process = ManagedProcess(
            name="kafka",
            pid_file=self.home / "kafka.pid",
            log_file=self.home / "kafka.log",
            marker=MAIN_CLASS,
        )

    # -- jars ---------------------------------------------------------------

    @property
    def fetched(self) -> bool:
        return (self.libs / ".complete").exists()

    def fetch(self) -> bool:
        """Downloads the broker jars with Maven unless cached. True if it downloaded.

        Raises:
            StackError: Maven is missing or the download failed.
        """
        if self.fetched:
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(
                "mvn not found: run `make` (ops/bootstrap-system.sh installs Maven) "
                "or set KAFKA_BOOTSTRAP_SERVERS to a broker you run"
            )
        if not POM.exists():
            raise StackError(f"{POM} is missing: the broker is fetched from a source checkout")
        self.libs.parent.mkdir(parents=True, exist_ok=True)
        # Download next to the cache and rename, so a half download is never used.
        with tempfile.TemporaryDirectory(dir=self.libs.parent) as tmp:
            staging = Path(tmp) / "libs"
            command = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
                       f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]  # fmt: skip
            result = _run(command, FETCH_TIMEOUT_S, f"fetching Kafka {KAFKA_VERSION} with Maven")
            if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
                raise StackError(
                    f"fetching Kafka {KAFKA_VERSION} with Maven failed "
                    f"(exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
                )
            (staging / ".complete").write_text(KAFKA_VERSION + "\n")
            shutil.rmtree(self.libs, ignore_errors=True)
            staging.rename(self.libs)
        return True

    # -- lifecycle ----------------------------------------------------------

    def pid(self) -> int | None:
        return self.process.pid()

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise StackError(
                "java not found: run `make` (ops/bootstrap-system.sh installs Java 17) "
                "or set KAFKA_BOOTSTRAP_SERVERS to a broker you run"
            )
        return java

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in broker_config(self.settings, self.data_dir).items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        self.log4j_file.write_text(_LOG4J)

    def _jvm(self, main: str, *args: str) -> list[str]:
        return [
            self._java(), *HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.log4j_file}",
            "-cp", f"{self.libs}/*", main, *args,
        ]  # fmt: skip

    def _format(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_file = self.home / "cluster.id"
        if not cluster_file.exists() or cluster_file.read_text().startswith("-"):
            cluster_file.write_text(new_cluster_id() + "\n")
        cluster_id = cluster_file.read_text().strip()
        result = _run(self._jvm(FORMAT_CLASS, "format", "--ignore-formatted",
                                "-t", cluster_id, "-c", str(self.config_file)),
                      FORMAT_TIMEOUT_S, f"formatting KRaft storage in {self.data_dir}")  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    def up(self, timeout: float = 120.0) -> bool:
        """Starts the broker and waits until it serves. True if it started it now.

        Raises:
            StackError: a port is taken by another program, the broker did
                not become ready within ``timeout`` seconds (the log tail says why),
                or it runs already but not where the settings say.
        """
        pid = self.pid()
        if pid is not None:
            if (problem := self.serving_problem(pid)) is not None:
                raise StackError(f"{problem}; run `dispatcher stack down` first")
            return False
        for port in (self.settings.kafka_port, self.settings.kafka_controller_port):
            if port_open(LOOPBACK, port):
                raise StackError(
                    f"port {LOOPBACK}:{port} is in use by a program the project did not "
                    "start; stop it, set KAFKA_BOOTSTRAP_SERVERS to use that broker, or "
                    "choose other ports with DISPATCHER_KAFKA_PORT / "
                    "DISPATCHER_KAFKA_CONTROLLER_PORT"
                )
        self.fetch()
        self._write_config()
        self._format()
        self.process.start_ready(
            self._jvm(MAIN_CLASS, str(self.config_file)),
            LogScan(self.process.log_file, READY_MARKER).found,
            what="the Kafka broker", timeout=timeout, poll=0.2, cwd=self.home,
        )  # fmt: skip
        return True

    def serving_problem(self, pid: int) -> str | None:
        """Why the running broker is not the one the settings ask for (None: it is): started
        with other ports, or not answering."""
        try:
            lines = self.config_file.read_text().splitlines()  # what it was started with
        except OSError:
            lines = []
        running = next((ln.partition("=")[2] for ln in lines if ln.startswith("listeners=")), None)
        wanted = broker_config(self.settings, self.data_dir)["listeners"]
        if running != wanted:
            return (f"the broker (pid {pid}) is running on {running or 'unknown ports'}, not on "
                    f"{wanted} as the settings ask")  # fmt: skip
        port = self.settings.kafka_port
        if not port_open(LOOPBACK, port):
            return (f"the broker (pid {pid}) is running but does not answer on "
                    f"{LOOPBACK}:{port} (log {self.process.log_file})")  # fmt: skip
        return None

    def down(self) -> bool:
        """Stops the broker. False if it was not running."""
        return self.process.stop(timeout=60.0)

    def purge(self) -> None:
        """Removes the broker's data and logs (the jar cache stays)."""
        if self.pid() is not None:
            raise StackError("stop the broker before purging its data")
        shutil.rmtree(self.home, ignore_errors=True)


def _run(command: list[str], timeout_s: int, doing: str) -> subprocess.CompletedProcess[str]:
    """Runs ``command`` to its end, its output captured.

    Raises:
        StackError: it ran longer than ``timeout_s`` (killed).
    """
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{doing} took over {timeout_s}s") from exc
