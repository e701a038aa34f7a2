"""The ``dispatcher`` command line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import fcntl
import json
import logging
import math
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from dispatcher import __version__
from dispatcher.demo import run_demo
from dispatcher.errors import (
    BrokerError,
    DispatcherError,
    StackError,
    TopicsFileError,
)
from dispatcher.patience import Repeats
from dispatcher.settings import Settings
from dispatcher.stack import ServiceStatus, Stack
from dispatcher.topics import (
    DEFAULT_TOPICS_FILE,
    TopicNames,
    TopicReport,
    TopicsFile,
    apply_topics,
    delete_topics,
    load_topics,
    topic_names,
)
from dispatcher.watch import watch_topics

if TYPE_CHECKING:
    from dispatcher.core import Policy
    from dispatcher.whatif import WhatIf

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
@_prefix
def topics_check(topics_file: Path, topic_prefix: str) -> None:
    """Validate the topics file (under the prefix: are the names legal?) without a broker."""
    spec = _prefixed_topics(topics_file, topic_prefix)
    click.echo(f"{topics_file}: {len(spec.topics)} topics, {len(spec.co_partitioned)} "
               "co-partition group(s), valid")  # fmt: skip


@topics.command("apply")
@_topics_file
@_prefix
@click.option(
    "--alter-configs", is_flag=True, help="Set drifted topic configs to the declared ones."
)
def topics_apply(topics_file: Path, topic_prefix: str, alter_configs: bool) -> None:
    """Create missing topics and report drift. Exits 1 when drift remains.

    With --topic-prefix, the declared topics under that prefix (a new input
    sequence; the workers, demo and replays then take the same prefix).
    """
    spec = _prefixed_topics(topics_file, topic_prefix)
    bootstrap = _settings().kafka_bootstrap or _settings().local_bootstrap
    reports = asyncio.run(apply_topics(spec, bootstrap, alter_configs=alter_configs))
    _print_reports(reports)
    if any(r.action == "drift" for r in reports):
        sys.exit(1)


def _prefixed_topics(topics_file: Path, prefix: str) -> TopicsFile:
    """The declaration of ``topics_file`` with ``prefix`` before every topic name.

    Raises:
        TopicsFileError: the file is invalid, or a prefixed name is no legal topic name.
    """
    spec = load_topics(topics_file)
    if not prefix:
        return spec
    try:  # (prefixed() copies without validating: the names are checked again here)
        return TopicsFile.model_validate(spec.prefixed(prefix).model_dump())
    except ValidationError as exc:
        name = next(str(e["input"]) for e in exc.errors())
        raise TopicsFileError(str(topics_file), [
            f"--topic-prefix {prefix!r} makes {name!r}, not a topic name (at most 249 of "
            "letters, digits, '.', '_' and '-')"]) from exc  # fmt: skip


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
    from pydantic import ValidationError  # noqa: PLC0415

    from dispatcher.codecs import Codec  # noqa: PLC0415
    from dispatcher.codecs.codec import MODELS  # noqa: PLC0415
    from dispatcher.errors import validation_problems  # noqa: PLC0415

    if name not in MODELS:
        raise click.BadParameter(f"unknown schema {name!r}; one of {', '.join(MODELS)}",
                                 param_hint="'--schema'")  # fmt: skip
    c, failed = Codec(), 0
    for n, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            record = MODELS[name].model_validate_json(line)
        except ValidationError as exc:  # (one line per problem, not pydantic's three)
            failed += 1
            click.echo(f"line {n}: not a valid {name}: {'; '.join(validation_problems(exc))}",
                       err=True)  # fmt: skip
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
    from dispatcher.codecs.codec import MODELS  # noqa: PLC0415

    if name is not None and name not in MODELS:  # (before: every record refused, as another's)
        raise click.BadParameter(f"unknown schema {name!r}; one of {', '.join(MODELS)}",
                                 param_hint="'--schema'")  # fmt: skip
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
              "weights: the entries it names), or a whole policy as `policy publish` takes "
              "(ops/policies/example.yaml).")  # fmt: skip
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
        published = _published_policy(policy_file)  # (a whole policy: nothing merged)
        policy = published if published is not None else load_policy(policy_file, policy)
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
    report.warnings[:0] = sc.warnings()
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
    click.echo(f"decisions {report.decisions:,}  ({cell(m['decisions_per_s'], ',.0f', 0)}/s "
               "in the core)")  # fmt: skip
    click.echo(f"loads    {_counts(m['loads'])}")
    click.echo(f"utilisation {cell(m['utilisation_pct'], '.1f', 0)}%   "
               f"jain(weighted) {cell(m['jain_weighted'], '.3f', 0)}   "
               f"total match score {m['total_match_score']:,.1f}")  # fmt: skip
    click.echo(f"{'class':<9} {'SLA%':>6} {'wait p50':>8} {'p95':>8} {'p99':>8} (ms)")
    for cls, w in m["wait_ms"].items():
        cells = " ".join(cell(w[q], ",.0f", 8) for q in ("p50", "p95", "p99"))
        click.echo(f"{cls:<9} {cell(m['sla_compliance_pct'][cls], '.1f', 6)} {cells}")
    for tenant, share in m["tenant_share"].items():
        tw = m["tenant_wait_ms"][tenant]
        click.echo(f"tenant {tenant:<10} share {share:6.1%}  wait p50 {cell(tw['p50'], ',.0f', 7)} "
                   f"p99 {cell(tw['p99'], ',.0f', 7)} ms")  # fmt: skip


def _counts(counts: Mapping[str, Any]) -> str:
    """``{"arrived": 6544, "outcomes": {"COMPLETED": 5854}}`` as "arrived 6,544  outcomes
    (COMPLETED 5,854)": the figures with separators, as the other lines print them, under
    the names --json gives them."""
    return "  ".join(
        f"{k} ({_counts(v) if v else 'none'})" if isinstance(v, Mapping) else f"{k} {v:,}"
        for k, v in counts.items()
    )


def _published_policy(path: Path) -> Policy | None:
    """The policy of ``path`` if it is a `policy publish` file (a mapping with a
    ``document``); None if not (or unreadable: the simulator's own loader says why).

    Raises:
        ConfigError: the publish file is not valid, or a worker would refuse it.
    """
    import yaml  # noqa: PLC0415

    from dispatcher.yamlfile import load_yaml  # noqa: PLC0415

    try:
        doc = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return _policy_of(path) if isinstance(doc, dict) and "document" in doc else None


def _policy_of(path: Path) -> Policy:
    """The core policy of a `policy publish` file.

    Raises:
        ConfigError: the file is not a valid policy, or a worker would refuse it.
    """
    from dispatcher.codecs.adapt import policy_from  # noqa: PLC0415
    from dispatcher.policytool import checked_policy_file  # noqa: PLC0415

    # (what every worker would refuse is no policy to try)
    return policy_from(checked_policy_file(path))


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

    # SIGTERM (from a supervisor or `kill`) ends the run like Ctrl-C does (while the demo
    # runs, through _run_stoppable: its summary is printed, its agents go offline).
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
        _run_stoppable(run_demo(bootstrap, topics=TopicNames.prefixed(demo.prefix),
                                agents=agents, rate=rate, duration_s=duration, echo=click.echo,
                                policy_keys=keys, publish_policy=True))  # fmt: skip
    except KeyboardInterrupt:
        click.echo("\ninterrupted")
    finally:
        # A second Ctrl-C or SIGTERM would break the cleanup off half done (the worker left
        # running, the topics kept): from here on both are ignored.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
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
    """Every 2 s, print each declared topic that grew: records added, and the rate per second."""
    s = _settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch_topics(s.kafka_bootstrap or s.local_bootstrap,
                                 list(load_topics(topics_file).prefixed(topic_prefix).topics),
                                 duration=duration, echo=click.echo))  # fmt: skip


@cli.command("demo")
@_duration
@_rate
@click.option("--agents", type=click.IntRange(min=1, max=100_000), default=60, show_default=True,
              help="Demo agents.")  # fmt: skip
@click.option("--pools", type=click.IntRange(min=1, max=1_000), default=2, show_default=True,
              help="Pools of the demo's own, the agents and loads spread over them.")  # fmt: skip
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
    with contextlib.suppress(KeyboardInterrupt):  # (Ctrl-C or SIGTERM: after the summary)
        _run_stoppable(run_demo(s.kafka_bootstrap or s.local_bootstrap, agents=agents,
                                pools=pools, topics=TopicNames.prefixed(topic_prefix), rate=rate,
                                duration_s=duration, echo=click.echo, policy_keys=s.policy_keys,
                                publish_policy=publish_policy))  # fmt: skip


def _run_stoppable(main: Coroutine[Any, Any, Any]) -> None:
    """``asyncio.run(main)``, where SIGTERM (a supervisor, `kill`) stops ``main`` as Ctrl-C
    does: it is cancelled (the demo then prints its summary and its agents go offline),
    once (a second SIGTERM does not cut that short), and KeyboardInterrupt is raised after.
    """
    stopped = False

    async def guarded() -> None:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None  # noqa: S101 - asyncio.run runs this as a task

        def stop() -> None:
            nonlocal stopped
            stopped = True
            loop.add_signal_handler(signal.SIGTERM, lambda: None)
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, stop)
        await main

    previous = signal.getsignal(signal.SIGTERM)  # (closing the loop resets it to the default)
    try:
        asyncio.run(guarded())
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        raise KeyboardInterrupt  # (as asyncio.run raises it once Ctrl-C stopped main)


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
    we stop it), holding the run's lock too, and told to stop when this process ends,
    killed -9 too (``_stop_with_parent``); its app id (consumer group) is the demo's own."""
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
            pass_fds=(demo.lock,), preexec_fn=_stop_with_parent(),  # noqa: PLW1509 - below
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


def _stop_with_parent() -> Callable[[], None] | None:
    """What a child runs before it starts the worker, on Linux: SIGTERM to it when this
    process ends (PR_SET_PDEATHSIG, kept across exec). A `dispatcher run` killed with -9
    left its worker running, holding the run's lock, so the next run kept its topics.
    (Looked up here: the child only calls it, taking no lock a thread of ours may hold.)"""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the worker outlives a run killed -9
        return None
    parent = os.getpid()

    def child() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # (it died already: the signal will not come)
            os._exit(1)

    return child


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


_ZONED = "an ISO 8601 time with its zone (Z or an offset such as +02:00)"


class _Time(click.ParamType):
    """An ISO 8601 time with its zone, as epoch ms. A time without one is refused: read
    as this machine's local time, it would name another instant on another machine."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r}: not an ISO 8601 time", param, ctx)
        if when.tzinfo is None:
            self.fail(f"{value!r} has no zone: give {_ZONED}", param, ctx)
        return round(when.timestamp() * 1000)


class _Position(_Time):
    """An input offset (an integer), or a time (``_Time``): ``("offset"|"time", n)``."""

    name = "offset|time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        if value.isascii() and value.isdigit():  # ("²".isdigit() is true)
            return ("offset", int(value))
        try:
            datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r}: an offset or an ISO 8601 time", param, ctx)
        return ("time", super().convert(value, param, ctx))


def _replay_progress() -> Callable[[int], None]:
    """Prints, on stderr, how many inputs a replay has done and at what rate."""
    started = time.monotonic()

    def progress(n: int) -> None:
        rate = n / max(1e-9, time.monotonic() - started)
        click.echo(f"  {n:,} inputs replayed ({rate:,.0f}/s)", err=True)

    return progress


@cli.command("audit")
@click.option("--pool", default=None, help="Check only this pool's decisions.")
@click.option("--from", "start", type=_Position(), default=None,
              help=f"Input offset, or {_ZONED}, to check from.")  # fmt: skip
@click.option("--to", "end", type=_Position(), default=None,
              help=f"Input offset, or {_ZONED}, to check up to.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Partitions replayed at a time, each in its own process (0: one per core "
                   "for a long input sequence).")  # fmt: skip
@click.option("--live", "live_app", default=None, metavar="APP_ID",
              help="The workers are running with this app id: decisions of inputs they have "
                   "not committed yet are pending, not missing.")  # fmt: skip
@_prefix
@_as_json
def audit_cmd(  # noqa: PLR0917 - one option each
    pool: str | None, start: tuple[str, int] | None, end: tuple[str, int] | None, jobs: int,
    live_app: str | None, topic_prefix: str, as_json: bool,
) -> None:  # fmt: skip
    """Re-run the core on the recorded inputs and check every logged decision byte for byte.

    Exits 1 on any mismatch, missing or unexplained decision.
    """
    from dispatcher.audit import Scope, audit  # noqa: PLC0415 - kept off the import path of others

    if start is not None and end is not None and start[0] == end[0] and start[1] >= end[1]:
        raise click.BadParameter(f"{start[1]} is not before --to {end[1]}: the scope is empty",
                                 param_hint="'--from'")  # fmt: skip
    scope = Scope(pool, start, end)
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
                     "expired": r.expired, "pending": r.pending, "outside": r.outside,
                     "first_mismatch": asdict(mism[0]) if mism else None,
                     "missing_ids": r.missing[:5],
                     "unexplained_ids": r.unexplained[:5]})  # fmt: skip
    total = sum(x["checked"] for x in rows)
    outside = sum(x["outside"] for x in rows)
    elapsed = time.monotonic() - started
    pools = set().union(*(r.pools for r in results))
    if pool is not None and pool not in pools and not bad:  # (a typo: it said OK, exit 0)
        named = ", ".join(sorted(pools)[:10]) + (", ..." if len(pools) > 10 else "")
        raise click.BadParameter(f"no decision is about pool {pool!r}; the pools decided about: "
                                 f"{named or 'none'}", param_hint="'--pool'")  # fmt: skip
    if scope != Scope() and not total:
        click.echo("warning: the scope (--pool/--from/--to) covers no decision: nothing was "
                   "checked", err=True)  # fmt: skip
    if as_json:
        click.echo(json.dumps({"partitions": rows, "checked": total, "problems": bad,
                               "outside": outside, "seconds": elapsed},
                              indent=2, default=str))  # fmt: skip
    else:
        for line in _audit_lines(rows):
            click.echo(line)
        verdict = "OK" if bad == 0 else f"{bad} PROBLEM(S)"
        click.echo(f"{total:,} decisions checked in {elapsed:.1f}s "
                   f"({total / max(elapsed, 1e-9):,.0f}/s): {verdict}")  # fmt: skip
    if bad:
        sys.exit(1)


def _audit_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The audit's table: a row per partition, and under it what it did not check."""
    out: list[str] = []
    out.append(f"{'part':>4} {'inputs':>8} {'checked':>8} {'matched':>8} {'repeats':>7} "
               f"{'mismatch':>8} {'missing':>7} {'unexpl.':>7}")  # fmt: skip
    for x in rows:
        out.append(f"{x['partition']:>4} {x['inputs']:>8,} {x['checked']:>8,} "
                   f"{x['matched']:>8,} {x['repeats']:>7,} {x['mismatches']:>8} "
                   f"{x['missing']:>7} {x['unexplained']:>7}")  # fmt: skip
        if x["expired"]:
            out.append(f"     {x['expired']:,} decisions older than the log's first record "
                       "(deleted by its retention) not checked")  # fmt: skip
        if x["pending"]:
            out.append(f"     {x['pending']:,} decisions of inputs the workers have not "
                       "committed yet, not logged yet (pending)")  # fmt: skip
        if x["outside"]:
            out.append(f"     {x['outside']:,} problem(s) outside the scope "
                       "(--pool/--from/--to): not counted here; audit without the scope "
                       "to see them")  # fmt: skip
        if x["first_mismatch"]:
            f = x["first_mismatch"]
            out.append(f"     first mismatch: decision {f['decision_id']} field {f['field']}: "
                       f"expected {f['expected']!r}, logged {f['logged']!r}; "
                       f"input {f['input']}")  # fmt: skip
        for what in ("missing", "unexplained"):  # (the JSON has them too)
            if x[f"{what}_ids"]:
                shown = len(x[f"{what}_ids"])
                more = f" and {x[what] - shown:,} more" if x[what] > shown else ""
                out.append(f"     {what}: {', '.join(x[f'{what}_ids'])}{more}")
    return out


@cli.command("whatif")
@click.option("--policy", "policy_file", required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The policy to replay under: a file as `policy publish` takes "
                   "(ops/policies/example.yaml).")  # fmt: skip
@_prefix
@_as_json
def whatif_cmd(policy_file: Path, topic_prefix: str, as_json: bool) -> None:
    """Replay the recorded inputs under another policy and report what would change."""
    from dispatcher.reading import partitions, read_chunks  # noqa: PLC0415
    from dispatcher.whatif import Replay  # noqa: PLC0415

    policy = _policy_of(policy_file)
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
    for line in _whatif_lines(report):
        click.echo(line)


def _whatif_lines(report: WhatIf) -> list[str]:
    """The what-if report as a table, then what changed for each example load, and why."""
    a, b = report.recorded, report.alternative
    rows = [(label, _num(a[key]), _num(b[key])) for label, key in (
        ("assigned", "assigned"), ("shed", "shed"), ("SLA %", "sla_pct"),
        ("match score", "match_score"))]  # fmt: skip
    for tenant in a["tenants"]:
        ta, tb = a["tenants"][tenant], b["tenants"].get(tenant, {})
        rows.append((f"{tenant} share", f"{ta['share']:.1%}", f"{tb.get('share', 0):.1%}"))
        rows.append((f"{tenant} wait p50/p99 ms",
                     f"{_num(ta['wait_p50_ms'])}/{_num(ta['wait_p99_ms'])}",
                     f"{_num(tb.get('wait_p50_ms'))}/{_num(tb.get('wait_p99_ms'))}"))  # fmt: skip
    label_w = max(len(row[0]) for row in rows)
    w = max(12, *(len(cell) for row in rows for cell in row[1:]))  # (the columns stay aligned)
    dropped = report.answers_dropped
    return [
        f"loads {a['loads']:,}; changed {report.changed:,} "
        f"({report.decisions_changed:,} decisions differ)"
        + (f"; {dropped:,} agent answer{'s' if dropped != 1 else ''} never reached the what-if "
           "run (about attempts it did not make)" if dropped else ""),
        f"{'':<{label_w}} {'recorded':>{w}} {'what-if':>{w}}",
        *(f"{label:<{label_w}} {x:>{w}} {y:>{w}}" for label, x, y in rows),
        *(_example_line(ex) for ex in report.examples),
    ]  # fmt: skip


def _example_line(ex: Mapping[str, Any]) -> str:
    """What the what-if run did otherwise with one load, and why it did (its score, or its
    last decision when it never assigned the load)."""
    ra, rb = ex["recorded"], ex["alternative"]
    first, then = ra["agent"] or "none", rb["agent"] or "none"
    changes = [f"agent {first} -> {then}" if first != then else f"agent {first} both times"]
    if ra["final"] != rb["final"]:
        changes.append(f"end {ra['final'] or 'not yet'} -> {rb['final'] or 'not yet'}")
    if ra["wait_ms"] != rb["wait_ms"] and None not in (ra["wait_ms"], rb["wait_ms"]):
        changes.append(f"waited {ra['wait_ms']:,} -> {rb['wait_ms']:,} ms")
    if len(changes) == 1 and first == then:
        changes.append("the decisions after the first differ")
    why = ex["why"]
    if "score_parts" in why:
        runner = ("no runner-up" if why["runner_up"] is None
                  else f"runner-up {why['runner_up']} by {why['margin']:.3f}")  # fmt: skip
        because = (f"score {rb['score']:.3f} = {_parts(why['score_parts'])}; "
                   f"{why['candidates']} candidate(s), {runner}")  # fmt: skip
    else:
        because = f"last decision {why['outcome']}, reason {why['reason']}"
    return f"  {ex['load']} ({ex['tenant']}): {'; '.join(changes)}; why: {because}"


def _parts(parts: Mapping[str, float]) -> str:
    """The score terms that count, rounded as the scores are."""
    return ", ".join(f"{k} {v:.3f}" for k, v in parts.items() if v) or "nothing"


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
        where = f" of pool {pool} (try without --pool)" if pool else ""
        raise click.ClickException(f"no decision about load {load_id} in the decision log{where}")
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    for line in _explain_lines(found):
        click.echo(line)


def _explain_lines(found: Mapping[str, Any]) -> list[str]:
    """The decisions about a load, then the verdicts about the agents asked about."""
    lines = []
    for d in found["decisions"]:
        where = d["input"]
        agent = "no agent" if d["agent_id"] is None else f"agent {d['agent_id']}"
        lines.append(f"{d['outcome']:<13} pool {d['pool']} attempt {d['attempt']} "
                     f"reason {d['reason_code']} {agent} policy v{d['policy_version']} "
                     f"input {where['topic']}[{where['partition']}]@{where['offset']}")  # fmt: skip
        if d["candidates"] or d["excluded"]:
            excluded = ", ".join(f"{k} {v}" for k, v in d["excluded"].items() if v)
            lines.append(f"  candidates {d['candidates']}; excluded: {excluded or 'none'}")
        if d["score"] is not None:
            lines.append(f"  score {d['score']:.3f} = {_parts(d['score_parts'])}")
            lines.append("  no runner-up" if d["runner_up"] is None else
                         f"  runner-up {d['runner_up']} by {d['margin']:.3f}")  # fmt: skip
    # The verdicts stand at the load's last assignment (audit.explain_load): its agent is
    # the chosen one, not one to say "why not" of.
    assigned = [d["agent_id"] for d in found["decisions"] if d["outcome"] == "ASSIGNED"]
    chosen = assigned[-1] if assigned else None
    pool = found["decisions"][-1]["pool"] if found["decisions"] else "?"
    for v in found["verdicts"]:
        if v["failed"] == ["unknown_agent"]:  # (it said "fails unknown_agent")
            why = f"no agent of pool {pool} has that id (a typo, or of another pool?)"
        elif v["failed"]:
            why = f"fails {', '.join(v['failed'])}"
        elif v["agent_id"] == chosen:
            why = f"it was chosen (score {v['score']:.3f})"
        else:
            gap = "" if v["gap"] is None else f", {v['gap']:.3f} below the chosen one"
            why = f"scores {v['score']:.3f}{gap}"
        lines.append(f"why not {v['agent_id']}: {why}")
    return lines


@cli.group()
def policy() -> None:
    """Check and publish policy versions."""


@policy.command("validate")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def policy_validate(path: Path) -> None:
    """Check a policy file: schema, then semantics. Exits 1 with the problems."""
    from dispatcher.policytool import checked_policy_file  # noqa: PLC0415

    update = checked_policy_file(path)
    click.echo(f"{path}: {update.policy_id} version {update.version} is valid")


@policy.command("publish")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key-id", default=None,
              help="Which DISPATCHER_POLICY_KEYS key signs (default: the only one).")  # fmt: skip
