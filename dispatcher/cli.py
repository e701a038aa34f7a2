"""The ``dispatcher`` command line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click

from dispatcher import __version__
from dispatcher.demo import run_demo
from dispatcher.errors import ConfigError, DispatcherError, StackError
from dispatcher.settings import Settings
from dispatcher.stack import ServiceStatus, Stack
from dispatcher.topics import (
    DEFAULT_TOPICS_FILE,
    TopicNames,
    TopicReport,
    apply_topics,
    delete_topics,
    load_topics,
)
from dispatcher.watch import watch_topics

__all__ = ["cli", "main"]

_SCENARIO_NAMES = ("steady", "surge", "tenant-flood", "deadline-crunch", "agent-churn", "large")

_topics_file = click.option(
    "--file",
    "topics_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_TOPICS_FILE,
    show_default=True,
    help="The topics declaration.",
)


def _settings() -> Settings:
    return Settings.from_env()


class _Finite(click.FloatRange):
    """A FloatRange that also refuses NaN (which passes every comparison)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if math.isnan(rv):
            self.fail(f"{value!r} is not a number.", param, ctx)
        return rv


_WEEK_S = 7 * 86_400
_duration = click.option("--duration", type=_Finite(min=0, min_open=True, max=_WEEK_S),
                         default=None, help="Stop after this many seconds.")  # fmt: skip
_prefix = click.option("--topic-prefix", default="", help="Prefix of every topic name.")
_rate = click.option("--rate", type=_Finite(min=0, min_open=True, max=1e6), default=40.0,
                     show_default=True, help="Demo loads per second.")  # fmt: skip


@click.group()
@click.version_option(__version__, prog_name="dispatcher")
def cli() -> None:
    """dispatcher: match loads to agents over Kafka, and write down why."""


# -- stack -----------------------------------------------------------------------


@cli.group()
def stack() -> None:
    """Start, stop and inspect the Kafka broker and Redis the project runs."""


@stack.command("up")
@click.option("--kafka/--no-kafka", default=True, help="Start the broker.")
@click.option("--redis/--no-redis", default=True, help="Start Redis.")
def stack_up(kafka: bool, redis: bool) -> None:
    """Start what is not running yet (idempotent) and wait until it serves."""
    s = Stack(_settings())
    t0 = time.monotonic()
    endpoints = s.up(kafka=kafka, redis=redis)
    started = ", ".join(endpoints.started) or "nothing (already running or external)"
    click.echo(f"started: {started} in {time.monotonic() - t0:.1f}s")
    _print_status(s)


@stack.command("fetch")
def stack_fetch() -> None:
    """Download the broker's jars with Maven unless cached (`stack up` does it too)."""
    s = Stack(_settings())
    if s.settings.kafka_bootstrap:
        click.echo("KAFKA_BOOTSTRAP_SERVERS is set: no local broker, nothing to fetch")
        return
    t0 = time.monotonic()
    downloaded = s.kafka.fetch()
    state = f"downloaded in {time.monotonic() - t0:.1f}s" if downloaded else "already cached"
    click.echo(f"kafka jars: {state} ({s.kafka.libs})")


@stack.command("down")
@click.option("--purge", is_flag=True, help="Also delete the servers' data (jars stay cached).")
def stack_down(purge: bool) -> None:
    """Stop the servers the project started (idempotent)."""
    s = Stack(_settings())
    stopped = s.down()
    click.echo("stopped: " + (", ".join(stopped) or "nothing was running"))
    if purge:
        s.kafka.purge()
        s.redis.purge()
        click.echo(f"purged: {s.kafka.home}, {s.redis.home}")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stack_status(as_json: bool) -> None:
    """Say what runs where. Exits 1 when something is not running."""
    s = Stack(_settings())
    statuses = s.status()
    if as_json:
        click.echo(json.dumps([asdict(st) for st in statuses], indent=2))
    else:
        _print_status(s, statuses)
    if not all(st.running for st in statuses):
        sys.exit(1)


def _print_status(s: Stack, statuses: list[ServiceStatus] | None = None) -> None:
    for st in statuses or s.status():
        click.echo(st.line())


# -- topics ----------------------------------------------------------------------


@cli.group()
def topics() -> None:
    """Check and apply the topics declared in topics.yaml."""


@topics.command("check")
@_topics_file
def topics_check(topics_file: Path) -> None:
    """Validate the topics file without a broker."""
    spec = load_topics(topics_file)
    click.echo(f"{topics_file}: {len(spec.topics)} topics, {len(spec.co_partitioned)} "
               "co-partition group(s), valid")  # fmt: skip


