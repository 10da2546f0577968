"""Exporters: what goes in comes out of TensorBoard's and wandb's own files, and a slow or failing
exporter never holds up the pipeline."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

from simic.consumer import ConsumerConfig, build_pipeline
from simic.consumer.pipeline.contract import StageCounts
from simic.consumer.sinks.export import Exporter, ExportSink, export_sinks
from simic.consumer.sinks.export.tensorboard import run_directory
from simic.consumer.testing import RecordingSink
from simic.schemas import encode_events
from simic.schemas.models import (
    Episodes, HeadGradNorms, Heartbeat, LstmHealth, Metrics, ParamUpdates, PpoUpdate, RunEnd, RunStart, StepTiming,
)

from ..conftest import WAIT_S
from ...export_readers import tensorboard_hparams, tensorboard_scalars, tensorboard_texts, wandb_runs

pytest.importorskip("tensorboardX", reason="the tensorboard extra (make test installs it)")
pytest.importorskip("wandb", reason="the wandb extra (make test installs it)")

HEADS = ["slot", "op", "value"]
STEPS = 8
NAN_AT = 5
T0 = 1_700_000_000_000_000_000


class Run:
    """Events of one producer session, numbered as an emitter numbers them."""

    def __init__(self, run_id: str = "exp-1", rank: int = 0, session: int = 7) -> None:
        self.envelope = dict(run_id=run_id, rank=rank, session=session)
        self.seq = 0

    def __call__(self, kind, step: int, **fields):
        event = kind(**self.envelope, seq=self.seq, clock_ns=self.seq, step=step, **fields)
        self.seq += 1
        return event


def training(run: Run) -> list[list]:
    """One message per step: timing, gradient norms (pre and post clip), LSTM state (NaN at NAN_AT), PPO
    metrics, a logged metric, episodes, update ratios; run_start first, run_end last."""
    messages = [[run(RunStart, 0, host="trainer-host", pid=4242, heads=HEADS, config={"lr": 3e-4, "envs": 8, "net": {"hidden": 64}},
                     device="cpu")]]
    for step in range(STEPS):
        messages.append([
            run(StepTiming, step, phases_ms={"rollout": 10.0 + step, "update": 5.0}),
            run(HeadGradNorms, step, norms={"slot": 0.5 + step, "op": None, "value": 2.0}, stage="pre_clip", total=3.0 + step,
                max_norm=0.5),
            run(HeadGradNorms, step, norms={"slot": 0.1, "value": 0.4}, stage="post_clip", total=0.5),
            run(LstmHealth, step, h_norm=math.nan if step == NAN_AT else 1.0 + step, c_rms=0.25, has_nan=step == NAN_AT),
            run(PpoUpdate, step, policy_loss=-0.02, value_loss=0.5, approx_kl=0.01 * (step + 1), entropy={"slot": 1.2, "op": 0.7}),
            run(Metrics, step, values={"charts/SPS": 1000.0 + step, "train/acc": None}),
            run(Episodes, step, returns=[2.0, 4.0], lengths=[8, 8]),
            run(ParamUpdates, step, ratios={"slot": 1e-3, "op": None}, total_ratio=2e-3),
        ])
    messages.append([run(RunEnd, STEPS, status="ok", sent=run.seq)])
    return messages


async def push(sinks, messages, *, catching_up: bool = False, config: ConsumerConfig | None = None) -> RecordingSink:
    """The messages through the real pipeline (rules, alerts) with the sinks after it; closed at the end."""
    recorder = RecordingSink()
    pipeline = build_pipeline(config or ConsumerConfig(), console=False, extra_sinks=[*sinks, recorder])
    await pipeline.start()
    for index, events in enumerate(messages):
        await pipeline.consume(encode_events(events), T0 + index * 1_000_000, catching_up=catching_up)
    await pipeline.close()
    return recorder


def exporting(tmp_path, **export) -> list[ExportSink]:
    config = ConsumerConfig.model_validate({"export": export})
    return export_sinks(config.export, log_dir=tmp_path, when_full="wait")


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """wandb offline, its home, cache and config in the test's directory: nothing leaves the machine."""
    home = tmp_path / "wandb-home"
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")


