"""``LstmBatches``, the deferred reduction of unmasked CUDA LSTM states, on the CPU: the order the readouts
are queued in, the limit, and failures counted, never raised. The stream is the only CUDA part (here a
no-op); the GPU test ``test_every_rollout_step_between_flushes_each_its_own_values`` runs it on a GPU."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from simic.producer.collectors import lstm_state  # noqa: E402
from simic.producer.collectors.lstm_state import LstmBatches, submit_lstm_state  # noqa: E402
from simic.producer.collectors.readout import CollectorStats  # noqa: E402


class Queued:
    """The readouts' side of the contract, recorded: what was queued, in order, resolved on demand."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.items: list = []
        self.fail_at = fail_at

    def add(self, device, count, resolver, context, *, scalars=None, vectors=None) -> None:
        if len(self.items) == self.fail_at:
            self.fail_at = None
            raise RuntimeError("queue refused")
        assert vectors is not None and sum(v.numel() for v in vectors) == count
        self.items.append((resolver, [x for v in vectors for x in v.tolist()], context))

    def resolve_now(self, values, resolver, context) -> None:
        self.items.append((resolver, values, context))

    def resolve(self) -> None:
        for resolver, values, context in self.items:
            resolver(values, context)


@pytest.fixture(autouse=True)
def no_stream(monkeypatch):
    monkeypatch.setattr(lstm_state, "current_stream", lambda torch, device: None)  # torch.cuda.stream(None) is a no-op


def state(i: int, both: bool):
    g = torch.Generator().manual_seed(i)
    h = torch.randn(2, 4, 8, generator=g) * (1 + i)
    return (h, torch.randn(2, 4, 8, generator=g)) if both else h


def context_of(events: list, step: int, hidden):
    """What submit_lstm_state builds for a state: (emit, step, k, layers, envs, width, masked)."""
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    return (lambda **fields: events.append(fields), step, 2 if isinstance(hidden, tuple) else 1, *h.shape, False)


def direct(hidden, step: int) -> dict:
    """The same state measured at once (the CPU path): the expected event."""
    out: list = []
    queued = Queued()
    submit_lstm_state(queued, lambda **fields: out.append(fields), step, hidden)
    queued.resolve()
    return out[0]


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert math.isclose(got[key], value, rel_tol=1e-6), key
        elif isinstance(value, list):
            assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got[key], value)), key
        else:
            assert got[key] == value, key


def test_readouts_are_queued_in_call_order_across_kinds_and_past_the_limit() -> None:
    """Calls alternating between two kinds of state (h alone, h and c), more than the limit between
    flushes: every call becomes its own event, in call order, with its own values."""
    stats, failures = CollectorStats(), []
    batches, queued, events = LstmBatches(stats, lambda key, exc: failures.append(key), limit=3), Queued(), []
    states = [state(i, both=i % 2 == 1) for i in range(8)]
    for i, hidden in enumerate(states):
        h, c = (hidden if isinstance(hidden, tuple) else (hidden, None))
        batches.add(torch, queued, h, c, context_of(events, i, hidden))
        if isinstance(hidden, tuple):
            hidden[0].mul_(100.0)  # the trainer overwrites its state in place: the snapshot is what counts
            states[i] = (h / 100.0, c)
        else:
            hidden.mul_(100.0)
            states[i] = hidden / 100.0
    assert batches.waiting == 2 and len(queued.items) == 6  # the limit reduced the first 6, in order
    batches.reduce(queued)
    queued.resolve()
    assert [e["step"] for e in events] == list(range(8))
    for event, hidden in zip(events, states):
        assert_same(event, direct(hidden, event["step"]))
    assert failures == [] and stats.dropped == 0


def test_a_call_measured_at_once_waits_for_the_states_before_it() -> None:
    """A masked (or CPU, or stats=) call while snapshots wait: those are queued first."""
    stats = CollectorStats()
    batches, queued, events = LstmBatches(stats, lambda key, exc: None), Queued(), []
    for i in range(3):
        hidden = state(i, both=True)
        batches.add(torch, queued, *hidden, context_of(events, i, hidden))
    submit_lstm_state(queued, lambda **fields: events.append({"step": 3, **fields}), 3, state(3, both=True),
                      env_mask=torch.tensor([True, False, True, True]), batches=batches)
    queued.resolve()
    assert [e["step"] for e in events] == [0, 1, 2, 3] and events[3]["envs"] == 3


def test_a_failed_reduction_is_counted_and_the_other_kinds_still_leave(monkeypatch) -> None:
    stats, failures = CollectorStats(), []
    batches, queued, events = LstmBatches(stats, lambda key, exc: failures.append((key, str(exc)))), Queued(), []
    real = lstm_state._reduced

    def reduced(torch, stream, group):
        if group[0][2][2] == 1:  # the h-alone kind fails (out of memory, say)
            raise RuntimeError("out of memory")
        return real(torch, stream, group)

    monkeypatch.setattr(lstm_state, "_reduced", reduced)
    for i in range(6):
        hidden = state(i, both=i % 2 == 1)
        h, c = (hidden if isinstance(hidden, tuple) else (hidden, None))
        batches.add(torch, queued, h, c, context_of(events, i, hidden))
    batches.reduce(queued)  # never raises
    queued.resolve()
    assert [e["step"] for e in events] == [1, 3, 5]
    assert stats.dropped == 3 and failures == [("lstm_state", "out of memory")]


def test_a_readout_refused_is_counted_and_the_rest_leave() -> None:
    stats, failures = CollectorStats(), []
    batches, queued, events = LstmBatches(stats, lambda key, exc: failures.append(key)), Queued(fail_at=1), []
    for i in range(4):
        hidden = state(i, both=True)
        batches.add(torch, queued, *hidden, context_of(events, i, hidden))
    batches.reduce(queued)
    queued.resolve()
    assert [e["step"] for e in events] == [0, 2, 3] and stats.dropped == 1 and failures == ["lstm_state"]
    assert batches.waiting == 0 and not batches.pending
