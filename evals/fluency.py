"""Is a steered answer still fluent text? Three cheap signals and a rule calibrated on baselines.

Why: strong steering can make every answer "adherent" and broken at once ("the halden ridge
academy israel israel israel ..." is all lowercase). No judge model fits on a phone, so:
- ``repetition``: the share of word 3-grams that repeat an earlier 3-gram of the same answer;
- ``perplexity``: the answer's perplexity under the UNSTEERED model, prompted with the plain
  zero-shot prompt for the input (llama.cpp logits of the same GGUF); case-folded (prompt and
  answer lowercased) in rules calibrated with ``casefold``: the unsteered model finds lowercase
  proper nouns improbable, and the check must judge an answer's words, not the case style;
- ``topic``: encoder cosine between the answer and the unsteered answer to the same input (the
  encoder is uncased, so case styles do not move it);
- ``phrases``: how often the answer's most repeated word pair with a content word occurs ("the new
  elective course: the new elective: ... a new elective" has "new elective" three times), which
  the 3-gram share misses when a loop is short and the rest of the answer is long;
- ``nonwords``: the share of the answer's words (3+ letters, case-folded) that are neither English
  (pyspellchecker's word list, shipped in the package) nor in the input: "a 36-team shiad
  cook-off in bimmery". Names and identifiers copied from the input are words.
None of the five sees case: a lowercase copy of an answer gets the same verdict as the answer.
:class:`FluencyRule` calibrates one bound per signal on answers that are fluent by construction
(zero-shot and RAG answers, the unsteered model writing): an answer is fluent when every signal
is within the baselines' 95th percentile (5th for topic), with a floor on the repetition bound
(baselines that never repeat must not make one repeated phrase fatal), a cap on the topic
bound (a rephrased answer need not be closer than 0.5 to the unsteered one) and a floor of 0 on
the non-word bound. The phrase bound is fixed at 2, not calibrated: a word pair three times in
one answer is a loop whoever wrote it, and SmolLM2-135M's own 48-token baselines loop often
enough that their 95th percentile (4) let "the new elective" x3 through. Rules written before
the last two signals existed load with the fixed bound and the floor.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from evals.rule_text import describe_rule
from fints_edge.fade import PHRASE_FLOOR, REPETITION_FLOOR, phrase_count, repetition

__all__ = ["REPETITION_FLOOR", "FluencyRule", "Perplexity", "distinct_2", "nonwords",
           "phrase_count", "repetition", "topic_retention", "vocabulary", "words_in"]  # fmt: skip
_WORD = re.compile(r"\w+")
_LETTERS = re.compile(r"[a-z]+(?:'[a-z]+)?")  # case-folded words; "isn't" is one word
TOPIC_CAP = 0.5  # the topic bound never asks for more than this cosine
PERCENTILE = 95.0
NONWORD_FLOOR = 0.0  # baselines that never invent a word make one invented word fatal
MIN_WORD = 3  # shorter tokens are abbreviations and particles ("st", "vs", "io")


def distinct_2(text: str) -> float:
    """Distinct word bigrams / all bigrams (1.0 for texts under 2 words): reported, not ruled."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = list(zip(words, words[1:], strict=False))
    return len(set(grams)) / len(grams) if grams else 1.0


@lru_cache(maxsize=1)
def _english() -> Any:
    from spellchecker import SpellChecker  # the eval extra; its word list ships in the package

    return SpellChecker(language="en", distance=1)


def words_in(text: str) -> set[str]:
    """The case-folded words of a text, as :func:`nonwords` reads them."""
    return set(_LETTERS.findall(text.lower()))


