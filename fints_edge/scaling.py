"""How big a steering vector is: per-item normalisation and strength relative to the residual.

Why: an absolute multiplier means something different on every model (how large a model's
signals are next to its residual stream differs from model to model; a profile stores both, its
signals and ``residual_norms``, and `make eval`'s dev sweep tries absolute and residual strengths
per model: docs/eval/README.md), and in one profile a long, unusual answer gives a bigger signal
than a short one, so it dominates the mean.

- ``typical_norms(signals)``: the mean L2 norm of a profile's item signals, per site and layer.
- ``item_normalised(signals, typical)``: each item's signal rescaled to that typical norm before
  aggregation, so K retrieved items vote with equal weight.
- ``relative_factor(residual_norms, typical)``: the multiplier that makes ``strength`` a
  fraction of the residual stream's norm for a typical item: strength 0.25 pushes by a quarter
  of the residual's size, on any model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fints_edge.errors import FintsEdgeError

StrengthUnit = Literal["absolute", "residual"]
STRENGTH_UNITS: tuple[StrengthUnit, ...] = ("absolute", "residual")
_TINY = 1e-12


def typical_norms(signals: np.ndarray) -> np.ndarray:
    """float32 [S, L]: mean over items of |signal| for signals [N, S, L, E] (any float dtype)."""
    s = np.asarray(signals)
    if s.ndim != 4 or s.shape[0] == 0:
        raise FintsEdgeError(f"signals must be a non-empty [N, S, L, E] array, got {s.shape}")
    norms = np.zeros(s.shape[1:3], np.float64)  # [S, L]
    for i in range(0, s.shape[0], 256):  # chunks: a float32 copy of 10k items would be large
        chunk = s[i : i + 256].astype(np.float32)
        norms += np.linalg.norm(chunk, axis=-1).sum(axis=0)
    return (norms / s.shape[0]).astype(np.float32)


def item_normalised(signals: np.ndarray, typical: np.ndarray) -> np.ndarray:
    """float32 [K, S, L, E]: each item's [E] signal rescaled to ``typical`` [S, L]; an all-zero
    signal stays zero (it carries no direction)."""
    s = np.asarray(signals, dtype=np.float32)
    norms = np.linalg.norm(s, axis=-1, keepdims=True)  # [K, S, L, 1]
    scale = np.where(norms > _TINY, typical[None, :, :, None] / np.maximum(norms, _TINY), 0.0)
    return (s * scale).astype(np.float32)


def relative_factor(residual_norms: np.ndarray, typical: np.ndarray) -> np.ndarray:
    """float32 [S, L]: residual_norms [L] / typical [S, L]; 0 where a site never had a signal."""
    r = np.asarray(residual_norms, dtype=np.float32)[None, :]  # [1, L]
    t = np.asarray(typical, dtype=np.float32)  # [S, L]
    if r.shape[1] != t.shape[1]:
        raise FintsEdgeError(
            f"{r.shape[1]} residual norms for {t.shape[1]} layers: the profile is inconsistent"
        )
    return np.where(t > _TINY, r / np.maximum(t, _TINY), 0.0).astype(np.float32)
