"""Issue 15's goals, read off one model's test table: where Fints stands, not a pass mark.

On ``personas-conditional`` (95% paired-bootstrap intervals over the same test inputs, as
``evals.scoring.summarize`` computed them):
- ``fints-exact`` fluent adherence at least ``rag-1``'s (point estimate, interval beside it) and
  above ``static`` and ``prefix-cached`` (interval above 0), at 0 added prompt tokens;
- ``fints+rag-1`` at least ``rag-3``, with at most half of rag-3's added time to first token
  (medians, each over zero-shot's).
"""

from __future__ import annotations

from typing import Any

BENCH = "personas-conditional"


def compare(methods: dict, method: str, other: str) -> dict | None:
    """Fluent adherence of ``method`` against ``other``: both means, the paired difference."""
    got = methods.get(method, {}).get(f"fluent_adherence_vs_{other}")
    if got is None or other not in methods:
        return None
    return {"method": methods[method]["fluent_adherence"],
            "other": methods[other]["fluent_adherence"], "diff": got["diff"],
            "ci95": got["ci95"], "n": methods[method]["n"]}  # fmt: skip


def goals(entry: dict) -> dict[str, Any]:
    """The goal figures of one model's results entry ({} without the benchmark)."""
    m = entry.get("benchmarks", {}).get(BENCH, {}).get("methods", {})
    if "fints-exact" not in m:
        return {}
    vs = {o: compare(m, "fints-exact", o) for o in ("rag-1", "static", "prefix-cached")}
    out: dict[str, Any] = {"benchmark": BENCH}
    out["fints_exact"] = {
        "added_prompt_tokens": m["fints-exact"].get("added_prompt_tokens"),
        **{f"vs_{o}": c for o, c in vs.items()},
        "at_least_rag-1": bool(vs["rag-1"] and vs["rag-1"]["diff"] >= 0),
        "above_static": bool(vs["static"] and vs["static"]["ci95"][0] > 0),
        "above_prefix-cached": bool(vs["prefix-cached"] and vs["prefix-cached"]["ci95"][0] > 0),
    }
    ttft = {k: m.get(k, {}).get("first_token_ms") for k in ("fints+rag-1", "rag-3", "zero-shot")}
    share = None
    if all(v is not None for v in ttft.values()):
        extra_r3 = ttft["rag-3"] - ttft["zero-shot"]  # type: ignore[operator]
        if extra_r3 > 0:
            share = (ttft["fints+rag-1"] - ttft["zero-shot"]) / extra_r3  # type: ignore[operator]
    vs_r3 = compare(m, "fints+rag-1", "rag-3")
    out["fints_rag1"] = {
        "vs_rag-3": vs_r3,
        "first_token_ms": ttft,
        "added_first_token_share_of_rag-3": share,
        "at_least_rag-3": bool(vs_r3 and vs_r3["diff"] >= 0),
        "at_most_half_the_added_time": share is not None and share <= 0.5,
    }
    return out
