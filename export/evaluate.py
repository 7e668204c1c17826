"""``python -m export.evaluate --data DIR``: every method through one harness on a persona dataset.

Methods: zero-shot; RAG (top-k history as earlier chat turns); static user-level steering (mean of
all the user's signals, one vector, CAA-style); Fints on the edge runtime (cvec and exact modes);
Fints + RAG. Metrics: ROUGE-1/ROUGE-L F1 against the user's styled reference, and style adherence
(the spec's checkers). Differences to zero-shot and to RAG get paired-bootstrap 95% intervals.
Reports use the TEST split only; the dev split is for tuning.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer
from tqdm import tqdm

from export.styles import Style, load_styles
from fints_edge._paths import default_gguf
from fints_edge.errors import FintsEdgeError

METHODS = ("zero-shot", "rag", "static", "fints-cvec", "fints-exact", "fints+rag")
METRICS = ("rouge1", "rougeL", "adherence")


@dataclass(frozen=True)
class EvalOptions:
    strength: float = 4.0  # calibration.md's first probe on SmolLM2-135M, not yet swept
    k: int = 5
    rag: int = 3
    max_tokens: int = 48
    split: str = "test"
    users: int | None = None  # None = every user in the dataset
    seed: int = 0
    bootstrap: int = 2000


def load_dataset(folder: Path) -> tuple[dict[str, list[dict]], dict[str, Style]]:
    path = folder / "dataset.jsonl"
    if not path.is_file():
        raise FintsEdgeError(
            f"{path}: missing; make one with `python -m export.personas --out {folder}`"
        )
    by_user: dict[str, list[dict]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_user[row["user"]].append(row)
    styles = {s.name: s for s in load_styles(folder / "styles.json")}
    return dict(by_user), styles


def _predict_user(rows: list[dict], model: Path, opts: EvalOptions, workdir: Path) -> list[dict]:
    """Build the user's profile from their history, then answer their eval inputs with every method."""
    from export.build import BuildOptions, build_profile
    from fints_edge.engine import Engine, EngineConfig, Plan

    history = [r for r in rows if r["split"] == "history"]
    evals = [r for r in rows if r["split"] == opts.split]
    hist_path = workdir / "history.jsonl"
    hist_path.write_text(
        "".join(
            json.dumps(
                {k: r[k] for k in ("input", "output", "rejected", "timestamp") if r[k] is not None}
            )
            + "\n"
            for r in history
        )
    )
    profile_path = workdir / "me.npz"
    build_profile(model, hist_path, profile_path, BuildOptions(negatives="given", progress=False))
    out = []

    def record(method: str, row: dict, text: str, prompt_tokens: int, ms: float) -> None:
        out.append(
            {
                "user": row["user"],
                "style": row["style"],
                "method": method,
                "input": row["input"],
                "reference": row["output"],
                "prediction": text,
                "prompt_tokens": prompt_tokens,
                "first_token_ms": ms,
            }
        )

    base = EngineConfig(k=opts.k, strength=opts.strength, max_tokens=opts.max_tokens, rag=0)
    with Engine(model, profile_path, base) as e:
        static = e.profile.user_vector() * opts.strength  # [S, L, n_embd]
        for row in evals:
            text = row["input"]
            plan = e.plan(text)
            runs = [
                ("zero-shot", False, plan, 0),
                ("rag", False, plan, opts.rag),
                ("static", True, Plan(static, [], 1.0), 0),
                ("fints-cvec", True, plan, 0),
            ]
            for method, steer, p, rag in runs:
                e.configure(rag=rag)
                r = e.reply(text, steer=steer, plan=p)
                record(method, row, r.text, r.prompt_tokens, r.timings_ms["first_token"])
    with Engine(
        model,
        profile_path,
        EngineConfig(mode="exact", k=opts.k, strength=opts.strength, max_tokens=opts.max_tokens),
    ) as e:
        for row in evals:
            for method, rag in (("fints-exact", 0), ("fints+rag", opts.rag)):
                e.configure(rag=rag)
                r = e.reply(row["input"])
                record(method, row, r.text, r.prompt_tokens, r.timings_ms["first_token"])
    return out


