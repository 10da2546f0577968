"""The collectors on a CUDA GPU: right values, no host sync, bounded when the GPU falls behind.

Each collector's values are compared with a straightforward synchronous computation (``.item()``
and friends, in float64) on the same tensors. The hot-path calls (and ``flush()``) run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing CUDA call: the
collectors count failures instead of raising, so each test also asserts that nothing was counted.
``torch.cuda._sleep`` keeps the GPU busy, to show that nothing waits for it and that a full ring
drops (and counts) its oldest readouts. How long the host takes to queue the work is never assumed:
:func:`behind_a_busy_gpu` checks, with an event the GPU has not reached yet, that it was still busy
when the host had queued everything, and tries again with a longer sleep when it was not.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")

from simic.producer import CollectorSettings, Emitter, EmitterSettings  # noqa: E402
from simic.schemas import Event  # noqa: E402
from tests.collector_reference import assert_matches, lstm_reference  # noqa: E402
from tests.receiver import Receiver, close_all, ipc_receiver  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = "cuda"


@pytest.fixture
def consumer(tmp_path: Path):
    """A real PULL socket bound on ipc in the test's directory, decoding what arrives."""
    receiver = ipc_receiver(tmp_path)
    yield receiver
    close_all(receiver)


def make_emitter(consumer: Receiver, **settings) -> Emitter:
    emitter = Emitter(consumer.endpoint, run_id="collectors-cuda", settings=EmitterSettings(exit_hooks=False))
    if settings:
        emitter.configure_collectors(CollectorSettings(**settings))
    return emitter


@pytest.fixture
def emitter(consumer: Receiver):
    emitter = make_emitter(consumer)
    yield emitter
    emitter.close()


def received(consumer: Receiver, emitter: Emitter, kind: str) -> list[Event]:
    """Close the emitter (which drains what is in flight) and return the events of ``kind``."""
    emitter.close()
    return [e for e in consumer.until_run_end() if e.kind == kind]


@contextmanager
def sync_forbidden():
    """Any synchronizing CUDA call in the block raises."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def close(a: float | None, b: float, rel: float = 1e-5) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


AHEAD_MS = 200.0
"""GPU sleep queued ahead of the work in :func:`behind_a_busy_gpu`'s first attempt (doubled on each retry)."""
BUSY_ATTEMPTS = 5
"""Attempts :func:`behind_a_busy_gpu` makes (the last sleeps 3.2 s): a hang guard for a host stalled throughout."""
CALIBRATION_CYCLES = 10_000_000
AHEAD_CYCLES = 100_000_000
"""Sleep queued ahead of the calibration (some 50 ms; twice as many such kernels on each retry)."""

_cycles_per_ms: list[float] = []


def sleep_cycles(ms: float) -> int:
    """GPU clock cycles that ``torch.cuda._sleep`` needs to keep the GPU busy for about ``ms``: measured
    once, with CUDA events around a sleep queued behind other sleeps that are checked to be still running
    once the host has queued it all (a host stall must not add idle GPU time to the measurement)."""
    if not _cycles_per_ms:
        for attempt in range(BUSY_ATTEMPTS):
            marker = torch.cuda.Event()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(2**attempt):
                torch.cuda._sleep(AHEAD_CYCLES)
            marker.record()
            start.record()
            torch.cuda._sleep(CALIBRATION_CYCLES)
            end.record()
            busy = not marker.query()
            torch.cuda.synchronize()
            if busy:
                _cycles_per_ms.append(CALIBRATION_CYCLES / start.elapsed_time(end))
                break
        else:
            pytest.fail("the host never queued the calibration while the GPU was still busy")
    return int(_cycles_per_ms[0] * ms)


def gpu_sleep(ms: float) -> None:
    """Queue about ``ms`` of GPU sleep on the current stream, as kernels of 100 ms (calibrate first: :func:`sleep_cycles`)."""
    cycles = sleep_cycles(100.0)
    for _ in range(max(1, round(ms / 100.0))):
        torch.cuda._sleep(cycles)


