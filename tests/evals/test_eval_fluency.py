"""The fluency check: repetition, perplexity and topic signals, and the calibrated rule."""

from __future__ import annotations

import numpy as np
import pytest

from evals.fluency import (
    FluencyRule,
    Perplexity,
    distinct_2,
    nonwords,
    phrase_count,
    repetition,
    topic_retention,
)

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
    assert (rule.max_phrases, rule.max_nonwords) == (2.0, 0.0)  # no such baselines: the floors
    assert rule.failures("x", 0.0, 10.0, 1.0, 3.0, 0.1) == ["repeated phrase", "non-words"]
    loose = FluencyRule.calibrate(reps, ppl, topics, np.linspace(0, 0.2, 101))
    assert loose.max_nonwords == pytest.approx(0.19)
    assert loose.max_phrases == 2.0  # fixed: looping baselines do not make loops fluent
    assert loose.failures("x", 0.0, 10.0, 1.0, 2.0, 0.19) == []


def test_a_rule_written_before_the_new_signals_loads_with_their_floors():
    old = {"max_repetition": 0.44, "max_perplexity": 11.0, "min_topic": 0.23, "calibrated_on": 384}
    rule = FluencyRule(**old)
    assert (rule.casefold, rule.max_phrases, rule.max_nonwords) == (False, 2.0, 0.0)
    assert FluencyRule(**rule.to_json()) == rule


def test_phrase_count_is_the_most_repeated_word_pair_with_a_content_word():
    assert phrase_count("the new elective course: the new elective: take a new elective") == 3
    assert phrase_count("Fair opens. The FAIR opens. the fair OPENS") == 3  # case-folded
    assert phrase_count("of the town, of the river, of the sea") == 1  # grammar is not a loop
    assert phrase_count("Otters win; Otters' coach: a win") == 1
    assert phrase_count("one") == 0 and phrase_count("") == 0


def test_nonwords_are_neither_english_nor_given():
    given = "A chili cook-off in Branwick drew 36 competing teams and 1,100 tasters."
    assert nonwords("the chili cook-off in bramley drew a 36-team shiad cook-Off in bimmery",
                    given) == pytest.approx(3 / 11)  # bramley, shiad, bimmery of 11 words  # fmt: skip
    assert nonwords("Branwick chili cook-off draws 36 teams", given) == 0.0  # the input's name
    assert nonwords("MAINT: bump the stanard pin", "x") == pytest.approx(2 / 5)  # maint, stanard
    assert nonwords("MAINT: bump the pin", "x", known={"maint"}) == 0.0  # the user's own word
    assert nonwords("mypy's cache isn't stale", "run mypy") == 0.0
    assert nonwords("", "x") == 0.0 and nonwords("a b st 36", "x") == 0.0  # nothing of 3+ letters


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


# The demo's inputs (export/data/news.jsonl) by a word of their snippet, and the default model's
# own unsteered headlines for them (`make demo` on SmolLM2-135M).
def news_input(word: str) -> str:
    import json

    from export.demo import SNIPPETS, TASK

    rows = [json.loads(line) for line in SNIPPETS.read_text().splitlines() if line.strip()]
    return TASK + next(r["snippet"] for r in rows if word in r["snippet"])


FLUENT = {
    "Fernhill": "The Fernhill Badgers: The Lost 18",
    "Fennick": "The Big Airport's Big Business: A New Bus Ride to Saldrin",
    "Branwick": "Chili Cook-Off in Branwick Draws 36 Teams and 1,100 Tasters",
    "Ostrel": "The Great Earthquake of 2011: A seismograph installed last year beneath the town hall",
}
# Steered answers of `make demo` that the check let through before (quoted in issue 23).
GARBLED = {
    "Lowbridge": "the new elective course: the new elective: the high school students will be able "
    "to take a new elective in local history",
    "Branwick": "the chili cook-off in bramley drew a 36-team shiad cook-Off in bimmery",
}
# The bounds make eval calibrated on SmolLM2's dev baselines (docs/eval/results.json, before the
# case-folded perplexity and the two new signals).
DEMO_RULE = {"max_repetition": 0.444, "max_perplexity": 11.0, "min_topic": 0.227}


def verdicts(answers: dict[str, str], rule: FluencyRule, ppl: Perplexity) -> list[list[str]]:
    out = []
    for word, answer in answers.items():
        text = news_input(word)
        out.append(rule.failures(answer, repetition(answer), ppl(text, answer), 1.0,
                                 phrase_count(answer), nonwords(answer, text)))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def default_model_perplexity():
    from fints_edge._paths import default_gguf

    ppl = Perplexity(default_gguf(), n_ctx=512, threads=1, casefold=True)
    yield ppl
    ppl.close()


def test_a_lowercase_copy_gets_the_verdict_of_the_answer(default_model_perplexity):
    """The check judges words, not case: at every perplexity bound, a fluent headline and its
    lowercase copy get one verdict (under the cased perplexity of before, 'the fernhill badgers:
    the lost 18' scored 10.6 against 4.1 capitalised, 'the big airport's ...' 49.2 against 6.6),
    and at the bound make eval calibrated, the fluent headlines are accepted."""
    ppl = default_model_perplexity
    lower = {w: a.lower() for w, a in FLUENT.items()}
    for bound in (5.0, 8.0, 11.0, 15.0):
        rule = FluencyRule(**(DEMO_RULE | {"max_perplexity": bound}), casefold=True)
        assert verdicts(FLUENT, rule, ppl) == verdicts(lower, rule, ppl), bound
    accepted = verdicts(lower, FluencyRule(**DEMO_RULE, casefold=True), ppl).count([])
    assert accepted >= 3, accepted


def test_the_garbled_and_self_repeating_demo_answers_are_rejected(default_model_perplexity):
    """The loop has a perplexity of ~3 (it copies the snippet) and a 3-gram share of 0.05; only
    the repeated pair catches it. The invented words are caught as non-words."""
    rule = FluencyRule(**DEMO_RULE, casefold=True)
    loop, garbled = verdicts(GARBLED, rule, default_model_perplexity)
    assert "repeated phrase" in loop, loop
    assert "non-words" in garbled, garbled
