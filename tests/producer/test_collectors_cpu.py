"""The collectors on the host: CPU fallbacks, the seed plan's API, the no-op twin, the profiler.

Values are checked against a straightforward reference computation; events are checked as a
consumer sees them: received on a real PULL socket bound over ipc in ``tmp_path`` and decoded with
``simic.schemas.decode_message``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from simic.producer import (  # noqa: E402
    CollectorSettings,
    CUDATimer,
    Emitter,
    EmitterSettings,
    HeadGroups,
    LSTMHealthMetrics,
    NullEmitter,
    compute_lstm_health,
    training_profiler,
)
from simic.producer.collectors import NullTimer, Timer  # noqa: E402
from simic.producer.collectors.timing import RunQueueWait  # noqa: E402
from simic.schemas import Event  # noqa: E402
from tests.collector_reference import assert_matches, lstm_reference  # noqa: E402
from tests.receiver import Receiver  # noqa: E402




def received(consumer: Receiver, emitter: Emitter, kind: str) -> list[Event]:
    """Close the emitter and return the events of ``kind`` the consumer received."""
    emitter.close()
    return [e for e in consumer.until_run_end() if e.kind == kind]


def close(a: float | None, b: float, rel: float = 1e-5) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


# -- the seed plan's synchronous API -------------------------------------------------------------


class TestCUDATimer:
    def test_cpu_device_measures_host_milliseconds(self) -> None:
        """On a CPU device the timer falls back to perf_counter and returns milliseconds."""
        timer = CUDATimer("cpu")
        assert timer.use_cuda is False
        timer.start()
        time.sleep(0.02)
        elapsed = timer.stop()
        assert 15.0 <= elapsed < 2000.0

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where CUDA is absent")
    def test_cuda_device_without_cuda_falls_back(self) -> None:
        """Asking for cuda where CUDA is absent gives the CPU fallback, not an error."""
        timer = CUDATimer("cuda")
        assert timer.use_cuda is False
        timer.start()
        assert timer.stop() >= 0.0


class TestLSTMHealthMetrics:
    def test_to_dict_has_the_seed_keys_and_python_bools(self) -> None:
        """to_dict uses the seed plan's keys; the flags are Python bools."""
        metrics = LSTMHealthMetrics(h_norm=1.0, c_norm=2.0, h_max=0.5, c_max=0.7, has_nan=False, has_inf=True)
        d = metrics.to_dict()
        assert list(d) == ["lstm_h_norm", "lstm_c_norm", "lstm_h_max", "lstm_c_max", "lstm_has_nan", "lstm_has_inf"]
        assert d["lstm_has_nan"] is False and d["lstm_has_inf"] is True

    @pytest.mark.parametrize(
        ("h_norm", "c_norm", "has_nan", "has_inf", "healthy"),
        [(1.0, 1.0, False, False, True), (100.0, 1.0, False, False, False), (1.0, 1e-7, False, False, False),
         (1.0, 1.0, True, False, False), (1.0, 1.0, False, True, False)],
    )
    def test_is_healthy_uses_the_seed_thresholds(self, h_norm, c_norm, has_nan, has_inf, healthy) -> None:
        """Healthy means finite and 1e-6 < norms < 100 (the defaults), both bounds exclusive."""
        metrics = LSTMHealthMetrics(h_norm, c_norm, 0.0, 0.0, has_nan, has_inf)
        assert metrics.is_healthy() is healthy

    def test_is_healthy_takes_custom_bounds(self) -> None:
        """max_norm and min_norm move the bounds."""
        metrics = LSTMHealthMetrics(50.0, 50.0, 0.0, 0.0, False, False)
        assert metrics.is_healthy(max_norm=10.0) is False
        assert metrics.is_healthy(min_norm=60.0) is False


class TestComputeLstmHealth:
    def test_none_is_none(self) -> None:
        """No hidden state, no metrics."""
        assert compute_lstm_health(None) is None

    def test_values_match_a_reference(self) -> None:
        """Norms and max-abs are those of torch.linalg.vector_norm and abs().max(); flags are bools."""
        h, c = torch.randn(2, 5, 8), torch.randn(2, 5, 8) * 3
        m = compute_lstm_health((h, c))
        assert math.isclose(m.h_norm, float(torch.linalg.vector_norm(h)), rel_tol=1e-6)
        assert math.isclose(m.c_norm, float(torch.linalg.vector_norm(c)), rel_tol=1e-6)
        assert m.h_max == float(h.abs().max()) and m.c_max == float(c.abs().max())
        assert m.has_nan is False and m.has_inf is False

    def test_nan_and_inf_are_flagged(self) -> None:
        """A NaN in h and an Inf in c set both flags (as Python bools)."""
        h, c = torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)
        h[0, 1, 2] = float("nan")
        c[0, 0, 0] = float("inf")
        m = compute_lstm_health((h, c))
        assert m.has_nan is True and m.has_inf is True
        assert m.is_healthy() is False


