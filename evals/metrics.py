"""Scores for generated text, as the personalization benchmarks report them.

ROUGE-1/ROUGE-L F1 (rouge-score with stemming, like LaMP), METEOR (nltk, only where WordNet is
installed: ``make nltk-data``), and paired-bootstrap intervals. Style adherence lives with the
styles (``evals.styles``). ROUGE lowercases: it cannot see case styles, adherence can.
"""

from __future__ import annotations

import numpy as np
from rouge_score import rouge_scorer

_WORDNET_HINT = "METEOR needs WordNet for nltk: run `make nltk-data`"


def meteor_problem() -> str | None:
    """None when METEOR can run here, else why not (one line)."""
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        wordnet.synsets("dog")
    except Exception as e:  # nltk raises LookupError, or OSError for a broken corpus folder
        return f"{_WORDNET_HINT} ({type(e).__name__})"
    return None


class TextScorer:
    """``TextScorer()(prediction, reference)`` -> {"rouge1", "rougeL"[, "meteor"]}."""

    def __init__(self, meteor: bool = True) -> None:
        self._rouge = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
        self.meteor_problem = meteor_problem() if meteor else "METEOR not asked for"
        self.metrics = ("rouge1", "rougeL") + (() if self.meteor_problem else ("meteor",))

    def __call__(self, prediction: str, reference: str) -> dict[str, float]:
        s = self._rouge.score(reference, prediction)
        out = {"rouge1": s["rouge1"].fmeasure, "rougeL": s["rougeL"].fmeasure}
        if not self.meteor_problem:
            from nltk.translate.meteor_score import meteor_score

            # Whitespace tokens, lowercased: no punkt download needed, as in common LaMP scripts.
            out["meteor"] = float(
                meteor_score([reference.lower().split()], prediction.lower().split())
            )
        return {k: float(v) for k, v in out.items()}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int, seed: int) -> tuple[float, float, float]:
    """Mean of a - b and its 95% interval, resampling the paired items."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