def expected_scalars() -> dict[str, list[tuple[int, float]]]:
    steps = range(STEPS)
    return {
        "time_ms/rollout": [(s, 10.0 + s) for s in steps],
        "time_ms/update": [(s, 5.0) for s in steps],
        "grad_norm/slot": [(s, 0.5 + s) for s in steps],
        "grad_norm/value": [(s, 2.0) for s in steps],
        "grad_norm_post_clip/slot": [(s, 0.1) for s in steps],
        "grad_norm_post_clip/value": [(s, 0.4) for s in steps],
        "grad_norm_total/pre_clip": [(s, 3.0 + s) for s in steps],
        "grad_norm_total/post_clip": [(s, 0.5) for s in steps],
        "grad_norm_total/max_norm": [(s, 0.5) for s in steps],
        "lstm/h_norm": [(s, math.nan if s == NAN_AT else 1.0 + s) for s in steps],
        "lstm/c_rms": [(s, 0.25) for s in steps],
        "lstm/has_nan": [(s, 1.0 if s == NAN_AT else 0.0) for s in steps],
        "losses/policy_loss": [(s, -0.02) for s in steps],
        "losses/value_loss": [(s, 0.5) for s in steps],
        "ppo/approx_kl": [(s, 0.01 * (s + 1)) for s in steps],
        "ppo/entropy/slot": [(s, 1.2) for s in steps],
        "ppo/entropy/op": [(s, 0.7) for s in steps],
        "charts/SPS": [(s, 1000.0 + s) for s in steps],
        "episodes/return_mean": [(s, 3.0) for s in steps],
        "episodes/length_mean": [(s, 8.0) for s in steps],
        "episodes/count": [(s, 2.0) for s in steps],
        "update_ratio/slot": [(s, 1e-3) for s in steps],
        "update_ratio/total": [(s, 2e-3) for s in steps],
    }


