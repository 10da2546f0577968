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

from simic.consumer.analysis.ema import GradientEMATracker
from simic.consumer.report.collect import Series
from simic.producer import Emitter

from .conftest import WAIT_S, Daemon, consumer_command

from simic.consumer.report.figures import ema_band, thin
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
    def test_the_ema_and_band_are_the_seed_trackers(self):
        """The drawn EMA is GradientEMATracker's (momentum 0.99) before each update, the band EMA*(1±0.5)."""
        values = [1.0, 1.2, None, float("nan"), 0.9, 2.0, 1.0]
        ema, lower, upper, outside = ema_band(Series(list(range(len(values))), values))
        tracker = GradientEMATracker(momentum=0.99)
        expected = []
        for value in values:
            if value is None or not math.isfinite(value):
                expected.append(tracker.ema_norm)  # carried across the gap (the first value here is finite)
                continue
            expected.append(tracker.ema_norm if tracker.state_dict()["initialized"] else value)
            tracker.update(value, 1.0)
        assert ema == expected
        assert lower == [e * 0.5 for e in ema] and upper == [e * 1.5 for e in ema]
        assert outside == [False, False, False, False, False, True, False]

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