@topics.command("apply")
@_topics_file
@click.option(
    "--alter-configs", is_flag=True, help="Set drifted topic configs to the declared ones."
)
def topics_apply(topics_file: Path, alter_configs: bool) -> None:
    """Create missing topics and report drift. Exits 1 when drift remains."""
    spec = load_topics(topics_file)
    bootstrap = _settings().kafka_bootstrap or _settings().local_bootstrap
    reports = asyncio.run(apply_topics(spec, bootstrap, alter_configs=alter_configs))
    _print_reports(reports)
    if any(r.action == "drift" for r in reports):
        sys.exit(1)


def _print_reports(reports: list[TopicReport]) -> None:
    for r in reports:
        click.echo(r.line())


# -- schemas and codec -------------------------------------------------------------


@cli.group()
def schemas() -> None:
    """The Avro contracts under schemas/ and their append-only id registry."""


@schemas.command("check")
def schemas_check() -> None:
    """Exit 1 when a .avsc file changed without a registered version."""
    from dispatcher.codecs.schemas import SchemaRegistry  # noqa: PLC0415 - keeps startup light

    pending = SchemaRegistry().pending()
    if pending:
        click.echo("not registered: " + ", ".join(pending), err=True)
        sys.exit(1)
    click.echo("every schema is registered")


@schemas.command("register")
def schemas_register() -> None:
    """Append a new id for every changed or new .avsc file to schemas/registry.json."""
    from dispatcher.codecs.schemas import SchemaRegistry  # noqa: PLC0415

    for reg in SchemaRegistry().register():
        click.echo(f"registered {reg.name} as id {reg.id} (fingerprint {reg.fingerprint.hex()})")


@cli.group()
def codec() -> None:
    """Encode JSON lines to framed Avro and back, for operators and other tools."""


_format = click.option(
    "--format",
    "fmt",
    type=click.Choice(["base64", "hex"]),
    default="base64",
    show_default=True,
    help="How each framed record is written as one line.",
)


@codec.command("encode")
@click.option("--schema", "name", required=True, help="Record name, e.g. LoadEvent.")
@click.option("--framing", type=click.Choice(["confluent", "single-object"]), default="confluent",
              show_default=True)  # fmt: skip
@_format
def codec_encode(name: str, framing: str, fmt: str) -> None:
    """JSON lines on stdin -> one framed Avro record per line on stdout."""
    from dispatcher.codecs import Codec  # noqa: PLC0415
    from dispatcher.codecs.codec import MODELS  # noqa: PLC0415

    if name not in MODELS:
        raise click.BadParameter(f"unknown schema {name!r}; one of {', '.join(MODELS)}")
    c, failed = Codec(), 0
    for n, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            record = MODELS[name].model_validate_json(line)
        except ValueError as exc:
            failed += 1
            click.echo(f"line {n}: not a valid {name}: {exc}", err=True)
            continue
        data = c.encode(record, framing=framing)  # type: ignore[arg-type]
        click.echo(base64.b64encode(data).decode() if fmt == "base64" else data.hex())
    sys.exit(1 if failed else 0)


@codec.command("decode")
@click.option("--schema", "name", default=None, help="Refuse records of any other schema.")
@_format
def codec_decode(name: str | None, fmt: str) -> None:
    """One framed Avro record per line on stdin -> JSON lines on stdout."""
    from dispatcher.codecs import Codec, CodecError  # noqa: PLC0415

    c, failed = Codec(), 0
    for n, line in enumerate(sys.stdin, 1):
        text = line.strip()
        if not text:
            continue
        try:
            data = base64.b64decode(text, validate=True) if fmt == "base64" else bytes.fromhex(text)
            click.echo(c.decode(data, name, offset=n).model_dump_json())
        except (ValueError, CodecError) as exc:
            failed += 1
            click.echo(f"line {n}: {exc}", err=True)
    sys.exit(1 if failed else 0)


# -- simulate ----------------------------------------------------------------------


@cli.command("simulate")
@click.option("--scenario", "name", type=click.Choice(sorted(_SCENARIO_NAMES)), required=True)
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--policy", "policy_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="YAML file of Policy fields to change (a mapping such as "
              "weights: the entries it names).")  # fmt: skip
@click.option("--agents", type=click.IntRange(min=1), default=None,
              help="Override the scenario's agent count.")  # fmt: skip
