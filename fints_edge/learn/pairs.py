"""Contrast pairs: the user's real output (chosen) vs a non-personal one (rejected) per input.

Negatives come from the history line itself (``"rejected"``), else from the base model's
zero-shot answer (default) or from other users' outputs. Generated negatives go through the
authors' ROUGE-L filter (rejected should not resemble chosen; two tries per item), with two
changes so that no user item is lost to a filter that misjudges its style:
- the filter compares case- and punctuation-sensitive tokens (LaMP's ROUGE lowercases and drops
  punctuation, so "the mayor resigns" looked identical to "The Mayor Resigns" and a lowercase
  user's items were all dropped);
- when no try passes, the least similar candidate is kept anyway (reported as a close negative):
  for a style such as a "BREAKING:" prefix the close negative is exactly the contrast to learn.
Only an item whose every candidate equals the user's output has no contrast and is dropped.
Given negatives are trusted as the user wrote them (only an exact copy of the output is dropped).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rouge_score import rouge_scorer
from tqdm import tqdm

from fints_edge.errors import HistoryError, NoUsableItems
from fints_edge.history import HistoryItem

NegativeSource = Literal["zero-shot", "others", "given"]
NEGATIVE_SOURCES: tuple[NegativeSource, ...] = ("zero-shot", "others", "given")
DEFAULT_ROUGE_THRESHOLD = 0.15  # the authors' value for headlines (0.2 for abstracts)
TRIES = 2
# The zero-shot negative: greedy on the first try, sampled with these on the retry (both halves).
RETRY_SAMPLING = {"temperature": 0.9, "top_p": 0.95}

# (input, attempt) -> a candidate negative; attempt 0 is the preferred one.
NegativeFn = Callable[[str, int], str]


@dataclass(frozen=True)
class ContrastPair:
    index: int  # position of the item in the history file
    input: str
    chosen: str
    rejected: str


@dataclass
class PairReport:
    kept: int = 0
    given: int = 0
    close: list[int] = field(default_factory=list)  # kept, but every try was above the threshold
    dropped: list[int] = field(default_factory=list)  # history indices with no contrast at all

    def summary(self) -> str:
        s = f"{self.kept} contrast pairs ({self.given} with a given negative)"
        if self.close:
            s += (
                f"; {len(self.close)} kept with a close negative (it differs from the output "
                f"mostly in form): {self.close[:10]}"
            )
        if self.dropped:
            s += (
                f"; dropped {len(self.dropped)} item(s) whose negative equals the output: "
                f"{self.dropped[:10]}"
            )
        return s


class RougeL:
    """ROUGE-L F1 as LaMP scores it (rouge-score, stemming on)."""

    def __init__(self) -> None:
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def __call__(self, candidate: str, reference: str) -> float:
        return float(self._scorer.score(reference, candidate)["rougeL"].fmeasure)


class _FormTokens:
    """Words and punctuation marks as written: case and punctuation count as differences."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", text)


class FormAwareRougeL(RougeL):
    """ROUGE-L F1 over case- and punctuation-sensitive tokens: the contrast-pair filter."""

    def __init__(self) -> None:
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_FormTokens())


def build_pairs(
    items: Sequence[HistoryItem],
    negative: NegativeFn | None,
    *,
    threshold: float = DEFAULT_ROUGE_THRESHOLD,
    progress: bool = True,
    on_pair: Callable[[ContrastPair], None] | None = None,
) -> tuple[list[ContrastPair], PairReport]:
    """Pair every item with a negative; ``negative`` may be None when all items carry one.
    ``on_pair`` sees each pair as soon as it is made (the device learner extracts its signal
    while the item's prompt is still in the KV cache)."""
    rouge = FormAwareRougeL()
    pairs: list[ContrastPair] = []
    report = PairReport()
    for i, item in enumerate(tqdm(items, desc="contrast pairs", unit="item", disable=not progress)):
        if item.rejected is not None:
            if item.rejected.strip() != item.output.strip():
                pairs.append(ContrastPair(i, item.input, item.output, item.rejected))
                report.given += 1
                if on_pair is not None:
                    on_pair(pairs[-1])
            else:
                report.dropped.append(i)
            continue
        if negative is None:
            raise HistoryError(
                f"history item {i + 1} has no 'rejected' text; add one or choose "
                "--negatives zero-shot or others"
            )
        rejected, passed = _first_dissimilar(item, negative, rouge, threshold)
        if rejected is None:
            report.dropped.append(i)
            continue
        if not passed:
            report.close.append(i)
        pairs.append(ContrastPair(i, item.input, item.output, rejected))
        if on_pair is not None:
            on_pair(pairs[-1])
    report.kept = len(pairs)
    if not pairs:
        raise NoUsableItems(
            f"none of the {len(items)} history item(s) was usable: each one's negative (its "
            "'rejected' text, or the model's own answer) equals its output; give each item a "
            "'rejected' text that differs from its output (an answer you did not want)"
        )
    return pairs, report


def _first_dissimilar(
    item: HistoryItem, negative: NegativeFn, rouge: RougeL, threshold: float
) -> tuple[str | None, bool]:
    """(negative, passed the filter): the first try below the threshold, else the least similar
    try that differs from the output at all, else (None, False)."""
    output = " ".join(item.output.split())
    closest: tuple[float, str] | None = None
    for attempt in range(TRIES):
        candidate = negative(item.input, attempt).strip()
        if not candidate or " ".join(candidate.split()) == output:
            continue
        score = rouge(candidate, item.output)
        if score < threshold:
            return candidate, True
        if closest is None or score < closest[0]:
            closest = (score, candidate)
    return (closest[1], False) if closest else (None, False)


def others_negative(others: Sequence[HistoryItem], seed: int = 0) -> NegativeFn:
    """Negatives drawn from other users' outputs, in a seeded, per-input stable order."""
    if not others:
        raise HistoryError("the --others history is empty; it must hold other users' outputs")
    outputs = [o.output for o in others]

    def pick(text: str, attempt: int) -> str:
        rng = random.Random(f"{seed}:{text}")
        order = rng.sample(range(len(outputs)), k=min(len(outputs), TRIES))
        return outputs[order[attempt % len(order)]]

    return pick