# -- timers ----------------------------------------------------------------------------------------


class TestTimerOnCpu:
    def test_cpu_timer_sends_host_time_labelled_cpu(self, consumer, emitter) -> None:
        """start()/stop(step) on the host becomes a step_timing event with clock="cpu"."""
        timer = emitter.timer("rollout", device="cpu")
        assert isinstance(timer, Timer) and timer.clock == "cpu"
        timer.start()
        time.sleep(0.02)
        timer.stop(7)
        emitter.flush()
        [event] = received(consumer, emitter, "step_timing")
        assert event.step == 7 and event.clock == "cpu"
        assert 15.0 <= event.phases_ms["rollout"] < 2000.0

    def test_phases_of_a_step_share_one_event_and_repeats_add_up(self, consumer, emitter) -> None:
        """Named phases of one step arrive in one event; a phase timed twice in a step adds up."""
        for _ in range(2):
            with emitter.timer("update", step=3, device="cpu"):
                time.sleep(0.01)
        with emitter.timer("rollout", step=3, device="cpu"):
            pass
        with emitter.timer("rollout", step=4, device="cpu"):
            pass
        emitter.flush()
        events = received(consumer, emitter, "step_timing")
        assert [e.step for e in events] == [3, 4]
        assert set(events[0].phases_ms) == {"update", "rollout"}
        assert events[0].phases_ms["update"] >= 18.0

    @pytest.mark.skipif(not RunQueueWait().available, reason="needs Linux's per-thread scheduler statistics")
    def test_a_phase_sharing_its_cpu_says_how_long_it_waited_and_a_sleeping_one_does_not(self, consumer, emitter) -> None:
        """This process and a busy child pinned to one CPU: a phase of 0.2 s of computing spends much of its time
        waiting for that CPU (the kernel's own count, sent as wait_ms), where a phase that sleeps 0.2 s alone does not."""
        cpu = min(os.sched_getaffinity(0))
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
        rival = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}}); print('busy', flush=True)\nwhile True: pass"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert rival.stdout.readline().strip() == "busy"  # the rival is on the CPU and spinning
            with emitter.timer("shared", step=1, device="cpu"):
                spin_until = time.thread_time() + 0.2  # 0.2 s of this thread's own CPU time
                while time.thread_time() < spin_until:
                    pass
        finally:
            rival.kill()
            rival.wait()
            os.sched_setaffinity(0, before)
        with emitter.timer("asleep", step=2, device="cpu"):
            time.sleep(0.2)
        emitter.flush()
        shared, asleep = received(consumer, emitter, "step_timing")
        assert shared.wait_ms["shared"] >= 0.3 * shared.phases_ms["shared"]  # two busy processes on one CPU: about half each
        assert shared.phases_ms["shared"] - shared.wait_ms["shared"] >= 150.0  # what remains is about its own 0.2 s
        assert asleep.wait_ms["asleep"] < 0.5 * asleep.phases_ms["asleep"]

    @pytest.mark.skipif(not RunQueueWait().available, reason="needs Linux's per-thread scheduler statistics")
    def test_the_wait_is_read_per_thread_and_a_forked_child_reads_its_own(self) -> None:
        """Each thread reads its own statistics from its own file, closed when the thread ends; after a fork the
        child reads its own thread (its own file)."""
        import threading

        reader = RunQueueWait()
        assert reader.read() >= 0
        parent_fd = reader._local.file.fd
        seen: list[tuple[int, int]] = []
        worker = threading.Thread(target=lambda: seen.append((reader.read(), reader._local.file.fd)))
        worker.start()
        worker.join()
        (value, worker_fd), = seen
        assert value >= 0 and worker_fd != parent_fd
        with pytest.raises(OSError):  # the worker's file was closed with its thread
            os.fstat(worker_fd)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one read, its result through the pipe
            try:
                value = reader.read()
                os.write(write_end, str(value).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            value = pipe.read()
        os.waitpid(pid, 0)
        assert int(value) >= 0 and reader.read() >= 0 and reader._local.file.fd == parent_fd  # the parent's own file, untouched

    def test_a_process_that_read_its_waits_exits_quietly(self) -> None:
        """A thread's file is closed without an "Exception ignored" on stderr even when the reader goes after the
        module's names are gone, as at interpreter exit (here by hand: the module's helper set to None first)."""
        code = ("import gc\nfrom simic.producer.collectors import timing\n"
                "reader = timing.RunQueueWait()\nassert reader.read() >= 0\n"
                "timing._close = None\ndel reader\ngc.collect()\nprint('closed')")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout == "closed\n" and result.stderr == "", result.stderr

    def test_a_phase_ended_on_another_thread_carries_no_wait(self, consumer, emitter) -> None:
        """Started on this thread and stopped on another: two threads' counters do not make a wait, so none is sent."""
        import threading

        timer = emitter.timer("handoff", device="cpu")
        timer.start()
        stopper = threading.Thread(target=lambda: timer.stop(1))
        stopper.start()
        stopper.join()
        emitter.flush()
        [event] = received(consumer, emitter, "step_timing")
        assert "handoff" in event.phases_ms and event.wait_ms == {}

    def test_without_scheduler_statistics_no_wait_is_sent(self, consumer, emitter, monkeypatch) -> None:
        """Where the kernel does not say (another system), the event carries the phase and no wait_ms."""
        from simic.producer.collectors import timing

        monkeypatch.setattr(timing, "_run_queue", RunQueueWait())
        monkeypatch.setattr(timing._run_queue, "available", False)
        with emitter.timer("rollout", step=1, device="cpu"):
            pass
        emitter.flush()
        [event] = received(consumer, emitter, "step_timing")
        assert set(event.phases_ms) == {"rollout"} and event.wait_ms == {}

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where CUDA is absent")
    def test_default_device_without_cuda_is_the_host_clock(self, emitter) -> None:
        """Without CUDA a timer made with no device measures host time."""
        assert emitter.timer("step").clock == "cpu"

    def test_stop_without_start_sends_nothing(self, consumer, emitter) -> None:
        """A timer stopped before it was started measures nothing and raises nothing."""
        emitter.timer("x", device="cpu").stop(1)
        emitter.flush()
        assert received(consumer, emitter, "step_timing") == []


# -- gradient norms ----------------------------------------------------------------------------------


class Net(torch.nn.Module):
    """A core and a shared Linear whose rows belong to two heads, plus a head that gets no grad."""

    def __init__(self) -> None:
        super().__init__()
        self.core = torch.nn.Linear(3, 4)
        self.shared = torch.nn.Linear(4, 6)  # rows 0..2: "a", rows 3..5: "b"
        self.value = torch.nn.Linear(4, 1)
        self.unused = torch.nn.Linear(4, 2)

    def loss(self) -> torch.Tensor:
        z = torch.tanh(self.core(torch.randn(5, 3)))
        return (self.shared(z) ** 2).sum() + self.value(z).sum()


def heads_of(net: Net) -> dict:
    return {
        "a": [(net.shared.weight, slice(0, 3)), (net.shared.bias, slice(0, 3))],
        "b": [(net.shared.weight, slice(3, 6)), (net.shared.bias, slice(3, 6))],
        "value": net.value,
        "unused": net.unused,
    }


def norm_of(*tensors: torch.Tensor) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


class TestHeadGradNormsOnCpu:
    def test_values_match_a_reference_and_the_total_matches_clip_grad_norm(self, consumer, emitter) -> None:
        """Head norms (row slices included) equal direct computation; the total equals clip_grad_norm_'s."""
        torch.manual_seed(0)
        net = Net()
        net.loss().backward()
        groups = emitter.head_groups(heads_of(net), params=net.parameters())
        emitter.head_grad_norms(5, groups, stage="pre_clip", max_norm=0.5)
        clip_total = float(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5))
        [event] = received(consumer, emitter, "head_grad_norms")
        # reference, computed from the clipped grads scaled back would drift: use the event's own total
        w, b = net.shared.weight.grad, net.shared.bias.grad
        scale = event.post_clip_total / event.total  # grads are clipped now; undo it for the reference
        assert close(event.norms["a"], norm_of(w[:3], b[:3]) / scale)
        assert close(event.norms["b"], norm_of(w[3:], b[3:]) / scale)
        assert close(event.norms["value"], norm_of(net.value.weight.grad, net.value.bias.grad) / scale)
        assert event.norms["unused"] is None
        assert close(event.total, clip_total) and close(event.pre_clip_total, clip_total)
        assert close(event.post_clip_total, clip_total * min(1.0, 0.5 / (clip_total + 1e-6)))
        assert event.stage == "pre_clip" and event.max_norm == 0.5 and event.nonfinite == {}

    def test_a_mapping_works_without_preparing_groups(self, consumer, emitter) -> None:
        """Passing the heads mapping directly gives the same norms; the total covers the heads' parameters."""
        torch.manual_seed(1)
        net = Net()
        net.loss().backward()
        emitter.head_grad_norms(1, {"value": net.value, "core": [net.core.weight, net.core.bias]})
        [event] = received(consumer, emitter, "head_grad_norms")
        assert close(event.norms["core"], norm_of(net.core.weight.grad, net.core.bias.grad))
        expected = norm_of(net.core.weight.grad, net.core.bias.grad, net.value.weight.grad, net.value.bias.grad)
        assert close(event.total, expected)
        assert event.stage is None and event.pre_clip_total is None and event.post_clip_total is None

    def test_non_finite_gradient_elements_are_counted_per_head(self, consumer, emitter) -> None:
        """With count_nonfinite, NaN and Inf elements are counted per head (a shared row counts for its head only)."""
        net = Net()
        net.loss().backward()
        net.shared.weight.grad[0, 0] = float("nan")
        net.shared.weight.grad[4, 1] = float("inf")
        net.shared.weight.grad[4, 2] = float("-inf")
        emitter.head_grad_norms(2, heads_of(net), count_nonfinite=True)
        [event] = received(consumer, emitter, "head_grad_norms")
        assert event.nonfinite == {"a": 1, "b": 2}
        assert math.isnan(event.norms["a"]) and event.norms["b"] == math.inf
        assert math.isnan(event.total)

    def test_non_finite_norms_show_without_counting(self, consumer, emitter) -> None:
        """By default nothing is counted, and a head with a NaN or Inf gradient has a NaN or Inf norm."""
        net = Net()
        net.loss().backward()
        net.shared.weight.grad[0, 0] = float("nan")
        net.shared.weight.grad[4, 1] = float("inf")
        emitter.head_grad_norms(2, heads_of(net))
        [event] = received(consumer, emitter, "head_grad_norms")
        assert event.nonfinite == {}
        assert math.isnan(event.norms["a"]) and event.norms["b"] == math.inf and math.isfinite(event.norms["value"])

    def test_post_clip_stage_takes_the_total_clip_grad_norm_returned(self, consumer, emitter) -> None:
        """Measured after clipping, norms are the clipped ones; clip_total becomes pre_clip_total."""
        torch.manual_seed(2)
        net = Net()
        net.loss().backward()
        total = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
        emitter.head_grad_norms(3, {"all": net}, stage="post_clip", clip_total=total, max_norm=0.1)
        [event] = received(consumer, emitter, "head_grad_norms")
        assert close(event.pre_clip_total, float(total))
        assert close(event.post_clip_total, 0.1, rel=1e-4) and close(event.norms["all"], 0.1, rel=1e-4)

    def test_no_gradients_at_all_reports_missing_heads(self, consumer, emitter) -> None:
        """Before any backward every head is missing (None) and the total is missing: never 0.0."""
        net = Net()
        emitter.head_grad_norms(0, heads_of(net))
        [event] = received(consumer, emitter, "head_grad_norms")
        assert event.norms == {"a": None, "b": None, "value": None, "unused": None}
        assert event.total is None

    def test_bad_heads_in_the_hot_path_are_counted_not_raised(self, consumer, emitter) -> None:
        """A malformed mapping at step time is counted in collector_stats.errors and sends nothing."""
        emitter.head_grad_norms(1, {"a": [42]})
        emitter.head_grad_norms(1, {"a": []}, stage="bogus")
        assert emitter.collector_stats.errors == 2
        assert received(consumer, emitter, "head_grad_norms") == []