@click.option("--at", "when", type=_Time(), default=None,
              help=f"From when it applies (event time): {_ZONED}; default: now.")  # fmt: skip
@_prefix
def policy_publish(path: Path, key_id: str | None, when: int | None, topic_prefix: str) -> None:
    """Publish a valid policy whose version is newer than the current one.

    With DISPATCHER_POLICY_KEYS set, the policy is signed (workers holding the
    keys apply only signed policies). Each pool applies it from the first
    input stamped at or after its time.
    """
    from dispatcher.policytool import checked_policy_file, publish, signed  # noqa: PLC0415

    keys = _settings().policy_keys
    update = signed(checked_policy_file(path, effective_from_ms=when), keys, key_id)
    partition, offset = asyncio.run(publish(_bootstrap(), TopicNames.prefixed(topic_prefix),
                                            update, keys))  # fmt: skip
    how = f"signed with key {update.signature_key_id!r}" if update.signature else "unsigned"
    start = datetime.fromtimestamp(update.effective_from_ms / 1000, UTC).isoformat()
    click.echo(
        f"published {update.policy_id} version {update.version}, {how}, in effect from {start} "
        f"(partition {partition}, offset {offset})"
    )


# -- worker ----------------------------------------------------------------------

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # (Faust upper-cases them)


