"""Contrast pairs: the user's real output (chosen) vs a non-personal one (rejected) per input.

Negatives come from the history line itself (``"rejected"``), else from the base model's
zero-shot answer (default) or from other users' outputs. Generated negatives pass the authors'
ROUGE-L filter (rejected must not resemble chosen; two tries per item). Given negatives are
trusted as the user wrote them (only an exact copy of the output is dropped): ROUGE ignores case
and punctuation, so it would wrongly reject a pure style contrast such as lowercase vs Title Case.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rouge_score import rouge_scorer
from tqdm import tqdm

from fints_edge.errors import FintsEdgeError, HistoryError
from fints_edge.history import HistoryItem

NegativeSource = Literal["zero-shot", "others", "given"]
NEGATIVE_SOURCES: tuple[NegativeSource, ...] = ("zero-shot", "others", "given")
DEFAULT_ROUGE_THRESHOLD = 0.15  # the authors' value for headlines (0.2 for abstracts)
TRIES = 2

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
    dropped: list[int] = field(default_factory=list)  # history indices with no usable negative

    def summary(self) -> str:
        s = f"{self.kept} contrast pairs ({self.given} with a given negative)"
        if self.dropped:
            s += f"; dropped {len(self.dropped)} item(s) whose negatives were too close: {self.dropped[:10]}"
        return s


class RougeL:
    """ROUGE-L F1 as LaMP scores it (rouge-score, stemming on)."""

    def __init__(self) -> None:
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def __call__(self, candidate: str, reference: str) -> float:
        return float(self._scorer.score(reference, candidate)["rougeL"].fmeasure)


def build_pairs(
    items: Sequence[HistoryItem],
    negative: NegativeFn | None,
    *,
    threshold: float = DEFAULT_ROUGE_THRESHOLD,
    progress: bool = True,
) -> tuple[list[ContrastPair], PairReport]:
    """Pair every item with a negative; ``negative`` may be None when all items carry one."""
    rouge = RougeL()
    pairs: list[ContrastPair] = []
    report = PairReport()
    for i, item in enumerate(tqdm(items, desc="contrast pairs", unit="item", disable=not progress)):
        if item.rejected is not None:
            if item.rejected.strip() != item.output.strip():
                pairs.append(ContrastPair(i, item.input, item.output, item.rejected))
                report.given += 1
            else:
                report.dropped.append(i)
            continue
        if negative is None:
            raise HistoryError(
                f"history item {i + 1} has no 'rejected' text; add one or choose "
                "--negatives zero-shot or others"
            )
        rejected = _first_dissimilar(item, negative, rouge, threshold)
        if rejected is None:
            report.dropped.append(i)
        else:
            pairs.append(ContrastPair(i, item.input, item.output, rejected))
    report.kept = len(pairs)
    if not pairs:
        raise FintsEdgeError(
            f"no usable contrast pair: every negative was within ROUGE-L {threshold} of the "
            "user's output; raise --rouge-threshold or give 'rejected' texts in the history"
        )
    return pairs, report


def _first_dissimilar(
    item: HistoryItem, negative: NegativeFn, rouge: RougeL, threshold: float
) -> str | None:
    for attempt in range(TRIES):
        candidate = negative(item.input, attempt).strip()
        if candidate and rouge(candidate, item.output) < threshold:
            return candidate
    return None


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