class TestClipGradNorm:
    """``emitter.clip_grad_norm_``: torch's clip, measured from the same norms."""

    @staticmethod
    def twins() -> tuple[Net, Net]:
        torch.manual_seed(3)
        a = Net()
        b = Net()
        b.load_state_dict(a.state_dict())
        for net in (a, b):
            torch.manual_seed(4)
            net.loss().backward()
        return a, b

    @pytest.mark.parametrize("max_norm", [0.1, 1e6])
    def test_clips_exactly_as_torch_and_reports_the_totals(self, consumer, emitter, max_norm) -> None:
        """Gradients after the call equal torch's clip_grad_norm_ on a twin; the event carries the same totals."""
        ours, theirs = self.twins()
        groups = emitter.head_groups(heads_of(ours), params=ours.parameters())
        total = emitter.clip_grad_norm_(7, groups, max_norm)
        expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
        assert torch.allclose(total, expected, rtol=1e-6)
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert (p.grad is None) == (q.grad is None)
            if p.grad is not None:
                assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=0)
        [event] = received(consumer, emitter, "head_grad_norms")
        pre = float(expected)
        assert event.step == 7 and event.stage == "pre_clip" and event.max_norm == max_norm
        assert close(event.total, pre) and close(event.pre_clip_total, pre)
        assert close(event.post_clip_total, pre * min(1.0, max_norm / (pre + 1e-6)))
        scale = min(1.0, max_norm / (pre + 1e-6))  # grads are clipped now: undo it for the reference
        w, b = ours.shared.weight.grad, ours.shared.bias.grad
        assert close(event.norms["a"], norm_of(w[:3], b[:3]) / scale)
        assert close(event.norms["value"], norm_of(ours.value.weight.grad, ours.value.bias.grad) / scale)
        assert event.norms["unused"] is None

    def test_bit_identical_to_torch_whatever_order_the_heads_name_the_parameters(self, emitter) -> None:
        """Over many minibatches the returned total and every clipped gradient equal torch's to the last
        bit, with heads listed in another order than ``params`` (the total is summed in ``params`` order)."""
        torch.manual_seed(11)
        net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                  torch.nn.Linear(64, 6))
        groups = emitter.head_groups({"out": net[4], "mid": net[2], "inp": net[0]}, params=net.parameters())
        differ = 0
        for i in range(150):
            net.zero_grad()
            (net(torch.randn(128, 32)) ** 2).mean().mul(100).backward()
            twin = [torch.nn.Parameter(p.detach().clone()) for p in net.parameters()]
            for q, p in zip(twin, net.parameters()):
                q.grad = p.grad.clone()
            expected = torch.nn.utils.clip_grad_norm_(twin, 0.5)
            total = emitter.clip_grad_norm_(i, groups, 0.5)
            differ += not (torch.equal(total, expected) and all(torch.equal(p.grad, q.grad) for p, q in zip(net.parameters(), twin)))
        assert differ == 0

    def test_the_total_covers_params_not_only_the_heads(self, consumer, emitter) -> None:
        """With params= covering the core too, the core is clipped and counted although no head names it."""
        ours, theirs = self.twins()
        every = norm_of(*(q.grad for q in theirs.parameters() if q.grad is not None))  # before clipping
        value_only = norm_of(*(q.grad for q in theirs.value.parameters()))
        groups = emitter.head_groups({"value": ours.value}, params=ours.parameters())
        emitter.clip_grad_norm_(1, groups, 0.05)
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.05)
        assert torch.allclose(ours.core.weight.grad, theirs.core.weight.grad, rtol=1e-6, atol=0)
        [event] = received(consumer, emitter, "head_grad_norms")
        assert close(event.total, every) and not close(event.total, value_only)

    def test_params_a_subset_of_the_heads_clips_only_the_subset(self, consumer, emitter) -> None:
        """params= narrower than the heads: only those gradients are counted in the total and scaled."""
        ours, theirs = self.twins()
        pick = lambda net: [net.value.weight, net.value.bias, net.core.weight]  # noqa: E731
        groups = emitter.head_groups(heads_of(ours), params=pick(ours))
        total = emitter.clip_grad_norm_(2, groups, 0.05)
        expected = torch.nn.utils.clip_grad_norm_(pick(theirs), 0.05)
        assert torch.allclose(total, expected, rtol=1e-6)
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=0) if p.grad is not None else q.grad is None
        [event] = received(consumer, emitter, "head_grad_norms")
        assert close(event.pre_clip_total, float(expected))

    def test_off_and_closed_emitters_still_clip(self, consumer, emitter) -> None:
        """Telemetry off (NullEmitter, groups with params=) or a closed emitter: the clip still happens, as torch's."""
        for make in (NullEmitter, lambda: emitter):
            ours, theirs = self.twins()
            sender = make()
            groups = sender.head_groups({"value": ours.value}, params=ours.parameters())
            sender.close()
            total = sender.clip_grad_norm_(1, groups, 0.05)
            expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.05)
            assert torch.allclose(total, expected, rtol=1e-6)
            assert torch.allclose(ours.core.weight.grad, theirs.core.weight.grad, rtol=1e-6, atol=0)

    def test_gradients_torch_cannot_clip_fail_as_torch_fails(self, consumer, emitter) -> None:
        """Where the fused pass fails, torch's own clip runs instead: the trainer sees what torch would raise."""
        emb = torch.nn.Embedding(10, 3, sparse=True)
        (emb(torch.tensor([1, 2, 2])) ** 2).sum().backward()
        with pytest.raises(NotImplementedError) as ours:
            emitter.clip_grad_norm_(1, emitter.head_groups({"emb": emb}), 0.01)
        with pytest.raises(NotImplementedError) as theirs:
            torch.nn.utils.clip_grad_norm_(emb.parameters(), 0.01)
        assert str(ours.value) == str(theirs.value)
        assert emitter.collector_stats.errors == 1
        groups = emitter.head_groups({"emb": emb})
        for _ in range(2):  # after one failure the fused pass is not tried again; torch's clip raises its own error
            with pytest.raises(NotImplementedError) as again:
                emitter.clip_grad_norm_(1, groups, 0.01)
            assert str(again.value) == str(theirs.value)
        assert groups.fused is False and emitter.collector_stats.errors == 3  # each failed measurement, counted