def vocabulary(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """The words of a user's history (input, output) pairs: theirs, for :func:`nonwords`."""
    return set().union(*(words_in(f"{i} {o}") for i, o in pairs))


def nonwords(answer: str, source: str, known: Collection[str] = frozenset()) -> float:
    """Share of the answer's words of MIN_WORD+ letters that are neither English nor in
    ``source`` (the input the model was given) nor in ``known`` (the user's own history: their
    "MAINT:" is a word of theirs), case-folded; 0 for an answer without such words."""
    words = [w for w in _LETTERS.findall(answer.lower()) if len(w) >= MIN_WORD]
    if not words:
        return 0.0
    given = words_in(source)
    english = _english()

    def word(w: str) -> bool:
        return w in given or w in known or w in english

    unknown = [w for w in words if not (word(w) or word(w.split("'")[0]))]  # "mypy's"
    return len(unknown) / len(words)


class Perplexity:
    """Perplexity of an answer under the unsteered model, given the zero-shot chat prompt.

    Opens its own llama.cpp context with every position's logits (``logits_all``): the engine's
    contexts keep only the last row. Plain prompts for models without a chat template."""

    def __init__(self, model: Path, *, n_ctx: int = 2048, threads: int | None = None,
                 casefold: bool = True) -> None:  # fmt: skip
        from fints_edge.llama.model import open_llama

        self.llm = open_llama(model, n_ctx=n_ctx, n_threads=threads, logits_all=True)
        self.casefold = casefold  # score lowercase prompt + lowercase answer

    def close(self) -> None:
        self.llm.close()

    def __call__(self, text: str, answer: str) -> float:
        if not answer.strip():
            return float("inf")
        from fints_edge.prompt import prompt_tokens

        llm = self.llm
        if self.casefold:
            text, answer = text.lower(), answer.lower()
        ids = prompt_tokens(llm, [{"role": "user", "content": text}])  # plain without a template
        ans = llm.tokenize(answer.encode(), add_bos=False, special=False)
        room = llm.n_ctx() - len(ids)
        ans = ans[: max(room, 1)]
        llm.reset()
        llm.eval(ids + ans)
        logits = np.asarray(llm.scores[len(ids) - 1 : len(ids) + len(ans) - 1], np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # [A, vocab]
        nll = -logp[np.arange(len(ans)), ans].mean()
        return float(np.exp(nll))


def topic_retention(encoder: Any, answers: Sequence[str], unsteered: Sequence[str]) -> np.ndarray:
    """Cosine of each answer to the unsteered answer of the same input, float64 [n]."""
    a = encoder.encode(list(answers))  # [n, d] unit rows
    b = encoder.encode(list(unsteered))
    return np.einsum("nd,nd->n", a, b).astype(np.float64)


@dataclass(frozen=True)
class FluencyRule:
    """Bounds an answer must meet to count as fluent (calibrated by :meth:`calibrate`)."""

    max_repetition: float
    max_perplexity: float
    min_topic: float
    calibrated_on: int = 0  # how many baseline answers set the bounds
    casefold: bool = False  # perplexities were case-folded (rules written before it: False)
    max_phrases: float = PHRASE_FLOOR  # fixed (see above); a field so reports can state it
    max_nonwords: float = NONWORD_FLOOR

    @classmethod
    def calibrate(cls, repetitions: Sequence[float], perplexities: Sequence[float],
                  topics: Sequence[float], nonword_shares: Sequence[float] = (),
                  casefold: bool = True) -> FluencyRule:  # fmt: skip
        """The baselines' 95th percentile for repetition, perplexity and non-words (each above
        its floor), the 5th for topic (below its cap); the phrase bound is fixed."""
        finite = [p for p in perplexities if np.isfinite(p)]
        if not finite or len(repetitions) == 0 or len(topics) == 0:
            raise ValueError("calibration needs baseline answers with every signal")

        def top(values: Sequence[float], floor: float) -> float:
            return max(float(np.percentile(values, PERCENTILE)), floor) if len(values) else floor

        return cls(
            max_repetition=top(repetitions, REPETITION_FLOOR),
            max_perplexity=float(np.percentile(finite, PERCENTILE)),
            min_topic=min(float(np.percentile(topics, 100 - PERCENTILE)), TOPIC_CAP),
            calibrated_on=len(repetitions),
            casefold=casefold,
            max_phrases=PHRASE_FLOOR,  # fixed, see the module docstring
            max_nonwords=top(nonword_shares, NONWORD_FLOOR),
        )

    def failures(self, text: str, rep: float, ppl: float, topic: float, phrases: float = 0.0,
                 nonword_share: float = 0.0) -> list[str]:  # fmt: skip
        """Which bounds an answer breaks (empty: fluent)."""
        out = []
        if not text.strip():
            out.append("empty")
        if rep > self.max_repetition:
            out.append("repetition")
        if not ppl <= self.max_perplexity:
            out.append("perplexity")
        if topic < self.min_topic:
            out.append("topic")
        if phrases > self.max_phrases:
            out.append("repeated phrase")
        if nonword_share > self.max_nonwords:
            out.append("non-words")
        return out

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        """The bounds in words, for reports (evals/rule_text.py)."""
        return describe_rule(self.to_json())