@click.option("--duration", type=_Finite(min=0.001, max=_WEEK_S),
              default=None, help="Override the simulated seconds (1 ms to a week).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def simulate_cmd(  # noqa: PLR0917 - click passes options by position
    name: str,
    seed: int,
    policy_file: Path | None,
    agents: int | None,
    duration: float | None,
    as_json: bool,
) -> None:
    """Run a synthetic workload through the matching core (no broker) and report.

    The same scenario, seed and policy give the same decisions: the digest
    printed is a hash of the whole decision stream.
    """
    from dispatcher.sim import SCENARIOS, load_policy, sim_policy, simulate  # noqa: PLC0415

    sc = SCENARIOS[name].scaled(agents=agents, duration_s=duration)
    policy = sim_policy(sc)
    if policy_file:
        policy = load_policy(policy_file, policy)
    show = not as_json and sys.stderr.isatty()
    with click.progressbar(length=100, label=f"{name} seed {seed}", file=sys.stderr,
                           hidden=not show) as bar:  # fmt: skip
        done = [0]

        def progress(fraction: float) -> None:
            step = int(fraction * 100) - done[0]
            if step > 0:
                bar.update(step)
                done[0] += step

        report = simulate(sc, seed, policy, progress=progress)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, sort_keys=True))
        return
    m = report.metrics

    def cell(value: float | None, spec: str, width: int) -> str:
        """``value`` as ``spec`` says, or "-" when there is none (nothing to measure)."""
        return f"{'-' if value is None else format(value, spec):>{width}}"

    click.echo(f"scenario {name}  seed {seed}  agents {sc.agents}  {sc.duration_s:g}s simulated")
    click.echo(f"digest   {report.digest}")
    click.echo(f"decisions {report.decisions}  ({cell(m['decisions_per_s'], ',.0f', 0)}/s "
               "in the core)")  # fmt: skip
    click.echo(f"loads    {json.dumps(m['loads'])}")
    click.echo(f"utilisation {cell(m['utilisation_pct'], '.1f', 0)}%   "
               f"jain(weighted) {cell(m['jain_weighted'], '.3f', 0)}   "
               f"total match score {m['total_match_score']:.1f}")  # fmt: skip
    click.echo("class      SLA%    wait p50    p95     p99 (ms)")
    for cls, w in m["wait_ms"].items():
        cells = " ".join(cell(w[q], ".0f", 8) for q in ("p50", "p95", "p99"))
        click.echo(f"{cls:<9} {cell(m['sla_compliance_pct'][cls], '.1f', 6)} {cells}")
    for tenant, share in m["tenant_share"].items():
        tw = m["tenant_wait_ms"][tenant]
        click.echo(f"tenant {tenant:<10} share {share:6.1%}  wait p50 {cell(tw['p50'], '.0f', 7)} "
                   f"p99 {cell(tw['p99'], '.0f', 7)} ms")  # fmt: skip


# -- run -------------------------------------------------------------------------


@cli.command("run")
@_topics_file
@_duration
@_rate
@click.option("--agents", type=click.IntRange(min=1, max=100_000), default=60, show_default=True,
              help="Demo agents.")  # fmt: skip
