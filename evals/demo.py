"""``python -m evals.demo``: the fluency check on `make demo`'s answers.

`make demo` saves its held-out answers (export/demo.py); this scores each steered answer with the
evaluation's fluency signals (repeated word 3-grams, perplexity under the unsteered model, topic
kept from the unsteered answer) against the rule `make eval` calibrated for the default model
(docs/eval/results.json), and counts the all-lowercase answers. ``--record`` writes the figures
into results.json (maintainers, after `make eval`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fints_edge._cli import cli_main
from fints_edge.errors import FintsEdgeError

DEFAULT_OUT = Path("docs/eval")


def load_answers(path: Path) -> list[dict]:
    if not path.is_file():
        raise FintsEdgeError(f"{path}: no demo answers yet; run `make demo` first")
    try:
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
        for r in rows:
            str(r["input"]), str(r["unsteered"]), str(r["steered"])
    except (ValueError, KeyError, TypeError) as e:
        raise FintsEdgeError(f"{path}: unreadable demo answers ({e}); run `make demo` again") from e
    if not rows:
        raise FintsEdgeError(f"{path}: empty; run `make demo` again")
    return rows


def load_rule(out: Path, model_name: str) -> Any:
    from evals.fluency import FluencyRule

    path = out / "results.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))["models"][model_name]
        return FluencyRule(**entry["fluency_rule"])  # written by FluencyRule.to_json
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FintsEdgeError(
            f"{path}: no fluency rule for {model_name} ({e}); run `make eval` first"
        ) from e


def check(rows: Sequence[dict], rule: Any, model: Path, encoder_dir: Path | None = None,
          threads: int = 2, history: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Per steered answer: lowercase?, the five signals, fluent?; and the totals. ``history``:
    the demo user's history (its words are theirs: the non-word signal; default the demo's)."""
    from evals.fluency import (
        Perplexity,
        nonwords,
        phrase_count,
        repetition,
        topic_retention,
        vocabulary,
    )
    from export.demo import HISTORY, lowercase_share
    from fints_edge._paths import default_encoder_dir
    from fints_edge.encode import Encoder
    from fints_edge.history import read_history

    known = vocabulary((h.input, h.output) for h in read_history(history or HISTORY))
    ppl = Perplexity(model, n_ctx=512, threads=threads, casefold=rule.casefold)  # as calibrated
    try:
        perplexities = [ppl(r["input"], r["steered"]) for r in rows]
    finally:
        ppl.close()
    topics = topic_retention(Encoder(encoder_dir or default_encoder_dir(), threads=threads),
                             [r["steered"] for r in rows], [r["unsteered"] for r in rows])  # fmt: skip
    out = []
    for r, p, t in zip(rows, perplexities, topics, strict=True):
        answer = r["steered"]
        signals = {"repetition": repetition(answer), "perplexity": p, "topic": float(t),
                   "phrases": float(phrase_count(answer)),
                   "nonwords": nonwords(answer, r["input"], known)}  # fmt: skip
        fails = rule.failures(answer, signals["repetition"], p, float(t), signals["phrases"],
                              signals["nonwords"])  # fmt: skip
        out.append({"steered": answer, "lowercase": lowercase_share(answer) > 0.99, **signals,
                    "fluent": not fails, "failures": fails})  # fmt: skip
    return {
        "n": len(out),
        "fluent": sum(a["fluent"] for a in out),
        "lowercase": sum(a["lowercase"] for a in out),
        "fluent_and_lowercase": sum(a["fluent"] and a["lowercase"] for a in out),
        "setting": rows[0].get("setting"),
        "answers": out,
    }


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    from export.demo import ANSWERS
    from fints_edge._paths import default_gguf

    p = argparse.ArgumentParser(prog="python -m evals.demo", description=__doc__.splitlines()[0])
    p.add_argument("--answers", type=Path, default=ANSWERS, help=f"default: {ANSWERS}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results.json is")
    p.add_argument("--record", action="store_true", help="write the figures into results.json")
    args = p.parse_args(argv)
    model = default_gguf()
    rule = load_rule(args.out, model.name)
    got = check(load_answers(args.answers), rule, model)
    for i, a in enumerate(got["answers"], 1):
        verdict = "fluent" if a["fluent"] else "NOT fluent: " + "; ".join(a["failures"])
        print(f"{i:2d}. {'lowercase' if a['lowercase'] else 'has capitals'}, repetition "
              f"{a['repetition']:.2f}, perplexity {a['perplexity']:.1f}, topic {a['topic']:.2f}, "
              f"pair repeats {a['phrases']:.0f}, non-words {a['nonwords']:.2f}: {verdict}")  # fmt: skip
    print(f"steered demo answers: {got['fluent']}/{got['n']} pass the fluency check "
          f"({rule.describe()}; calibrated by make eval), {got['lowercase']}/{got['n']} "
          "all lowercase")  # fmt: skip
    if args.record:
        from evals.report import render_all

        path = args.out / "results.json"
        results = json.loads(path.read_text(encoding="utf-8"))
        results["models"][model.name]["demo"] = got | {"command": "make demo"}
        render_all(args.out, results)  # writes results.json, then the report
        print(f"recorded in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