def behind_a_busy_gpu(emitter: Emitter, queue_work: Callable[[int], None], stream: Any = None) -> int:
    """Call ``queue_work(attempt)`` (under sync debug mode) with a GPU sleep and a marker event queued on
    ``stream`` before it, and return the attempt in which the GPU was still in that sleep when
    ``queue_work`` returned: then nothing it queued had started, so its kernels ran back to back and none
    of its readouts could land during the calls, however slow the host was. An attempt in which the GPU
    got there first (a host stalled longer than the sleep) is repeated with twice the sleep. Between
    attempts and at the end, the GPU is synchronized and the emitter flushed (the readouts leave the ring)."""
    sleep_cycles(100.0)  # calibrated here, outside sync debug mode (calibrating waits for the GPU)
    for attempt in range(BUSY_ATTEMPTS):
        marker = torch.cuda.Event()
        with sync_forbidden(), torch.cuda.stream(stream):
            gpu_sleep(AHEAD_MS * 2**attempt)
            marker.record()
            queue_work(attempt)
        busy = not marker.query()  # an event query does not wait
        torch.cuda.synchronize()
        emitter.flush()
        if busy:
            return attempt
    pytest.fail(f"the host never queued the work within {AHEAD_MS * 2 ** (BUSY_ATTEMPTS - 1):.0f} ms of GPU sleep")


# -- gradient norms ----------------------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.core = torch.nn.LSTM(16, 32)
        self.shared = torch.nn.Linear(32, 12)  # rows 0..4: "slot", 5..11: "op"
        self.value = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        self.unused = torch.nn.Linear(32, 3)

    def loss(self) -> torch.Tensor:
        out, _ = self.core(torch.randn(8, 6, 16, device=DEVICE))
        return (self.shared(out) ** 2).mean() * 10 + self.value(out).pow(2).mean()


def heads_of(net: Net) -> dict:
    w, b = net.shared.weight, net.shared.bias
    return {
        "slot": [(w, slice(0, 5)), (b, slice(0, 5))],
        "op": [(w, slice(5, 12)), (b, slice(5, 12))],
        "value": net.value,
        "core": net.core,
        "unused": net.unused,
    }


def reference_norms(net: Net) -> dict[str, float | None]:
    """Per-head norms the slow way: float64, one .item() per head."""
    def norm(*ts):
        return torch.sqrt(sum(t.double().pow(2).sum() for t in ts)).item()

    w, b = net.shared.weight.grad, net.shared.bias.grad
    return {
        "slot": norm(w[:5], b[:5]),
        "op": norm(w[5:], b[5:]),
        "value": norm(*(p.grad for p in net.value.parameters())),
        "core": norm(*(p.grad for p in net.core.parameters())),
        "unused": None,
    }


