"""CurveZMQ between producers and the consumer: real key files, a real `simic-consumer run` over TCP
loopback, real Emitters and subscribers. Plus a static check that the project never deserialises or
executes what it receives."""

from __future__ import annotations

import ast
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

from simic.consumer.daemon.security import CurveServer
from simic.producer import Emitter
from simic.schemas import decode_message
from simic.schemas.transport import CURVE_CLIENT_KEY_ENV, CURVE_SERVER_KEY_ENV, ENDPOINT_ENV, RUN_ID_ENV, CurveClientKeys, write_key_pair

from tests.consumer.daemon.test_serve import train
from tests.consumer.sinks.test_metrics import scrape, value

from .conftest import WAIT_S

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Keys:
    """A consumer pair, an allowed trainer pair and a stranger pair, distributed as the docs say."""

    consumer_secret: Path
    consumer_public: Path
    allow: Path
    trainer_secret: Path
    stranger_secret: Path
    stranger_key: str

    def client(self, secret: Path) -> CurveClientKeys:
        return CurveClientKeys.load(self.consumer_public, secret)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    consumer_public, consumer_secret, _ = write_key_pair(root / "consumer", "consumer")
    trainer_public, trainer_secret, _ = write_key_pair(root / "trainer", "trainer")
    _, stranger_secret, stranger_key = write_key_pair(root / "stranger", "stranger")
    allow = root / "allow"
    allow.mkdir()
    shutil.copy(trainer_public, allow)
    return Keys(consumer_secret, consumer_public, allow, trainer_secret, stranger_secret, stranger_key)


def secure_daemon(daemons, keys: Keys, log_dir: Path, *extra: str):
    """A daemon on loopback TCP with CurveZMQ; returns it and its alerts endpoint."""
    daemon = daemons("tcp://127.0.0.1:*", log_dir, "--alerts-bind", "tcp://127.0.0.1:*",
                     "--curve-secret", str(keys.consumer_secret), "--curve-allow", str(keys.allow), *extra)
    assert any("CurveZMQ on: server public key" in line for line in daemon.output)
    return daemon, daemon.wait_for("publishing alerts on").rsplit(" ", 1)[1].strip()


