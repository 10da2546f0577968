"""The ``simic-consumer`` command: run the daemon, replay or inspect recorded logs, list rules, make keys."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import click

from simic.schemas.transport import ENDPOINT_ENV, default_endpoint, is_loopback
from simic.schemas.eventlog import LogFormatError

from .config import ConfigError, load_config
from .pipeline.alerts import alert_record, to_json_line

__all__ = ["main"]


def _setup_logging(verbose: bool, level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="simic-consumer: %(message)s",
        stream=sys.stderr,
    )


def _config(path: str | None):
    try:
        return load_config(path)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None


DEFAULT_WANDB_PROJECT = "simic"
"""The wandb project of ``--wandb`` given without one."""


def _with_exports(config, tensorboard_dir: str | None, wandb_project: str | None):
    """The configuration with the exporters the command line turns on (they win over the file's)."""
    export = config.export
    if tensorboard_dir is not None:
        export = export.model_copy(update={"tensorboard": export.tensorboard.model_copy(update={"dir": tensorboard_dir})})
    if wandb_project is not None:
        export = export.model_copy(update={"wandb": export.wandb.model_copy(update={"project": wandb_project})})
    return config.model_copy(update={"export": export})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simic-telemetry")
def main() -> None:
    """simic-consumer: the sidecar that receives, records and analyses simic telemetry."""


@main.command()
@click.option("--bind", "endpoint", envvar=ENDPOINT_ENV, default=None, metavar="ENDPOINT",
              help="Where to listen: ipc:///path or tcp://127.0.0.1:PORT (default: an ipc socket in a private runtime directory; env SIMIC_ENDPOINT).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("simic-logs"), show_default=True,
              help="Directory for the event log, alerts.jsonl and dead letters.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None, help="TOML configuration file.")
@click.option("--alerts-bind", "alerts_endpoint", default="auto", metavar="ENDPOINT",
              help="Where to publish alerts and delivery receipts (ZeroMQ PUB) for trainers' Emitter.poll_alerts() "
                   "and Emitter.close(). Default: next to --bind "
                   "(consumer.ipc -> consumer-alerts.ipc, tcp port + 1); 'none' to turn it off.")
@click.option("--dead-letter", is_flag=True, help="Also keep refused messages under LOG_DIR/dead-letter.")
@click.option("--insecure-bind", is_flag=True, help="Allow a TCP bind beyond loopback without encryption (anyone who can reach the port can send).")
@click.option("--curve-secret", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="This consumer's CurveZMQ secret key file (NAME.key_secret from `simic-consumer keygen`). With --curve-allow, "
                   "the events socket and the alerts PUB are encrypted and accept only allowed keys; a TCP bind beyond "
                   "loopback is then allowed. Producers need the matching NAME.key.")
@click.option("--curve-allow", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Directory of the public key files (*.key) of the producers and alert subscribers allowed to connect "
                   "(read at start). Any other key, or none, is rejected, counted and logged.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (0: any free port, printed at start).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Address for --metrics-port; 0.0.0.0 lets a Prometheus on another host scrape it.")
@click.option("--dashboard", is_flag=True, help="Live terminal dashboard of runs, ranks and alerts (plain status lines when stdout is not a terminal).")
@click.option("--exit-with-pid", type=click.IntRange(min=1), default=None, metavar="PID",
              help="Stop when process PID (on this host) exits: record its exit (rule producer_exited alerts about each "
                   "session it left without run_end), drain, checkpoint, exit 0. spawn_consumer passes the trainer's pid. "
                   "Refuses to start if PID is not running.")
@click.option("--remove-dir-at-exit", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Remove DIR when the consumer exits: a private directory made for its ipc sockets (spawn_consumer's), "
                   "owned by this user, holding nothing but sockets; otherwise it is left alone, with a warning.")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write what arrives as TensorBoard event files under DIR, one run directory per run and rank "
                   "(config: export.tensorboard.dir). Needs simic-telemetry[tensorboard].")
@click.option("--wandb", "wandb_project", is_flag=False, flag_value=DEFAULT_WANDB_PROJECT, default=None, metavar="[PROJECT]",
              help=f"Also log what arrives to wandb, one run per run and rank, in PROJECT (default {DEFAULT_WANDB_PROJECT}); "
                   "online or offline as WANDB_MODE and `wandb login` say (config: export.wandb). Needs simic-telemetry[wandb].")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run(endpoint: str | None, log_dir: Path, config_path: str | None, alerts_endpoint: str, dead_letter: bool, insecure_bind: bool,
        curve_secret: Path | None, curve_allow: Path | None, metrics_port: int | None, metrics_host: str, dashboard: bool,
        exit_with_pid: int | None, remove_dir_at_exit: Path | None, tensorboard_dir: str | None, wandb_project: str | None,
        verbose: bool) -> None:
    """Receive events, record them, analyse them and raise alerts until SIGINT/SIGTERM (or until the
    process given to --exit-with-pid exits)."""
    from .daemon.lifecycle import check_private_dir, remove_private_dir

    _setup_logging(verbose)
    if remove_dir_at_exit is not None:
        problem = check_private_dir(remove_dir_at_exit)
        if problem is not None:
            raise click.UsageError(f"--remove-dir-at-exit: {problem}")
    try:
        _run(endpoint, log_dir, config_path, alerts_endpoint, dead_letter, insecure_bind, curve_secret, curve_allow,
             metrics_port, metrics_host, dashboard, exit_with_pid, tensorboard_dir, wandb_project)
    finally:
        if remove_dir_at_exit is not None:
            remove_private_dir(remove_dir_at_exit)


def _run(endpoint: str | None, log_dir: Path, config_path: str | None, alerts_endpoint: str, dead_letter: bool, insecure_bind: bool,
         curve_secret: Path | None, curve_allow: Path | None, metrics_port: int | None, metrics_host: str, dashboard: bool,
         exit_with_pid: int | None, tensorboard_dir: str | None, wandb_project: str | None) -> None:
    from .daemon.claim import EndpointInUse
    from .daemon.lifecycle import ProcessGone
    from .daemon.serve import DaemonOptions, serve
    from simic.schemas.transport import KeyFileError

    from .daemon.security import CurveServer
    from .sinks.export import MissingExtra

    config = _with_exports(_config(config_path), tensorboard_dir, wandb_project)
    endpoint = endpoint or default_endpoint()
    alerts = None if alerts_endpoint.lower() == "none" else alerts_endpoint
    curve = None
    if curve_secret is not None or curve_allow is not None:
        if curve_secret is None or curve_allow is None:
            raise click.UsageError("--curve-secret and --curve-allow go together: this consumer's secret key file and the directory of allowed peer keys")
        try:
            curve = CurveServer(curve_secret, curve_allow, log_interval_s=config.daemon.rejection_log_interval_s)
        except KeyFileError as error:
            raise click.UsageError(str(error)) from None
    for where in filter(None, (endpoint, None if alerts == "auto" else alerts)):
        if not is_loopback(where) and curve is None:
            if not insecure_bind:
                raise click.UsageError(
                    f"refusing to bind {where}: it is reachable from other hosts and simic traffic is neither encrypted nor authenticated. "
                    "Bind ipc:// or a loopback address (tcp://127.0.0.1:PORT); or use CurveZMQ keys: "
                    "`simic-consumer keygen KEYS --name consumer` for this consumer and `simic-consumer keygen KEYS --name HOST` for "
                    "each trainer host, copy the trainers' HOST.key files into an allow directory and run with "
                    "--curve-secret KEYS/consumer.key_secret --curve-allow ALLOW_DIR (trainers set SIMIC_CURVE_SERVER_KEY=consumer.key "
                    "and SIMIC_CURVE_CLIENT_KEY=HOST.key_secret); or pass --insecure-bind if the network is trusted."
                )
            click.echo(f"simic-consumer: WARNING: listening on {where} without encryption (--insecure-bind)", err=True)
    if curve is not None:
        click.echo(f"simic-consumer: {curve.summary_line()}")
    options = DaemonOptions(endpoint=endpoint, log_dir=log_dir, config=config, dead_letter=dead_letter, alerts_endpoint=alerts,
                            metrics_port=metrics_port, metrics_host=metrics_host, dashboard=dashboard, curve=curve,
                            exit_with_pid=exit_with_pid)
    try:
        code = asyncio.run(serve(options))
    except ProcessGone as error:
        raise click.ClickException(f"--exit-with-pid {exit_with_pid}: {error}; not starting") from None
    except EndpointInUse as error:
        raise click.ClickException(str(error)) from None
    except MissingExtra as error:
        raise click.ClickException(f"{error}; not starting") from None
    except Exception as error:  # bind failures and the like: one clear line, not a traceback
        raise click.ClickException(f"{type(error).__name__}: {error}") from None
    if curve is not None:
        click.echo(f"simic-consumer: {curve.failures.summary_line()}")
    sys.exit(code)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="simic", show_default=True, metavar="NAME",
              help="Base name of the files: DIRECTORY/NAME.key (public) and DIRECTORY/NAME.key_secret (secret).")
def keygen(directory: Path, name: str) -> None:
    """Write a CurveZMQ key pair into DIRECTORY (created 0700; the secret file is 0600).

    One pair for the consumer (its NAME.key_secret goes to `run --curve-secret`, its NAME.key to
    every producer), and one pair per producer host or subscriber (its NAME.key goes into the
    consumer's --curve-allow directory). An existing pair is never overwritten.
    """
    from simic.schemas.transport import KeyFileError, write_key_pair

    try:
        public, secret, key = write_key_pair(directory, name)
    except KeyFileError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot write keys into {directory}: {error.strerror or error}") from None
    click.echo(f"wrote {secret} (secret: keep it on this host, mode 0600)")
    click.echo(f"wrote {public} (public: copy it to the peers)")
    click.echo(f"public key: {key}")


@main.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None, help="TOML configuration (thresholds) to replay with.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: the alerts, then a summary line.")
def replay(logs: tuple[Path, ...], config_path: str | None, as_json: bool) -> None:
    """Run recorded logs (files or directories) through the analysis and print the alerts."""
    from .offline.inspect_log import format_summary
    from .offline.replay import replay as run_replay

    _setup_logging(False, logging.WARNING)
    config = _config(config_path)
    try:
        result = asyncio.run(run_replay(logs, config, console=not as_json))
    except LogFormatError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        for alert in result.alerts:
            click.echo(to_json_line(alert_record(alert)))
        click.echo(to_json_line({"type": "summary", "alerts": len(result.alerts), **result.summary}))
    else:
        click.echo(f"{len(result.alerts)} alerts")
        click.echo(format_summary(result.summary))