class TestHeadGroups:
    @pytest.mark.parametrize(
        "heads",
        [
            {},
            {"": [torch.nn.Parameter(torch.ones(2))]},
            {"a": []},
            {"a": [1.0]},
            {"a": [(torch.nn.Parameter(torch.ones(4, 2)), slice(0, 9))]},
            {"a": [(torch.nn.Parameter(torch.ones(4, 2)), slice(0, 4, 2))]},
            {"a": [(torch.nn.Parameter(torch.ones(4, 2)), 4)]},
            {"a": [(torch.nn.Parameter(torch.ones(4, 2)), [0, 1])]},
            {"a": [(torch.nn.Parameter(torch.tensor(1.0)), 0)]},
        ],
    )
    def test_bad_heads_raise_value_error_at_setup(self, heads) -> None:
        """Empty names or heads, non-tensors and rows that are not in-range dim-0 slices raise ValueError."""
        with pytest.raises(ValueError):
            HeadGroups(heads)

    def test_a_sliced_parameter_counts_once_in_the_total(self) -> None:
        """Two heads slicing one weight make one parameter for the total, plus one entry per slice."""
        w = torch.nn.Parameter(torch.ones(6, 4))
        groups = HeadGroups({"a": [(w, slice(0, 3))], "b": [(w, slice(3, 6))], "c": [(w, 5)]})
        assert groups.params == [w] and groups.total == [0]
        assert groups.entry_numel == [24, 12, 12, 4]