@cli.command("worker")
@click.option("--app-id", default="dispatcher", show_default=True,
              help="Faust app id: the consumer group, and the Redis key prefix. One app id "
                   "per set of topics: more workers of the same id share its pools, while "
                   "workers of another id on the same topics append every input to the input "
                   "sequence again (duplicates).")  # fmt: skip
@click.option("--web-port", type=click.IntRange(1, 65535), default=6066, show_default=True,
              help="Port of the worker's web view on 127.0.0.1 (must be free).")  # fmt: skip
@click.option("--tick-ms", type=click.IntRange(min=1), default=200, show_default=True,
              help="How often each owned pool gets a Tick on the ticks topic.")  # fmt: skip
@_prefix
@click.option("--snapshot-every", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="Records between snapshots of a partition's state (0: none).")  # fmt: skip
@click.option("--max-ahead-ms", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Inputs stamped further ahead of this worker's clock go to dead-letter "
                   "(a pool's clock is the newest event time it saw).")  # fmt: skip
@click.option("--loglevel", type=click.Choice(_LOG_LEVELS, case_sensitive=False),
              default="warning", show_default=True)  # fmt: skip
def worker_cmd(  # noqa: PLR0917 - one option each
    app_id: str, web_port: int, tick_ms: int, topic_prefix: str, snapshot_every: int,
    max_ahead_ms: int, loglevel: str,
) -> None:  # fmt: skip
    """Run a dispatcher worker (Faust) against the configured broker and Redis.

    Uses KAFKA_BOOTSTRAP_SERVERS and REDIS_URL, or the project's own servers
    (`dispatcher stack up`). Runs until SIGINT or SIGTERM. State snapshots go
    under the state directory (DISPATCHER_STATE_DIR), in `snapshots/`.
    """
    _check_port_free(web_port, "--web-port")  # (before: a Faust traceback once it had started)
    s = _settings()
    bootstrap = s.kafka_bootstrap or s.local_bootstrap
    topics = TopicNames.prefixed(topic_prefix)
    _check_worker_topics(bootstrap, topics, topic_prefix)
    # Only this command pays for importing faust.
    from dispatcher.worker.app import Worker, WorkerConfig, build_app  # noqa: PLC0415

    cfg = WorkerConfig(
        bootstrap=bootstrap,
        redis_url=s.redis_url or s.local_redis_url,
        app_id=app_id, web_port=web_port, tick_ms=tick_ms,
        topics=topics, datadir=s.state_dir / "faust",
        snapshot_dir=s.state_dir / "snapshots", snapshot_every=snapshot_every,
        policy_keys=s.policy_keys, max_ahead_ms=max_ahead_ms,
    )  # fmt: skip
    Worker(build_app(cfg), loglevel=loglevel, quiet=True).execute_from_commandline()


