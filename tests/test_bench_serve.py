"""bench/serve.py: the figures' arithmetic on a scripted clock (hand-computed numbers), then
the real server on the tiny model (real, finite figures)."""

from __future__ import annotations

import json
import math
import time
import types

import pytest

from bench import serve
from bench._common import headline
from bench.render import render_serve
from bench.serve import serve_bench

TOPICS = ["bridge", "rain", "library", "market"]


class Clock:
    """A scripted ``time.perf_counter``: it moves only when a fake engine or client works."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    fake_time = types.SimpleNamespace(
        perf_counter=c.perf_counter, monotonic=time.monotonic, sleep=time.sleep
    )
    monkeypatch.setattr(serve, "time", fake_time)
    return c


def fake_client(clock: Clock, replies: list[tuple[float, int, int]]) -> type:
    """An httpx.Client whose posts take the scripted (seconds, status, completion tokens)."""
    script = iter(replies)

    class Response:
        def __init__(self, status: int, tokens: int) -> None:
            self.status_code, self._tokens = status, tokens

        def json(self) -> dict:
            if self.status_code != 200:
                return {"error": {"message": "scripted failure"}}
            return {"usage": {"completion_tokens": self._tokens},
                    "choices": [{"message": {"content": "same"}}]}  # fmt: skip

    class Client:
        def __init__(self, **_: object) -> None:
            pass

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def post(self, url: str, json: dict) -> Response:
            assert url.endswith("/v1/chat/completions") and json["fints"]["steer"] is True
            seconds, status, tokens = next(script)
            clock.now += seconds
            return Response(status, tokens)

    return Client


def test_overhead_is_the_difference_of_medians_and_the_paired_median(clock, monkeypatch):
    import httpx

    class Engine:
        def __init__(self, seconds: list[float]) -> None:
            self.seconds = iter(seconds)

        def configure(self, **_: object) -> None:
            pass

        def reply(self, text: str, steer: bool) -> types.SimpleNamespace:
            assert text == "hi" and steer is True  # the request the server is sent
            clock.now += next(self.seconds)
            return types.SimpleNamespace(text="same")

    # warm-up first, then 3 repetitions: engine 10, 30, 20 ms; server 15, 50, 22 ms
    engine = Engine([0.5, 0.010, 0.030, 0.020])
    replies = [(0.5, 200, 4), (0.015, 200, 4), (0.050, 200, 4), (0.022, 200, 4)]
    monkeypatch.setattr(httpx, "Client", fake_client(clock, replies))
    out = serve.overhead("http://bench", "t", engine, "hi", "user0", {}, 4, reps=3)
    assert out["engine_ms"] == pytest.approx(20.0)  # median of 10, 30, 20
    assert out["server_ms"] == pytest.approx(22.0)  # median of 15, 50, 22
    assert out["overhead_ms"] == pytest.approx(2.0)  # 22 - 20
    assert out["overhead_paired_ms"] == pytest.approx(5.0)  # median of 5, 20, 2
    assert out["completion_tokens"] == 4 and out["same_answer"] is True


def test_load_figures_count_completed_requests_over_wall_time(clock, monkeypatch):
    import httpx

    # one user, 4 requests in turn: 100, 300, 200 ms answered (8, 8, 4 tokens), then a 400 ms 503
    replies = [(0.1, 200, 8), (0.3, 200, 8), (0.2, 200, 4), (0.4, 503, 0)]
    monkeypatch.setattr(httpx, "Client", fake_client(clock, replies))
    out = serve.load("http://bench", None, ["user0"], ["a", "b"], {}, 8, requests_per_user=4)
    assert out["completed"] == 3 and out["failed"] == 1
    assert "503" in out["errors"][0]
    assert out["wall_s"] == pytest.approx(1.0)  # 0.1 + 0.3 + 0.2 + 0.4
    assert out["requests_per_s"] == pytest.approx(3.0)  # 3 completed in 1 s; the 503 is not one
    assert out["tokens_per_s"] == pytest.approx(20.0)  # 8 + 8 + 4 tokens in 1 s
    assert out["latency_p50_ms"] == pytest.approx(200.0)  # of 100, 200, 300
    assert out["latency_p95_ms"] == pytest.approx(290.0)  # 200 + 0.9 * (300 - 200), linear


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
    assert math.isfinite(out["overhead_ms"]) and math.isfinite(out["overhead_paired_ms"])
    # Load: both users answered (the arithmetic of the figures is pinned above, on a clock).
    assert out["load_completed"] == 2 and out["load_failed"] == 0
    assert 0 < out["load_requests_per_s"] and 0 < out["load_tokens_per_s"]
    p50, p95 = out["load_latency_p50_ms"], out["load_latency_p95_ms"]
    assert 0 < p50 <= p95 <= out["load_wall_s"] * 1e3
    keys = headline(out)
    assert set(keys) == {
        "serve_overhead_ms", "serve_throughput_2users", "serve_tokens_per_s_2users",
        "serve_latency_p50_ms_2users", "serve_latency_p95_ms_2users",
    }  # fmt: skip
    assert all(math.isfinite(v) for v in keys.values())
    text = "\n".join(render_serve({"serve": out}))
    assert "| `serve_throughput_2users` |" in text and "WARNING" not in text
