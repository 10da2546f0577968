"""`simic-consumer report`: a real log from the real daemon, the real command, rendered in headless Chromium."""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import pytest

from simic.consumer.analysis._ema import GradientEMATracker
from simic.producer import Emitter

from ..conftest import WAIT_S, Daemon, consumer_command

from simic.consumer.report.figures import thin
from simic.consumer.report.page import SECTIONS

HEADS = ["slot", "blueprint", "blend", "op", "value"]
STEPS = 60
NAN_AT = 30
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000",
]


def _train(emitter: Emitter) -> None:
    """Every kind the report draws, with a missing value, a NaN in the LSTM state and a NaN grad norm."""
    for step in range(STEPS):
        wobble = 1.0 + 0.1 * math.sin(step / 3)
        emitter.emit("step_timing", step=step, phases_ms={"rollout": 12.0 * wobble, "update": 8.0})
        norms = {head: 0.5 * wobble for head in HEADS}
        norms["op"] = None if step == 10 else norms["op"]  # a head without gradient: a gap, not a zero
        norms["blend"] = 3.0 if step == 40 else norms["blend"]  # a spike outside the drift band
        emitter.emit("head_grad_norms", step=step, norms=norms, stage="pre_clip", pre_clip_total=2.0 * wobble,
                     post_clip_total=1.0, max_norm=1.0)
        emitter.emit("lstm_health", step=step, h_norm=float("nan") if step == NAN_AT else 3.0 * wobble, c_norm=5.0,
                     h_rms=0.3, c_rms=0.6, h_max_abs=0.9, c_max_abs=2.0, has_nan=step == NAN_AT)
        emitter.emit("ppo_update", step=step, policy_loss=-0.01, value_loss=0.5 / wobble, approx_kl=0.01 * wobble,
                     clip_fraction=0.1, ratio_min=0.8, ratio_max=1.2, entropy={head: 1.0 * wobble for head in HEADS[:4]},
                     explained_variance=float("nan") if step < 5 else 0.5)
        emitter.flush()


@pytest.fixture(scope="module")
def recorded_log(tmp_path_factory):
    """A log written by the real daemon from a real Emitter (one run, one rank, one NaN fault)."""
    base = tmp_path_factory.mktemp("report")
    socket_dir = tempfile.mkdtemp(prefix="simic-r-", dir="/tmp")
    daemon = Daemon(f"ipc://{socket_dir}/c.ipc", base / "logs")
    try:
        with Emitter(daemon.endpoint, run_id="report-run", heads=HEADS, config={"lr": 3e-4, "envs": 8}, device="cpu") as emitter:
            _train(emitter)
        daemon.wait_for("ended (ok)")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        shutil.rmtree(socket_dir, ignore_errors=True)
    return base / "logs"