# -- LSTM state -------------------------------------------------------------------------------------


class TestLstmStateOnCpu:
    def test_values_match_a_reference(self, consumer, emitter) -> None:
        """Norms, rms, max-abs, per-env max rms and per-layer rms equal a direct computation."""
        torch.manual_seed(3)
        h, c = torch.randn(2, 6, 16), torch.randn(2, 6, 16) * 2
        h[1, 4] *= 5  # one runaway environment
        emitter.lstm_state(9, (h, c))
        [event] = received(consumer, emitter, "lstm_health")
        assert event.step == 9
        assert_matches(event, lstm_reference(h, c))

    def test_env_mask_keeps_only_the_selected_environments(self, consumer, emitter) -> None:
        """Masked-out environments (a NaN in one of them included) do not count."""
        torch.manual_seed(4)
        h, c = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
        h[0, 2, 0] = float("nan")
        mask = torch.tensor([True, True, False, True, False])
        emitter.lstm_state(1, (h, c), env_mask=mask)
        [event] = received(consumer, emitter, "lstm_health")
        assert_matches(event, lstm_reference(h, c, mask))
        assert event.envs == 3 and event.has_nan is False

    def test_nan_and_inf_are_flagged_and_max_abs_follows_torch_max(self, consumer, emitter) -> None:
        """A NaN makes norm and max-abs NaN (as torch.max does); an Inf elsewhere is still flagged."""
        h, c = torch.ones(1, 3, 4), torch.ones(1, 3, 4)
        h[0, 0, 0] = float("nan")
        h[0, 1, 1] = float("inf")
        c[0, 2, 3] = float("-inf")
        emitter.lstm_state(2, (h, c))
        [event] = received(consumer, emitter, "lstm_health")
        assert event.has_nan is True and event.has_inf is True
        assert math.isnan(event.h_norm) and math.isnan(event.h_max_abs)
        assert event.c_norm == math.inf and event.c_max_abs == math.inf

    def test_a_2d_state_is_one_layer(self, consumer, emitter) -> None:
        """(envs, hidden) tensors are treated as one layer."""
        h, c = torch.randn(4, 8), torch.randn(4, 8)
        emitter.lstm_state(0, (h, c))
        [event] = received(consumer, emitter, "lstm_health")
        assert_matches(event, lstm_reference(h[None], c[None]))

    def test_every_environment_masked_sends_only_the_count(self, consumer, emitter) -> None:
        """With nothing left to measure the statistics are missing, not zero."""
        emitter.lstm_state(0, (torch.ones(1, 2, 3), torch.ones(1, 2, 3)), env_mask=[False, False])
        [event] = received(consumer, emitter, "lstm_health")
        assert event.envs == 0 and event.h_norm is None and event.has_nan is None

    def test_bad_shapes_are_counted_not_raised(self, consumer, emitter) -> None:
        """Mismatched h and c at step time are counted in collector_stats.errors."""
        emitter.lstm_state(0, (torch.ones(1, 2, 3), torch.ones(1, 2, 4)))
        assert emitter.collector_stats.errors == 1
        assert received(consumer, emitter, "lstm_health") == []