class TestHeadGradNormsOnCuda:
    def test_pre_and_post_clip_norms_match_a_synchronous_reference(self, consumer, emitter) -> None:
        """Per-head norms (row slices included) and totals equal the synchronous computation; no sync."""
        torch.manual_seed(0)
        net = Net().to(DEVICE)
        groups = emitter.head_groups(heads_of(net), params=net.parameters())
        net.loss().backward()
        emitter.head_grad_norms(0, groups, stage="pre_clip", max_norm=0.5)  # warm-up: allocates the ring
        pre = reference_norms(net)
        with sync_forbidden():
            emitter.head_grad_norms(1, groups, stage="pre_clip", max_norm=0.5)
        total = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        post = reference_norms(net)
        with sync_forbidden():
            emitter.head_grad_norms(1, groups, stage="post_clip", clip_total=total, max_norm=0.5)
            emitter.flush()
        assert emitter.collector_stats.errors == 0
        events = received(consumer, emitter, "head_grad_norms")
        before, after = events[1], events[2]
        clip_total = total.item()
        for name, value in pre.items():
            assert (before.norms[name] is None) if value is None else close(before.norms[name], value), name
        for name, value in post.items():
            assert (after.norms[name] is None) if value is None else close(after.norms[name], value), name
        assert close(before.total, clip_total) and close(after.pre_clip_total, clip_total)
        assert close(before.post_clip_total, clip_total * min(1.0, 0.5 / (clip_total + 1e-6)))
        assert close(after.post_clip_total, min(0.5, clip_total), rel=1e-4)
        assert before.nonfinite == {} and after.stage == "post_clip"

    def test_fused_clip_equals_torch_clip_and_its_norms_the_reference(self, consumer, emitter) -> None:
        """``emitter.clip_grad_norm_`` leaves the gradients torch's clip leaves, returns its total, and the
        event's norms equal the synchronous reference taken before the clip; no sync."""
        torch.manual_seed(0)
        net, twin = Net().to(DEVICE), Net().to(DEVICE)
        twin.load_state_dict(net.state_dict())
        groups = emitter.head_groups(heads_of(net), params=net.parameters())
        for step in range(2):  # the first call allocates the ring
            for model in (net, twin):
                model.zero_grad()
                torch.manual_seed(step)
                model.loss().backward()
            pre = reference_norms(net)
            with sync_forbidden():
                total = emitter.clip_grad_norm_(step, groups, 0.5)
                emitter.flush()
            expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
            assert torch.allclose(total, expected, rtol=1e-6)
            for a, b in zip(net.parameters(), twin.parameters()):
                assert (a.grad is None) == (b.grad is None)
                if a.grad is not None:
                    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-8)
        assert emitter.collector_stats.errors == 0
        event = received(consumer, emitter, "head_grad_norms")[1]
        for name, value in pre.items():
            assert (event.norms[name] is None) if value is None else close(event.norms[name], value), name
        clip_total = expected.item()
        assert close(event.pre_clip_total, clip_total) and close(event.total, clip_total)
        assert close(event.post_clip_total, clip_total * min(1.0, 0.5 / (clip_total + 1e-6)))

    def test_non_finite_elements_are_counted_per_head(self, consumer, emitter) -> None:
        """With count_nonfinite, NaN and Inf gradient elements are counted exactly, per head, on the device."""
        net = Net().to(DEVICE)
        net.loss().backward()
        with torch.no_grad():
            net.shared.weight.grad[1, :3] = float("nan")
            net.shared.weight.grad[7, 0] = float("inf")
            net.shared.bias.grad[8] = float("-inf")
            next(net.value.parameters()).grad[0, :10] = float("nan")
        emitter.head_grad_norms(0, heads_of(net), count_nonfinite=True)
        with sync_forbidden():
            emitter.head_grad_norms(1, heads_of(net), count_nonfinite=True)
        assert emitter.collector_stats.errors == 0
        event = received(consumer, emitter, "head_grad_norms")[1]
        assert event.nonfinite == {"slot": 3, "op": 2, "value": 10}
        assert math.isnan(event.norms["slot"]) and event.norms["op"] == math.inf and math.isnan(event.total)
        assert math.isfinite(event.norms["core"])


# -- LSTM state --------------------------------------------------------------------------------------


assert_matches = functools.partial(assert_matches, abs_tol=1e-6)