def same_points(actual: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """Same steps; values equal to float32 precision (TensorBoard keeps float32), NaN where NaN went in."""
    return [s for s, _ in actual] == [s for s, _ in expected] and all(
        (math.isnan(a) and math.isnan(e)) or math.isclose(a, e, rel_tol=1e-6) for (_, a), (_, e) in zip(actual, expected)
    )


class TestTensorBoardExporter:
    async def test_every_scalar_goes_in_at_its_step_and_reads_back(self, tmp_path):
        """EventAccumulator reads back each scalar at its training step, NaN as NaN; a missing value (None) is no point."""
        await push(exporting(tmp_path, tensorboard={"dir": str(tmp_path / "tb")}), training(Run()))
        scalars = tensorboard_scalars(run_directory(tmp_path / "tb", "exp-1", 0))
        expected = expected_scalars()
        assert set(scalars) == set(expected)  # no grad_norm/op, train/acc or update_ratio/op: they were None
        for tag, points in expected.items():
            assert same_points(scalars[tag], points), (tag, scalars[tag])

    async def test_alerts_and_the_session_end_are_text_and_run_start_is_the_config(self, tmp_path):
        """The rules' alerts are text entries at the step they are about; run_start is the run's config (text and HPARAMS)."""
        recorder = await push(exporting(tmp_path, tensorboard={"dir": str(tmp_path / "tb")}), training(Run()))
        run_dir = run_directory(tmp_path / "tb", "exp-1", 0)
        texts = tensorboard_texts(run_dir)
        raised = [a for a in recorder.alerts if a.run_id == "exp-1"]
        assert any(a.rule == "non_finite" and a.step == NAN_AT for a in raised)
        expected = sorted((a.rule, a.step, ("[cleared] " if a.cleared else f"[{a.severity.upper()}] ") + a.message) for a in raised)
        exported = sorted((tag.removeprefix("alerts/"), step, text) for tag, entries in texts.items() if tag.startswith("alerts/")
                          for step, text in entries)
        assert exported == expected
        assert texts["run/end"] == [(STEPS, f"session 7 ended: ok, {1 + 8 * STEPS} events sent")]
        (config_text,) = texts["run/config"]
        assert '"lr": 0.0003' in config_text[1] and '"host": "trainer-host"' in config_text[1]
        hparams = tensorboard_hparams(run_dir)
        assert hparams["lr"] == 3e-4 and hparams["net/hidden"] == 64 and hparams["simic/host"] == "trainer-host"

    async def test_one_run_directory_per_run_and_rank(self, tmp_path):
        """Two ranks of one run and a run id that is no file name: three run directories, inside the export directory."""
        ranks = [Run("exp-1", 0, 1), Run("exp-1", 1, 2), Run("../../etc/x", 0, 3)]
        messages = [[run(HeadGradNorms, step, norms={"slot": float(run.envelope["rank"]) + step})] for step in range(3) for run in ranks]
        await push(exporting(tmp_path, tensorboard={"dir": str(tmp_path / "tb")}), messages)
        dirs = sorted(p.relative_to(tmp_path / "tb").as_posix() for p in (tmp_path / "tb").glob("*/*"))
        assert len(dirs) == 3 and "exp-1/rank0" in dirs and "exp-1/rank1" in dirs
        assert not (tmp_path / "etc").exists() and all(len(d.split("/")) == 2 and d.split("/")[0] not in (".", "..") for d in dirs)
        assert tensorboard_scalars(run_directory(tmp_path / "tb", "exp-1", 1))["grad_norm/slot"] == [(0, 1.0), (1, 2.0), (2, 3.0)]
        assert tensorboard_scalars(run_directory(tmp_path / "tb", "../../etc/x", 0))["grad_norm/slot"] == [(0, 0.0), (1, 1.0), (2, 2.0)]

    async def test_minibatch_events_are_one_point_per_update(self, tmp_path):
        """A trainer sending a gradient event per minibatch gets one point per update, their RMS, as the rules judge it."""
        run = Run()
        messages = [[run(HeadGradNorms, step, norms={"slot": value}) for value in (1.0, 2.0, 2.0, 1.0)] for step in range(4)]
        messages.append([run(RunEnd, 4)])
        await push(exporting(tmp_path, tensorboard={"dir": str(tmp_path / "tb")}), messages)
        points = tensorboard_scalars(run_directory(tmp_path / "tb", "exp-1", 0))["grad_norm/slot"]
        assert [s for s, _ in points] == [0, 1, 2, 3]
        assert points[0][1] == 1.0  # step 0's first event, judged before a second one showed the cadence
        assert all(math.isclose(v, math.sqrt(2.5), rel_tol=1e-6) for _, v in points[1:])


class TestWandbExporter:
    async def test_one_offline_run_per_rank_with_the_scalars_alerts_and_config(self, tmp_path, offline_wandb):
        """The offline run's own files hold every scalar at its step (the `step` key), the alerts as text and run_start as config."""
        messages = training(Run("exp-1", 0, 7))
        other = Run("exp-1", 1, 8)
        messages.insert(2, [other(HeadGradNorms, 0, norms={"slot": 9.0})])
        recorder = await push(exporting(tmp_path, wandb={"project": "simic-test", "dir": str(tmp_path / "wb")}), messages)
        runs = wandb_runs(tmp_path / "wb")
        assert set(runs) == {"exp-1 rank 0", "exp-1 rank 1"}
        run = runs["exp-1 rank 0"]
        assert (run.project, run.group, run.run_id, run.finished) == ("simic-test", "exp-1", "exp-1-rank0", True)
        for tag, points in expected_scalars().items():
            assert same_points(run.series(tag), points), (tag, run.series(tag))
        assert run.series("grad_norm/op") == [] and run.series("train/acc") == []
        alerts = sorted((tag.removeprefix("alerts/"), step, text) for row in run.history for tag, text in row.items()
                        if tag.startswith("alerts/") for step in [row["step"]])
        raised = sorted((a.rule, a.step, ("[cleared] " if a.cleared else f"[{a.severity.upper()}] ") + a.message)
                        for a in recorder.alerts if a.run_id == "exp-1" and a.rank == 0)
        assert alerts == raised and any(rule == "non_finite" for rule, *_ in alerts)
        assert run.config["lr"] == 3e-4 and run.config["net"] == {"hidden": 64}
        assert run.config["simic"]["host"] == "trainer-host" and run.config["simic"]["heads"] == HEADS
        assert runs["exp-1 rank 1"].series("grad_norm/slot") == [(0, 9.0)]


class _Gate(Exporter):
    """An exporter that holds every write until released (a slow disk, a busy service)."""

    name = "gate"
    where = "nowhere"

    def __init__(self, fail_on_step: int | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.steps: list[int] = []
        self.closed = False
        self.fail_on_step = fail_on_step

    def write(self, runs) -> None:
        self.entered.set()
        self.release.wait()
        steps = sorted({step for points in runs.values() for step, *_ in points.scalars})
        if self.fail_on_step in steps:
            raise OSError("disk full")
        self.steps.extend(steps)

    def close(self) -> None:
        self.closed = True


def step_messages(count: int) -> list[list]:
    run = Run()
    return [[run(StepTiming, step, phases_ms={"update": 1.0}), run(Heartbeat, step, sent=step)] for step in range(count)]


class TestExportSink:
    async def test_a_stalled_exporter_drops_and_counts_and_the_pipeline_goes_on(self):
        """With the exporter stuck in a write, the queue fills, later batches are dropped and counted, and every
        batch still reaches the stages after it; once released it writes what it had queued."""
        gate = _Gate()
        sink = ExportSink(gate, queue_batches=2)
        recorder = RecordingSink()
        pipeline = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink, recorder])
        await pipeline.start()
        messages = step_messages(10)
        await pipeline.consume(encode_events(messages[0]), T0)
        assert await asyncio.to_thread(gate.entered.wait, 60)  # the export thread holds batch 0 in its write
        for index, events in enumerate(messages[1:], start=1):
            await pipeline.consume(encode_events(events), T0 + index)
        assert len(recorder.batches) == 10  # nothing after the exporter waited for it
        assert sink.queued == 2 and sink.stats.dropped == 7 * 2  # batches 3..9, two events each
        gate.release.set()
        await pipeline.close()
        assert gate.steps == [0, 1, 2] and gate.closed
        assert (sink.stats.written, sink.stats.dropped, sink.stats.failed) == (6, 14, 0)
        assert "6 events written, 14 dropped (queue full), 0 failed" in sink.summary_line()
        assert pipeline.stage_counts()["export:gate"] == StageCounts(accepted=10, refused=0, dropped=7)  # batches 3..9

    async def test_a_failing_exporter_loses_that_batch_only(self):
        """A write that raises counts its events as failed (and the batch as the stage's dropped); the batches
        before and after are written."""
        gate = _Gate(fail_on_step=2)
        gate.release.set()
        sink = ExportSink(gate, queue_batches=100)
        recorder = await push([sink], step_messages(5))
        assert gate.steps == [0, 1, 3, 4]
        assert (sink.stats.written, sink.stats.failed, sink.stats.dropped) == (8, 2, 0)
        assert sink.dropped == 1
        assert len(recorder.batches) == 5

    async def test_an_exporter_that_never_finishes_does_not_hold_the_close(self):
        """close() gives up after close_timeout_s, counting what was never written, and returns."""
        gate = _Gate()
        sink = ExportSink(gate, queue_batches=100, close_timeout_s=0.2)
        pipeline = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink])
        await pipeline.start()
        for index, events in enumerate(step_messages(4)):
            await pipeline.consume(encode_events(events), T0 + index)
        assert await asyncio.to_thread(gate.entered.wait, 60)  # the export thread is stuck in the first write
        await pipeline.close()
        assert sink.stats.written == 0 and sink.stats.unfinished == 3  # one batch in the stuck write, three queued
        assert "3 batches not written at the close deadline" in sink.summary_line()
        gate.release.set()

    async def test_batches_read_again_after_a_restart_are_not_exported_twice(self):
        """What a restarted daemon re-reads from its log (catching_up) was exported before: it is not sent again."""
        gate = _Gate()
        gate.release.set()
        sink = ExportSink(gate)
        await push([sink], step_messages(3), catching_up=True)
        assert gate.steps == [] and sink.stats.written == 0

    def test_a_missing_library_says_what_to_install(self, tmp_path, monkeypatch):
        """With tensorboardX or wandb not importable, making the exporter raises MissingExtra naming the extra."""
        from simic.consumer.sinks.export import MissingExtra

        monkeypatch.setitem(sys.modules, "tensorboardX", None)
        monkeypatch.setitem(sys.modules, "wandb", None)
        with pytest.raises(MissingExtra, match=r"pip install 'simic-telemetry\[tensorboard\]'"):
            exporting(tmp_path, tensorboard={"dir": str(tmp_path)})
        with pytest.raises(MissingExtra, match=r"pip install 'simic-telemetry\[wandb\]'"):
            exporting(tmp_path, wandb={"project": "p"})