# -- PPO update --------------------------------------------------------------------------------------


class TestPpoUpdateOnCpu:
    def test_numbers_and_cpu_tensors_arrive_as_floats(self, consumer, emitter) -> None:
        """Floats, ints and one-element CPU tensors (entropy per head too) become the event's fields."""
        emitter.ppo_update(4, policy_loss=torch.tensor(-0.25), value_loss=1.5, approx_kl=torch.tensor([0.01]),
                           clip_fraction=0, entropy={"slot": torch.tensor(1.25), "op": 0.5},
                           explained_variance=float("nan"), learning_rate=2.5e-4)
        [event] = received(consumer, emitter, "ppo_update")
        assert event.policy_loss == -0.25 and event.value_loss == 1.5 and event.clip_fraction == 0.0
        assert close(event.approx_kl, 0.01) and event.entropy == {"slot": 1.25, "op": 0.5}
        assert math.isnan(event.explained_variance) and event.learning_rate == 2.5e-4

    def test_unknown_metrics_and_vectors_are_counted_not_raised(self, consumer, emitter) -> None:
        """An unknown name refuses the call; a multi-element tensor refuses that field only."""
        emitter.ppo_update(1, policy_loss=0.1, kl_divergence=0.2)
        emitter.ppo_update(2, policy_loss=0.1, ratio_min=torch.ones(3))
        assert emitter.collector_stats.errors == 2
        [event] = received(consumer, emitter, "ppo_update")
        assert event.step == 2 and event.policy_loss == 0.1 and event.ratio_min is None

    def test_a_key_that_is_not_text_is_refused_and_the_rest_arrives(self, consumer, emitter) -> None:
        """The wire's maps take text keys only: a number as a head or metric name is refused (counted) by
        itself, and its neighbours, the event and the other events of its message still arrive."""
        emitter.ppo_update(3, policy_loss=0.5, entropy={"slot": 1.0, 0: torch.tensor(2.0)})
        emitter.metrics(3, {"loss": 1.5, 7: 2.5})
        assert emitter.collector_stats.errors == 2
        emitter.close()
        events = consumer.until_run_end()
        [event] = [e for e in events if e.kind == "ppo_update"]
        assert event.step == 3 and event.policy_loss == 0.5 and event.entropy == {"slot": 1.0}
        [metrics] = [e for e in events if e.kind == "metrics"]
        assert metrics.values == {"loss": 1.5}