def run(topics_file: Path, duration: float | None, rate: float, agents: int) -> None:
    """Start the whole system with a demo workload; Ctrl-C stops what this started.

    Brings up the broker and Redis, creates the topics of topics.yaml under a
    prefix of this run's own (``demo-<time>-``), starts a dispatcher worker on
    them, then drives it with simulated producers and agents, printing progress
    every second and a summary at the end. The demo's topics are deleted when it
    stops (and those of a run that was killed, when the next one starts), so each
    run starts from an empty log instead of folding every earlier demo's.
    """
    spec = load_topics(topics_file)
    s = Stack(_settings())

    # SIGTERM (from a supervisor or `kill`) ends the run like Ctrl-C does.
    def _interrupt(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    started: tuple[str, ...] = ()
    worker: subprocess.Popen[bytes] | None = None
    demo = _DemoRun.claim(s.settings)
    bootstrap = ""
    users = contextlib.ExitStack()  # (a test session beside it may use the same servers)
    users.enter_context(s.in_use())
    try:
        endpoints = s.up()  # if interrupted, it stops what it had started itself
        started = endpoints.started
        bootstrap = endpoints.kafka_bootstrap
        for dead in demo.dead_runs():
            try:
                asyncio.run(delete_topics(list(spec.prefixed(dead.prefix).topics), bootstrap))
            except DispatcherError as exc:  # (kept on record: the next run tries again)
                click.echo(f"could not delete the topics of {dead.prefix}*: {exc}")
                os.close(dead.lock)
            else:
                dead.forget()
        _print_reports(asyncio.run(apply_topics(spec.prefixed(demo.prefix), bootstrap)))
        _print_status(s)
        click.echo(f"kafka: {bootstrap}   redis: {endpoints.redis_url}")
        # Policies are signed: with the keys of DISPATCHER_POLICY_KEYS, or a key of this run's.
        keys = dict(s.settings.policy_keys) or {"demo": secrets.token_hex(32).encode()}
        worker = _start_worker(demo, bootstrap, endpoints.redis_url, keys)
        whose = "your DISPATCHER_POLICY_KEYS" if s.settings.policy_keys else "a key of this run"
        click.echo(f"policies: the worker applies only those signed with {whose}")
        click.echo("Ctrl-C stops everything this command started.")
        asyncio.run(run_demo(bootstrap, topics=TopicNames.prefixed(demo.prefix), agents=agents,
                             rate=rate, duration_s=duration, echo=click.echo,
                             policy_keys=keys, publish_policy=True))  # fmt: skip
    except KeyboardInterrupt:
        click.echo("\ninterrupted")
    finally:
        if worker is not None:
            click.echo("stopping: worker")
            _stop(worker)
        if bootstrap:  # (deleting the topics of a run that created none does no harm)
            with contextlib.suppress(DispatcherError):
                asyncio.run(delete_topics(list(spec.prefixed(demo.prefix).topics), bootstrap))
        demo.forget()
        users.close()
        if started:
            stopped = s.down(only=started, unused_only=True)
            click.echo("stopping: " + ", ".join(stopped))
            if left := [name for name in started if name not in stopped]:
                click.echo(f"left running, in use by others: {', '.join(left)}")


@cli.command("watch")
@_topics_file
@_duration
@_prefix
def watch(topics_file: Path, duration: float | None, topic_prefix: str) -> None:
    """Show records arriving on every declared topic (counts per second)."""
    s = _settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch_topics(s.kafka_bootstrap or s.local_bootstrap,
                                 list(load_topics(topics_file).prefixed(topic_prefix).topics),
                                 duration=duration, echo=click.echo))  # fmt: skip


@cli.command("demo")
@_duration
@_rate
@click.option("--agents", type=click.IntRange(min=1, max=100_000), default=60, show_default=True)
@click.option("--pools", type=click.IntRange(min=1, max=1_000), default=2, show_default=True)
@_prefix
@click.option("--publish-policy", is_flag=True,
              help="First publish the demo's policy (short ack and heartbeat timeouts). Every "
                   "pool of the workers gets it, and its version is the time: publish it only "
                   "to workers of your own.")  # fmt: skip
def demo(  # noqa: PLR0917 - click passes options by position
    duration: float | None, rate: float, agents: int, pools: int, topic_prefix: str,
    publish_policy: bool,
) -> None:  # fmt: skip
    """Drive a running worker with simulated producers and agents (see `dispatcher run`)."""
    s = _settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(s.kafka_bootstrap or s.local_bootstrap, agents=agents, pools=pools,
                             topics=TopicNames.prefixed(topic_prefix), rate=rate,
                             duration_s=duration, echo=click.echo, policy_keys=s.policy_keys,
                             publish_policy=publish_policy))  # fmt: skip


DEMO_PREFIX = "demo-"