class TestLstmStateOnCuda:
    def test_values_match_a_synchronous_reference(self, consumer, emitter) -> None:
        """All statistics of a (layers, envs, hidden) state equal the reference; no sync."""
        torch.manual_seed(1)
        h = torch.randn(2, 64, 256, device=DEVICE)
        c = torch.randn(2, 64, 256, device=DEVICE) * 3
        h[1, 17] *= 20  # one runaway environment
        emitter.lstm_state(0, (h, c))
        with sync_forbidden():
            emitter.lstm_state(1, (h, c))
            emitter.flush()
        assert emitter.collector_stats.errors == 0
        event = received(consumer, emitter, "lstm_health")[1]
        assert_matches(event, lstm_reference(h, c))

    def test_every_rollout_step_between_flushes_each_its_own_values(self, consumer, emitter) -> None:
        """A state measured at every step (changed in place after each call), two shapes and an ``h``
        alone interleaved, more calls between two flushes than may wait (64): each event carries its
        own call's state, and the events leave in call order."""
        torch.manual_seed(4)
        h, c = torch.randn(1, 16, 64, device=DEVICE), torch.randn(1, 16, 64, device=DEVICE)
        deep = torch.randn(2, 8, 32, device=DEVICE)
        kept: dict[int, dict] = {}
        with sync_forbidden():
            for step in range(150):
                if step % 3 == 2:
                    emitter.lstm_state(step, deep, name="deep")
                    kept[step] = {"envs": 8, "h_norm": torch.linalg.vector_norm(deep.double())}
                    deep.mul_(1.01)
                else:
                    emitter.lstm_state(step, (h, c))
                    kept[step] = (h.clone(), c.clone())
                    h.mul_(1.02).add_(0.01)  # the trainer's next state, in place
                    c.mul_(0.99)
                if step % 100 == 99:
                    emitter.flush()
        assert emitter.collector_stats.errors == 0
        events = received(consumer, emitter, "lstm_health")
        assert [e.step for e in events] == list(range(150))
        for event in events:
            expected = kept[event.step]
            if isinstance(expected, tuple):
                assert event.name is None
                assert_matches(event, lstm_reference(*expected))
            else:
                assert event.name == "deep" and event.envs == 8
                assert math.isclose(event.h_norm, float(expected["h_norm"]), rel_tol=1e-5)

    def test_env_mask_on_the_device(self, consumer, emitter) -> None:
        """A device mask keeps only its environments (a NaN in a masked-out one does not count)."""
        torch.manual_seed(2)
        h, c = torch.randn(1, 16, 32, device=DEVICE), torch.randn(1, 16, 32, device=DEVICE)
        h[0, 3, 5] = float("nan")
        mask = torch.ones(16, dtype=torch.bool, device=DEVICE)
        mask[3] = False
        mask[10] = False
        emitter.lstm_state(0, (h, c), env_mask=mask)
        with sync_forbidden():
            emitter.lstm_state(1, (h, c), env_mask=mask)
            emitter.lstm_state(2, (h, c), env_mask=mask.float())
        assert emitter.collector_stats.errors == 0
        events = received(consumer, emitter, "lstm_health")
        for event in events[1:]:
            assert_matches(event, lstm_reference(h, c, mask))
            assert event.envs == 14 and event.has_nan is False

    def test_nan_and_inf_flags(self, consumer, emitter) -> None:
        """NaN in h and Inf in c (and in h) are flagged; NaN propagates to norm and max-abs as in torch."""
        h, c = torch.randn(1, 8, 16, device=DEVICE), torch.randn(1, 8, 16, device=DEVICE)
        h[0, 2, 3] = float("nan")
        h[0, 2, 4] = float("inf")
        c[0, 5, 0] = float("-inf")
        emitter.lstm_state(0, (h, c))
        with sync_forbidden():
            emitter.lstm_state(1, (h, c))
        assert emitter.collector_stats.errors == 0
        event = received(consumer, emitter, "lstm_health")[1]
        assert_matches(event, lstm_reference(h, c))
        assert event.has_nan is True and event.has_inf is True and event.c_max_abs == math.inf

    def test_bfloat16_state(self, consumer, emitter) -> None:
        """A bf16 state is reduced in float32 on the device and matches the float64 reference."""
        torch.manual_seed(3)
        h = torch.randn(1, 32, 128, device=DEVICE).bfloat16()
        c = (torch.randn(1, 32, 128, device=DEVICE) * 2).bfloat16()
        with sync_forbidden():
            emitter.lstm_state(0, (h, c))
        assert emitter.collector_stats.errors == 0
        [event] = received(consumer, emitter, "lstm_health")
        assert_matches(event, lstm_reference(h, c), rel=1e-4)


# -- PPO update --------------------------------------------------------------------------------------


class TestPpoUpdateOnCuda:
    def test_device_tensors_match_item(self, consumer, emitter) -> None:
        """Device metrics (and per-head entropies) arrive equal to their .item(); host values beside them."""
        torch.manual_seed(4)
        ratio = torch.rand(512, device=DEVICE) + 0.5
        logratio = ratio.log()
        metrics = {
            "policy_loss": torch.randn((), device=DEVICE),
            "value_loss": torch.rand(1, device=DEVICE),
            "approx_kl": ((ratio - 1) - logratio).mean(),
            "clip_fraction": ((ratio - 1).abs() > 0.2).float().mean(),
            "ratio_min": ratio.min(),
            "ratio_max": ratio.max(),
            "entropy": {"slot": torch.rand((), device=DEVICE), "op": torch.rand((), device=DEVICE).double(), "blend": 0.75},
            "explained_variance": torch.tensor(float("nan"), device=DEVICE),
        }
        emitter.ppo_update(0, **metrics)
        with sync_forbidden():
            emitter.ppo_update(1, learning_rate=3e-4, **metrics)
            emitter.flush()
        assert emitter.collector_stats.errors == 0
        event = received(consumer, emitter, "ppo_update")[1]
        for name in ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "ratio_min", "ratio_max"):
            assert close(getattr(event, name), metrics[name].item()), name
        assert close(event.entropy["slot"], metrics["entropy"]["slot"].item())
        assert close(event.entropy["op"], metrics["entropy"]["op"].item())
        assert event.entropy["blend"] == 0.75 and event.learning_rate == 3e-4
        assert math.isnan(event.explained_variance)