# -- the real sidecar and the real command line ------------------------------------------------------

LIVE_STEPS = 12
LIVE_NAN_AT = 6


@pytest.fixture(scope="module")
def live_export(tmp_path_factory):
    """A real `simic-consumer run --tensorboard DIR --wandb PROJECT --metrics-port 0` fed by a real Emitter,
    stopped with SIGTERM; wandb offline with its home in the test's directory."""
    import urllib.request

    from simic.producer import Emitter

    from ..conftest import Daemon

    base = tmp_path_factory.mktemp("live-export")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false"}
    env.update({var: str(base / "wandb-home") for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")})
    socket_dir = tempfile.mkdtemp(prefix="simic-x-", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        daemon = Daemon(f"ipc://{socket_dir}/c.ipc", base / "logs", "--tensorboard", str(base / "tb"), "--wandb", "live-project",
                        "--metrics-port", "0")
    try:
        url = daemon.wait_for("serving metrics on").rsplit("serving metrics on ", 1)[1].strip()
        with Emitter(daemon.endpoint, run_id="live", heads=HEADS, config={"lr": 1e-3}, device="cpu") as emitter:
            for step in range(LIVE_STEPS):
                emitter.emit_step_timing(step=step, phases_ms={"rollout": 20.0 + step, "update": 10.0})
                emitter.emit_head_grad_norms(step=step, norms={"slot": 0.25 * (step + 1), "op": 0.5, "value": 1.0}, stage="pre_clip",
                                             total=math.nan if step == LIVE_NAN_AT else 2.0, max_norm=0.5)
                emitter.emit_ppo_update(step=step, approx_kl=0.001 * step, entropy={"slot": 1.0})
                emitter.flush()
        daemon.wait_for("ended (ok)")
        metrics = urllib.request.urlopen(url, timeout=WAIT_S).read().decode()
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        shutil.rmtree(socket_dir, ignore_errors=True)
    return base, emitter.stats.produced, daemon.output, metrics, env


class TestSidecarExport:
    def test_the_sidecar_writes_tensorboard_and_wandb_and_says_so(self, live_export):
        """Both exporters wrote every event the trainer sent (and every alert), the exit summary says so, and
        TensorBoard's and wandb's files hold the trainer's values at its steps and the rule's alert as text."""
        base, produced, output, _, _ = live_export
        alerts = [json.loads(line) for line in (base / "logs" / "alerts.jsonl").read_text().splitlines()]
        assert [(a["rule"], a["step"], a["cleared"]) for a in alerts] == [("non_finite", LIVE_NAN_AT, False),
                                                                           ("non_finite", LIVE_NAN_AT + 1, True)]
        for name in ("tensorboard", "wandb"):
            (line,) = [line for line in output if line.startswith(f"simic-consumer: export {name} ")]
            assert f"{produced + len(alerts)} events written, 0 dropped (queue full), 0 failed" in line, line
        steps = list(range(LIVE_STEPS))
        scalars = tensorboard_scalars(run_directory(base / "tb", "live", 0))
        assert scalars["grad_norm/slot"] == [(s, 0.25 * (s + 1)) for s in steps]
        assert scalars["time_ms/rollout"] == [(s, 20.0 + s) for s in steps]
        assert [s for s, _ in scalars["grad_norm_total/pre_clip"]] == steps and math.isnan(scalars["grad_norm_total/pre_clip"][LIVE_NAN_AT][1])
        texts = tensorboard_texts(run_directory(base / "tb", "live", 0))
        assert [(step, text.split("]")[0]) for step, text in texts["alerts/non_finite"]] == [(LIVE_NAN_AT, "[CRITICAL"),
                                                                                              (LIVE_NAN_AT + 1, "[cleared")]
        (run,) = wandb_runs(base / "logs").values()  # wandb's files go to the log directory by default
        assert (run.name, run.group, run.project) == ("live rank 0", "live", "live-project")
        assert run.series("grad_norm/slot") == [(s, 0.25 * (s + 1)) for s in steps]
        assert run.series("ppo/approx_kl") == [(s, pytest.approx(0.001 * s)) for s in steps]
        assert [step for step, _ in run.series("alerts/non_finite")] == [LIVE_NAN_AT, LIVE_NAN_AT + 1]
        assert run.config["lr"] == 1e-3 and run.config["simic"]["heads"] == HEADS

    def test_the_exporters_are_in_the_prometheus_metrics(self, live_export):
        """simic_export_* per exporter: nothing dropped or failed, the queue's capacity."""
        metrics = live_export[3]
        for name in ("tensorboard", "wandb"):
            assert f'simic_export_dropped_events_total{{exporter="{name}"}} 0.0' in metrics
            assert f'simic_export_failed_events_total{{exporter="{name}"}} 0.0' in metrics
            assert f'simic_export_queue_capacity_messages{{exporter="{name}"}} 1000.0' in metrics
            assert f'simic_export_events_total{{exporter="{name}"}}' in metrics

    def test_export_from_the_log_writes_what_the_sidecar_wrote(self, live_export, cli, tmp_path, monkeypatch):
        """`simic-consumer export tensorboard|wandb LOG --out DIR` gives the same scalars, steps and alert texts as the live export."""
        base, produced, _, _, env = live_export
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        result = cli.run("export", "tensorboard", str(base / "logs"), "--out", str(tmp_path / "tb"))
        assert "0 dropped (queue full), 0 failed" in result.stdout and "1 runs, 2 alerts" in result.stdout
        live_dir, replayed_dir = run_directory(base / "tb", "live", 0), run_directory(tmp_path / "tb", "live", 0)
        live, replayed = tensorboard_scalars(live_dir), tensorboard_scalars(replayed_dir)
        assert set(replayed) == set(live)
        for tag in live:
            assert same_points(replayed[tag], live[tag]), tag
        assert tensorboard_texts(replayed_dir)["alerts/non_finite"] == tensorboard_texts(live_dir)["alerts/non_finite"]

        result = cli.run("export", "wandb", str(base / "logs"), "--out", str(tmp_path / "wb"), "--project", "from-log", "--mode", "offline")
        assert f"{produced + 2} events written" in result.stdout
        (live_run,) = wandb_runs(base / "logs").values()
        (run,) = wandb_runs(tmp_path / "wb").values()
        assert run.project == "from-log"
        for tag in ("grad_norm/slot", "time_ms/update", "ppo/approx_kl", "alerts/non_finite"):
            assert run.series(tag) == live_run.series(tag), tag

    @pytest.mark.parametrize("flag, extra", [("--tensorboard", "tensorboard"), ("--wandb", "wandb")])
    def test_without_the_extra_the_sidecar_refuses_to_start_in_one_line(self, flag, extra, tmp_path, ipc_endpoint):
        """With the exporter's library not importable, `run` exits 1 before binding, naming the extra to install."""
        library = {"tensorboard": "tensorboardX", "wandb": "wandb"}[extra]
        code = f"import sys; sys.modules[{library!r}] = None; from simic.consumer.cli import main; main()"
        args = ["run", "--bind", ipc_endpoint, "--log-dir", str(tmp_path / "logs"), flag] + ([str(tmp_path / "tb")] if extra == "tensorboard" else [])
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert f"pip install 'simic-telemetry[{extra}]'" in line and "not starting" in line
        assert "listening on" not in result.stdout

    def test_a_failing_exporter_costs_the_sidecar_nothing_else(self, tmp_path, ipc_endpoint, daemons, cli):
        """An exporter that cannot write (its directory is under a file) fails every batch, counted; the event log
        still holds every event and the alert is still raised and recorded."""
        from simic.producer import Emitter

        (tmp_path / "a-file").write_text("")
        log_dir = tmp_path / "logs"
        daemon = daemons(ipc_endpoint, log_dir, "--tensorboard", str(tmp_path / "a-file" / "tb"))
        with Emitter(daemon.endpoint, run_id="failing", heads=HEADS) as emitter:
            for step in range(10):
                emitter.emit_head_grad_norms(step=step, norms={"slot": 1.0}, total=math.nan if step == 4 else 1.0)
                emitter.flush()
        daemon.wait_for("ended (ok)")
        assert daemon.stop() == 0
        (line,) = [line for line in daemon.output if "export tensorboard" in line]
        assert "0 events written, 0 dropped (queue full)" in line and " 0 failed" not in line
        assert cli.inspect_json(log_dir)["events"] == emitter.stats.produced
        alerts = [json.loads(line) for line in (log_dir / "alerts.jsonl").read_text().splitlines()]
        assert ("non_finite", 4) in [(a["rule"], a["step"]) for a in alerts]


class TestExportConfig:
    def test_the_config_file_turns_the_exporters_on(self, tmp_path):
        """[export.tensorboard] dir and [export.wandb] project turn them on, with their queue size; wandb's files go
        to the log directory unless export.wandb.dir says otherwise."""
        from simic.consumer import load_config

        path = tmp_path / "consumer.toml"
        path.write_text('[export]\nqueue_batches = 5\n[export.tensorboard]\ndir = "tb"\n[export.wandb]\nproject = "p"\nmode = "offline"\n')
        sinks = export_sinks(load_config(path).export, log_dir=tmp_path / "logs")
        assert [sink.exporter.name for sink in sinks] == ["tensorboard", "wandb"]
        assert [sink.capacity for sink in sinks] == [5, 5]
        assert sinks[1].exporter.directory == str(tmp_path / "logs") and sinks[1].exporter.mode == "offline"
        assert export_sinks(load_config(None).export, log_dir=tmp_path) == []

    def test_a_misspelt_key_is_an_error_naming_it(self, tmp_path):
        """A typo in an export key is refused, with the key, not ignored."""
        from simic.consumer.config import ConfigError, load_config

        path = tmp_path / "consumer.toml"
        path.write_text('[export.tensorbord]\ndir = "tb"\n')
        with pytest.raises(ConfigError, match="export.tensorbord: unknown key"):
            load_config(path)