# -- profiler ---------------------------------------------------------------------------------------


class TestTrainingProfiler:
    def test_disabled_yields_none_and_creates_nothing(self, tmp_path: Path) -> None:
        """Off, the context yields None and the output directory is not created."""
        out = tmp_path / "traces"
        with training_profiler(str(out), enabled=False) as prof:
            assert prof is None
        assert not out.exists()

    def test_enabled_writes_a_trace_and_announces_it(self, tmp_path: Path, consumer, emitter) -> None:
        """On, each active cycle writes a Chrome trace and a profiler_trace event gives its path."""
        out = tmp_path / "traces"
        with training_profiler(str(out), enabled=True, wait=0, warmup=1, active=1, repeat=1, emitter=emitter) as prof:
            assert prof is not None
            for _ in range(3):
                torch.randn(64, 64) @ torch.randn(64, 64)
                prof.step()
        [event] = received(consumer, emitter, "profiler_trace")
        path = Path(event.path)
        assert path.parent == out.resolve() and path.name.endswith(".pt.trace.json")
        assert event.format == "chrome_trace"
        assert "traceEvents" in json.loads(path.read_text())

    def test_signature_keeps_the_seed_parameters(self) -> None:
        """The seed plan's parameters and defaults, then the new keyword options."""
        params = inspect.signature(training_profiler).parameters
        assert list(params)[:9] == ["output_dir", "enabled", "wait", "warmup", "active", "repeat",
                                    "record_shapes", "profile_memory", "with_stack"]
        assert params["output_dir"].default == "./profiler_traces" and params["active"].default == 3
        assert params["record_shapes"].default is False and params["with_stack"].default is False


