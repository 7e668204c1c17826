"""``python -m export.evaluate``: does the personalization work? Sweeps, methods, intervals, report.

One command, three data sets:
- personas: synthetic users with checkable styles (``--styles SPEC``, any spec of documented rules)
  over the shipped input pool. Steering settings are tuned on the DEV split (layer x strength, then
  sites, K, weighting, attention reading, history size); every method is then run once on the TEST
  split with the chosen setting.
- personas-shift: users whose style changes mid-history; tests follow the new style (recency).
- longlamp-mini: the 7 real LongLaMP abstract users (``../shared/data``), or ``--longlamp FILE``;
  ``--lamp QUESTIONS OUTPUTS`` adds a LaMP-4/5 set in the public layout.
Methods: zero-shot, RAG (retrieved history as earlier chat turns), static user-level steering,
a same-norm random-vector control, Fints on the edge runtime (exact and cvec), Fints + RAG, Fints
with a torch-built profile, and the torch reference (HF fp32 + hooks). Profiles are built on the
device (``fints_edge.learn``). Writes results.json, predictions.jsonl, README.md and sweeps.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from export.eval_run import Runner, Setting, UserData, write_history
from export.metrics import TextScorer, paired_bootstrap
from export.personas import DEFAULT_STYLES
from export.styles import Style, load_styles
from fints_edge._cli import cli_main
from fints_edge._paths import default_gguf
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import SITES

LONGLAMP_MINI = Path(__file__).resolve().parents[2] / "shared/data/longlamp_abstract_mini"
LONGLAMP_FILE = "abstract_generation_mini.json"


@dataclass(frozen=True)
class Budget:
    """The size of a run: ``quick`` for ``make eval`` (minutes), ``full`` for the whole grid."""

    users: int
    history: int
    tests: int
    shift_users: int
    layer_fracs: tuple[float, ...]  # layers to sweep, as fractions of the depth
    strengths: tuple[float, ...]
    ks: tuple[int, ...]
    temperatures: tuple[float, ...]
    history_sizes: tuple[int, ...]
    torch_items: int  # test items per user for the (slow) torch reference
    opening_strengths: tuple[float, ...] = (4.0, 8.0, 16.0)
    rag: int = 3
    max_tokens: int = 48


QUICK = Budget(
    users=8,
    history=8,
    tests=6,
    shift_users=4,
    layer_fracs=(0.6, 0.67, 0.73, 0.8),
    strengths=(2.0, 4.0, 8.0),
    ks=(1, 3, 8),
    temperatures=(0.1,),
    history_sizes=(1, 2, 4, 8),
    torch_items=2,
)
FULL = Budget(
    users=16,
    history=16,
    tests=10,
    shift_users=8,
    layer_fracs=(0.33, 0.47, 0.6, 0.67, 0.7, 0.73, 0.77, 0.8, 0.87),
    strengths=(1.0, 2.0, 4.0, 6.0, 8.0, 12.0),
    ks=(1, 3, 5, 10, 16),
    temperatures=(0.05, 0.1, 0.2),
    history_sizes=(1, 2, 4, 8, 16),
    torch_items=4,
)
PERSONA_METHODS = (
    "zero-shot",
    "rag",
    "static",
    "random",
    "fints-cvec",
    "fints-exact",
    "fints+rag",
    "fints-opening",
    "fints-opening+rag",
    "fints-torch-profile",
    "fints-torch",
)
COMPARED_TO = ("zero-shot", "rag", "fints-exact")
SHIFT_METHODS = ("zero-shot", "rag", "fints-exact", "fints-recency")
TEXT_METHODS = ("zero-shot", "rag", "fints-exact", "fints+rag")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------
def persona_users(rows: list[dict]) -> list[UserData]:
    by_user: dict[str, UserData] = {}
    for r in rows:
        u = by_user.setdefault(r["user"], UserData(r["user"], []))
        getattr(u, r["split"]).append(r)
        if r["split"] == "test":
            u.style = r["style"]
    return [u for u in by_user.values() if u.history and u.dev and u.test]


def task_users(tasks: Iterable[Any]) -> list[UserData]:
    """LongLaMP/LaMP tasks (export.datasets.UserTask) as users with one test row each."""
    out = []
    for t in tasks:
        hist = [{"input": h.input, "output": h.output} for h in t.history]
        out.append(UserData(t.user, hist, [], [{"input": t.query, "output": t.target}]))
    return out


# -- profiles (built on the device) --------------------------------------------------------------------
def device_profiles(
    users: Sequence[UserData],
    model: Path,
    layers: Sequence[int],
    folder: Path,
    *,
    reading: str = "output",
    rouge_threshold: float = 0.15,
    tag: str = "",
) -> dict[str, Path]:
    from fints_edge._paths import default_encoder_dir
    from fints_edge.encode import Encoder
    from fints_edge.extract import DeviceExtractor
    from fints_edge.inject import open_steerable
    from fints_edge.learn import Learner

    llm, injector = open_steerable(model, "exact", n_ctx=2048)
    encoder = Encoder(default_encoder_dir())
    paths = {}
    try:
        ex = DeviceExtractor(llm, injector, layers, SITES, reading, "chat")  # type: ignore[arg-type]
        learner = Learner(ex, encoder, rouge_threshold=rouge_threshold)
        for u in tqdm(users, desc=f"profiles{tag}", unit="user"):
            try:
                profile = learner.new_profile(u.items(), opening=True, progress=False)
            except FintsEdgeError as e:
                say(f"skipping {u.user}: {e}")
                continue
            paths[u.user] = profile.save(folder / f"{u.user}{tag}.npz")
    finally:
        llm.close()
    return paths


def torch_profiles(
    users: Sequence[UserData], model: Path, setting: Setting, folder: Path
) -> dict[str, Path]:
    """The same histories built offline with torch (export.build), for the device-vs-torch check."""
    from export.build import BuildOptions, build_profile

    opts = BuildOptions(
        layers=tuple(setting.layers),
        attn_reading=setting.reading,  # type: ignore[arg-type]
        negatives="given",
        progress=False,
    )
    paths = {}
    for u in tqdm(users, desc="torch profiles", unit="user"):
        hist = write_history(u.items(), folder / f"{u.user}-history.jsonl")
        paths[u.user] = folder / f"{u.user}-torch.npz"
        build_profile(model, hist, paths[u.user], opts)
    return paths


# -- scoring ----------------------------------------------------------------------------------------------
class Scoring:
    def __init__(self, styles: dict[str, Style]) -> None:
        self.text = TextScorer()
        self.styles = styles

    def metrics(self, with_style: bool) -> tuple[str, ...]:
        return self.text.metrics + (("adherence",) if with_style else ())

    def __call__(self, pred: dict) -> dict:
        pred.update(self.text(pred["prediction"], pred["reference"]))
        style = self.styles.get(pred.get("style") or "")
        if style is not None:
            pred["adherence"] = float(
                bool(pred["prediction"]) and style.adheres(pred["prediction"])
            )
        return pred


def run_rows(
    runner: Runner,
    profiles: dict[str, Path],
    users: Sequence[UserData],
    split: str,
    method: str,
    setting: Setting,
    scoring: Scoring,
    *,
    limit: int | None = None,
    profile_for: Callable[[str], Path] | None = None,
    desc: str = "",
) -> list[dict]:
    out = []
    todo = [(u, r) for u in users if u.user in profiles for r in getattr(u, split)[:limit]]
    current = None
    for n, (u, row) in enumerate(tqdm(todo, desc=desc or method, unit="answer", leave=False)):
        path = profile_for(u.user) if profile_for else profiles[u.user]
        if path != current:
            runner.use(path)
            current = path
        got = runner.answer(method, row["input"], setting, seed=n)
        pred = {
            "user": u.user,
            "style": row.get("style"),
            "method": method,
            "split": split,
            "input": row["input"],
            "reference": row["output"],
            **got,
        }
        out.append(scoring(pred))
    return out


def mean_of(preds: list[dict], metric: str) -> float:
    vals = [p[metric] for p in preds if p.get(metric) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(preds: list[dict], methods: Sequence[str], metrics: Sequence[str],
              bootstrap: int, seed: int) -> dict:  # fmt: skip
    """Per method: means, n, cost, and paired-bootstrap differences to zero-shot and to RAG."""
    by: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
    for p in preds:
        by[p["method"]][(p["user"], p["input"])] = p
    table: dict[str, dict] = {}
    for method in methods:
        if method not in by:
            continue
        keys = sorted(by[method])
        rows = [by[method][k] for k in keys]
        tokens = [r["prompt_tokens"] for r in rows if r.get("prompt_tokens") is not None]
        entry: dict[str, Any] = {
            "n": len(rows),
            "prompt_tokens": float(np.mean(tokens)) if tokens else None,
            "first_token_ms": float(np.median([r["first_token_ms"] for r in rows])),
        }
        for metric in metrics:
            vals = np.array([r[metric] for r in rows], dtype=np.float64)
            entry[metric] = float(vals.mean())
            for other in COMPARED_TO:
                if other == method or other not in by or not all(k in by[other] for k in keys):
                    continue
                ref = np.array([by[other][k][metric] for k in keys], dtype=np.float64)
                diff, lo, hi = paired_bootstrap(vals, ref, bootstrap, seed)
                entry[f"{metric}_vs_{other}"] = {"diff": diff, "ci95": [lo, hi]}
        table[method] = entry
    return table


def by_style(preds: list[dict], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for method in methods:
        groups: dict[str, list[float]] = defaultdict(list)
        for p in preds:
            if p["method"] == method and "adherence" in p:
                groups[p["style"]].append(p["adherence"])
        for style, vals in groups.items():
            out[style][method] = float(np.mean(vals))
    return dict(out)


def is_opening_style(style: Style) -> bool:
    """Styles decided by the first answer words (a prefix), which answer-averaged signals miss."""
    return any(rule.name == "prefix" for rule in style.rules)


def style_groups(preds: list[dict], styles: dict[str, Style], bootstrap: int, seed: int) -> dict:
    """The methods summarised separately on opening styles and on token-level styles."""
    out = {}
    for group, want in (("opening", True), ("token-level", False)):
        rows = [p for p in preds if p.get("style") in styles
                and is_opening_style(styles[p["style"]]) == want]  # fmt: skip
        if rows:
            out[group] = {
                "styles": sorted({p["style"] for p in rows}),
                "methods": summarize(rows, PERSONA_METHODS, ["adherence"], bootstrap, seed),
            }
    return out


# -- the sweep (dev split) ------------------------------------------------------------------------------------
def _score_of(preds: list[dict]) -> tuple[float, float]:
    return (mean_of(preds, "adherence"), mean_of(preds, "rougeL"))


def better(new: tuple[float, float], old: tuple[float, float], n: int, top: float) -> bool:
    """Higher adherence wins; within one dev answer of the best adherence seen so far (``top``)
    it is a tie, which the higher ROUGE-L (content kept) breaks. Ties are measured against the
    best seen, not the current choice, so a chain of ties cannot drift adherence down."""
    tol = 1.0 / max(n, 1) + 1e-9
    if new[0] > top + tol:
        return True
    return new[0] >= top - tol and (new[0] > old[0] + tol or new[1] > old[1])


def sweep(
    runner: Runner,
    profiles: dict[str, Path],
    residual: Callable[[Sequence[int]], dict[str, Path]],
    users: Sequence[UserData],
    plan: Budget,
    n_layer: int,
    scoring: Scoring,
    all_preds: list[dict],
) -> tuple[Setting, Setting, list[dict]]:
    """Coordinate ascent on dev adherence (ties: ROUGE-L): layer x strength, then sites, K,
    weighting and the attention reading. Every tried setting is recorded."""
    tried: list[dict] = []

    def score(s: Setting, stage: str, profs: dict[str, Path] | None = None) -> tuple[float, float]:
        preds = run_rows(runner, profs or profiles, users, "dev", "fints-exact", s, scoring,
                         desc=f"dev {stage}: {s.label()}")  # fmt: skip
        for p in preds:
            p["setting"] = s.label()
        all_preds.extend(preds)
        adh, rl = _score_of(preds)
        tried.append({"stage": stage, "setting": s.to_json(), "adherence": adh, "rougeL": rl,
                      "n": len(preds)})  # fmt: skip
        say(f"  dev {stage:<8} {s.label():<48} adherence {adh:.3f}  ROUGE-L {rl:.3f}")
        return adh, rl

    n_dev = sum(len(u.dev) for u in users if u.user in profiles)
    layers = sorted({round(f * n_layer) for f in plan.layer_fracs})
    grid = [Setting((j,), st) for j in layers for st in plan.strengths]
    scored = {s: score(s, "layer") for s in grid}
    top = max(sc[0] for sc in scored.values())
    # Among the settings tied with the top adherence, the one that keeps the most content.
    tied = [s for s in grid if top - scored[s][0] <= 1.0 / max(n_dev, 1) + 1e-9]
    best = max(tied, key=lambda s: scored[s][1])
    best_score = scored[best]

    def consider(candidates: Iterable[Setting], stage: str, profs=None) -> None:
        nonlocal best, best_score, top
        for s in candidates:
            sc = score(s, stage, profs)
            if better(sc, best_score, n_dev, top):
                best, best_score = s, sc
            top = max(top, sc[0])

    consider([replace(best, sites=(site,)) for site in SITES], "sites")
    consider([replace(best, k=k) for k in plan.ks if k != best.k], "k")
    consider([replace(best, temperature=t) for t in plan.temperatures], "weights")
    residual_profiles = residual(best.layers)
    before = best
    consider([replace(best, reading="residual")], "reading", residual_profiles)
    if best.reading == "residual" and before.reading != "residual":
        profiles.clear()
        profiles.update(residual_profiles)  # the chosen reading's profiles from here on
    # Opening signals on top of the chosen setting: the best opening strength, better or not.
    best_opening, opening_score = None, (-1.0, -1.0)
    for o in plan.opening_strengths:
        s = replace(best, opening_strength=o)
        sc = score(s, "opening")
        if best_opening is None or better(sc, opening_score, n_dev, opening_score[0]):
            best_opening, opening_score = s, sc
    assert best_opening is not None
    return best, best_opening, tried


def history_sizes(
    runner: Runner,
    users: Sequence[UserData],
    profiles: dict[str, Path],
    setting: Setting,
    sizes: Sequence[int],
    scoring: Scoring,
    folder: Path,
) -> list[dict]:
    """Dev adherence of Fints and RAG with only the first n history items (data efficiency)."""
    from fints_edge.profile import Profile

    out = []
    for n in sizes:
        subset = {}
        for u, path in profiles.items():
            p = Profile.load(path)
            if p.n_items >= n:
                subset[u] = p.take(range(n)).save(folder / f"{u}-first{n}.npz")
        for method in ("fints-exact", "rag"):
            s = setting if method == "fints-exact" else replace(setting, k=min(setting.k, n))
            preds = run_rows(runner, subset, users, "dev", method, s, scoring,
                             desc=f"history {n}: {method}")  # fmt: skip
            adh, rl = _score_of(preds)
            out.append({"history": n, "method": method, "adherence": adh, "rougeL": rl,
                        "n": len(preds)})  # fmt: skip
            say(f"  history {n:>2} {method:<12} adherence {adh:.3f}")
    return out


# -- the command ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--full", action="store_true", help="the whole grid (hours), not the quick run")
    p.add_argument("--styles", type=Path, default=DEFAULT_STYLES, help="style spec JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, help="persona users (default: quick 8, full 16)")
    p.add_argument("--history", type=int, help="history items per user (quick 8, full 16)")
    p.add_argument("--tests", type=int, help="dev AND test items per user (quick 6, full 10)")
    p.add_argument("--model", type=Path, help="GGUF (default: the embedded SmolLM2 Q4_1)")
    p.add_argument("--longlamp", type=Path, help=f"LongLaMP JSON (default: {LONGLAMP_MINI.name})")
    p.add_argument("--lamp", type=Path, nargs=2, metavar=("QUESTIONS", "OUTPUTS"),
                   help="a LaMP-4/5 set in the public layout")  # fmt: skip
    p.add_argument("--skip", nargs="+", default=[], choices=["shift", "longlamp", "torch"],
                   help="leave parts out")  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("docs/eval"))
    return p


@cli_main("interrupted; nothing was written to the output folder")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = FULL if args.full else QUICK
    plan = replace(
        plan,
        users=args.users or plan.users,
        history=args.history or plan.history,
        tests=args.tests or plan.tests,
    )
    command = "python -m export.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    if min(plan.users, plan.history, plan.tests) < 1:
        raise FintsEdgeError("--users, --history and --tests must be at least 1")
    styles = load_styles(args.styles)  # a bad spec fails before any model loads
    model = args.model or default_gguf()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fints-eval-") as d:
        results, preds = evaluate(args, plan, styles, model, Path(d))
    from export.eval_report import plot, render

    results |= {"command": command.strip(), "seconds": time.perf_counter() - t0}
    results = json.loads(json.dumps(results))  # the report reads exactly what the file holds
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "predictions.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8"
    )
    plot(results, args.out / "sweeps.png")
    preds = json.loads(json.dumps(preds))
    (args.out / "README.md").write_text(render(results, preds), encoding="utf-8")
    say(f"wrote {args.out}/results.json, README.md, sweeps.png ({results['seconds'] / 60:.1f} min)")
    return 0


def evaluate(
    args: argparse.Namespace, plan: Budget, styles: list[Style], model: Path, work: Path
) -> tuple[dict, list[dict]]:
    from export.personas import load_pool, make_dataset
    from fints_edge.layers import default_layer
    from fints_edge.model import n_layers, open_llama

    style_map = {s.name: s for s in styles}
    scoring = Scoring(style_map)
    llm = open_llama(model, n_ctx=64)
    n_layer = n_layers(llm)
    llm.close()
    layers = sorted({round(f * n_layer) for f in plan.layer_fracs} | {default_layer(n_layer)})
    inputs = load_pool()
    results: dict[str, Any] = {
        "model": str(model),
        "plan": plan.__dict__ | {"styles": str(args.styles), "seed": args.seed},
        "meteor": scoring.text.meteor_problem or "available",
        "datasets": {},
    }
    preds: list[dict] = []

    say(
        f"personas: {plan.users} users x ({plan.history} history, {plan.tests} dev, {plan.tests} test)"
    )
    rows = make_dataset(inputs, styles, model, users=plan.users, history=plan.history,
                        tests=plan.tests, seed=args.seed, shift=False)  # fmt: skip
    users = persona_users(rows)
    profiles = device_profiles(users, model, layers, work)
    if not profiles:  # every user was skipped: nothing to steer with, nothing to compare
        raise FintsEdgeError(
            f"{model}: no profile could be built for any of the {len(users)} users (the "
            "'skipping' lines above say why); fix that first, e.g. try "
            f"`python -m fints_edge.learn --model {model} --history H.jsonl --out me.npz`"
        )
    runner = Runner(model, next(iter(profiles.values())), max_tokens=plan.max_tokens, rag=plan.rag)
    try:
        residual_cache: dict[tuple[int, ...], dict[str, Path]] = {}

        def residual(at: Sequence[int]) -> dict[str, Path]:
            key = tuple(at)
            if key not in residual_cache:
                residual_cache[key] = device_profiles(
                    users, model, at, work, reading="residual", tag="-residual"
                )
            return residual_cache[key]

        say("dev sweep (Fints exact):")
        zero_dev = run_rows(runner, profiles, users, "dev", "zero-shot", Setting((layers[0],), 0),
                            scoring, desc="dev zero-shot")  # fmt: skip
        rag_dev = run_rows(runner, profiles, users, "dev", "rag", Setting((layers[0],), 0),
                           scoring, desc="dev rag")  # fmt: skip
        preds += zero_dev + rag_dev
        best, best_opening, tried = sweep(
            runner, profiles, residual, users, plan, n_layer, scoring, preds
        )
        say(f"chosen on dev: {best.label()}; with openings: {best_opening.label()}")
        sizes = history_sizes(runner, users, profiles, best,
                              [n for n in plan.history_sizes if n <= plan.history], scoring, work)  # fmt: skip
        results["sweep"] = {
            "split": "dev",
            "zero-shot": _score_of(zero_dev),
            "rag": _score_of(rag_dev),
            "tried": tried,
            "chosen": best.to_json(),
            "chosen_label": best.label(),
            "chosen_opening_label": best_opening.label(),
            "history_sizes": sizes,
        }

        say(f"test split, every method, {best.label()}:")
        test_preds: list[dict] = []
        torch_profs: dict[str, Path] = {}
        for method in PERSONA_METHODS:
            if method.startswith("fints-torch") and "torch" in args.skip:
                continue
            if method == "fints-torch-profile":
                torch_profs = torch_profiles(users, model, best, work)
                got = run_rows(runner, torch_profs, users, "test", "fints-exact", best, scoring,
                               desc=method)  # fmt: skip
                for p in got:
                    p["method"] = method
            else:
                limit = plan.torch_items if method == "fints-torch" else None
                s = best_opening if method.startswith("fints-opening") else best
                got = run_rows(runner, profiles, users, "test", method, s, scoring, limit=limit)
            test_preds += got
        metrics = scoring.metrics(True)
        results["datasets"]["personas"] = {
            "users": len(users),
            "split": "test",
            "setting": best.label(),
            "methods": summarize(test_preds, PERSONA_METHODS, metrics, args.bootstrap, args.seed),
            "by_style": by_style(test_preds, PERSONA_METHODS),
            "style_groups": style_groups(test_preds, style_map, args.bootstrap, args.seed),
        }
        preds += test_preds

        if "shift" not in args.skip:
            preds += _shift(args, plan, styles, model, work, runner, best, layers, scoring, results)
        if "longlamp" not in args.skip:
            preds += _text_sets(args, model, work, runner, best, scoring, results)
    finally:
        runner.close()
    return results, preds


def _shift(args, plan, styles, model, work, runner, best, layers, scoring, results) -> list[dict]:
    say(f"personas-shift: {plan.shift_users} users whose style changes mid-history")
    from export.personas import load_pool, make_dataset

    rows = make_dataset(load_pool(), styles, model, users=plan.shift_users, history=plan.history,
                        tests=plan.tests, seed=args.seed + 1, shift=True)  # fmt: skip
    users = persona_users(rows)
    profiles = device_profiles(users, model, layers, work, tag="-shift")
    # Timestamps are a day apart: a half-life of a quarter of the history favours its second half.
    recent = replace(best, half_life_days=max(1.0, plan.history / 4))
    preds = []
    for method in SHIFT_METHODS:
        s = recent if method == "fints-recency" else best
        preds += run_rows(
            runner, profiles, users, "test", method, s, scoring, desc=f"shift {method}"
        )
    results["datasets"]["personas-shift"] = {
        "users": len(users),
        "split": "test",
        "setting": recent.label(),
        "methods": summarize(
            preds, SHIFT_METHODS, scoring.metrics(True), args.bootstrap, args.seed
        ),
    }
    for p in preds:
        p["dataset"] = "personas-shift"
    return preds


def _text_sets(args, model, work, runner, best, scoring, results) -> list[dict]:
    from export.datasets import load_lamp, load_longlamp

    sets: list[tuple[str, list[UserData], float]] = []
    path = args.longlamp or LONGLAMP_MINI / LONGLAMP_FILE
    if path.is_file():
        sets.append(("longlamp-mini", task_users(load_longlamp(path)), 0.2))
    else:
        say(f"{path}: not found; LongLaMP skipped (pass --longlamp FILE)")
    if args.lamp:
        sets.append(("lamp", task_users(load_lamp(*args.lamp)), 0.15))
    preds: list[dict] = []
    old_tokens = runner.exact.config.max_tokens
    for name, users, threshold in sets:
        say(
            f"{name}: {len(users)} users; negatives are the model's own answers (ROUGE-L < {threshold})"
        )
        profiles = device_profiles(users, model, best.layers, work, rouge_threshold=threshold,
                                   tag=f"-{name}", reading=best.reading)  # fmt: skip
        runner.exact.configure(max_tokens=160 if "longlamp" in name else 32)
        got: list[dict] = []
        for method in TEXT_METHODS:
            got += run_rows(
                runner, profiles, users, "test", method, best, scoring, desc=f"{name} {method}"
            )
        runner.exact.configure(max_tokens=old_tokens)
        for p in got:
            p["dataset"] = name
        results["datasets"][name] = {
            "users": len(profiles),
            "split": "test",
            "setting": best.label(),
            "methods": summarize(
                got, TEXT_METHODS, scoring.metrics(False), args.bootstrap, args.seed
            ),
        }
        preds += got
    return preds


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