@main.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"), show_default=True,
              help="The HTML file to write (self-contained: opens without network).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None, help="TOML configuration (thresholds) to replay with.")
@click.option("--title", default=None, help="Page title (default: the run ids).")
@click.option("--max-points", type=click.IntRange(min=100), default=5000, show_default=True,
              help="Most points drawn per line; longer series are thinned keeping each bucket's min, max and gaps.")
def report(logs: tuple[Path, ...], output: Path, config_path: str | None, title: str | None, max_points: int) -> None:
    """Write one HTML page of recorded logs: metadata, step time, gradient norms with EMA and drift band,
    pre/post clip, LSTM state, PPO metrics, with the alerts of the real rules on the shared step axis."""
    from .report import MissingDependency, write_report

    _setup_logging(False, logging.WARNING)
    config = _config(config_path)
    try:
        written = write_report(logs, output, config, title=title, max_points=max_points)
    except MissingDependency as error:
        raise click.ClickException(str(error)) from None
    except LogFormatError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {written.path} ({written.bytes / 1e6:.1f} MB): {written.runs} runs, {written.events} events, {written.alerts} alerts")


@main.command()
@click.argument("destination", type=click.Choice(["tensorboard", "wandb"]))
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="tensorboard: the directory of run directories (tensorboard --logdir DIR); wandb: where wandb keeps its files.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML configuration: the rules whose alerts are exported, and the export.wandb settings.")
@click.option("--project", default=None, help=f"wandb: the project (default: export.wandb.project, else {DEFAULT_WANDB_PROJECT}).")
@click.option("--mode", "wandb_mode", type=click.Choice(["online", "offline"]), default=None,
              help="wandb: online or offline (default: export.wandb.mode, else what WANDB_MODE and `wandb login` say).")
