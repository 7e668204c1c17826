"""Scores per answer and summaries per method: adherence, fluency, content, cost, intervals.

Per answer: ``adherence`` (every rule of the row's style holds), the fluency signals
(``repetition``, ``perplexity``, ``topic``; see evals/fluency.py), ``fluent`` and
``fluent_adherence`` (adherent AND fluent: the primary metric), ROUGE-1/L and METEOR against the
reference. Per method: means, paired-bootstrap 95% intervals against the comparison methods, and
cost: ``added_prompt_tokens`` (over zero-shot, same inputs), ``first_token_ms`` (median),
``memory_bytes`` per user (profile bytes for steering, KV bytes for prefix-cached).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evals.fluency import (
    FluencyRule,
    Perplexity,
    nonwords,
    phrase_count,
    repetition,
    topic_retention,
)
from evals.metrics import TextScorer, paired_bootstrap
from evals.styles import Style

PRIMARY = ("fluent_adherence", "adherence")
COMPARED_TO = ("zero-shot", "rag-1", "prefix-cached", "static", "rag-3")
BASELINES = ("zero-shot", "rag-1", "rag-2", "rag-3")  # fluent by construction: they calibrate


class Scoring:
    """Adds every per-answer score to prediction dicts (in place)."""

    def __init__(self, styles: Mapping[str, Style], model: Path, encoder: Any,
                 threads: int | None = None, ppl_file: Path | None = None) -> None:  # fmt: skip
        """``ppl_file``: perplexities kept across runs (JSON lines), so a resumed run does not
        recompute them."""
        self.text = TextScorer()
        self.styles = styles
        self.encoder = encoder
        self._ppl = Perplexity(model, threads=threads)  # case-folded (evals/fluency.py)
        self._ppl_cache: dict[tuple[str, str], float] = {}
        self._ppl_file = ppl_file
        if ppl_file is not None and ppl_file.is_file():
            for line in ppl_file.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._ppl_cache[(row["input"], row["answer"])] = float(row["perplexity"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash
        self.rule: FluencyRule | None = None
        self.vocabulary: dict[str, set[str]] = {}  # user -> the words of their history

    def close(self) -> None:
        self._ppl.close()

    def metrics(self, with_style: bool) -> tuple[str, ...]:
        style = ("fluent_adherence", "adherence") if with_style else ()
        return style + ("fluent", "repetition", "topic") + self.text.metrics

    def perplexity(self, text: str, answer: str) -> float:
        key = (text, answer)
        if key not in self._ppl_cache:
            self._ppl_cache[key] = self._ppl(text, answer)
            if self._ppl_file is not None:
                with self._ppl_file.open("a", encoding="utf-8") as f:
                    row = {"input": text, "answer": answer, "perplexity": self._ppl_cache[key]}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return self._ppl_cache[key]

    def score(self, preds: list[dict], unsteered: Mapping[tuple[str, str], str]) -> list[dict]:
        """Content, style and fluency signals; ``unsteered[(user, input)]`` is the zero-shot
        answer the topic signal compares with. ``fluent`` needs :meth:`calibrate` first."""
        todo = [p for p in preds if "nonwords" not in p]
        refs = [unsteered.get((p["user"], p["input"]), "") for p in todo]
        topics = (
            topic_retention(self.encoder, [p["prediction"] for p in todo], refs) if todo else []
        )
        for p, topic, ref in zip(todo, topics, refs, strict=True):
            p.update(self.text(p["prediction"], p["reference"]))
            p["repetition"] = repetition(p["prediction"])
            p["phrases"] = float(phrase_count(p["prediction"]))
            p["nonwords"] = nonwords(
                p["prediction"], p["input"], self.vocabulary.get(p["user"], frozenset())
            )
            p["perplexity"] = self.perplexity(p["input"], p["prediction"])
            p["topic"] = float(topic) if ref else 1.0
            style = self.styles.get(p.get("style") or "")
            if style is not None:
                p["adherence"] = float(bool(p["prediction"]) and style.adheres(p["prediction"]))
        if self.rule is not None:
            self.judge(preds)
        return preds

    def calibrate(self, baseline: Sequence[dict]) -> FluencyRule:
        """The fluency rule from baseline answers (zero-shot and RAG, dev split)."""
        rows = [p for p in baseline if p["prediction"]]
        self.rule = FluencyRule.calibrate(
            [p["repetition"] for p in rows],
            [p["perplexity"] for p in rows],
            [p["topic"] for p in rows],
            [p["nonwords"] for p in rows],
            casefold=self._ppl.casefold,
        )
        return self.rule

    def judge(self, preds: Sequence[dict]) -> None:
        assert self.rule is not None, "calibrate() first"
        for p in preds:
            fails = self.rule.failures(p["prediction"], p["repetition"], p["perplexity"],
                                       p["topic"], p["phrases"], p["nonwords"])  # fmt: skip
            p["fluency_failures"] = fails
            p["fluent"] = float(not fails)
            if "adherence" in p:
                p["fluent_adherence"] = float(p["adherence"] and not fails)


def mean_of(preds: Sequence[dict], metric: str) -> float:
    vals = [p[metric] for p in preds if p.get(metric) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(preds: Sequence[dict], methods: Sequence[str], metrics: Sequence[str],
              bootstrap: int, seed: int, memory: Mapping[str, float] | None = None, *,
              primary: Sequence[str] = PRIMARY,
              pairs: Sequence[tuple[str, str]] | None = None) -> dict:  # fmt: skip
    """Per method: means, n, errors, cost, and paired-bootstrap differences of the ``primary``
    metrics: against every method of COMPARED_TO, or only the (method, other) ``pairs``."""
    by: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
    for p in preds:
        by[p["method"]][(p["user"], p["input"])] = p
    base_tokens = {k: r.get("prompt_tokens") for k, r in by.get("zero-shot", {}).items()}
    table: dict[str, dict] = {}
    for method in methods:
        if method not in by:
            continue
        keys = sorted(by[method])
        rows = [by[method][k] for k in keys]
        added = [r["prompt_tokens"] - base_tokens[k] for k, r in zip(keys, rows, strict=True)
                 if r.get("prompt_tokens") is not None and base_tokens.get(k) is not None]  # fmt: skip
        warm = [r["first_token_ms"] for r in rows
                if r.get("first_token_ms") is not None and not r.get("cold")]  # fmt: skip
        entry: dict[str, Any] = {
            "n": len(rows),
            "errors": sum(1 for r in rows if r.get("error")),
            "added_prompt_tokens": float(np.mean(added)) if added else None,
            "first_token_ms": float(np.median(warm)) if warm else None,
            "memory_bytes": (memory or {}).get(method),
        }
        for metric in metrics:
            vals = np.array([r.get(metric, np.nan) for r in rows], dtype=np.float64)
            entry[metric] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
            if metric not in primary:
                continue
            others = COMPARED_TO if pairs is None else [o for m, o in pairs if m == method]
            for other in others:
                if other == method or other not in by or not all(k in by[other] for k in keys):
                    continue
                ref = np.array([by[other][k][metric] for k in keys], dtype=np.float64)
                diff, lo, hi = paired_bootstrap(vals, ref, bootstrap, seed)
                entry[f"{metric}_vs_{other}"] = {"diff": diff, "ci95": [lo, hi]}
        table[method] = entry
    return table


def by_group(preds: Sequence[dict], methods: Sequence[str], field: str,
             metric: str = "fluent_adherence") -> dict[str, dict[str, float]]:  # fmt: skip
    """``metric`` per value of ``field`` (a style, a kind) per method."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for method in methods:
        groups: dict[str, list[float]] = defaultdict(list)
        for p in preds:
            if p["method"] == method and metric in p and p.get(field):
                groups[p[field]].append(p[metric])
        for value, vals in groups.items():
            out[value][method] = float(np.mean(vals))
    return dict(out)
