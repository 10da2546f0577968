"""Many nodes on a real engine: sidecars scraped by a real Prometheus, alerts routed by a real Alertmanager.

The Prometheus and Alertmanager binaries are Debian's (``make test-deps`` installs them as root);
tests that need them skip, saying which is missing, where they are not installed. Everything runs
on loopback, in temporary directories, with the configuration files shipped in ``deploy/``.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest
import yaml

from tests.consumer.conftest import WAIT_S, daemons  # noqa: F401  (daemons: the real simic-consumer fixture)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
RANK = Path(__file__).with_name("rank.py")

BINARIES = {
    "prometheus": "/usr/bin/prometheus",
    "promtool": "/usr/bin/promtool",
    "alertmanager": "/usr/bin/prometheus-alertmanager",  # Debian's name for it
    "amtool": "/usr/bin/amtool",
}


def binary(name: str) -> str | None:
    """The path of a Prometheus tool: Debian's, or one of that name on PATH."""
    path = BINARIES[name]
    return path if Path(path).is_file() else shutil.which(name)


def needs(*names: str) -> pytest.MarkDecorator:
    """Skip, naming what is missing, unless these binaries are installed."""
    missing = [name for name in names if binary(name) is None]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"{', '.join(missing)} not installed (make test-deps installs Debian's prometheus and prometheus-alertmanager as root)",
    )


T = TypeVar("T")


def until(what: str, probe: Callable[[], T], explain: Callable[[], str] = lambda: "") -> T:
    """Poll ``probe`` until it returns something true and return it. WAIT_S is a hang guard, not a
    timing assertion: on a loaded machine every signal here comes in seconds."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S:.0f} s\n{explain()}")
        time.sleep(0.2)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class Server:
    """A Prometheus or Alertmanager process listening on loopback; its output goes to a file."""

    def __init__(self, name: str, args: list[str], port: int, workdir: Path) -> None:
        self.name = name
        self.base = f"http://127.0.0.1:{port}"
        self.output = workdir / f"{name}.log"
        with open(self.output, "w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)

    def log_tail(self, lines: int = 30) -> str:
        text = self.output.read_text(errors="replace").splitlines()
        return f"{self.name} output (last {lines} lines):\n" + "\n".join(text[-lines:])

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
            return answers(f"{self.base}/-/ready")

        until(f"ready {self.name}", ready, self.log_tail)

    def get(self, path: str) -> Any:
        return get_json(f"{self.base}{path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_alertmanager(workdir: Path, config: Path) -> Server:
    """Alertmanager with ``config`` as shipped; no cluster gossip (it would bind 0.0.0.0:9094)."""
    port = free_port()
    return Server("alertmanager", [
        binary("alertmanager"), f"--config.file={config}", f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn",
    ], port, workdir)


def start_prometheus(workdir: Path, config: Path) -> Server:
    port = free_port()
    return Server("prometheus", [
        binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], port, workdir)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prometheus_config(*, targets: list[str], alertmanager: str, interval: str) -> dict:
    """deploy/prometheus.yml with this test's targets, Alertmanager and intervals; the rest as shipped."""
    config = load_yaml(DEPLOY / "prometheus.yml")
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    static["targets"] = targets
    (managers,) = config["alerting"]["alertmanagers"]
    managers["static_configs"] = [{"targets": [alertmanager]}]
    assert config["rule_files"] == ["simic-alerts.yml"]
    return config


def rules_for_test(changes: dict[str, dict[str, Any]]) -> dict:
    """deploy/simic-alerts.yml with some durations and thresholds made short enough for a test.

    ``changes`` maps an alert to ``{"for": "1s"}`` and/or ``{"expr": (old, new)}``; each ``old``
    must occur exactly once in the shipped expression, so an edit of the file cannot turn the
    change into a silent no-op. Everything else is the shipped file.
    """
    rules = load_yaml(DEPLOY / "simic-alerts.yml")
    by_name = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    for alert, change in changes.items():
        rule = by_name[alert]
        if "for" in change:
            assert "for" in rule, f"{alert} has no 'for' to shorten"
            rule["for"] = change["for"]
        if "expr" in change:
            old, new = change["expr"]
            assert rule["expr"].count(old) == 1, f"{alert}: {old!r} is not in its expression once: {rule['expr']!r}"
            rule["expr"] = rule["expr"].replace(old, new)
    return rules


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in deploy/grafana-dashboard.json: panels, annotations, variables."""
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    queries = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"]]
    queries += [(f"variable {v['name']}", v["definition"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def run_tool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


class Ranks:
    """Rank processes (tests/cluster/rank.py); every one is killed at the end, stopped or not."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, endpoint: str, run_id: str, rank: int, world_size: int, *extra: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(RANK), endpoint, run_id, str(rank), str(world_size), *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL ends a SIGSTOPped process too
            proc.wait(timeout=WAIT_S)


@pytest.fixture
def servers():
    """Prometheus and Alertmanager processes a test started (append them): all stopped at the end."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def ranks():
    started = Ranks()
    yield started
    started.kill_all()


@pytest.fixture
def socket_dir():
    """A short private directory for ipc sockets (their paths are limited to ~107 bytes)."""
    directory = tempfile.mkdtemp(prefix="simic-n-", dir="/tmp")
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