def watched(context: zmq.Context, kind: int, endpoint: str, client: CurveClientKeys | None):
    """A client socket (keys applied, or none) connected to ``endpoint``, with a monitor attached before
    it connects so that its handshake outcome cannot be missed."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if client is not None:
        client.apply(sock)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    sock.connect(endpoint)
    return sock, monitor


def handshake_outcome(sock: zmq.Socket, monitor: zmq.Socket) -> int:
    """The first handshake event the client socket reports (ZeroMQ's own signal), then stop watching."""
    assert monitor.poll(int(WAIT_S * 1000)), "no handshake outcome"
    event = parse_monitor_message(monitor.recv_multipart())["event"]
    sock.disable_monitor()
    monitor.close(linger=0)
    return event


class TestProducers:
    def test_only_a_producer_with_an_allowed_key_is_received_and_logged(self, tmp_path, keys, daemons, cli, monkeypatch):
        """Unknown key and no key: refused at the handshake, counted by reason, logged, nothing recorded;
        the allowed producer (configured from the environment) gets every event into the log."""
        log_dir = tmp_path / "logs"
        daemon, alerts = secure_daemon(daemons, keys, log_dir, "--metrics-port", "0")
        url = daemon.wait_for("serving metrics on").rsplit(" ", 1)[1].strip()

        stranger = Emitter(daemon.endpoint, run_id="stranger", alerts_endpoint=alerts,
                           curve_server_key=keys.consumer_public, curve_client_key=keys.stranger_secret)
        train(stranger, 5)
        daemon.wait_for(f"events: refused a connection from 127.0.0.1: key {keys.stranger_key} is not in the allow-list")
        plain = Emitter(daemon.endpoint, run_id="plain", alerts_endpoint=alerts)
        train(plain, 5)
        daemon.wait_for("events: handshake failed (")  # no_curve, or incomplete when the peer saw the mismatch first
        for emitter in (stranger, plain):  # rejected producers neither raise nor block: they just deliver nothing
            assert emitter.poll_alerts() == []
            emitter.close()
            assert emitter.stats.produced > 0 and emitter.stats.invalid == 0

        monkeypatch.setenv(ENDPOINT_ENV, daemon.endpoint)
        monkeypatch.setenv(RUN_ID_ENV, "allowed")
        monkeypatch.setenv(CURVE_SERVER_KEY_ENV, str(keys.consumer_public))
        monkeypatch.setenv(CURVE_CLIENT_KEY_ENV, str(keys.trainer_secret))
        with Emitter.from_env(alerts_endpoint=alerts) as allowed:
            train(allowed, 20)
        daemon.wait_for("run allowed rank 0 session")

        samples = scrape(url)
        assert value(samples, "simic_handshakes_failed_total", socket="events", reason="key_not_allowed") >= 1
        keyless = ("no_curve", "incomplete")
        assert sum(value(samples, "simic_handshakes_failed_total", socket="events", reason=reason) for reason in keyless) >= 1
        assert value(samples, "simic_handshakes_failed_total", socket="events", reason="bad_handshake") == 0
        assert daemon.stop() == 0
        (line,) = [line for line in daemon.output if "failed handshakes:" in line]
        assert re.search(r"events: [^;)]*key_not_allowed [1-9]", line) and re.search(r"events: [^;)]*(incomplete|no_curve) [1-9]", line)

        summary = cli.inspect_json(log_dir)
        assert set(summary["runs"]) == {"allowed"}
        (session,) = summary["runs"]["allowed"]
        assert session["status"] == "ok" and session["lost"] == 0
        assert session["received"] == allowed.stats.produced == allowed.stats.sent
        assert summary["rejected_messages"] == {} and summary["rejected_events"] == {}

    def test_a_producer_trusting_another_server_key_is_refused(self, tmp_path, keys, daemons):
        """A producer given the wrong consumer public key cannot complete the handshake; it is counted."""
        daemon, alerts = secure_daemon(daemons, keys, tmp_path / "logs")
        context = zmq.Context()
        try:
            wrong = CurveClientKeys.load(keys.allow / "trainer.key", keys.trainer_secret)  # not the consumer's key
            sock, monitor = watched(context, zmq.PUSH, daemon.endpoint, wrong)
            assert handshake_outcome(sock, monitor) != zmq.EVENT_HANDSHAKE_SUCCEEDED
            daemon.wait_for("events: handshake failed (bad_handshake)")
            sock.close()
        finally:
            context.destroy(linger=0)  # closes what an early failure left open
        assert daemon.stop() == 0
        assert any(re.search(r"events: [^;)]*bad_handshake [1-9]", line) for line in daemon.output if "failed handshakes:" in line)


class TestAlertSubscribers:
    def test_alerts_reach_only_subscribers_with_an_allowed_key(self, tmp_path, keys, daemons):
        """The alerts PUB shares the server key: an allowed subscriber and the allowed Emitter's
        poll_alerts() receive the non_finite alert; an unknown key and a plain subscriber are refused."""
        daemon, alerts = secure_daemon(daemons, keys, tmp_path / "logs")
        context = zmq.Context()
        try:
            subscribers = {name: watched(context, zmq.SUB, alerts, client) for name, client in (
                ("allowed", keys.client(keys.trainer_secret)), ("stranger", keys.client(keys.stranger_secret)), ("plain", None))}
            assert handshake_outcome(*subscribers["stranger"]) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            assert handshake_outcome(*subscribers["plain"]) != zmq.EVENT_HANDSHAKE_SUCCEEDED  # the server saw no CURVE; the client, a closed connection
            assert handshake_outcome(*subscribers["allowed"]) == zmq.EVENT_HANDSHAKE_SUCCEEDED
            allowed_sub = subscribers["allowed"][0]

            emitter = Emitter(daemon.endpoint, run_id="alerted", alerts_endpoint=alerts,
                              curve_server_key=keys.consumer_public, curve_client_key=keys.trainer_secret)
            polled, published = [], []
            step = 0
            # Subscriptions become live asynchronously (ZeroMQ's slow joiner): one NaN every other
            # step, each firing (then clearing) an alert, until both subscribers have one; the
            # loop bound is a hang guard.
            while not (polled and published) and step < 5000:
                emitter.emit("ppo_update", step=step, approx_kl=float("nan") if step % 2 == 0 else 0.01)
                emitter.flush()
                daemon.wait_for("non_finite run=alerted")
                polled += emitter.poll_alerts()
                while allowed_sub.poll(0):
                    published += decode_message(allowed_sub.recv_multipart()[1]).events
                step += 1
            emitter.close()
            assert polled and polled[0].rule == "non_finite" and polled[0].run_id == "alerted"
            assert published and published[0].rule == "non_finite"
            for name in ("stranger", "plain"):  # refused at the handshake: nothing was ever queued for them
                assert subscribers[name][0].poll(0) == 0, name
            for sock, _ in subscribers.values():
                sock.close()
        finally:
            context.destroy(linger=0)  # closes what an early failure left open
        assert daemon.stop() == 0
        (line,) = [line for line in daemon.output if "failed handshakes:" in line]
        assert re.search(r"alerts: [^;)]*key_not_allowed [1-9]", line) and re.search(r"alerts: [^;)]*(incomplete|no_curve) [1-9]", line)


class TestSecuredSocket:
    async def test_without_its_authenticator_a_secured_socket_refuses_every_key(self, keys):
        """Fail closed: with the allow-list check gone (ZAP_ENFORCE_DOMAIN), even an allowed key is
        refused, where libzmq's default would accept any key. The same client succeeds while it runs."""
        curve = CurveServer(keys.consumer_secret, keys.allow)
        server_context, client_context = zmq.asyncio.Context(), zmq.Context()
        server = server_context.socket(zmq.PULL)
        server.setsockopt(zmq.LINGER, 0)
        curve.secure(server, "events")
        server.bind("tcp://127.0.0.1:*")
        endpoint = server.getsockopt_string(zmq.LAST_ENDPOINT)
        client = keys.client(keys.trainer_secret)
        try:
            before = watched(client_context, zmq.PUSH, endpoint, client)
            # The authenticator runs on this loop: let it answer while the client waits for the outcome.
            assert await _outcome_on_loop(*before) == zmq.EVENT_HANDSHAKE_SUCCEEDED
            curve.release(server)  # stops the monitor and the authenticator; the socket stays bound, CURVE on
            after = watched(client_context, zmq.PUSH, endpoint, client)
            assert handshake_outcome(*after) != zmq.EVENT_HANDSHAKE_SUCCEEDED
            for sock in (before[0], after[0]):
                sock.close()
        finally:
            server.close(linger=0)
            server_context.destroy(linger=0)
            client_context.destroy(linger=0)


async def _outcome_on_loop(sock: zmq.Socket, monitor: zmq.Socket) -> int:
    async_monitor = zmq.asyncio.Socket.from_socket(monitor)
    assert await async_monitor.poll(int(WAIT_S * 1000)), "no handshake outcome"
    return handshake_outcome(sock, monitor)


class TestKeygenAndBindRules:
    def test_keygen_writes_a_private_pair_and_never_overwrites(self, tmp_path, cli):
        """Directory 0700, secret 0600, public 0644, in pyzmq's format; a second run changes nothing."""
        directory = tmp_path / "keys" / "consumer"
        result = cli.run("keygen", str(directory), "--name", "node-1")
        public_file, secret_file = directory / "node-1.key", directory / "node-1.key_secret"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(public_file.stat().st_mode) == 0o644
        public, secret = zmq.auth.load_certificate(secret_file)
        assert secret is not None and zmq.auth.load_certificate(public_file) == (public, None)
        assert f"public key: {public.decode()}" in result.stdout and str(secret_file) in result.stdout

        before = {path: path.read_bytes() for path in (public_file, secret_file)}
        again = cli.run("keygen", str(directory), "--name", "node-1", check=False)
        assert again.returncode == 1 and "refusing to overwrite" in again.stderr
        assert {path: path.read_bytes() for path in before} == before
        secret_file.unlink()  # half a pair left: still refused, and no new secret appears beside the old public key
        again = cli.run("keygen", str(directory), "--name", "node-1", check=False)
        assert again.returncode == 1 and "node-1.key already exists" in again.stderr
        assert not secret_file.exists() and public_file.read_bytes() == before[public_file]

    def test_emitter_key_options_fail_clearly_at_construction(self, tmp_path, keys):
        """A half or unusable key configuration is a clear ValueError before any socket exists."""
        endpoint = "tcp://127.0.0.1:9"
        with pytest.raises(ValueError, match="curve_server_key and curve_client_key go together"):
            Emitter(endpoint, run_id="x", curve_server_key=keys.consumer_public)
        with pytest.raises(ValueError, match="holds no secret key"):
            Emitter(endpoint, run_id="x", curve_server_key=keys.consumer_public, curve_client_key=keys.consumer_public)
        with pytest.raises(ValueError, match="cannot read CurveZMQ key file .*missing.key_secret"):
            Emitter(endpoint, run_id="x", curve_server_key=keys.consumer_public, curve_client_key=tmp_path / "missing.key_secret")
        (tmp_path / "garbage.key").write_text('curve\n    public-key = "not a key"\n')
        with pytest.raises(ValueError, match="malformed CurveZMQ key"):
            Emitter(endpoint, run_id="x", curve_server_key=tmp_path / "garbage.key", curve_client_key=keys.trainer_secret)

    def test_keys_allow_a_bind_beyond_loopback(self, tmp_path, keys, cli):
        """With keys the refusal no longer applies: the daemon goes on to bind (192.0.2.1 is a
        documentation address no host has, so the bind itself fails without opening any port)."""
        if Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0":
            pytest.skip("this host allows binding foreign addresses")
        result = cli.run("run", "--bind", "tcp://192.0.2.1:5599", "--log-dir", str(tmp_path / "logs"),
                         "--curve-secret", str(keys.consumer_secret), "--curve-allow", str(keys.allow), check=False)
        assert result.returncode == 1, result.stderr
        assert "refusing" not in result.stderr and "ZMQError" in result.stderr
        assert "CurveZMQ on: server public key" in result.stdout

    @pytest.mark.parametrize("flags, message", [
        (["--curve-secret", "{secret}"], "--curve-secret and --curve-allow go together"),
        (["--curve-secret", "{public}", "--curve-allow", "{allow}"], "holds no secret key"),
        (["--curve-secret", "{secret}", "--curve-allow", "{empty}"], "holds no public key file"),
    ])
    def test_unusable_key_options_are_refused_with_the_reason(self, tmp_path, keys, cli, flags, message):
        (tmp_path / "empty").mkdir()
        where = {"secret": keys.consumer_secret, "public": keys.consumer_public, "allow": keys.allow, "empty": tmp_path / "empty"}
        result = cli.run("run", "--bind", "tcp://127.0.0.1:0", "--log-dir", str(tmp_path / "logs"),
                         *[flag.format(**where) for flag in flags], check=False)
        assert result.returncode == 2 and message in result.stderr


# -- the project never deserialises or executes what it receives ---------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
IMPORT_MODULE_ALLOWED = {"consumer/analysis/__init__.py"}
"""Imports the rule modules found in its own package directory (pkgutil.iter_modules(__path__)),
never a name from data."""


def _unsafe_uses(path: Path, relative: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"imports {name}")
            if isinstance(node, ast.ImportFrom) and node.module == "importlib" and any(a.name == "import_module" for a in node.names):
                found.append("imports importlib.import_module")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:
                found.append(f"calls {func.id}()")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                qualified = f"{func.value.id}.{func.attr}"
                if qualified in {"yaml.load", "yaml.unsafe_load", "yaml.full_load"}:
                    found.append(f"calls {qualified}() (use yaml.safe_load)")
                if qualified == "importlib.import_module" and relative not in IMPORT_MODULE_ALLOWED:
                    found.append("calls importlib.import_module()")
                if qualified in {"builtins.eval", "builtins.exec"}:
                    found.append(f"calls {qualified}()")
    return [f"{relative}: {what}" for what in found]


def test_project_source_never_deserialises_or_executes_data():
    """No pickle/marshal/shelve, no eval, exec or compile, no unsafe yaml.load, no dynamic import outside
    the one place that uses only the project's own names (listed above, with why)."""
    files = sorted(path for part in ("schemas", "producer", "consumer") for path in (ROOT / part).rglob("*.py"))
    assert len(files) > 20
    problems = [problem for path in files for problem in _unsafe_uses(path, path.relative_to(ROOT).as_posix())]
    assert problems == []
    # The allowance is still needed (a stale one would silently widen the rule).
    assert all("import_module" in (ROOT / name).read_text() for name in IMPORT_MODULE_ALLOWED)