def export(destination: str, logs: tuple[Path, ...], out: Path, config_path: str | None, project: str | None, wandb_mode: str | None) -> None:
    """Write recorded logs to TensorBoard or wandb as the sidecar's --tensorboard and --wandb do live:
    the same scalars on the step axis, the alerts of the same rules as text, run_start as the config."""
    from .offline.replay import replay as run_replay
    from .sinks.export import MissingExtra, export_sinks

    _setup_logging(False, logging.WARNING)
    config = _config(config_path)
    tensorboard, wandb = config.export.tensorboard, config.export.wandb
    if destination == "tensorboard":  # this destination only, whatever the file turns on
        tensorboard, wandb = tensorboard.model_copy(update={"dir": str(out)}), wandb.model_copy(update={"project": None})
    else:
        tensorboard = tensorboard.model_copy(update={"dir": None})
        wandb = wandb.model_copy(update={"project": project or wandb.project or DEFAULT_WANDB_PROJECT, "mode": wandb_mode or wandb.mode,
                                         "dir": str(out)})
    config = config.model_copy(update={"export": config.export.model_copy(update={"tensorboard": tensorboard, "wandb": wandb})})
    try:
        (sink,) = export_sinks(config.export, log_dir=out, when_full="wait")
    except MissingExtra as error:
        raise click.ClickException(str(error)) from None
    try:
        result = asyncio.run(run_replay(logs, config, extra_sinks=[sink]))
    except LogFormatError as error:
        raise click.ClickException(str(error)) from None
    click.echo(sink.summary_line())
    if sink.stats.failed:
        raise click.ClickException(f"{sink.stats.failed} events could not be exported (see the messages above)")
    click.echo(f"{len(result.summary.get('runs', {}))} runs, {len(result.alerts)} alerts")


