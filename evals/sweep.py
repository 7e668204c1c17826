"""Choosing the steering setting on the DEV split only: coordinate ascent on fluent adherence.

Layer x strength first (absolute multipliers, then shares of the residual norm), then sites, K
and similarity weighting, then each method idea of issue 15 in turn (the novelty gate, steering
the answer only or the prompt at half strength, a window of layers, per-item normalisation,
mean-centring, norm-preserving injection, the repeat fade, the repeat block, opening signals at
the answer's first positions), then strength again around the result; each stage keeps the best.
A difference of at most one dev answer is a tie, measured against the best seen so far (so a
chain of ties cannot drift down), and ties go to the setting that keeps more of the unsteered
answer's topic (content kept). Every tried setting is recorded for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from evals.run import Setting
from evals.scoring import mean_of
from fints_edge.layers import SITES, layer_at

Score = tuple[float, float]  # (fluent adherence, topic retention)


@dataclass(frozen=True)
class Grid:
    layer_fracs: tuple[float, ...]  # as fractions of the depth
    strengths: tuple[float, ...]
    ks: tuple[int, ...]
    temperatures: tuple[float, ...]
    relative: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)  # shares of the residual norm
    gates: tuple[tuple[float, float], ...] = ((0.2, 0.5),)  # novelty gate (floor, full)
    prompt_strengths: tuple[float, ...] = (0.0, 0.5)
    fades: tuple[float, ...] = (0.5,)
    blocks: tuple[int, ...] = (4, 3)  # no-repeat token n-gram sizes for steered answers
    openings: tuple[float, ...] = (1.0, 2.0)  # opening strength as multiples of the strength
    retune: tuple[float, ...] = (0.5, 1.5)  # final strength multipliers


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

    layers = sorted({layer_at(f, n_layer) for f in grid.layer_fracs})
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

    rel = [Setting((j,), f, k=default_k, strength_unit="residual") for j in layers
           for f in grid.relative]  # fmt: skip
    consider(rel, "relative")
    consider([replace(best, sites=(site,)) for site in SITES], "sites")
    consider([replace(best, k=k) for k in grid.ks if k != best.k], "k")
    consider([replace(best, temperature=t) for t in grid.temperatures], "weights")
    consider([replace(best, sim_floor=lo, sim_full=hi) for lo, hi in grid.gates], "gate")
    consider([replace(best, prompt_strength=p) for p in grid.prompt_strengths], "time")
    if len(best.layers) == 1 and len(layers) > 1:  # the same push spread over every layer
        consider([replace(best, layers=tuple(layers), strength=best.strength / len(layers))],
                 "depth")  # fmt: skip
    consider([replace(best, item_norm=True)], "item-norm")
    consider([replace(best, center=True)], "center")
    consider([replace(best, preserve_norm=True)], "keep-norm")
    consider([replace(best, repeat_fade=f) for f in grid.fades], "fade")
    consider([replace(best, block_repeats=n) for n in grid.blocks], "block")
    consider([replace(best, opening_strength=best.strength * m) for m in grid.openings], "opening")
    consider([replace(best, strength=best.strength * m) for m in grid.retune], "retune")
    return best, tried


def replay(tried: Sequence[dict], n_dev: int) -> list[dict]:
    """The sweep's decisions again from its log: each row with ``best_before`` (the fluent
    adherence it had to beat; None in the first stage) and ``adopted``. The report shows which
    idea was kept and why; a test holds it to the sweep's own choice."""
    first = [t for t in tried if t["stage"] == "layer"]
    if not first:
        return [dict(t, best_before=None, adopted=False) for t in tried]
    top = max(t["fluent_adherence"] for t in first)
    tol = 1.0 / max(n_dev, 1) + 1e-9
    tied = [t for t in first if top - t["fluent_adherence"] <= tol]
    best = max(tied, key=lambda t: t["topic"])  # the first of equals, as max() in sweep
    out = [dict(t, best_before=None, adopted=t is best) for t in first]
    score: Score = (best["fluent_adherence"], best["topic"])
    for t in tried[len(first) :]:
        sc = (t["fluent_adherence"], t["topic"])
        adopted = better(sc, score, n_dev, top)
        out.append(dict(t, best_before=score[0], adopted=adopted))
        if adopted:
            score = sc
        top = max(top, sc[0])
    return out
