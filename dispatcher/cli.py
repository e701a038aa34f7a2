"""The ``dispatcher`` command line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

import click

from dispatcher import __version__
from dispatcher.demo import run_demo
from dispatcher.errors import DispatcherError, StackError
from dispatcher.settings import Settings
from dispatcher.stack import ServiceStatus, Stack
from dispatcher.topics import (
    DEFAULT_TOPICS_FILE,
    TopicNames,
    TopicReport,
    apply_topics,
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
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--policy", "policy_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="YAML file of Policy fields to change.")  # fmt: skip
@click.option("--agents", type=int, default=None, help="Override the scenario's agent count.")
@click.option("--duration", type=float, default=None, help="Override the simulated seconds.")
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
    from dispatcher.sim import SCENARIOS, SIM_POLICY, load_policy, simulate  # noqa: PLC0415

    sc = SCENARIOS[name].scaled(agents=agents, duration_s=duration)
    policy = load_policy(policy_file, SIM_POLICY) if policy_file else SIM_POLICY
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
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, sort_keys=True))
        return
    m = report.metrics
    click.echo(f"scenario {name}  seed {seed}  agents {sc.agents}  {sc.duration_s:g}s simulated")
    click.echo(f"digest   {report.digest}")
    click.echo(f"decisions {report.decisions}  ({m['decisions_per_s'] or 0:,.0f}/s in the core)")
    click.echo(f"loads    {json.dumps(m['loads'])}")
    jain, score = m["jain_weighted"] or 0, m["total_match_score"]
    click.echo(f"utilisation {m['utilisation_pct']:.1f}%   jain(weighted) {jain:.3f}   "
               f"total match score {score:.1f}")  # fmt: skip
    click.echo("class      SLA%    wait p50    p95     p99 (ms)")
    for cls, w in m["wait_ms"].items():
        sla = m["sla_compliance_pct"][cls]
        cells = [
            f"{v:8.0f}" if v is not None else "       -" for v in (w["p50"], w["p95"], w["p99"])
        ]
        click.echo(f"{cls:<9} {sla if sla is not None else float('nan'):6.1f} {' '.join(cells)}")
    for tenant, share in m["tenant_share"].items():
        tw = m["tenant_wait_ms"][tenant]
        click.echo(f"tenant {tenant:<10} share {share:6.1%}  wait p50 {tw['p50'] or 0:7.0f} "
                   f"p99 {tw['p99'] or 0:7.0f} ms")  # fmt: skip


# -- run -------------------------------------------------------------------------


@cli.command("run")
@_topics_file
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--rate", type=float, default=40.0, show_default=True, help="Demo loads per second.")
@click.option("--agents", type=int, default=60, show_default=True, help="Demo agents.")
def run(topics_file: Path, duration: float | None, rate: float, agents: int) -> None:
    """Start the whole system with a demo workload; Ctrl-C stops what this started.

    Brings up the broker and Redis, applies topics.yaml, starts a dispatcher
    worker, then drives it with simulated producers and agents, printing
    progress every second and a summary at the end.
    """
    spec = load_topics(topics_file)
    s = Stack(_settings())

    # SIGTERM (from a supervisor or `kill`) ends the run like Ctrl-C does.
    def _interrupt(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    started: tuple[str, ...] = ()
    worker: subprocess.Popen[bytes] | None = None
    try:
        endpoints = s.up()  # if interrupted, it stops what it had started itself
        started = endpoints.started
        _print_reports(asyncio.run(apply_topics(spec, endpoints.kafka_bootstrap)))
        _print_status(s)
        click.echo(f"kafka: {endpoints.kafka_bootstrap}   redis: {endpoints.redis_url}")
        worker = _start_worker(s.settings, endpoints.kafka_bootstrap, endpoints.redis_url)
        click.echo("Ctrl-C stops everything this command started.")
        asyncio.run(run_demo(endpoints.kafka_bootstrap, agents=agents, rate=rate,
                             duration_s=duration, echo=click.echo))  # fmt: skip
    except KeyboardInterrupt:
        click.echo("\ninterrupted")
    finally:
        if worker is not None:
            click.echo("stopping: worker")
            _stop(worker)
        if started:
            click.echo("stopping: " + ", ".join(s.down(only=started)))


@cli.command("watch")
@_topics_file
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
def watch(topics_file: Path, duration: float | None) -> None:
    """Show records arriving on every declared topic (counts per second)."""
    s = _settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch_topics(s.kafka_bootstrap or s.local_bootstrap,
                                 list(load_topics(topics_file).topics), duration=duration,
                                 echo=click.echo))  # fmt: skip


@cli.command("demo")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--rate", type=float, default=40.0, show_default=True, help="Loads per second.")
@click.option("--agents", type=int, default=60, show_default=True)
@click.option("--pools", type=int, default=2, show_default=True)
def demo(duration: float | None, rate: float, agents: int, pools: int) -> None:
    """Drive a running worker with simulated producers and agents (see `dispatcher run`)."""
    s = _settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(s.kafka_bootstrap or s.local_bootstrap, agents=agents, pools=pools,
                             rate=rate, duration_s=duration, echo=click.echo))  # fmt: skip


def _start_worker(settings: Settings, bootstrap: str, redis_url: str) -> subprocess.Popen[bytes]:
    """A worker process in its own session (Ctrl-C reaches us, and we stop it)."""
    log_path = settings.state_dir / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        web_port = sock.getsockname()[1]
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "REDIS_URL": redis_url}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "worker", "--web-port", str(web_port),
             "--loglevel", "info"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while "[^Worker]: Ready" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise StackError(f"the worker did not start (log {log_path}):\n{tail}")
        time.sleep(0.2)
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


# -- worker ----------------------------------------------------------------------


@cli.command("worker")
@click.option("--app-id", default="dispatcher", show_default=True,
              help="Faust app id: the consumer group, and the Redis key prefix.")  # fmt: skip
@click.option("--web-port", type=int, default=6066, show_default=True)
@click.option("--tick-ms", type=int, default=200, show_default=True,
              help="How often each owned pool gets a Tick on the ticks topic.")  # fmt: skip
@click.option("--topic-prefix", default="", help="Prefix of every topic name (topics.yaml's).")
@click.option("--loglevel", default="warning", show_default=True)
def worker_cmd(app_id: str, web_port: int, tick_ms: int, topic_prefix: str, loglevel: str) -> None:
    """Run a dispatcher worker (Faust) against the configured broker and Redis.

    Uses KAFKA_BOOTSTRAP_SERVERS and REDIS_URL, or the project's own servers
    (`dispatcher stack up`). Runs until SIGINT or SIGTERM.
    """
    from faust import Worker  # noqa: PLC0415 - only this command pays for importing faust

    from dispatcher.worker.app import WorkerConfig, build_app  # noqa: PLC0415

    s = _settings()
    cfg = WorkerConfig(
        bootstrap=s.kafka_bootstrap or s.local_bootstrap,
        redis_url=s.redis_url or s.local_redis_url,
        app_id=app_id, web_port=web_port, tick_ms=tick_ms,
        topics=TopicNames.prefixed(topic_prefix),
    )  # fmt: skip
    Worker(build_app(cfg), loglevel=loglevel, quiet=True).execute_from_commandline()


def main() -> None:
    """Entry point: our own errors become one clear line and exit status 1."""
    try:
        cli(standalone_mode=True)
    except DispatcherError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