@dataclass(frozen=True)
class _DemoRun:
    """One `dispatcher run`: its prefix, and a lock file under the state directory that it
    and its worker hold while either lives. A run killed with -9 leaves its topics and
    data behind, and its lock file unheld: the next run deletes them. Topics no run of
    this state directory recorded, or of a run still alive, are never touched."""

    settings: Settings
    prefix: str  # demo-<time>-
    lock: int  # the held lock file's descriptor

    @property
    def log(self) -> Path:
        """The run's worker log (kept until the next run starts)."""
        return _runs_dir(self.settings) / f"{self.prefix}worker.log"

    @classmethod
    def claim(cls, settings: Settings) -> _DemoRun:
        """A new run, its lock held; the logs of runs that ended go."""
        with _runs_locked(settings) as runs:
            for log in runs.glob(f"{DEMO_PREFIX}*worker.log"):
                if not (runs / (log.name.removesuffix("worker.log") + "lock")).exists():
                    log.unlink()
            stamp = time.time_ns() // 1000
            while True:  # (two runs in the same microsecond: the second takes the next one)
                prefix = f"{DEMO_PREFIX}{stamp}-"
                try:
                    fd = os.open(runs / f"{prefix}lock", os.O_RDWR | os.O_CREAT | os.O_EXCL)
                except FileExistsError:
                    stamp += 1
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX)
                return cls(settings, prefix, fd)

    def dead_runs(self) -> list[_DemoRun]:
        """The other runs of this state directory whose processes are gone (their locks
        held by the caller until ``forget``)."""
        dead = []
        with _runs_locked(self.settings) as runs:
            for path in sorted(runs.glob(f"{DEMO_PREFIX}*lock")):
                prefix = path.name.removesuffix("lock")
                if prefix == self.prefix:
                    continue
                try:
                    fd = os.open(path, os.O_RDWR)
                except FileNotFoundError:  # forgotten just now by another run
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # alive
                    os.close(fd)
                    continue
                dead.append(_DemoRun(self.settings, prefix, fd))
        return dead

    def forget(self) -> None:
        """Deletes the run's Faust data and state snapshots (see WorkerConfig.datadir and
        snapshot_dir), then its lock file (its log goes when the next run starts)."""
        for kind in ("faust", "snapshots"):
            for path in (self.settings.state_dir / kind).glob(f"{self.prefix}*"):
                shutil.rmtree(path, ignore_errors=True)
        (_runs_dir(self.settings) / f"{self.prefix}lock").unlink(missing_ok=True)
        os.close(self.lock)


def _runs_dir(settings: Settings) -> Path:
    return settings.state_dir / "demo-runs"


@contextlib.contextmanager
def _runs_locked(settings: Settings) -> Iterator[Path]:
    """The runs' directory, while no other run looks at it (runs claim a name, and try
    the others' locks, one at a time)."""
    runs = _runs_dir(settings)
    runs.mkdir(parents=True, exist_ok=True)
    with (runs / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield runs


def _start_worker(
    demo: _DemoRun, bootstrap: str, redis_url: str, policy_keys: Mapping[str, bytes]
) -> subprocess.Popen[bytes]:
    """A worker process on the demo's topics, in its own session (Ctrl-C reaches us, and
    we stop it), holding the run's lock too; its app id (consumer group) is the demo's
    own."""
    log_path, prefix = demo.log, demo.prefix
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        web_port = sock.getsockname()[1]
    keys = ",".join(f"{k}={v.decode()}" for k, v in policy_keys.items())
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "REDIS_URL": redis_url,
                        "DISPATCHER_POLICY_KEYS": keys}  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "worker", "--web-port", str(web_port),
             "--topic-prefix", prefix, "--app-id", f"{prefix}dispatcher", "--loglevel", "info"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            pass_fds=(demo.lock,),
        )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while "[^Worker]: Ready" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise StackError(f"the worker did not start (log {log_path}):\n{tail}")
            time.sleep(0.2)
    except BaseException:  # Ctrl-C too: it runs in a session of its own, so stop it here
        _stop(proc)
        raise
    click.echo(f"worker: pid {proc.pid}, web http://127.0.0.1:{web_port}/, log {log_path}")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- audit, what-if, explain, policies ----------------------------------------------

_as_json = click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")


def _bootstrap() -> str:
    s = _settings()
    return s.kafka_bootstrap or s.local_bootstrap


def _epoch_ms(iso: str) -> int:
    """An ISO 8601 time as epoch ms (without an offset: local time).

    Raises:
        ValueError: not an ISO 8601 time.
    """
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def _position(value: str | None) -> tuple[str, int] | None:
    """An offset (an integer) or a time (ISO 8601, as epoch ms)."""
    if value is None:
        return None
    if value.isascii() and value.isdigit():  # ("²".isdigit() is true)
        return ("offset", int(value))
    try:
        return ("time", _epoch_ms(value))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: an offset or an ISO 8601 time") from exc


def _replay_progress() -> Callable[[int], None]:
    """Prints, on stderr, how many inputs a replay has done and at what rate."""
    started = time.monotonic()

    def progress(n: int) -> None:
        rate = n / max(1e-9, time.monotonic() - started)
        click.echo(f"  {n:,} inputs replayed ({rate:,.0f}/s)", err=True)

    return progress


