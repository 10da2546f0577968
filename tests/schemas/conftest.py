"""Shared examples for the schema tests: one rich event of every kind, and NaN-aware comparison."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest

from simic.schemas import SCHEMA_VERSION, Event
from simic.schemas.codec import KINDS

ENVELOPE = {"run_id": "run-42", "rank": 3, "session": 123456789}


def rich_payloads() -> dict[str, dict[str, Any]]:
    """Payload fields for one event of every kind, with every optional field given a value."""
    return {
        "run_start": dict(
            host="trainer-0", pid=4242, world_size=8, torch_version="2.4.0", device="NVIDIA H100 80GB HBM3",
            heads=["slot", "blueprint", "blend", "op", "value"],
            config={"lr": 3e-4, "clip": 0.2, "envs": 64, "anneal": True, "tag": None, "nested": {"gamma": [0.99, 0.95]}},
            producer_version="0.1.0",
        ),
        "step_timing": dict(phases_ms={"rollout": 12.5, "update": 30.25}, clock="cpu", wait_ms={"rollout": 2.0}),
        "head_grad_norms": dict(
            norms={"slot": 0.8, "blueprint": 1.5, "op": None}, total=2.0, pre_clip_total=2.5, post_clip_total=0.5,
            nonfinite={"slot": 0, "blend": 3}, stage="pre_clip", max_norm=0.5, samples=4,
        ),
        "lstm_health": dict(
            h_norm=1.0, c_norm=2.0, h_rms=0.1, c_rms=0.2, h_max_abs=0.9, c_max_abs=3.0, h_env_max_rms=0.3,
            c_env_max_rms=0.4, has_nan=False, has_inf=True, layer_h_rms=[0.1, 0.2], layer_c_rms=[0.3, 0.4], envs=64, name="critic",
        ),
        "ppo_update": dict(
            policy_loss=-0.01, value_loss=0.5, entropy={"slot": 1.2, "op": 0.7}, approx_kl=0.01, clip_fraction=0.1,
            ratio_min=0.8, ratio_max=1.2, explained_variance=0.9, learning_rate=3e-4, clip_range=0.2, loss=0.3,
        ),
        "profiler_trace": dict(path="/tmp/trace.json", format="chrome_trace_gz"),
        "heartbeat": dict(sent=10, dropped=2, readouts_dropped=1),
        "run_end": dict(status="error", sent=100, dropped=5, error="RuntimeError: boom", readouts_dropped=3),
        "alert": dict(
            rule="non_finite", severity="critical", message="h holds NaN.",
            values={"h_norm": 1.5, "count": 3, "head": "slot", "flag": True, "none": None}, cleared=True,
            received_at=1765000000.5,
        ),
        "metrics": dict(values={"train/loss": 0.25, "val/acc": 0.5, "lr": None}),
        "episodes": dict(returns=[1.5, 2.0], lengths=[200, 180], count=2),
        "param_updates": dict(
            ratios={"slot": 1e-3, "op": 0.0, "value": None}, update_norms={"slot": 2e-3, "op": 0.0, "value": 0.0},
            param_norms={"slot": 2.0, "op": 1.5, "value": 0.0}, total_ratio=5e-4, samples=4, learning_rate=3e-4,
        ),
        "delivery_receipt": dict(received=120, lost=3),
    }


def make_event(kind: str, seq: int = 0, **payload: Any) -> Event:
    """A model instance of ``kind`` with the shared envelope."""
    return KINDS[kind].model(**ENVELOPE, seq=seq, clock_ns=1_000_000 + seq, step=7, **payload)


def rich_events() -> list[Event]:
    """One event of every kind, seq 0, 1, 2, ... in code order."""
    return [make_event(kind, seq, **payload) for seq, (kind, payload) in enumerate(rich_payloads().items())]


def minimal_payloads() -> dict[str, dict[str, Any]]:
    """Only the required payload fields of every kind."""
    return {
        "run_start": dict(host="h", pid=1),
        "step_timing": dict(phases_ms={}),
        "head_grad_norms": dict(norms={}),
        "lstm_health": {},
        "ppo_update": {},
        "profiler_trace": dict(path="/t"),
        "heartbeat": {},
        "run_end": {},
        "alert": dict(rule="r", severity="info", message=""),
        "metrics": dict(values={}),
        "episodes": {},
        "param_updates": dict(ratios={}),
        "delivery_receipt": dict(received=0),
    }


def row_of(kind: str, seq: int = 0, *, step: Any = 7, **fields: Any) -> list[Any]:
    """A raw wire row: ``[code, seq, clock_ns, step, *payload]`` with nil for fields not given."""
    spec = KINDS[kind]
    unknown = set(fields) - spec.field_set
    assert not unknown, f"test bug: {kind} has no fields {unknown}"
    row = [spec.code, seq, 1_000_000 + seq, step] + [fields.get(name) for name in spec.fields]
    while len(row) > 4 and row[-1] is None:
        row.pop()
    return row


def message_of(rows: list[Any], *, version: Any = SCHEMA_VERSION, run_id: Any = "run-42", rank: Any = 3,
               session: Any = 123456789) -> bytes:
    """Raw message bytes around ``rows`` (no validation: tests craft bad input with it)."""
    return msgpack.packb([version, run_id, rank, session, rows], use_bin_type=True)


def same(a: Any, b: Any) -> bool:
    """Deep equality where NaN equals NaN and types must match exactly (1 is not 1.0, True is not 1)."""
    if isinstance(a, Event) and isinstance(b, Event):
        return type(a) is type(b) and same(a.model_dump(), b.model_dump())
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# Test modules reach these helpers through fixtures (conftest modules are not importable by name).


@pytest.fixture
def events() -> list[Event]:
    """One rich event of every kind, seq 0, 1, 2, ..."""
    return rich_events()


@pytest.fixture(scope="session")
def make() -> Any:
    """``make(kind, seq=0, **payload)``: an event with the shared envelope."""
    return make_event


@pytest.fixture(scope="session")
def payloads() -> Any:
    """``payloads()``: fresh rich payload fields of every kind."""
    return rich_payloads


@pytest.fixture(scope="session")
def minimal() -> Any:
    """``minimal()``: fresh required-only payload fields of every kind."""
    return minimal_payloads


@pytest.fixture(scope="session")
def same_as() -> Any:
    """``same_as(a, b)``: deep, type-exact equality where NaN equals NaN."""
    return same


@pytest.fixture(scope="session")
def row() -> Any:
    """``row(kind, seq=0, step=7, **fields)``: a raw wire row."""
    return row_of


@pytest.fixture(scope="session")
def message() -> Any:
    """``message(rows, version=..., run_id=..., rank=..., session=...)``: raw message bytes."""
    return message_of
