"""Small helpers both measuring modules use (bench/run.py, bench/serve.py), kept here so that
neither imports the other: the median every figure is reported as, the 1,000-item profile,
and the server figures' top-level keys in bench/results.json. Stdlib only (no numpy, no torch).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def median(xs: Sequence[float]) -> float:
    """The median of ``xs`` as a float (the mean of the two middle values for an even count)."""
    return float(statistics.median(xs))


def grown(profile: Any, n_items: int) -> Any:
    """``profile`` with its items repeated up to ``n_items`` (the bench's 1,000-item profile):
    a realistic size for the per-request profile switch, with the real items' texts."""
    p = profile
    while p.n_items < n_items:
        take = min(profile.n_items, n_items - p.n_items)
        p = p.with_items(
            profile.signals[:take],
            profile.keys[:take],
            profile.inputs[:take].tolist(),
            profile.outputs[:take].tolist(),
            opening=None if profile.opening is None else profile.opening[:take],
        )
    return p


def headline(out: dict[str, Any]) -> dict[str, float]:
    """The keys bench/results.json carries at its top level, from ``serve_bench``'s output."""
    n = out["load_users"]
    return {
        "serve_overhead_ms": out["overhead_ms"],
        f"serve_throughput_{n}users": out["load_requests_per_s"],
        f"serve_tokens_per_s_{n}users": out["load_tokens_per_s"],
        f"serve_latency_p50_ms_{n}users": out["load_latency_p50_ms"],
        f"serve_latency_p95_ms_{n}users": out["load_latency_p95_ms"],
    }