@cli.command("audit")
@click.option("--pool", default=None, help="Check only this pool's decisions.")
@click.option("--from", "start", default=None, help="Input offset or ISO time to check from.")
@click.option("--to", "end", default=None, help="Input offset or ISO time to check up to.")
@click.option("--jobs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Partitions replayed at a time, each in its own process (0: one per core "
                   "for a long input sequence).")  # fmt: skip
@click.option("--live", "live_app", default=None, metavar="APP_ID",
              help="The workers are running with this app id: decisions of inputs they have "
                   "not committed yet are pending, not missing.")  # fmt: skip
@_prefix
@_as_json
def audit_cmd(  # noqa: PLR0917 - one option each
    pool: str | None, start: str | None, end: str | None, jobs: int, live_app: str | None,
    topic_prefix: str, as_json: bool,
) -> None:  # fmt: skip
    """Re-run the core on the recorded inputs and check every logged decision byte for byte.

    Exits 1 on any mismatch, missing or unexplained decision.
    """
    from dispatcher.audit import Scope, audit  # noqa: PLC0415 - kept off the import path of others

    scope = Scope(pool, _position(start), _position(end))
    started = time.monotonic()
    results = asyncio.run(audit(_bootstrap(), TopicNames.prefixed(topic_prefix),
                                progress=_replay_progress(), jobs=jobs, scope=scope,
                                group=live_app))  # fmt: skip
    rows: list[dict[str, Any]] = []
    bad = 0
    for r in results:
        mism = r.mismatches
        bad += len(mism) + len(r.missing) + len(r.unexplained)
        rows.append({"partition": r.partition, "inputs": r.inputs, "checked": r.checked,
                     "matched": r.matched, "repeats": r.repeats, "mismatches": len(mism),
                     "missing": len(r.missing), "unexplained": len(r.unexplained),
                     "expired": r.expired, "pending": r.pending,
                     "first_mismatch": asdict(mism[0]) if mism else None,
                     "missing_ids": r.missing[:5],
                     "unexplained_ids": r.unexplained[:5]})  # fmt: skip
    total = sum(x["checked"] for x in rows)
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"partitions": rows, "checked": total, "problems": bad,
                               "seconds": elapsed}, indent=2, default=str))  # fmt: skip
    else:
        click.echo(f"{'part':>4} {'inputs':>8} {'checked':>8} {'matched':>8} {'repeats':>7} "
                   f"{'mismatch':>8} {'missing':>7} {'unexpl.':>7}")  # fmt: skip
        for x in rows:
            click.echo(f"{x['partition']:>4} {x['inputs']:>8,} {x['checked']:>8,} "
                       f"{x['matched']:>8,} {x['repeats']:>7,} {x['mismatches']:>8} "
                       f"{x['missing']:>7} {x['unexplained']:>7}")  # fmt: skip
            if x["expired"]:
                click.echo(f"     {x['expired']:,} decisions older than the log's first record "
                           "(deleted by its retention) not checked")  # fmt: skip
            if x["pending"]:
                click.echo(f"     {x['pending']:,} decisions of inputs the workers have not "
                           "committed yet, not logged yet (pending)")  # fmt: skip
            if x["first_mismatch"]:
                f = x["first_mismatch"]
                click.echo(f"     first mismatch: decision {f['decision_id']} field {f['field']}: "
                           f"expected {f['expected']!r}, logged {f['logged']!r}; "
                           f"input {f['input']}")  # fmt: skip
            for what in ("missing", "unexplained"):  # (the JSON has them too)
                if x[f"{what}_ids"]:
                    shown = len(x[f"{what}_ids"])
                    more = f" and {x[what] - shown:,} more" if x[what] > shown else ""
                    click.echo(f"     {what}: {', '.join(x[f'{what}_ids'])}{more}")
        verdict = "OK" if bad == 0 else f"{bad} PROBLEM(S)"
        click.echo(f"{total:,} decisions checked in {elapsed:.1f}s "
                   f"({total / max(elapsed, 1e-9):,.0f}/s): {verdict}")  # fmt: skip
    if bad:
        sys.exit(1)