# -- the null twin, settings and imports ---------------------------------------------------------------


COLLECTOR_METHODS = ["configure_collectors", "head_groups", "timer", "head_grad_norms", "clip_grad_norm_", "lstm_state",
                     "ppo_update", "poll_readouts"]


class TestNullEmitter:
    @pytest.mark.parametrize("name", COLLECTOR_METHODS)
    def test_same_collector_methods_and_signatures(self, name: str) -> None:
        """NullEmitter has every collector method of Emitter, with the same parameters."""
        assert inspect.signature(getattr(NullEmitter, name)).parameters == inspect.signature(getattr(Emitter, name)).parameters

    def test_collector_calls_do_nothing(self) -> None:
        """Every collector call is accepted and does nothing; timers are no-op context managers."""
        null = NullEmitter()
        with null.timer("update", step=1) as timer:
            pass
        assert isinstance(timer, NullTimer)
        timer.start().stop(2)
        null.head_grad_norms(1, {"a": object()}, stage="pre_clip")
        null.lstm_state(1, (object(), object()))
        null.ppo_update(1, anything=1.0)
        null.poll_readouts()
        assert null.collector_stats.as_dict() == {k: 0 for k in null.collector_stats.as_dict()}


class TestCollectorSettings:
    def test_bad_settings_raise(self) -> None:
        """Non-positive bounds are refused at construction."""
        with pytest.raises(ValueError):
            CollectorSettings(readout_slots=0)

    def test_configure_after_first_use_raises(self, emitter) -> None:
        """Settings are fixed once the collectors have started."""
        emitter.configure_collectors(CollectorSettings(readout_slots=8))
        emitter.timer("x", device="cpu")
        with pytest.raises(ValueError):
            emitter.configure_collectors(CollectorSettings())


class TestImports:
    @pytest.mark.parametrize("module", ["simic.producer", "simic.producer.emitter", "simic.producer.collectors"])
    def test_importing_the_producer_does_not_import_torch(self, module: str) -> None:
        """torch is imported only when a collector first needs it."""
        code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert result.returncode == 0, result.stderr

    def test_cpu_timer_works_where_torch_was_never_imported(self, tmp_path: Path) -> None:
        """A trainer without torch gets host timing and does not pay for importing torch."""
        code = (
            "import sys, zmq\n"
            "from simic.producer import Emitter, EmitterSettings\n"
            f"e = Emitter('ipc://{tmp_path}/nobody.ipc', run_id='r', settings=EmitterSettings(exit_hooks=False, linger_ms=0))\n"
            "t = e.timer('step'); t.start(); t.stop(1); e.flush()\n"
            "assert t.clock == 'cpu' and 'torch' not in sys.modules\n"
            "e.close()\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
