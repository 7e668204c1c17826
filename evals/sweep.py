"""Choosing the steering setting on the DEV split only: coordinate ascent on fluent adherence.

Layer x strength first, then sites, K and similarity weighting, each stage keeping the best.
A difference of at most one dev answer is a tie, measured against the best seen so far (so a
chain of ties cannot drift down), and ties go to the setting that keeps more of the unsteered
answer's topic (content kept). Every tried setting is recorded for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from evals.run import Setting
from evals.scoring import mean_of
from fints_edge.layers import SITES

Score = tuple[float, float]  # (fluent adherence, topic retention)


@dataclass(frozen=True)
class Grid:
    layer_fracs: tuple[float, ...]  # as fractions of the depth
    strengths: tuple[float, ...]
    ks: tuple[int, ...]
    temperatures: tuple[float, ...]


def score_of(preds: Sequence[dict]) -> Score:
    return (mean_of(preds, "fluent_adherence"), mean_of(preds, "topic"))


def better(new: Score, old: Score, n: int, top: float) -> bool:
    """Higher fluent adherence wins; within one dev answer of the best seen (``top``) it is a
    tie, which more topic retention breaks."""
    tol = 1.0 / max(n, 1) + 1e-9
    if new[0] > top + tol:
        return True
    return new[0] >= top - tol and (new[0] > old[0] + tol or new[1] > old[1])


def sweep(run: Callable[[Setting, str], list[dict]], grid: Grid, n_layer: int, n_dev: int,
          default_k: int) -> tuple[Setting, list[dict]]:  # fmt: skip
    """``run(setting, stage)`` answers and scores the dev rows; returns the choice and the log."""
    tried: list[dict] = []

    def score(s: Setting, stage: str) -> Score:
        preds = run(s, stage)
        sc = score_of(preds)
        tried.append({"stage": stage, "setting": s.to_json(), "label": s.label(),
                      "fluent_adherence": sc[0], "topic": sc[1],
                      "adherence": mean_of(preds, "adherence"), "fluent": mean_of(preds, "fluent"),
                      "n": len(preds)})  # fmt: skip
        return sc

    layers = sorted({max(1, min(n_layer - 1, round(f * n_layer))) for f in grid.layer_fracs})
    first = [Setting((j,), st, k=default_k) for j in layers for st in grid.strengths]
    scored = {s: score(s, "layer") for s in first}
    top = max(sc[0] for sc in scored.values())
    tied = [s for s in first if top - scored[s][0] <= 1.0 / max(n_dev, 1) + 1e-9]
    best = max(tied, key=lambda s: scored[s][1])
    best_score = scored[best]

    def consider(candidates: Iterable[Setting], stage: str) -> None:
        nonlocal best, best_score, top
        for s in candidates:
            sc = score(s, stage)
            if better(sc, best_score, n_dev, top):
                best, best_score = s, sc
            top = max(top, sc[0])

    consider([replace(best, sites=(site,)) for site in SITES], "sites")
    consider([replace(best, k=k) for k in grid.ks if k != best.k], "k")
    consider([replace(best, temperature=t) for t in grid.temperatures], "weights")
    return best, tried