@cli.command("whatif")
@click.option("--policy", "policy_file", required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True))  # fmt: skip
@_prefix
@_as_json
def whatif_cmd(policy_file: Path, topic_prefix: str, as_json: bool) -> None:
    """Replay the recorded inputs under another policy and report what would change."""
    from dispatcher.codecs.adapt import policy_from  # noqa: PLC0415
    from dispatcher.policytool import load_policy_file, problems  # noqa: PLC0415
    from dispatcher.reading import partitions, read_chunks  # noqa: PLC0415
    from dispatcher.whatif import Replay  # noqa: PLC0415

    update = load_policy_file(policy_file)
    if found := problems(update):  # (what every worker would refuse is no what-if)
        raise ConfigError(f"{policy_file}: {'; '.join(found)}")
    policy = policy_from(update)
    topics = TopicNames.prefixed(topic_prefix)
    replay = Replay(policy, topic=topics.input_sequence, progress=_replay_progress())

    async def run() -> None:  # a fetch at a time: the runs keep what they decided, not inputs
        bootstrap = _bootstrap()
        for tp in await partitions(bootstrap, topics.input_sequence):
            replay.start(tp.partition)
            async for records in read_chunks(bootstrap, tp):
                for r in records:
                    replay.feed(r.offset, r.value)

    asyncio.run(run())
    report = replay.result()
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, default=str))
        return
    a, b = report.recorded, report.alternative
    click.echo(f"loads {a['loads']:,}; changed {report.changed:,} "
               f"({report.decisions_changed:,} decisions differ)")  # fmt: skip
    click.echo(f"{'':<22} {'recorded':>12} {'what-if':>12}")
    for label, key in (("assigned", "assigned"), ("shed", "shed"), ("SLA %", "sla_pct"),
                       ("match score", "match_score")):  # fmt: skip
        click.echo(f"{label:<22} {_num(a[key]):>12} {_num(b[key]):>12}")
    for tenant in a["tenants"]:
        ta, tb = a["tenants"][tenant], b["tenants"].get(tenant, {})
        click.echo(f"{tenant + ' share':<22} {ta['share']:>12.1%} {tb.get('share', 0):>12.1%}")
        click.echo(f"{tenant + ' wait p50/p99 ms':<22} "
                   f"{_num(ta['wait_p50_ms'])}/{_num(ta['wait_p99_ms']):>5} "
                   f"{_num(tb.get('wait_p50_ms'))}/{_num(tb.get('wait_p99_ms')):>5}")  # fmt: skip
    for ex in report.examples:
        click.echo(f"  {ex['load']} ({ex['tenant']}): {ex['recorded']['agent']} -> "
                   f"{ex['alternative']['agent']}; why: {ex['why']}")  # fmt: skip


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"


@cli.command("explain")
@click.argument("load_id")
@click.option("--agent", "agents", multiple=True, help="Also say why not this agent (repeat).")
@click.option("--pool", default=None, help="Only the load of this pool (ids may repeat).")
@_prefix
@_as_json
def explain_cmd(
    load_id: str, agents: tuple[str, ...], pool: str | None, topic_prefix: str, as_json: bool
) -> None:  # fmt: skip
    """Show the decisions about LOAD_ID: candidates, exclusions, score parts, runner-up."""
    from dispatcher.audit import explain_load  # noqa: PLC0415

    try:
        found = asyncio.run(explain_load(_bootstrap(), TopicNames.prefixed(topic_prefix),
                                         load_id, agents, pool=pool))  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(f"{exc} with --pool") from exc
    if not found["decisions"]:
        raise click.ClickException(f"no decision about load {load_id} in the decision log")
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    for d in found["decisions"]:
        where = d["input"]
        click.echo(f"{d['outcome']:<13} pool {d['pool']} attempt {d['attempt']} "
                   f"reason {d['reason_code']} "
                   f"agent {d['agent_id']} policy v{d['policy_version']} "
                   f"input {where['topic']}[{where['partition']}]@{where['offset']}")  # fmt: skip
        if d["candidates"] or d["excluded"]:
            excluded = ", ".join(f"{k} {v}" for k, v in d["excluded"].items() if v)
            click.echo(f"  candidates {d['candidates']}; excluded: {excluded or 'none'}")
        if d["score"] is not None:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in d["score_parts"].items() if v)
            click.echo(f"  score {d['score']:.3f} = {parts}")
            click.echo(f"  runner-up {d['runner_up']} by {d['margin']}")
    for v in found["verdicts"]:
        if v["failed"]:
            why = f"fails {', '.join(v['failed'])}"
        else:
            gap = "" if v["gap"] is None else f", {v['gap']:.3f} below the chosen one"
            why = f"scores {v['score']:.3f}{gap}"
        click.echo(f"why not {v['agent_id']}: {why}")


@cli.group()
def policy() -> None:
    """Check and publish policy versions."""


