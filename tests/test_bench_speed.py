"""bench/speed.py: the other formats hold the same weights, and the format table's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from bench.render import render_formats
from bench.speed import FORMATS, NEGATIVE_TOKENS, derive, format_speed_bench


def _logits(path, tokens: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], np.float64)
    finally:
        llm.close()


def test_derived_formats_are_the_same_model_rounded(tiny, tmp_path):
    tokens = [1, 504, 3458, 314, 260, 1345, 30]
    ref = _logits(tiny.gguf_path, tokens)
    scale = float(np.abs(ref).max())
    sizes, errors = {}, {}
    for fmt in ("F16", "Q8_0", "Q4_0"):
        out = derive(tiny.gguf_path, fmt, tmp_path / f"{fmt}.gguf", threads=1)
        sizes[fmt] = out.stat().st_size
        errors[fmt] = float(np.abs(_logits(out, tokens) - ref).max()) / scale
    f32 = tiny.gguf_path.stat().st_size
    # fewer bytes per weight, in the formats' order (the tokenizer's metadata is common to all)
    assert sizes["F16"] < 0.6 * f32 and sizes["Q8_0"] < 0.8 * sizes["F16"]
    assert sizes["Q4_0"] < sizes["Q8_0"]  # the tied embedding stays 8-bit (llama.cpp's rule)
    # the same weights: F16 rounds them least, a 4-bit format most
    assert errors["F16"] < 0.01
    assert errors["F16"] <= errors["Q8_0"] < errors["Q4_0"]


def test_format_speed_bench_measures_every_format_and_its_learning_floor(tiny):
    got = format_speed_bench(
        tiny.gguf_path, "F32", "fix the parser for empty files", prompt_tokens=40, reps=1
    )
    assert got["shipped"] == "F32" and got["prompt_tokens"] == 40
    names = [k for k, v in got.items() if isinstance(v, dict)]
    assert names == ["F32", *FORMATS]
    for name in names:
        x = got[name]
        assert x["prompt_tps"] > 0 and x["decode_tps"] > 0 and x["megabytes"] > 0
        assert x["floor_s"] == pytest.approx(
            40 / x["prompt_tps"] + NEGATIVE_TOKENS / x["decode_tps"]
        )
    text = "\n".join(render_formats({"formats": got}))
    assert "| F32 (shipped) |" in text
    assert sum(line.startswith("| ") and "tok/s" not in line for line in text.splitlines()) == 4
    assert render_formats({}) == []