# -- timers --------------------------------------------------------------------------------------------


class TestTimerOnCuda:
    def test_gpu_time_of_a_known_sleep(self, consumer, emitter) -> None:
        """A timer around a ~50 ms GPU sleep reports what a reference pair of CUDA events measures around
        the same sleep, bounded generously; no sync. Both are queued behind a busy GPU
        (:func:`behind_a_busy_gpu`), so a host stall between two calls adds no idle GPU time to either."""
        cycles = sleep_cycles(50)
        timer = emitter.timer("sleep")
        assert timer.clock == "cuda_event"
        reference = []

        def queue_work(attempt: int) -> None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            timer.start()
            torch.cuda._sleep(cycles)
            timer.stop(3 + attempt)
            emitter.flush()
            reference.append((start, end))

        attempt = behind_a_busy_gpu(emitter, queue_work)
        start, end = reference[-1]
        expected = start.elapsed_time(end)
        assert emitter.collector_stats.errors == 0
        [event] = [e for e in received(consumer, emitter, "step_timing") if e.step == 3 + attempt]
        assert event.clock == "cuda_event"
        assert 0.5 * expected <= event.phases_ms["sleep"] <= 2.0 * expected
        assert 20.0 <= event.phases_ms["sleep"] <= 500.0

    def test_explicit_stream_and_context_manager(self, consumer, emitter) -> None:
        """A timer made for a side stream measures the work queued on that stream (queued behind a busy
        side stream, so a host stall inside the block adds no idle time)."""
        cycles = sleep_cycles(20)
        side = torch.cuda.Stream()

        def queue_work(attempt: int) -> None:
            with emitter.timer("side", step=1 + attempt, stream=side):
                torch.cuda._sleep(cycles)

        attempt = behind_a_busy_gpu(emitter, queue_work, stream=side)
        [event] = [e for e in received(consumer, emitter, "step_timing") if e.step == 1 + attempt]
        assert 8.0 <= event.phases_ms["side"] <= 400.0


# -- the ring: never waits, bounded --------------------------------------------------------------------