@main.command()
@click.argument("log", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def inspect(log: Path, as_json: bool) -> None:
    """Tell what a log holds: runs, ranks, events per kind, steps, times, losses, rejections, torn tail."""
    from .offline.inspect_log import format_summary
    from .offline.replay import replay as run_replay

    _setup_logging(False, logging.ERROR)
    try:
        result = asyncio.run(run_replay([log], _config(None), analysis=False))
    except LogFormatError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(to_json_line(result.summary))
    else:
        click.echo(format_summary(result.summary))


@main.command()
@click.option("--url", envvar="SIMIC_METRICS_URL", default="http://127.0.0.1:9464/metrics", show_default=True,
              help="The daemon's metrics URL (run --metrics-port); env SIMIC_METRICS_URL.")
@click.option("--max-age", type=float, default=30.0, show_default=True,
              help="Seconds without a processed message or clock tick before the daemon counts as stuck.")
def healthcheck(url: str, max_age: float) -> None:
    """Exit 0 if the daemon at URL answers and its pipeline ran in the last MAX_AGE seconds, else 1 with the reason
    (the Docker image's HEALTHCHECK; a Kubernetes exec liveness probe)."""
    from .daemon.healthcheck import check

    problem = check(url, max_age)
    if problem:
        click.echo(f"unhealthy: {problem}", err=True)
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the rules and their defaults as JSON.")
def rules(as_json: bool) -> None:
    """List every analysis rule with its settings and defaults."""
    from .analysis import RULES

    if as_json:
        click.echo(json.dumps({name: rule.Config().model_dump() for name, rule in RULES.items()}, indent=2))
        return
    for name, rule in RULES.items():
        doc = " ".join((rule.__doc__ or "").split())
        click.echo(f"[rules.{name}]")
        click.echo(click.wrap_text(doc, initial_indent="  # ", subsequent_indent="  # ", width=100))
        for key, field in rule.Config.model_fields.items():
            description = " ".join((field.description or "").split())
            click.echo(f"  {key} = {json.dumps(field.default)}" + (f"    # {description}" if description else ""))