@policy.command("validate")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def policy_validate(path: Path) -> None:
    """Check a policy file: schema, then semantics. Exits 1 with the problems."""
    from dispatcher.policytool import load_policy_file, problems  # noqa: PLC0415

    update = load_policy_file(path)
    found = problems(update)
    for p in found:
        click.echo(f"{path}: {p}", err=True)
    if found:
        sys.exit(1)
    click.echo(f"{path}: {update.policy_id} version {update.version} is valid")


@policy.command("publish")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key-id", default=None,
              help="Which DISPATCHER_POLICY_KEYS key signs (default: the only one).")  # fmt: skip
@click.option("--at", default=None,
              help="ISO 8601 time (event time) from which it applies; default: now.")  # fmt: skip
@_prefix
def policy_publish(path: Path, key_id: str | None, at: str | None, topic_prefix: str) -> None:
    """Publish a valid policy whose version is newer than the current one.

    With DISPATCHER_POLICY_KEYS set, the policy is signed (workers holding the
    keys apply only signed policies). Each pool applies it from the first
    input stamped at or after its time.
    """
    from dispatcher.policytool import load_policy_file, publish, signed  # noqa: PLC0415

    keys = _settings().policy_keys
    when = None
    if at is not None:
        try:
            when = _epoch_ms(at)
        except ValueError as exc:
            raise click.BadParameter(f"{at!r}: not an ISO 8601 time", param_hint="--at") from exc
    update = signed(load_policy_file(path, effective_from_ms=when), keys, key_id)
    partition, offset = asyncio.run(publish(_bootstrap(), TopicNames.prefixed(topic_prefix),
                                            update, keys))  # fmt: skip
    how = f"signed with key {update.signature_key_id!r}" if update.signature else "unsigned"
    start = datetime.fromtimestamp(update.effective_from_ms / 1000, UTC).isoformat()
    click.echo(
        f"published {update.policy_id} version {update.version}, {how}, in effect from {start} "
        f"(partition {partition}, offset {offset})"
    )


# -- worker ----------------------------------------------------------------------


@cli.command("worker")
@click.option("--app-id", default="dispatcher", show_default=True,
              help="Faust app id: the consumer group, and the Redis key prefix.")  # fmt: skip
@click.option("--web-port", type=int, default=6066, show_default=True)
@click.option("--tick-ms", type=int, default=200, show_default=True,
              help="How often each owned pool gets a Tick on the ticks topic.")  # fmt: skip
@_prefix
@click.option("--snapshot-every", type=int, default=100_000, show_default=True,
              help="Records between snapshots of a partition's state (0: none).")  # fmt: skip
@click.option("--max-ahead-ms", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Inputs stamped further ahead of this worker's clock go to dead-letter "
                   "(a pool's clock is the newest event time it saw).")  # fmt: skip
@click.option("--loglevel", default="warning", show_default=True)
def worker_cmd(  # noqa: PLR0917 - one option each
    app_id: str, web_port: int, tick_ms: int, topic_prefix: str, snapshot_every: int,
    max_ahead_ms: int, loglevel: str,
) -> None:  # fmt: skip
    """Run a dispatcher worker (Faust) against the configured broker and Redis.

    Uses KAFKA_BOOTSTRAP_SERVERS and REDIS_URL, or the project's own servers
    (`dispatcher stack up`). Runs until SIGINT or SIGTERM. State snapshots go
    under the state directory (DISPATCHER_STATE_DIR), in `snapshots/`.
    """
    # Only this command pays for importing faust.
    from dispatcher.worker.app import Worker, WorkerConfig, build_app  # noqa: PLC0415

    s = _settings()
    cfg = WorkerConfig(
        bootstrap=s.kafka_bootstrap or s.local_bootstrap,
        redis_url=s.redis_url or s.local_redis_url,
        app_id=app_id, web_port=web_port, tick_ms=tick_ms,
        topics=TopicNames.prefixed(topic_prefix), datadir=s.state_dir / "faust",
        snapshot_dir=s.state_dir / "snapshots", snapshot_every=snapshot_every,
        policy_keys=s.policy_keys, max_ahead_ms=max_ahead_ms,
    )  # fmt: skip
    Worker(build_app(cfg), loglevel=loglevel, quiet=True).execute_from_commandline()


def main() -> None:
    """Entry point: our own errors become one clear line and exit status 1."""
    try:
        cli(standalone_mode=True)
    except DispatcherError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