def _check_worker_topics(bootstrap: str, topics: TopicNames, prefix: str) -> None:
    """Fails fast unless the broker answers and has every topic the worker reads or
    writes (before: Faust's 35-line traceback when the broker was down, and a worker
    that logged "Topic ... not found" and idled for ever under a wrong prefix).

    Raises:
        BrokerError: the broker cannot be reached (in 5 s at most), or a topic is missing.
    """
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # (its "Unable connect" line would precede ours)
    try:
        existing = set(asyncio.run(topic_names(bootstrap, request_timeout_s=5)))
    finally:
        kafka_log.setLevel(level)
    names = [getattr(topics, f.name) for f in fields(topics)]
    if missing := [name for name in names if name not in existing]:
        apply = "dispatcher topics apply" + (f" --topic-prefix {shlex.quote(prefix)}"
                                             if prefix else "")  # fmt: skip
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise BrokerError(f"the worker's topics are missing at {bootstrap}: "
                          f"{', '.join(missing[:3])}{more} (is the topic prefix right? "
                          f"`{apply}` creates them)")  # fmt: skip


def _check_port_free(port: int, option: str) -> None:
    """Refuses ``port`` when something listens on it on 127.0.0.1 (where the web view binds).

    Raises:
        click.BadParameter: the port is taken, naming ``option``.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise click.BadParameter(f"port {port} on 127.0.0.1 is not free ({exc.strerror})",
                                     param_hint=f"'{option}'") from exc  # fmt: skip


def main() -> None:
    """Entry point: our own errors become one clear line and exit status 1."""
    if logging.lastResort is not None:  # (what prints the warnings of commands but the worker)
        logging.lastResort.addFilter(Repeats())
    try:
        cli(standalone_mode=True)
    except DispatcherError as exc:
        click.echo(f"Error: {exc}", err=True)  # (as click says its own)
        sys.exit(1)
