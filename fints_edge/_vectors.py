"""Vector helpers shared by the runtime's lowest layers (no fints_edge imports)."""

from __future__ import annotations

import numpy as np

TINY_NORM = 1e-12  # a row shorter than this is treated as zero: it is left (near) zero


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy of ``x`` with every vector along the last axis L2-normalised; an all-zero
    vector stays zero (no NaN)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), TINY_NORM)
