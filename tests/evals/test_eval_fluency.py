"""The fluency check: repetition, perplexity and topic signals, and the calibrated rule."""

from __future__ import annotations

import numpy as np
import pytest

from evals.fluency import FluencyRule, Perplexity, distinct_2, repetition, topic_retention

# Steered answers `make demo` printed before the fluency work (quoted in the evaluation issue).
DEGENERATE = [
    "the halden ridge academy israel israel israel israel israel israel israel israel",
    "bonus recipe for the new one-stopbun dipping hot dog. the new one-stopbun dipping hot dog. "
    "the new one-stopbun dipping hot dog.",
]
# Unsteered headlines of the same model for demo snippets (export/data/demo_history.jsonl style).
UNSTEERED = [
    "Halden Ridge Academy Wins Regional Robotics Title",
    "New Bun Recipe Wins Hot Dog Festival Prize",
]


def test_repetition_counts_repeated_trigrams():
    assert repetition("a b c a b c a b c") == pytest.approx(4 / 7)
    assert repetition("one two three four five") == 0.0
    assert repetition("short") == 0.0 and repetition("") == 0.0
    assert repetition("The Cat sat. the cat SAT") == pytest.approx(1 / 4)  # case-folded words
    assert distinct_2("a b a b") == pytest.approx(2 / 3) and distinct_2("a") == 1.0


def test_rule_calibrates_on_percentiles_with_floor_and_cap():
    reps = np.linspace(0, 0.05, 101)  # baselines hardly repeat: the floor applies
    ppl = np.linspace(1, 101, 101)
    topics = np.linspace(0.0, 1.0, 101)
    rule = FluencyRule.calibrate(reps, ppl, topics)
    assert rule.max_repetition == 0.1
    assert rule.max_perplexity == pytest.approx(96.0)
    assert rule.min_topic == pytest.approx(0.05)
    capped = FluencyRule.calibrate(reps, ppl, np.linspace(0.9, 1.0, 101))
    assert capped.min_topic == 0.5  # never asks a rephrasing to stay closer than 0.5
    assert rule.failures("x y", 0.0, 10.0, 1.0) == []
    assert rule.failures("", 0.0, 10.0, 1.0) == ["empty"]
    assert rule.failures("x", 0.5, 200.0, 0.0) == ["repetition", "perplexity", "topic"]
    assert rule.failures("x", 0.0, float("nan"), 1.0) == ["perplexity"]


def test_rejects_the_degenerate_demo_answers_and_accepts_unsteered_ones(onnx_encoder_dir):
    from fints_edge.encode import Encoder

    enc = Encoder(onnx_encoder_dir, threads=1)
    rule = FluencyRule(max_repetition=0.1, max_perplexity=float("inf"), min_topic=0.3)
    topics = topic_retention(enc, DEGENERATE + UNSTEERED, UNSTEERED + UNSTEERED)
    verdicts = [
        rule.failures(t, repetition(t), 1.0, float(c))
        for t, c in zip(DEGENERATE + UNSTEERED, topics, strict=True)
    ]
    assert all("repetition" in v for v in verdicts[:2]), verdicts
    assert verdicts[2:] == [[], []]


def test_perplexity_is_lower_for_the_models_own_answer(tiny):
    ppl = Perplexity(tiny.gguf_path, n_ctx=256, threads=1)
    try:
        from fints_edge.generate import complete
        from fints_edge.prompt import prompt_tokens

        llm = ppl.llm
        own = complete(llm, prompt_tokens(llm, [{"role": "user", "content": "Say something."}]), 12)
        mine = ppl("Say something.", own)
        other = ppl("Say something.", "Quantum zebra marmalade orbit sixteen")
        assert np.isfinite(mine) and mine < other
        assert ppl("Say something.", "") == float("inf")
    finally:
        ppl.close()