def score(predictions: list[dict], styles: dict[str, Style]) -> None:
    """Adds rouge1, rougeL and adherence to every prediction, in place."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for p in predictions:
        s = scorer.score(p["reference"], p["prediction"])
        p["rouge1"], p["rougeL"] = s["rouge1"].fmeasure, s["rougeL"].fmeasure
        p["adherence"] = (
            float(styles[p["style"]].adheres(p["prediction"])) if p["prediction"] else 0.0
        )


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int, seed: int) -> tuple[float, float, float]:
    """Mean of a - b and its 95% interval, resampling the paired items."""
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(predictions: list[dict], opts: EvalOptions) -> dict:
    by_method: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
    for p in predictions:
        by_method[p["method"]][(p["user"], p["input"])] = p
    keys = sorted(by_method["zero-shot"])
    table: dict[str, dict] = {}
    for method in METHODS:
        rows = [by_method[method][k] for k in keys]
        entry: dict = {
            "n": len(rows),
            "prompt_tokens": float(np.mean([r["prompt_tokens"] for r in rows])),
            "first_token_ms": float(np.median([r["first_token_ms"] for r in rows])),
        }
        for metric in METRICS:
            vals = np.array([r[metric] for r in rows])
            entry[metric] = float(vals.mean())
            for other in ("zero-shot", "rag"):
                if other != method:
                    ref = np.array([by_method[other][k][metric] for k in keys])
                    mean, lo, hi = paired_bootstrap(vals, ref, opts.bootstrap, opts.seed)
                    entry[f"{metric}_vs_{other}"] = {"diff": mean, "ci95": [lo, hi]}
        table[method] = entry
    return table


def render(results: dict) -> str:
    lines = [
        "# Evaluation",
        "",
        f"Generated by `{results['command']}` from `results.json`; do not edit by hand.",
        "",
    ]
    for name, data in results["datasets"].items():
        t = data["methods"]
        lines += [
            f"## {name} ({data['users']} users, split `{data['split']}`, n = {t['zero-shot']['n']} per method)",
            "",
            "| method | ROUGE-1 | ROUGE-L | adherence | adherence vs zero-shot [95% CI] | "
            "adherence vs RAG [95% CI] | prompt tokens | first token ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in METHODS:
            e = t[m]

            def ci(key: str, e: dict = e) -> str:
                if key not in e:
                    return ""
                return f"{e[key]['diff']:+.3f} [{e[key]['ci95'][0]:+.3f}, {e[key]['ci95'][1]:+.3f}]"

            lines.append(
                f"| {m} | {e['rouge1']:.3f} | {e['rougeL']:.3f} | {e['adherence']:.3f} | "
                f"{ci('adherence_vs_zero-shot')} | {ci('adherence_vs_rag')} | {e['prompt_tokens']:.0f} | "
                f"{e['first_token_ms']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--data", type=Path, required=True, help="a folder written by `python -m export.personas`"
    )
    p.add_argument("--model", type=Path, help="GGUF to evaluate (default: the embedded SmolLM2)")
    p.add_argument("--users", type=int, help="evaluate only the first N users")
    p.add_argument("--strength", type=float, default=EvalOptions.strength)
    p.add_argument("--split", choices=["dev", "test"], default="test")
    p.add_argument("--out", type=Path, default=Path("docs/eval"))
    args = p.parse_args(argv)
    opts = EvalOptions(strength=args.strength, split=args.split, users=args.users)
    try:
        by_user, styles = load_dataset(args.data)
        model = args.model or default_gguf()
        users = sorted(by_user)[: opts.users]
        predictions: list[dict] = []
        t0 = time.perf_counter()
        for user in tqdm(users, desc="users", unit="user"):
            with tempfile.TemporaryDirectory() as d:
                predictions += _predict_user(by_user[user], model, opts, Path(d))
    except FintsEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    score(predictions, styles)
    results = {
        "command": "python -m export.evaluate "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "options": vars(opts) | {"model": str(model)},
        "seconds": time.perf_counter() - t0,
        "datasets": {
            args.data.name: {
                "users": len(users),
                "split": opts.split,
                "methods": summarize(predictions, opts),
            }
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (args.out / "README.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
