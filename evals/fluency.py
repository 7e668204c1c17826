"""Is a steered answer still fluent text? Three cheap signals and a rule calibrated on baselines.

Why: strong steering can make every answer "adherent" and broken at once ("the halden ridge
academy israel israel israel ..." is all lowercase). No judge model fits on a phone, so:
- ``repetition``: the share of word 3-grams that repeat an earlier 3-gram of the same answer;
- ``perplexity``: the answer's perplexity under the UNSTEERED model, prompted with the plain
  zero-shot prompt for the input (llama.cpp logits of the same GGUF); case-folded (prompt and
  answer lowercased) in rules calibrated with ``casefold``: the unsteered model finds lowercase
  proper nouns improbable, and the check must judge an answer's words, not the case style;
- ``topic``: encoder cosine between the answer and the unsteered answer to the same input (the
  encoder is uncased, so case styles do not move it).
:class:`FluencyRule` calibrates one bound per signal on answers that are fluent by construction
(zero-shot and RAG answers, the unsteered model writing): an answer is fluent when every signal
is within the baselines' 95th percentile (5th for topic), with a floor on the repetition bound
(baselines that never repeat must not make one repeated phrase fatal) and a cap on the topic
bound (a rephrased answer need not be closer than 0.5 to the unsteered one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fints_edge.fade import REPETITION_FLOOR, repetition

__all__ = ["REPETITION_FLOOR", "FluencyRule", "Perplexity", "distinct_2", "repetition",
           "topic_retention"]  # fmt: skip
_WORD = re.compile(r"\w+")
TOPIC_CAP = 0.5  # the topic bound never asks for more than this cosine
PERCENTILE = 95.0


def distinct_2(text: str) -> float:
    """Distinct word bigrams / all bigrams (1.0 for texts under 2 words): reported, not ruled."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = list(zip(words, words[1:], strict=False))
    return len(set(grams)) / len(grams) if grams else 1.0


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

    @classmethod
    def calibrate(cls, repetitions: Sequence[float], perplexities: Sequence[float],
                  topics: Sequence[float], casefold: bool = True) -> FluencyRule:  # fmt: skip
        """The baselines' 95th percentile for repetition and perplexity, 5th for topic."""
        finite = [p for p in perplexities if np.isfinite(p)]
        if not finite or len(repetitions) == 0 or len(topics) == 0:
            raise ValueError("calibration needs baseline answers with every signal")
        return cls(
            max_repetition=max(float(np.percentile(repetitions, PERCENTILE)), REPETITION_FLOOR),
            max_perplexity=float(np.percentile(finite, PERCENTILE)),
            min_topic=min(float(np.percentile(topics, 100 - PERCENTILE)), TOPIC_CAP),
            calibrated_on=len(repetitions),
            casefold=casefold,
        )

    def failures(self, text: str, rep: float, ppl: float, topic: float) -> list[str]:
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
        return out

    def to_json(self) -> dict[str, float]:
        return asdict(self)
