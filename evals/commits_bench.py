"""The ``commits`` benchmark in the evaluation: real people's commit subjects, the paper's
configuration (top-k history in the prompt AND steering) as the central comparison.

Per author (evals/data/commits): on-device profiles from the history split; the fluency rule
calibrated on this benchmark's own dev baselines (zero-shot, rag-1, rag-3); the steering setting
chosen on its own dev split, separately for steering alone (``fints-exact``) and for steering on
top of RAG (``fints+rag-k``), by ROUGE-L of fluent answers (a broken answer scores 0); then every
method once on the test split. The answer is its first line. Scores: ROUGE-1/L F against what
the author wrote, and style agreement (prefix, first-letter case, trailing period as in gold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from evals.calibrated import CALIBRATED_METHODS, CALIBRATED_PAIRS, calibrated_answers, shipped
from evals.commits import load_commits
from evals.run import Setting, UserData
from evals.scoring import summarize
from fints_edge.agreement import STYLE, first_line, style_agreement
from fints_edge.config import DEFAULTS
from fints_edge.layers import candidate_layers
from fints_edge.profile import Profile

if TYPE_CHECKING:
    from evals.evaluate import Evaluation

NAME = "commits"
METHODS = ("zero-shot", "rag-1", "rag-3", "static", "random", "fints-exact", "fints+rag-1",
           "fints+rag-3")  # fmt: skip
BASELINES = ("zero-shot", "rag-1", "rag-3")
# (method, compared with): the paper's claim first, then steering alone at 0 prompt tokens
PAIRS = (("fints+rag-1", "rag-1"), ("fints+rag-3", "rag-3"), ("fints-exact", "zero-shot"),
         ("fints+rag-1", "rag-3"), ("fints-exact", "static"), ("fints-exact", "random"))  # fmt: skip

METRICS = ("rouge1", "rougeL", "style", *STYLE, "fluent", "rougeL_fluent", "repetition", "topic")
MAX_TOKENS = 32  # a subject line; the answer is cut at its first line anyway
QUICK_USERS = 6  # one author per repository, round-robin; --full: every author
# dev candidates around the product default: strength (residual units) x prompt strength
DEV_STRENGTHS = (0.0625, 0.125, 0.25)
DEV_PROMPT = (1.0, 0.0)
# steering alone also at these strengths (prompt strength 1): with zero-shot as strength 0, the
# model's steerability curve (docs/eval/steerability.png: where steering starts to move the
# answer toward the author and where it breaks the text), and candidates like the others
STEERABILITY_STRENGTHS = (0.03125, 0.5, 1.0)
# Whether a technique widens the window: steering alone where the plain curve nears its edge
# or breaks, each technique at the same strength (issue 24). keep-norm: each steered hidden
# state rescaled to its unsteered norm (a rotation toward the direction); spread: the same
# strength divided over the profile's candidate layers (fints_edge.layers.candidate_layers);
# gate: the novelty gate (query-history similarity) at :func:`history_gate`'s thresholds.
WIDENING_STRENGTHS = (0.25, 0.5, 1.0)
GATE_PERCENTILES = (25, 75)  # of the history items' similarity to their nearest other item


def candidates(n_layer: int) -> list[Setting]:
    return _around(n_layer, [(s, p) for p in DEV_PROMPT for s in DEV_STRENGTHS])


def steerability_settings(n_layer: int) -> list[Setting]:
    """Steering alone at the steerability strengths (prompt strength 1): measured on dev for
    the curve, not candidates (the dev choice stays the one the candidates make)."""
    return _around(n_layer, [(s, 1.0) for s in STEERABILITY_STRENGTHS])


def widening_settings(
    n_layer: int, gate: tuple[float, float] | None = None
) -> list[tuple[str, float, Setting]]:
    """(technique, strength, setting) for each widening technique at each strength: measured
    on dev beside the plain curve, never candidates. ``gate``: (floor, full) similarities of
    the novelty gate (:func:`history_gate`); None leaves the gate out."""
    spread = tuple(candidate_layers(n_layer))
    share, out = 1.0 / len(spread), []
    for s in _around(n_layer, [(x, 1.0) for x in WIDENING_STRENGTHS]):
        out += [("keep-norm", s.strength, replace(s, preserve_norm=True)),
                ("spread", s.strength, replace(s, layers=spread, strength=s.strength * share,
                                                opening_strength=s.opening_strength * share))]  # fmt: skip
        if gate is not None:
            out.append(("gate", s.strength, replace(s, sim_floor=gate[0], sim_full=gate[1])))
    return out


def history_gate(keys: Sequence[np.ndarray]) -> tuple[float, float]:
    """The novelty gate's (floor, full) for these users, from their histories alone: the
    :data:`GATE_PERCENTILES` of each history item's cosine similarity to its nearest OTHER item
    of the same user (``keys``: each user's L2-normalised encoder keys), pooled, to 2 decimals.
    So an input as unlike the history as its least typical quarter is not steered, and one as
    close as its most typical quarter is steered fully; no dev or test item is looked at."""
    nearest = []
    for k in keys:
        k = np.asarray(k, np.float32)
        if len(k) < 2:
            continue
        sim = k @ k.T
        np.fill_diagonal(sim, -np.inf)
        nearest.append(sim.max(axis=1))
    if not nearest:
        raise ValueError("the novelty gate needs a user with two or more history items")
    lo, hi = np.percentile(np.concatenate(nearest), GATE_PERCENTILES)
    return round(float(lo), 2), round(float(hi), 2)


def _around(n_layer: int, grid: Sequence[tuple[float, float]]) -> list[Setting]:
    """The chat's global default at each (strength, prompt strength)."""
    base = shipped(n_layer)
    out = [replace(base, strength=s, opening_strength=s * DEFAULTS.opening_scale,
                   prompt_strength=p) for s, p in grid]  # fmt: skip
    return sorted(set(out), key=lambda s: (-s.prompt_strength, s.strength))


def pick_users(n: int | None) -> list[UserData]:
    """``n`` authors taken round-robin over the repositories (all with ``None``)."""
    users = load_commits()
    by_repo: dict[str, list[str]] = {}
    for name, u in users.items():
        by_repo.setdefault(u.repo, []).append(name)
    order: list[str] = []
    for i in range(max(len(v) for v in by_repo.values())):
        order += [names[i] for _, names in sorted(by_repo.items()) if i < len(names)]
    out = []
    for name in order[:n] if n else order:
        u = users[name]
        history = [{"input": h.input, "output": h.output, "timestamp": h.timestamp}
                   for h in u.history]  # fmt: skip
        out.append(UserData(name, history, [{"input": i, "output": o} for i, o in u.dev],
                            [{"input": i, "output": o} for i, o in u.test]))  # fmt: skip
    return out


def first_lines(preds: list[dict]) -> list[dict]:
    """The answer is its first line (the rest is kept as ``raw``)."""
    for p in preds:
        if "raw" not in p:
            p["raw"] = p["prediction"]
            p["prediction"] = first_line(p["prediction"])
    return preds


def score(ev: Evaluation, preds: list[dict], unsteered: dict) -> list[dict]:
    """ROUGE, fluency and style agreement of answers already cut to their first line (the
    unsteered answers the topic signal compares with are first lines too)."""
    ev.scoring.score(preds, unsteered)
    for p in preds:
        agree = style_agreement(p["prediction"], p["reference"])
        for k in STYLE:
            p[k] = float(agree[k])
        p["style"] = float(np.mean([p[k] for k in STYLE]))
        if "fluent" in p:
            p["rougeL_fluent"] = p["rougeL"] * p["fluent"]
    return preds


def _dev_scores(preds: Sequence[dict]) -> dict[str, float]:
    """What the dev split says of one setting: the objective, its parts, the habits kept."""
    sc = _objective(preds)
    return {"rougeL_fluent": sc[0], "fluent": sc[1],
            "rougeL": float(np.mean([p["rougeL"] for p in preds])),
            "style": float(np.mean([p["style"] for p in preds])), "n": len(preds)}  # fmt: skip


def _objective(preds: Sequence[dict]) -> tuple[float, float]:
    return (float(np.mean([p["rougeL_fluent"] for p in preds])),
            float(np.mean([p["fluent"] for p in preds])))  # fmt: skip


def commits_benchmark(ev: Evaluation, results: dict) -> list[dict]:
    from evals.evaluate import say

    users = pick_users(None if ev.args.full else (ev.args.commit_users or QUICK_USERS))
    ev.build_profiles(users, NAME, ev.layers)
    assert ev.runner is not None
    old_rule, old_tokens = ev.scoring.rule, ev.runner.exact.config.max_tokens
    ev.runner.exact.configure(max_tokens=MAX_TOKENS)
    try:
        neutral = Setting((ev.layers[0],), 0.0)
        dev: list[dict] = []
        for method in BASELINES:
            dev += ev.answer(NAME, users, "dev", method, neutral)
        ev.scoring.rule = None
        first_lines(dev)
        score(ev, dev, ev.unsteered(dev))
        rule = ev.scoring.calibrate(dev)
        score(ev, dev, ev.unsteered(dev))  # judged by the rule now: fluent, ROUGE-L of fluent
        say(f"{NAME}: fluency rule {rule}")
        baselines = {m: _dev_scores([p for p in dev if p["method"] == m]) for m in BASELINES}
        chosen, tried = {}, []

        def measure(family: str, method: str, s: Setting, **note: Any) -> list[dict]:
            """One setting's dev answers, scored and recorded in ``tried`` (with ``note``)."""
            got = first_lines(ev.answer(NAME, users, "dev", method, s,
                                        desc=f"{NAME} dev {method} {s.label()}"))  # fmt: skip
            score(ev, got, ev.unsteered(dev))
            tried.append({"family": family, "method": method, "label": s.label(),
                          "setting": s.to_json(), **note, **_dev_scores(got)})  # fmt: skip
            dev.extend(got)
            return got

        for family, method in (("steer", "fints-exact"), ("rag", "fints+rag-1")):
            best, best_score = None, (-1.0, -1.0)
            for s in candidates(ev.n_layer):
                sc = _objective(measure(family, method, s))
                if sc > best_score:
                    best, best_score = s, sc
            if family == "steer":  # the curve's other points (docs/eval/steerability.png)
                for s in steerability_settings(ev.n_layer):
                    measure("steerability", method, s)
                gate = history_gate([Profile.load(ev.profiles[u.user]).keys for u in users
                                     if u.user in ev.profiles])  # fmt: skip
                for technique, strength, s in widening_settings(ev.n_layer, gate):
                    measure("widening", method, s, technique=technique, strength=strength)
            assert best is not None
            chosen[family] = best
            say(f"{NAME}: chosen on dev for {method}: {best.label()} (ROUGE-L of fluent "
                f"answers {best_score[0]:.3f})")  # fmt: skip
        test: list[dict] = []
        for method in METHODS:
            s = chosen["rag"] if method.startswith("fints+rag") else chosen["steer"]
            test += ev.answer(NAME, users, "test", method, s)
        got, calibration = calibrated_answers(ev, NAME, users)
        test += got
        first_lines(test)
        score(ev, test, ev.unsteered(test))
    finally:
        ev.runner.exact.configure(max_tokens=old_tokens)
        ev.scoring.rule = old_rule
    table = summarize(test, (*METHODS, *CALIBRATED_METHODS), METRICS, ev.args.bootstrap,
                      ev.args.seed, primary=("rouge1", "rougeL", "style"),
                      pairs=PAIRS + CALIBRATED_PAIRS)  # fmt: skip
    results["benchmarks"][NAME] = {
        "users": len([u for u in users if u.user in ev.profiles]),
        "items": {"history": sum(len(u.history) for u in users),
                  "dev": sum(len(u.dev) for u in users), "test": sum(len(u.test) for u in users)},
        "split": "test",
        "fluency_rule": rule.to_json(),
        "dev": {"tried": tried, "baselines": baselines,
                "chosen": {f: s.to_json() for f, s in chosen.items()},
                "chosen_label": {f: s.label() for f, s in chosen.items()},
                "shipped_label": shipped(ev.n_layer).label()},
        "setting": {f: s.label() for f, s in chosen.items()},
        "methods": table,
        "examples": examples(test, users),
        "calibration": calibration,
        "errors": [{"method": p["method"], "user": p["user"], "error": p["error"]}
                   for p in test if p.get("error")],
    }  # fmt: skip
    return dev + test


def examples(test: Sequence[dict], users: Sequence[UserData], per_user: int = 1,
             n_users: int = 4) -> list[dict[str, Any]]:  # fmt: skip
    """For a few authors, one test commit: gold and what each method wrote."""
    shown = ("zero-shot", "rag-1", "fints+rag-1", "fints-exact")
    by = {(p["user"], p["input"], p["method"]): p["prediction"] for p in test}
    out = []
    for u in users[:n_users]:
        for row in u.test[:per_user]:
            out.append({"user": u.user, "gold": row["output"],
                        **{m: by.get((u.user, row["input"], m)) for m in shown}})  # fmt: skip
    return out
