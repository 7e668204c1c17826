"""Issue 15's goals, read off one model's test answers: where Fints stands, not a pass mark.

On ``personas-conditional`` (95% paired-bootstrap intervals over the same test inputs):
- ``fints-exact`` fluent adherence at least ``rag-1``'s (point estimate, interval beside it) and
  above ``static`` and ``prefix-cached`` (interval above 0), at 0 added prompt tokens;
- ``fints+rag-1`` at least ``rag-3``, with at most half of rag-3's added time to first token
  (medians, each over zero-shot's).
Computed from the predictions, so older runs get them too (``python -m evals.report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evals.metrics import paired_bootstrap

BENCH = "personas-conditional"
BOOTSTRAP = 2000


def _rows(preds: Sequence[dict], method: str) -> dict[tuple[str, str], dict]:
    return {(p["user"], p["input"]): p for p in preds
            if p["benchmark"] == BENCH and p["split"] == "test" and p["method"] == method}  # fmt: skip


def compare(preds: Sequence[dict], method: str, other: str, seed: int = 0) -> dict | None:
    """Fluent adherence of ``method`` minus ``other`` on the inputs both answered."""
    a, b = _rows(preds, method), _rows(preds, other)
    keys = sorted(set(a) & set(b))
    if not keys or any("fluent_adherence" not in a[k] or "fluent_adherence" not in b[k]
                       for k in keys):  # fmt: skip
        return None
    x = np.array([a[k]["fluent_adherence"] for k in keys], np.float64)
    y = np.array([b[k]["fluent_adherence"] for k in keys], np.float64)
    diff, lo, hi = paired_bootstrap(x, y, BOOTSTRAP, seed)
    return {"method": float(x.mean()), "other": float(y.mean()), "diff": diff, "ci95": [lo, hi],
            "n": len(keys)}  # fmt: skip


def _median_ttft(preds: Sequence[dict], method: str) -> float | None:
    ms = [p["first_token_ms"] for p in _rows(preds, method).values()
          if p.get("first_token_ms") is not None and not p.get("cold")]  # fmt: skip
    return float(np.median(ms)) if ms else None


def goals(preds: Sequence[dict]) -> dict[str, Any]:
    """The goal figures from one model's predictions ({} without the benchmark)."""
    if not _rows(preds, "fints-exact"):
        return {}
    vs = {o: compare(preds, "fints-exact", o) for o in ("rag-1", "static", "prefix-cached")}
    added = [p["prompt_tokens"] for p in _rows(preds, "fints-exact").values()
             if p.get("prompt_tokens") is not None]  # fmt: skip
    zs = [p["prompt_tokens"] for p in _rows(preds, "zero-shot").values()
          if p.get("prompt_tokens") is not None]  # fmt: skip
    out: dict[str, Any] = {"benchmark": BENCH}
    out["fints_exact"] = {
        "added_prompt_tokens": float(np.mean(added) - np.mean(zs)) if added and zs else None,
        **{f"vs_{o}": c for o, c in vs.items()},
        "at_least_rag-1": bool(vs["rag-1"] and vs["rag-1"]["diff"] >= 0),
        "above_static": bool(vs["static"] and vs["static"]["ci95"][0] > 0),
        "above_prefix-cached": bool(vs["prefix-cached"] and vs["prefix-cached"]["ci95"][0] > 0),
    }
    ttft = {m: _median_ttft(preds, m) for m in ("fints+rag-1", "rag-3", "zero-shot")}
    share = None
    if all(v is not None for v in ttft.values()):
        extra_r3 = ttft["rag-3"] - ttft["zero-shot"]  # type: ignore[operator]
        if extra_r3 > 0:
            share = (ttft["fints+rag-1"] - ttft["zero-shot"]) / extra_r3  # type: ignore[operator]
    vs_r3 = compare(preds, "fints+rag-1", "rag-3")
    out["fints_rag1"] = {
        "vs_rag-3": vs_r3,
        "first_token_ms": ttft,
        "added_first_token_share_of_rag-3": share,
        "at_least_rag-3": bool(vs_r3 and vs_r3["diff"] >= 0),
        "at_most_half_the_added_time": share is not None and share <= 0.5,
    }
    return out
