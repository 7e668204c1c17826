"""bench/serve.py on the tiny model: the server figures are real, finite and add up."""

from __future__ import annotations

import json
import math

import pytest

from bench.serve import headline, render, serve_bench

TOPICS = ["bridge", "rain", "library", "market"]


@pytest.fixture(scope="module")
def tiny_profile(tiny, onnx_encoder_dir, tmp_path_factory):
    """A 4-item profile learned on the device at layer 1 (given negatives: no generation)."""
    from fints_edge.learn import main as learn_main

    d = tmp_path_factory.mktemp("bench-serve")
    rows = [
        {
            "input": f"Headline about the {t}.",
            "output": f"{t} news!",
            "rejected": f"The {t.title()}",
        }
        for t in TOPICS
    ]
    (d / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = learn_main(
        ["--model", str(tiny.gguf_path), "--history", str(d / "h.jsonl"), "--out", str(d / "me.npz"),
         "--layers", "1", "--encoder", str(onnx_encoder_dir), "--n-ctx", "256", "--threads", "1",
         "--quiet"]
    )  # fmt: skip
    assert rc == 0
    return d / "me.npz"


def test_server_overhead_and_load_figures_are_consistent(
    tiny, tiny_profile, onnx_encoder_dir, onnx_aggregator_path
):
    texts = [f"Write a headline about the {t}." for t in TOPICS]
    out = serve_bench(
        tiny.gguf_path, tiny_profile, texts, reps=1, users=2, requests_per_user=1, max_tokens=8,
        items=10, encoder_dir=onnx_encoder_dir, aggregator_path=onnx_aggregator_path,
        strength=40.0,
    )  # fmt: skip
    # The two sides did the same work: same greedy answer, the whole token budget, 10 items.
    assert out["same_answer"] is True and out["completion_tokens"] == 8
    assert out["profile_items"] == 10 and out["strength"] == 40.0 and out["k"] == 3
    assert 0 < out["engine_ms"] < 10_000 and 0 < out["server_ms"] < 10_000
    assert out["overhead_ms"] == pytest.approx(out["server_ms"] - out["engine_ms"], abs=1e-9)
    assert math.isfinite(out["overhead_paired_ms"])
    # Load: both users answered, throughput = completed / wall, tokens = 8 per answer.
    assert out["load_completed"] == 2 and out["load_failed"] == 0
    assert out["load_requests_per_s"] == pytest.approx(2 / out["load_wall_s"])
    assert out["load_tokens_per_s"] == pytest.approx(16 / out["load_wall_s"])
    p50, p95 = out["load_latency_p50_ms"], out["load_latency_p95_ms"]
    assert 0 < p50 <= p95 <= out["load_wall_s"] * 1e3
    keys = headline(out)
    assert set(keys) == {
        "serve_overhead_ms", "serve_throughput_2users", "serve_tokens_per_s_2users",
        "serve_latency_p50_ms_2users", "serve_latency_p95_ms_2users",
    }  # fmt: skip
    assert all(math.isfinite(v) for v in keys.values())
    text = "\n".join(render({"serve": out}))
    assert "| `serve_throughput_2users` |" in text and "WARNING" not in text