class TestReadoutRing:
    def test_flush_does_not_wait_for_a_busy_gpu(self, consumer, emitter) -> None:
        """With the GPU busy, flush() returns and the readout stays pending: it never waits for the GPU
        (nor syncs: sync debug mode). The GPU is checked to be still busy after flush() returned
        (:func:`behind_a_busy_gpu`); no wall-clock time is asserted."""
        state = (torch.ones(1, 4, 8, device=DEVICE), torch.ones(1, 4, 8, device=DEVICE))
        emitter.lstm_state(0, state)  # warm-up
        emitter.flush()
        torch.cuda.synchronize()
        emitter.flush()
        assert emitter.collector_stats.pending == 0
        pending = []

        def queue_work(attempt: int) -> None:
            emitter.lstm_state(1 + attempt, state)
            emitter.flush()
            pending.append(emitter.collector_stats.pending)

        attempt = behind_a_busy_gpu(emitter, queue_work)
        assert pending[-1] == 1
        assert emitter.collector_stats.pending == 0  # once the GPU got there, the next flush() took it
        assert [e.step for e in received(consumer, emitter, "lstm_health")] == list(range(attempt + 2))

    def test_full_ring_drops_and_counts_the_oldest(self, consumer) -> None:
        """When the host outruns the GPU, the oldest pending readouts (and timings) are dropped and counted.
        The GPU is checked to be still busy when all ten have been queued (:func:`behind_a_busy_gpu`), so
        none can land early and change the counts."""
        emitter = make_emitter(consumer, readout_slots=4, max_pending_timers=3)
        states = [(torch.full((1, 4, 8), float(i + 1), device=DEVICE),) * 2 for i in range(10)]
        emitter.lstm_state(-1, states[0])  # warm-up: the buffers exist
        emitter.flush()
        torch.cuda.synchronize()
        emitter.flush()
        counts = []

        def queue_work(attempt: int) -> None:
            base, stats = 100 * attempt, emitter.collector_stats
            dropped, timers_dropped = stats.dropped, stats.timers_dropped
            for i, state in enumerate(states):
                emitter.lstm_state(base + i, state)
                emitter.flush()  # one sealed ring row per step: the ring holds 4
            for i in range(5):
                with emitter.timer("t", step=base + i):
                    pass
            stats = emitter.collector_stats
            counts.append((stats.dropped - dropped, stats.pending, stats.timers_dropped - timers_dropped))

        attempt = behind_a_busy_gpu(emitter, queue_work)
        assert counts[-1] == (6, 4, 2)
        emitter.close()
        got = consumer.until_run_end()
        base = 100 * attempt
        assert [e.step for e in got if e.kind == "lstm_health"][0] == -1
        lstm = [e for e in got if e.kind == "lstm_health" and e.step >= base]
        assert [e.step for e in lstm] == [base + 6, base + 7, base + 8, base + 9]
        assert [e.h_max_abs for e in lstm] == [7.0, 8.0, 9.0, 10.0]  # each slot holds its own readout
        assert sorted(e.step for e in got if e.kind == "step_timing" and e.step >= base) == [base + 2, base + 3, base + 4]
        assert emitter.collector_stats.errors == 0
        assert got[-1].kind == "run_end" and got[-1].readouts_dropped == sum(d + t for d, _, t in counts)  # the consumer learns of the loss

    def test_a_wide_readout_and_a_second_stream(self, consumer, emitter) -> None:
        """A readout wider than the first buffers gets wider ones; a side stream's readout is sealed apart."""
        small = (torch.ones(1, 4, 8, device=DEVICE), torch.ones(1, 4, 8, device=DEVICE))
        emitter.lstm_state(0, small)
        wide = [torch.nn.Parameter(torch.ones(2, device=DEVICE)) for _ in range(5000)]  # > 4096 values
        for p in wide:
            p.grad = torch.full((2,), 2.0, device=DEVICE)
        groups = emitter.head_groups({"wide": wide})
        side = torch.cuda.Stream()
        with sync_forbidden():
            emitter.head_grad_norms(1, groups)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                emitter.lstm_state(2, small)
            emitter.flush()
        assert emitter.collector_stats.errors == 0
        emitter.close()
        got = [e for e in consumer.until_run_end() if e.kind in ("lstm_health", "head_grad_norms")]
        assert sorted(e.step for e in got) == [0, 1, 2]
        [norms] = [e for e in got if e.kind == "head_grad_norms"]
        assert close(norms.norms["wide"], math.sqrt(5000 * 2 * 4.0))

    def test_close_delivers_readouts_still_in_flight(self, consumer, emitter) -> None:
        """close() waits (bounded) for what the GPU has not reached yet: the last event is not lost."""
        state = (torch.ones(1, 4, 8, device=DEVICE), torch.ones(1, 4, 8, device=DEVICE))
        torch.cuda._sleep(sleep_cycles(100))
        emitter.lstm_state(5, state)
        assert [e.step for e in received(consumer, emitter, "lstm_health")] == [5]

    def test_first_calls_under_sync_debug_mode(self, consumer, emitter) -> None:
        """Even the first calls (creating the pinned ring and the event pool) do not sync."""
        net = Net().to(DEVICE)
        net.loss().backward()
        groups = emitter.head_groups(heads_of(net))
        state = (torch.randn(1, 4, 8, device=DEVICE), torch.randn(1, 4, 8, device=DEVICE))
        with sync_forbidden():
            with emitter.timer("all", step=0):
                emitter.head_grad_norms(0, groups, stage="pre_clip")
                emitter.lstm_state(0, state)
                emitter.ppo_update(0, approx_kl=state[0].mean())
            emitter.flush()
        assert emitter.collector_stats.errors == 0
        emitter.close()
        got = {e.kind for e in consumer.until_run_end()}
        assert {"head_grad_norms", "lstm_health", "ppo_update", "step_timing"} <= got
