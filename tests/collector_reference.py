"""Reference values for the collector tests (CPU and CUDA): computed the slow, obvious way."""

from __future__ import annotations

import math

import torch

from simic.schemas import Event


def lstm_reference(h: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Statistics of (layers, envs, hidden) tensors by hand: float64, boolean indexing, one read each."""
    if mask is not None:
        h, c = h[:, mask], c[:, mask]
    out: dict = {"envs": h.shape[1]}
    for name, x in (("h", h), ("c", c)):
        x = x.double()
        out[f"{name}_norm"] = float(torch.linalg.vector_norm(x))
        out[f"{name}_rms"] = float(x.pow(2).mean().sqrt())
        out[f"{name}_max_abs"] = float(x.abs().max())
        out[f"{name}_env_max_rms"] = float(x.pow(2).mean(dim=(0, 2)).sqrt().max())
        out[f"layer_{name}_rms"] = x.pow(2).mean(dim=(1, 2)).sqrt().tolist()
    out["has_nan"] = bool(torch.isnan(h).any() or torch.isnan(c).any())
    out["has_inf"] = bool(torch.isinf(h).any() or torch.isinf(c).any())
    return out


def assert_matches(event: Event, expected: dict, rel: float = 1e-5, abs_tol: float = 1e-7) -> None:
    """Every field of ``expected`` equals the event's: NaN as NaN, inf exactly, other floats within ``rel``."""

    def close(a: float | None, b: float) -> bool:
        return a is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)

    for key, value in expected.items():
        got = getattr(event, key)
        if isinstance(value, list):
            assert len(got) == len(value), key
            assert all((math.isnan(g) and math.isnan(v)) or g == v or close(g, v) for g, v in zip(got, value)), key
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(got), key
        elif isinstance(value, float) and math.isinf(value):
            assert got == value, key
        elif isinstance(value, float):
            assert close(got, value), (key, got, value)
        else:
            assert got == value, key