@pytest.fixture(scope="module")
def report_html(recorded_log, tmp_path_factory):
    """The report the real `simic-consumer report` command wrote."""
    out = tmp_path_factory.mktemp("html") / "report.html"
    result = subprocess.run(consumer_command("report", str(recorded_log), "-o", str(out)), capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {out}" in result.stdout
    return out


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if found is None:
        pytest.skip("chromium not found (make test-deps installs Debian's chromium as root)")
    return found


def _run_chromium(*args: str, tmp_path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def _sections(dom: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r'<section[^>]*\bid="([^"]+)"[^>]*>(.*?)</section>', dom, re.S)}


class TestReportCommand:
    def test_the_page_is_self_contained_and_tells_the_run(self, report_html):
        """One HTML file with plotly inlined, no external script or stylesheet, the run's metadata and the real alerts."""
        page = report_html.read_text()
        assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page)
        assert "Plotly" in page and len(page) > 1_000_000  # plotly.js is inlined
        for text in ("report-run", "slot, blueprint, blend, op, value", "&quot;envs&quot;: 8", "non_finite", "has_nan",
                     "no torn tail", "head_grad_norms"):
            assert text in page, text

    def test_without_plotly_it_says_what_to_install_in_one_line(self, recorded_log, tmp_path):
        """With plotly not importable, `report` exits 1 with one line naming simic-telemetry[report]."""
        code = "import sys; sys.modules['plotly'] = None; from simic.consumer.cli import main; main()"
        result = subprocess.run([sys.executable, "-c", code, "report", str(recorded_log), "-o", str(tmp_path / "r.html")],
                                capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 1
        assert result.stderr.strip().count("\n") == 0
        assert "pip install 'simic-telemetry[report]'" in result.stderr
        assert not (tmp_path / "r.html").exists()


class TestRenderedInChromium:
    def test_every_section_draws_its_plot(self, report_html, tmp_path):
        """Headless Chromium renders a plotly SVG in every section, with the NaN marked and the alert shown."""
        result = _run_chromium("--dump-dom", report_html.as_uri(), tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        sections = _sections(result.stdout)
        assert [sid for sid, *_ in SECTIONS] == list(sections)
        for sid, body in sections.items():
            assert 'class="main-svg"' in body, f"section {sid} drew no plot"
            assert "scatterlayer" in body, f"section {sid} drew no traces"
        assert re.search(r'class="annotation-text[^"]*"[^>]*>[^<]*NaN', sections["lstm"]), "the NaN in h_norm is not marked"
        assert "non_finite" in sections["alerts"]  # the rule's name on the alert timeline's axis

    def test_a_screenshot_is_a_real_picture(self, report_html, tmp_path):
        """A 1400x3000 screenshot of the page is written under the test's tmp dir and holds a real picture."""
        shot = tmp_path / "report.png"
        result = _run_chromium(f"--screenshot={shot}", "--window-size=1400,3000", report_html.as_uri(), tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (1400, 3000)
        assert len(data) > 100_000  # a blank page compresses to a few kB; plots and tables do not


class TestFigureData:
    def test_thinning_keeps_spikes_and_gaps(self):
        """Long series are thinned to about max_points, keeping the spike and the gaps."""
        values: list[float | None] = [1.0] * 10_000
        values[5_003] = 50.0
        values[7_001] = None
        values[8_002] = float("nan")
        keep = thin(values, 500)
        assert len(keep) <= 600
        assert {5_003, 7_001, 8_002} <= set(keep)
        assert keep == sorted(keep)


class TestUntrustedText:
    def test_names_from_the_log_are_escaped(self, tmp_path):
        """A run id or head name holding markup shows as text: it never becomes an element of the page."""
        from simic.consumer.report import write_report
        from simic.schemas.codec import KINDS, encode_message
        from simic.schemas.eventlog import LogWriter

        evil = "<img src=x onerror=alert(1)>"
        rows = [[KINDS["run_start"].code, 0, 1, 0, "host", 1, 1, None, None, [evil], {evil: evil}],
                [KINDS["head_grad_norms"].code, 1, 2, 0, {evil: float("nan")}, 1.0]]
        with LogWriter(tmp_path / "logs", writer="test") as writer:
            writer.write(encode_message(evil, 0, 1, rows), 1)
        written = write_report([tmp_path / "logs"], tmp_path / "r.html")
        page = written.path.read_text()
        assert evil not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page


class TestPerUpdateSeries:
    async def test_one_point_per_update_and_a_series_per_recurrent_core(self, tmp_path):
        """Four gradient events per step become one point (their RMS, as the rules see it; the last update at
        the clock tick after the run went quiet); an actor's and a critic's LSTM are two series, not one zigzag."""
        from simic.consumer import ConsumerConfig
        from simic.consumer.report.collect import collect
        from simic.schemas import LogWriter, encode_events
        from simic.schemas.eventlog import FRAME_TICK
        from simic.schemas.models import HeadGradNorms, LstmHealth

        envelope = dict(run_id="r", rank=0, session=1)
        events, seq = [], 0
        for step in range(5):
            for value in (1.0, 2.0, 2.0, 1.0):
                events.append(HeadGradNorms(**envelope, seq=seq, clock_ns=seq, step=step, norms={"a": value}, total=value))
                seq += 1
            for name, h in (("actor", 1.0), ("critic", 9.0)):
                events.append(LstmHealth(**envelope, seq=seq, clock_ns=seq, step=step, h_norm=h, name=name))
                seq += 1
        with LogWriter(tmp_path / "log") as writer:
            for i, event in enumerate(events):
                writer.write(encode_events([event]), 1_700_000_000_000_000_000 + i)
            writer.write(b"", 1_700_000_003_000_000_000, FRAME_TICK)  # 3 s later: the last update is complete
        data = await collect([tmp_path / "log"], ConsumerConfig())
        group = data.groups[("r", 0)]
        points = group.head_norms["a"].sorted()
        assert list(points.steps) == [0, 1, 2, 3, 4]
        assert points.values[0] == 1.0  # step 0's first event, judged before a second one showed the cadence
        assert all(math.isclose(v, math.sqrt(2.5)) for v in points.values[1:])
        assert list(group.lstm["h_norm@actor"].sorted().values) == [1.0] * 5
        assert list(group.lstm["h_norm@critic"].sorted().values) == [9.0] * 5


DRIFT_HEADS = ["slot", "op", "value"]
JUMP = range(50, 55)
"""Updates at which the drifting log's ``op`` head jumps from 1.0 to 5.0."""


def _drift_log(path, norms_of) -> None:
    """A log of one run: run_start, then 80 updates of per-head pre-clip norms ``norms_of(step)``, one message each."""
    from simic.schemas import LogWriter, encode_events
    from simic.schemas.models import HeadGradNorms, RunStart

    envelope = dict(run_id="drift-run", rank=0, session=3)
    with LogWriter(path) as writer:
        writer.write(encode_events([RunStart(**envelope, seq=0, clock_ns=0, step=0, host="h", pid=1, heads=DRIFT_HEADS)]), 1)
        for step in range(80):
            norms = norms_of(step)
            event = HeadGradNorms(**envelope, seq=step + 1, clock_ns=step + 1, step=step, norms=norms, stage="pre_clip",
                                  total=math.sqrt(sum(v * v for v in norms.values())))
            writer.write(encode_events([event]), 1_700_000_000_000_000_000 + step * 100_000_000)


def _healthy(step: int) -> dict[str, float]:
    """Norms growing 4x over 80 updates, as a policy's do while it learns, with +-25% noise per update."""
    growth = 4 ** (step / 80)
    return {head: growth * (1.0 + 0.25 * math.sin(step * (1.7 + i))) for i, head in enumerate(DRIFT_HEADS)}


def _drifting(step: int) -> dict[str, float]:
    return {"slot": 1.0, "op": 5.0 if step in JUMP else 1.0, "value": 2.0}


def _marks(figure) -> dict[tuple[str, str], list[int]]:
    """``(head, mark)`` to the steps the gradient panel marks (``mark``: the rule's drift, or drift with the alert active)."""
    rows = {("y" if i == 1 else f"y{i}"): head for i, head in enumerate(DRIFT_HEADS, start=1)}
    marks: dict[tuple[str, str], list[int]] = {}
    for trace in figure.data:
        if trace.name in ("drifting update", "drifting, alert active"):
            marks.setdefault((rows[trace.yaxis], trace.name), []).extend(trace.x)
    return marks


async def _report_data(tmp_path, norms_of, config=None):
    from simic.consumer import ConsumerConfig
    from simic.consumer.report.collect import collect
    from simic.consumer.report.figures import build_figures

    _drift_log(tmp_path / "log", norms_of)
    data = await collect([tmp_path / "log"], config or ConsumerConfig())
    return data, build_figures(data)


class TestDriftPanel:
    async def test_a_healthy_run_has_no_drift_marks_and_no_drift_alert(self, tmp_path):
        """Norms that grow while the policy learns: gradient_drift raises nothing and the panel marks nothing, where a
        0.99 EMA with a +-50% band (what the panel used to draw) put most points outside its band."""
        data, figures = await _report_data(tmp_path, _healthy)
        assert [a for a in data.alerts if a.rule == "gradient_drift"] == []
        assert _marks(figures.grad_norms) == {}
        group = data.groups[("drift-run", 0)]
        assert all(len(group.drift[head].judgements) == 80 for head in DRIFT_HEADS)
        seed_outside = 0
        for head in DRIFT_HEADS:
            tracker = GradientEMATracker(momentum=0.99)
            for value in group.head_norms[head].values:
                seed_outside += tracker.check_drift(value, 1.0, 0.5)[0]
        assert seed_outside > 0.5 * 3 * 80, seed_outside

    async def test_a_drifting_head_is_marked_exactly_where_the_rule_saw_drift(self, tmp_path):
        """op jumps 5x for five updates: those five are marked, the last four filled as the alert fired at the second;
        the baseline and limit drawn are the rule's (a steady head: the limit 1.6 times the baseline, head_rise)."""
        data, figures = await _report_data(tmp_path, _drifting)
        fired = [a for a in data.alerts if a.rule == "gradient_drift" and not a.cleared]
        assert [(a.values["head"], a.step) for a in fired] == [("op", 51)]
        assert _marks(figures.grad_norms) == {("op", "drifting update"): [50],
                                              ("op", "drifting, alert active"): [51, 52, 53, 54]}
        trace = data.groups[("drift-run", 0)].drift["op"]
        assert trace.drifted_steps == list(JUMP)
        judged = {j.step: j for j in trace.judgements}
        assert judged[50].baseline == pytest.approx(1.0) and judged[50].limit == pytest.approx(1.6)
        assert judged[51].baseline == pytest.approx(1.0)  # a drifting update is not the head's usual
        assert judged[10].limit is None and judged[10].baseline == pytest.approx(1.0)  # the warmup only gathers
        assert "head_rise 1.6, head_noise_z 3.5" in figures.grad_norms_note

    async def test_the_configuration_given_is_the_one_drawn(self, tmp_path):
        """With head_rise 6 (as `report --config` gives it) the 5x jump does not drift, no alert fires, and the
        limit drawn is six times the baseline; with the rule off nothing is judged and the note says so."""
        from simic.consumer import ConsumerConfig

        config = ConsumerConfig.model_validate({"rules": {"gradient_drift": {"head_rise": 6.0}}})
        data, figures = await _report_data(tmp_path, _drifting, config)
        assert [a for a in data.alerts if a.rule == "gradient_drift"] == []
        assert _marks(figures.grad_norms) == {}
        judged = {j.step: j for j in data.groups[("drift-run", 0)].drift["op"].judgements}
        assert judged[50].limit == pytest.approx(6.0) and judged[51].limit == pytest.approx(6.0)
        assert "head_rise 6" in figures.grad_norms_note

        off = ConsumerConfig.model_validate({"rules": {"gradient_drift": {"enabled": False}}})
        data, figures = await _report_data(tmp_path / "off", _drifting, off)
        assert data.drift_config is None and not data.groups[("drift-run", 0)].drift
        assert _marks(figures.grad_norms) == {} and "off in this configuration" in figures.grad_norms_note

    def test_report_config_changes_the_page(self, tmp_path):
        """`simic-consumer report --config` draws with that configuration and says which, on the page."""
        _drift_log(tmp_path / "log", _drifting)
        (tmp_path / "rules.toml").write_text("[rules.gradient_drift]\nhead_rise = 6.0\n")
        out = tmp_path / "r.html"
        result = subprocess.run(consumer_command("report", str(tmp_path / "log"), "-o", str(out), "--config", str(tmp_path / "rules.toml")),
                                capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 0, result.stdout + result.stderr
        page = out.read_text()
        assert "head_rise 6, head_noise_z 3.5, head_new_high 1, warmup 30" in page
        assert "outside band" not in page and "drifting update" in page
