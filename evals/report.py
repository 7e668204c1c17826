"""docs/eval: results.json (every model evaluated), README.md and pareto.png generated from it.

Nothing in the README is typed by hand: ``python -m evals.report docs/eval`` regenerates it from
results.json and the per-model predictions files (after a change to the report, or to add a
model's run). Models are named by file name and sha256, never by a path of the machine.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.calibrated import CALIBRATED_METHODS, CALIBRATED_PAIRS
from evals.commits_bench import GATE_PERCENTILES
from evals.fluency import FluencyRule
from evals.machine import machine_info, machine_text
from fints_edge._atomic import write_text as atomic_write_text
from fints_edge._cli import cli_main
from fints_edge.calibrate import MARGIN_SE, budget_text
from fints_edge.errors import FintsEdgeError

METHOD_ORDER = ("zero-shot", "rag-1", "rag-2", "rag-3", "prefix-cached", "static", "random",
                "fints-exact", "fints-cvec", "fints+rag-1", "fints-torch-profile", "fints-torch",
                "fints-recency", *CALIBRATED_METHODS)  # fmt: skip
STEERED = ("static", "random", "fints-exact", "fints-cvec", "fints+rag-1", "fints-recency")
# Methods whose answers are not streamed: the torch reference (evals/run.py ``_torch_answer``)
# records its whole generation as ``first_token_ms``. That is no time to first token, so the
# first-token column says so and the whole-generation time is shown apart, labelled.
NON_STREAMING = {"fints-torch": "the torch reference, HF fp32, returns each answer whole"}
NO_STREAMING_CELL = "n/a (no streaming)"
# The chat's steering defaults (fints_edge.engine.EngineConfig), recorded beside the runs
DEFAULT_KNOBS = ("mode", "k", "strength", "strength_unit", "temperature", "item_norm",
                 "prompt_strength", "preserve_norm", "repeat_fade", "block_repeats",
                 "opening_scale", "sim_floor", "sim_full")  # fmt: skip


def predictions_file(out: Path, model_name: str) -> Path:
    return out / "predictions" / f"{Path(model_name).stem}.jsonl"


def write_outputs(out: Path, model_name: str, entry: dict, preds: Sequence[dict]) -> None:
    """Merge one model's results into OUT/results.json and regenerate everything; the run is
    written where it ran, so this machine is recorded with it."""
    out.mkdir(parents=True, exist_ok=True)
    threads = entry.get("threads")  # kept once, inside the machine
    entry = {k: v for k, v in entry.items() if k != "threads"} | {
        "machine": machine_info({"llama.cpp": threads} if threads else None)
    }
    path = out / "results.json"
    results: dict[str, Any] = {"format": "fints-edge-eval", "version": 2, "models": {}}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("version") == 2:
            results = old
    old = results["models"].get(model_name)
    pred_path = predictions_file(out, model_name)
    if old is not None and "sweep" not in entry and "sweep" in old:
        # a run of the real-data benchmarks alone: the synthetic ones' results stay
        runs = {b: {"command": entry["command"], "seconds": entry["seconds"],
                    "minutes": entry.get("minutes", {}).get(b),
                    "llama_build": entry.get("llama_build"), "machine": entry["machine"]}
                for b in entry["benchmarks"]}  # fmt: skip
        entry = old | {"benchmarks": old["benchmarks"] | entry["benchmarks"],
                       "runs": old.get("runs", {}) | runs}  # fmt: skip
        if pred_path.is_file():
            kept = [json.loads(x) for x in pred_path.read_text(encoding="utf-8").splitlines() if x]
            preds = [p for p in kept if p.get("benchmark") not in runs] + list(preds)
    results["models"][model_name] = entry
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pred_path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    render_all(out, results)


def render_all(out: Path, results: dict | None = None) -> None:
    """results.json (``results``, or the file as it is) with its goal figures and the product
    defaults brought up to date, then README.md and pareto.png from it."""
    from evals.goals import goals
    from fints_edge.engine import EngineConfig

    if results is None:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    preds = {}
    for name, entry in results["models"].items():
        entry["goals"] = goals(entry)
        f = predictions_file(out, name)
        if f.is_file():
            preds[name] = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x]
    d = EngineConfig()
    results["defaults"] = {k: getattr(d, k) for k in DEFAULT_KNOBS}
    atomic_write_text(
        out / "results.json", json.dumps(results, indent=1, ensure_ascii=False) + "\n"
    )
    plot_pareto(results, out / "pareto.png")
    plot_steerability(results, out / STEERABILITY_PNG)
    atomic_write_text(out / "README.md", render(results, preds))


def _f(x: Any, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _ci(entry: dict, key: str) -> str:
    d = entry.get(key)
    if d is None:
        return ""
    return f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"


def verdict(entry: dict, metric: str, other: str) -> str:
    """A plain sentence from one paired-bootstrap interval."""
    d = entry.get(f"{metric}_vs_{other}")
    if d is None:
        return f"no paired comparison with {other}"
    lo, hi = d["ci95"]
    word = "beats" if lo > 0 else ("loses to" if hi < 0 else "is not distinguishable from")
    return f"{word} {other} on {metric} by {d['diff']:+.3f} (95% CI [{lo:+.3f}, {hi:+.3f}])"


def _kb(x: Any) -> str:
    return "" if x is None else f"{x / 1024:.0f}"


def _first_token(method: str, e: dict) -> str:
    """The first-token cell: the median warm time, never a whole generation."""
    if method in NON_STREAMING:
        return NO_STREAMING_CELL
    ttft = _f(e.get("first_token_ms"), 0)
    if e.get("cold_first_token_ms") is not None:
        ttft += f" (cold {e['cold_first_token_ms']:.0f})"
    return ttft


def whole_generation_lines(methods: dict) -> list[str]:
    """Below a table: the whole-generation time of each method that does not stream."""
    lines = []
    for m, why in NON_STREAMING.items():
        ms = methods.get(m, {}).get("first_token_ms")
        if ms is not None:
            lines += ["", f"{m} does not stream ({why}): no first-token time; its median "
                      f"whole generation takes {ms:.0f} ms."]  # fmt: skip
    return lines


def method_table(bench: dict) -> list[str]:
    lines = [
        "| method | n | fluent adherence | adherence | fluent | vs zero-shot | vs rag-1 | "
        "vs prefix-cached | added prompt tokens | first token ms | KB per user | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    methods = bench["methods"]
    for m in [m for m in METHOD_ORDER if m in methods]:
        e = methods[m]
        ttft = _first_token(m, e)
        lines.append(
            f"| {m} | {e['n']} | {_f(e.get('fluent_adherence'))} | {_f(e.get('adherence'))} | "
            f"{_f(e.get('fluent'))} | {_ci(e, 'fluent_adherence_vs_zero-shot')} | "
            f"{_ci(e, 'fluent_adherence_vs_rag-1')} | {_ci(e, 'fluent_adherence_vs_prefix-cached')} | "
            f"{_f(e.get('added_prompt_tokens'), 0)} | {ttft} | {_kb(e.get('memory_bytes'))} | "
            f"{e.get('errors', 0)} |"
        )
    return lines + whole_generation_lines(methods)


def commits_lines(b: dict) -> list[str]:
    """The real-writing benchmark: the paper's configuration (rag-k vs fints+rag-k) first."""
    rule, dev, m = b["fluency_rule"], b["dev"], b["methods"]
    items = b["items"]
    lines = [
        f"### commits: real commit subjects (test split, {b['users']} authors; "
        f"{items['history']} history, {items['dev']} dev, {items['test']} test commits)",
        "",
        "Data: `evals/data/commits/` (its README: repositories, licenses, selection). The answer",
        "is its first line; ROUGE-1/L F against what the author wrote; style agreement = mean of",
        "prefix, first-letter case and trailing period as in the author's subject. Fluency rule",
        f"calibrated on this benchmark's {rule['calibrated_on']} dev baseline answers "
        f"({FluencyRule(**rule).describe()}). Settings chosen on its",
        f"own dev split by ROUGE-L of fluent answers: steering alone **{dev['chosen_label']['steer']}**;",
        f"on top of RAG **{dev['chosen_label']['rag']}** (the chat's default: {dev['shipped_label']}).",
        "",
        "| method | n | ROUGE-1 | ROUGE-L | style | prefix | case | period | fluent | "
        "added prompt tokens | first token ms | compared with | ROUGE-L diff [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in m.items():
        pairs = [k[len("rougeL_vs_") :] for k in e if k.startswith("rougeL_vs_")]
        vs = "; ".join(pairs) or ""
        cis = "; ".join(_ci(e, f"rougeL_vs_{o}") for o in pairs)
        lines.append(
            f"| {name} | {e['n']} | {_f(e.get('rouge1'), 3)} | {_f(e.get('rougeL'), 3)} | "
            f"{_f(e.get('style'))} | {_f(e.get('prefix'))} | {_f(e.get('case'))} | "
            f"{_f(e.get('period'))} | {_f(e.get('fluent'))} | "
            f"{_f(e.get('added_prompt_tokens'), 0)} | {_first_token(name, e)} | {vs} | {cis} |"
        )
    lines += ["", "Dev candidates (ROUGE-L of fluent answers, fluent share):", ""]
    lines += [f"- {t['method']} {t['label']}: {t['rougeL_fluent']:.3f}, {t['fluent']:.2f}"
              for t in dev["tried"]]  # fmt: skip
    lines += calibration_lines(b.get("calibration"), "author")
    if b.get("examples"):
        lines += ["", "What the methods wrote for one test commit of a few authors:", "",
                  "| author | gold | zero-shot | rag-1 | fints+rag-1 | fints-exact |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for x in b["examples"]:
            cells = [x["gold"], *(x.get(k) or "" for k in
                                  ("zero-shot", "rag-1", "fints+rag-1", "fints-exact"))]  # fmt: skip
            lines.append(f"| {x['user']} | " + " | ".join(_cell(c, 70) for c in cells) + " |")
    if b.get("errors"):
        lines += ["", f"{len(b['errors'])} answers failed and count as wrong."]
    return lines + [""]


def calibration_lines(cal: dict | None, who: str) -> list[str]:
    """How each ``who``'s calibrated setting was chosen (evals/calibrated.py)."""
    if not cal:
        return []
    lines = ["", f"Per-{who} calibration (fints_edge.calibrate on each {who}'s history only, "
             f"from `{cal['from']}`, {budget_text(cal['budget_s'])}"
             f"{'' if 'grid' not in cal else ' (' + cal['grid'] + ')'}; "
             f"{cal.get('rule', 'a setting replaces the best so far when it scores higher')}"
             "; held-out score = mean of ROUGE-L and habits kept):", ""]  # fmt: skip
    for c in cal["users"]:
        lines.append(
            f"- {c['method']} {c['user']}: not calibrated ({c['error']})"
            if c.get("error")
            else f"- {c['method']} {c['user']}: **{c['label']}** (held-out {c['score']:.3f} vs "
            f"{c['unsteered_score']:.3f} unsteered, {c['default_score']:.3f} default; "
            f"{c['tried']} settings in {c['seconds']:.0f} s"
            + (f"; 1 SE {c['resolution']:.3f}" if c.get("resolution") is not None else "")
            + ")"
        )
    noise = sorted(c["resolution"] for c in cal["users"] if c.get("resolution") is not None)
    if noise:
        lines += ["", f"How finely the held-out items tell settings apart (`calibrate.resolution`: "
                  "one standard error of a setting's paired per-item difference from the default, "
                  f"median over its other settings): {statistics.median(noise):.3f} for the median "
                  f"{who} (range {noise[0]:.3f}-{noise[-1]:.3f}). Under the {MARGIN_SE:g} SE rule a "
                  f"setting truly better by less than {MARGIN_SE:g} SE wins its comparison less than "
                  "half the time, and one no better wins about "
                  f"{statistics.NormalDist().cdf(-MARGIN_SE):.0%} of its comparisons (normal "
                  "approximation)."]  # fmt: skip
    return lines


def calibrated_verdicts(methods: dict, metric: str) -> list[str]:
    """Each calibrated row against its twins (evals/calibrated.py CALIBRATED_PAIRS)."""
    return [f"{m} " + "; ".join(verdict(methods[m], metric, other)
                                for mm, other in CALIBRATED_PAIRS if mm == m) + "."
            for m in CALIBRATED_METHODS if m in methods]  # fmt: skip


def text_table(bench: dict) -> list[str]:
    lines = [
        "| method | n | ROUGE-1 | ROUGE-L | fluent | first token ms |",
        "|---|---|---|---|---|---|",
    ]
    for m, e in bench["methods"].items():
        lines.append(f"| {m} | {e['n']} | {_f(e.get('rouge1'), 3)} | {_f(e.get('rougeL'), 3)} | "
                     f"{_f(e.get('fluent'))} | {_first_token(m, e)} |")  # fmt: skip
    return lines + whole_generation_lines(bench["methods"])


def group_table(groups: dict, title: str) -> list[str]:
    if not groups:
        return []
    methods = [m for m in METHOD_ORDER if any(m in g for g in groups.values())]
    lines = ["", f"Fluent adherence by {title}:", "",
             f"| {title} | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]  # fmt: skip
    for name, g in sorted(groups.items()):
        lines.append(f"| {name} | " + " | ".join(_f(g.get(m)) for m in methods) + " |")
    return lines


def _cell(text: str, width: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 3] + "..."


def fluency_examples(preds: Sequence[dict], n: int = 5) -> list[str]:
    """Steered answers the check rejects and accepts, so a reader can judge the check."""
    steered = [p for p in preds if p["method"] in STEERED and "fluency_failures" in p]
    rejected = [p for p in steered if p["fluency_failures"]]
    accepted = [p for p in steered if not p["fluency_failures"] and p.get("adherence")]
    # varied examples: the first of each kind of failure, then the rest, most failures first
    rejected.sort(key=lambda p: (-len(p["fluency_failures"]), -p["repetition"]))
    firsts, rest, seen = [], [], set()
    for p in rejected:
        kind = ", ".join(p["fluency_failures"])
        (rest if kind in seen else firsts).append(p)
        seen.add(kind)
    picked = (firsts + rest)[:n]
    lines = ["| verdict | method | why | repetition | perplexity | topic | pair repeats | "
             "non-words | answer |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for tag, rows in (("rejected", picked), ("accepted", accepted[:n])):
        for p in rows:
            lines.append(
                f"| {tag} | {p['method']} | {', '.join(p['fluency_failures']) or 'fluent'} | "
                f"{p['repetition']:.2f} | {p['perplexity']:.1f} | {p['topic']:.2f} | "
                f"{p.get('phrases', 0):.0f} | {p.get('nonwords', 0):.2f} | {_cell(p['prediction'])} |"
            )
    return lines


def gap_lines(results: dict) -> list[str]:
    """Does the Fints-vs-RAG gap shrink with model size? One row per model and benchmark."""
    lines = ["| model | benchmark | fints-exact | rag-1 | rag-3 | prefix-cached | static | "
             "fints-exact vs rag-1 |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in results["models"].items():
        for bench in ("personas", "personas-conditional"):
            b = entry["benchmarks"].get(bench)
            if not b:
                continue
            m = b["methods"]

            def fa(k: str, m: dict = m) -> str:
                return _f(m.get(k, {}).get("fluent_adherence"))

            lines.append(f"| {name} | {bench} | {fa('fints-exact')} | {fa('rag-1')} | "
                         f"{fa('rag-3')} | {fa('prefix-cached')} | {fa('static')} | "
                         f"{_ci(m.get('fints-exact', {}), 'fluent_adherence_vs_rag-1')} |")  # fmt: skip
    return lines


# Each sweep stage and what it tries (evals/sweep.py); "layer" is the starting grid.
IDEAS = {
    "layer": "Layer x strength (absolute multipliers): the starting grid",
    "relative": "Strength as a share of the layer's residual-stream norm (r), per typical item",
    "sites": "One site only (attention or MLP) instead of both",
    "k": "How many history items are aggregated (K)",
    "weights": "Similarity-weighted aggregation: softmax(similarity / T) instead of the mean",
    "gate": "Novelty gate: steering fades out when the best similarity is below full, off at floor",
    "time": "Where to steer in time: the prompt (but its last token) at this share; 0 = answer only",
    "depth": "A window of layers: the same push spread over every profile layer at 1/n each",
    "item-norm": "Per-item normalisation: every retrieved signal at the profile's typical norm",
    "center": "Mean-centring: the other users' mean signal subtracted from every item's",
    "keep-norm": "Norm-preserving injection: each steered hidden state keeps its unsteered norm",
    "fade": "Repeat fade: steering x F at each repeated token 4-gram of the answer so far",
    "block": "Repeat block: a steered answer may not repeat a token n-gram it already wrote",
    "opening": "Opening signals (the contrast over the first 3 answer positions) added at the "
    "last prompt position and the first 2 answer positions, at 1x and 2x the strength",
    "retune": "Strength again, x0.5 and x1.5 around the setting kept so far",
}


def idea_lines(sweep: dict) -> list[str]:
    """Every setting the dev sweep tried, grouped by idea, with the decision and its reason."""
    from evals.sweep import replay

    lines = ["### Method ideas on the dev split (fints-exact, coordinate ascent)", "",
             f"{sweep['n']} dev answers per setting. An idea is kept when it beats the best setting "
             "so far by more than one dev answer, or ties it (within one answer of the best seen) "
             "and keeps more of the unsteered answer's topic. Chosen: "
             f"**{sweep['chosen_label']}**.", "",
             "| idea | setting | fluent adherence | to beat | adherence | fluent | topic | kept |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    stage = None
    for t in replay(sweep["tried"], sweep["n"]):
        name = IDEAS.get(t["stage"], t["stage"]) if t["stage"] != stage else ""
        stage = t["stage"]
        lines.append(f"| {name} | {t['label']} | {_f(t['fluent_adherence'])} | "
                     f"{_f(t['best_before'])} | {_f(t['adherence'])} | {_f(t['fluent'])} | "
                     f"{_f(t['topic'])} | {'kept' if t['adopted'] else ''} |")  # fmt: skip
    return lines


def goal_lines(g: dict, demo: dict | None = None) -> list[str]:
    """Issue 15's goals (evals/goals.py; the demo's from `python -m evals.demo --record`) as a
    table; nothing when the run had no such data."""
    if not g:
        return []

    def cmp(c: dict | None) -> str:
        if not c:
            return "n/a"
        lo, hi = c["ci95"]
        return f"{c['method']:.2f} vs {c['other']:.2f}: {c['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}]"

    fe, fr = g["fints_exact"], g["fints_rag1"]
    share = fr["added_first_token_share_of_rag-3"]
    yes = {True: "met", False: "not met"}
    lines = ["### Goals (issue 15; personas-conditional, test split)", "",
            "| goal | figures (fluent adherence, 95% interval of the difference) | |",
            "|---|---|---|",
            f"| fints-exact >= rag-1 | {cmp(fe['vs_rag-1'])} | {yes[fe['at_least_rag-1']]} |",
            f"| fints-exact > static | {cmp(fe['vs_static'])} | {yes[fe['above_static']]} |",
            f"| fints-exact > prefix-cached | {cmp(fe['vs_prefix-cached'])} | "
            f"{yes[fe['above_prefix-cached']]} |",
            f"| fints+rag-1 >= rag-3 | {cmp(fr['vs_rag-3'])} | {yes[fr['at_least_rag-3']]} |",
            f"| fints+rag-1 adds <= half of rag-3's first-token time | "
            f"{'n/a' if share is None else f'{share:.2f} of it'} | "
            f"{yes[fr['at_most_half_the_added_time']]} |"]  # fmt: skip
    if demo:
        n = demo["n"]
        ok = demo["fluent"] == n and demo["lowercase"] >= n - 1
        lines.append(f"| make demo: every steered answer fluent, >= {n - 1}/{n} lowercase | "
                     f"{demo['fluent']}/{n} fluent, {demo['lowercase']}/{n} lowercase "
                     f"({demo['setting']['flags'] if demo.get('setting') else ''}) | "
                     f"{yes[ok]} |")  # fmt: skip
    return lines + [""]


def synthetic_header(e: dict, preds: Sequence[dict]) -> list[str]:
    """The synthetic benchmarks' chosen setting and fluency rule."""
    rule = e["fluency_rule"]
    return [
        f"Setting chosen on dev: **{e['sweep']['chosen_label']}**.",
        "",
        "### The fluency check",
        "",
        f"Calibrated on {rule['calibrated_on']} dev answers of zero-shot and RAG (1-3 examples),",
        "which are fluent by construction (evals/fluency.py: 95th percentiles, the 5th for",
        "topic, with floors and a cap). An answer is fluent when every signal is within its bound:",
        f"**{FluencyRule(**rule).describe()}** (perplexity under the unsteered model given the",
        "zero-shot prompt; topic: encoder cosine to the unsteered answer; non-words: words of 3+",
        "letters neither English nor in the input or the user's history).",
        "",
        *fluency_examples(preds),
        "",
    ]


def _built_with(run: dict) -> str:
    """The suffix '; <llama.cpp build>; on <machine>' for a run that recorded them (older runs
    recorded neither, or the build alone)."""
    out = f"; {run['llama_build']}" if run.get("llama_build") else ""
    if (run.get("machine") or {}).get("cpu"):  # its build key is named once
        machine = run["machine"] | ({"llama_build_key": None} if out else {})
        out += f"; on {machine_text(machine, 'results.json')}"
    return out


def render(results: dict, preds: dict[str, list[dict]]) -> str:
    lines = [
        "# Evaluation (generated by `python -m evals`; do not edit)",
        "",
        "Regenerate this page from `results.json` with `python -m evals.report docs/eval`.",
        "Models are named by file name and sha256. Every interval is a 95% paired bootstrap over",
        "the same test inputs. **Fluent adherence** (primary) counts an answer only if it follows",
        "the user's style AND passes the fluency check; adherence alone is beside it.",
        "",
        "## Does the gap to RAG shrink with model size?",
        "",
        *gap_lines(results),
        "",
        "![fluent adherence against added time to first token](pareto.png)",
        "",
        *steerability_lines(results),
    ]
    for name, e in results["models"].items():
        lines += [
            f"## {name}",
            "",
            f"sha256 `{e['model']['sha256']}`, {e['model']['n_layer']} layers. Command: "
            f"`{e['command']}` ({e['seconds'] / 60:.0f} min; {e['cache']['reused']} of "
            f"{e['cache']['answers']} answers reused from earlier runs through the run cache"
            f"{_built_with(e)}).",
            *(
                f"`{r['command']}` ran {b} ({r['seconds'] / 60:.0f} min{_built_with(r)})."
                for b, r in e.get("runs", {}).items()
            ),  # fmt: skip
            "",
        ]
        if "sweep" in e:
            lines += synthetic_header(e, preds.get(name, []))
        for bench, b in e["benchmarks"].items():
            if bench == "commits":
                lines += commits_lines(b)
                continue
            lines += [f"### {bench} (test split, {b['users']} users, {b['setting']})", ""]
            if bench == "longlamp-mini":
                lines += text_table(b)
            else:
                lines += method_table(b)
                m = b["methods"]
                if "fints-exact" in m:
                    lines += ["", "fints-exact " + verdict(m["fints-exact"], "fluent_adherence",
                                                          "rag-1") + "; " +
                              verdict(m["fints-exact"], "fluent_adherence", "prefix-cached") + "."]  # fmt: skip
                lines += [x for v in calibrated_verdicts(m, "fluent_adherence") for x in ("", v)]
                lines += calibration_lines(b.get("calibration"), "user")
                lines += group_table(b.get("by_kind", {}), "kind")
                lines += group_table(b.get("by_style", {}), "style")
            if b.get("errors"):
                lines += ["", f"{len(b['errors'])} answers failed and count as wrong: "
                          + "; ".join(sorted({x['error'] for x in b['errors']}))[:500]]  # fmt: skip
            lines.append("")
        lines += goal_lines(e.get("goals") or {}, e.get("demo"))
        if "sweep" in e:
            lines += idea_lines(e["sweep"])
        if e.get("failed_profiles"):
            lines += ["", f"No profile could be built for {len(e['failed_profiles'])} users: "
                      + "; ".join(sorted(set(e["failed_profiles"].values())))[:400]]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


STEERABILITY_PNG = "steerability.png"


def steerability(entry: dict) -> list[tuple[float, dict]]:
    """(strength, dev scores) of steering alone at prompt strength 1 on the commits dev split,
    zero-shot as strength 0, ascending; [] when the model's run has no commits benchmark."""
    dev = entry.get("benchmarks", {}).get("commits", {}).get("dev", {})
    points = [(0.0, dev["baselines"]["zero-shot"])] if "baselines" in dev else []
    points += [(t["setting"]["strength"], t) for t in dev.get("tried", [])
               if t.get("family") in ("steer", "steerability")
               and t.get("setting", {}).get("prompt_strength") == 1.0]  # fmt: skip
    return sorted(points, key=lambda x: x[0])


def _curves(results: dict) -> dict[str, list[tuple[float, dict]]]:
    """Each model's steerability curve, for the models whose run has one."""
    curves = {n: steerability(e) for n, e in results["models"].items()}
    return {n: c for n, c in curves.items() if c}


def steerability_lines(results: dict) -> list[str]:
    """Each model's window on real writing: ROUGE-L of fluent answers and fluent share."""
    curves = _curves(results)
    if not curves:
        return []
    strengths = sorted({x for c in curves.values() for x, _ in c})
    lines = [
        "## Steerability: how far each model can be pushed on real writing",
        "",
        "Steering alone (`fints-exact`, prompt strength 1, the default layer) on the `commits` dev",
        "split at each strength (residual units; 0 = zero-shot): ROUGE-L of fluent answers / fluent",
        "share. Where the first figure rises steering moves the answer toward the author; where",
        "the second falls it breaks the text.",
        "",
        "| model | n | " + " | ".join(f"{x:g}" for x in strengths) + " |",
        "|---|---|" + "---|" * len(strengths),
    ]
    for name, c in curves.items():
        at = dict(c)
        cells = [f"{at[x]['rougeL_fluent']:.3f} / {at[x]['fluent']:.2f}" if x in at else ""
                 for x in strengths]  # fmt: skip
        lines.append(f"| {name} | {c[-1][1]['n']} | " + " | ".join(cells) + " |")
    return [
        *lines,
        "",
        f"![steerability per model]({STEERABILITY_PNG})",
        "",
        *widening_lines(results, curves),
    ]


def widening_lines(results: dict, curves: dict[str, list[tuple[float, dict]]]) -> list[str]:
    """Whether a technique widens the window: steering alone at the same strengths with each
    technique (commits dev, family "widening"), beside the plain curve's points."""
    rows: dict[tuple[str, str], dict[float, dict]] = {}
    for name, e in results["models"].items():
        for t in e.get("benchmarks", {}).get("commits", {}).get("dev", {}).get("tried", []):
            if t.get("family") == "widening":
                rows.setdefault((name, t["technique"]), {})[t["strength"]] = t
    if not rows:
        return []
    strengths = sorted({x for r in rows.values() for x in r})
    for name in {n for n, _ in rows}:
        rows[(name, "plain")] = {x: t for x, t in curves.get(name, []) if x in strengths}
    seen = sorted({(n, t["setting"]["sim_floor"], t["setting"]["sim_full"])
                   for (n, technique), at in rows.items() if technique == "gate"
                   for t in at.values()})  # fmt: skip
    pairs = sorted({(lo, hi) for _, lo, hi in seen})
    gates = (
        ""
        if not pairs
        else f": {pairs[0][0]:g}-{pairs[0][1]:g} for every model"  # one encoder, one history
        if len(pairs) == 1
        else ": " + "; ".join(f"{n} {lo:g}-{hi:g}" for n, lo, hi in seen)
    )
    lines = [
        "Whether a technique widens the window, at the same strengths (steering alone, commits "
        "dev; ROUGE-L of fluent answers / fluent share): `keep-norm` rescales each steered "
        "hidden state to its unsteered norm (a rotation toward the direction); `spread` divides "
        "the strength over the three candidate layers; `gate` fades steering out for inputs "
        "unlike the user's history (the novelty gate: none at or below the first similarity, "
        f"full at or above the second; from the {GATE_PERCENTILES[0]}th and "
        f"{GATE_PERCENTILES[1]}th percentiles of the history items' "
        f"similarity to their nearest other item, `commits_bench.history_gate`){gates}.",
        "",
        "| model | technique | " + " | ".join(f"{x:g}" for x in strengths) + " |",
        "|---|---|" + "---|" * len(strengths),
    ]
    for (name, technique), at in sorted(rows.items(), key=lambda r: (r[0][0], r[0][1] != "plain")):
        cells = [f"{at[x]['rougeL_fluent']:.3f} / {at[x]['fluent']:.2f}" if x in at else ""
                 for x in strengths]  # fmt: skip
        lines.append(f"| {name} | {technique} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot_steerability(results: dict, path: Path) -> None:
    """Two panels, one line per model: ROUGE-L of fluent answers and fluent share against the
    strength of steering alone (commits dev split). No commits run anywhere: no file."""
    curves = _curves(results)
    if not curves:
        path.unlink(missing_ok=True)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = sorted({x for c in curves.values() for x, _ in c})
    pos = {x: i for i, x in enumerate(strengths)}  # even spacing: the grid doubles
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in curves.items():
        xs = [pos[x] for x, _ in c]
        axes[0].plot(xs, [t["rougeL_fluent"] for _, t in c], marker="o", label=name)
        axes[1].plot(xs, [t["fluent"] for _, t in c], marker="o", label=name)
    for ax, what in zip(axes, ("ROUGE-L of fluent answers", "fluent share"), strict=True):
        ax.set_xticks(range(len(strengths)), [f"{x:g}" for x in strengths])
        ax.set_xlabel("strength (share of the residual norm; 0 = zero-shot)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("commits dev split, steering alone", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(results: dict, path: Path) -> None:
    """Fluent adherence against added time to first token, one point per method, one panel
    per model (personas-conditional where present, else personas)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"].items())
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, (name, e) in zip(axes[0], models, strict=True):
        bench = "personas-conditional" if "personas-conditional" in e["benchmarks"] else "personas"
        methods = e["benchmarks"].get(bench, {}).get("methods", {})
        base = methods.get("zero-shot", {}).get("first_token_ms") or 0.0
        for m, v in methods.items():
            if (v.get("fluent_adherence") is None or v.get("first_token_ms") is None
                    or m in NON_STREAMING):  # fmt: skip
                continue
            x = v["first_token_ms"] - base
            ax.scatter(x, v["fluent_adherence"], color="C3" if m.startswith("fints") else "C0")
            ax.annotate(m, (x, v["fluent_adherence"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_title(f"{name}\n{bench}", fontsize=9)
        ax.set_xlabel("added time to first token (ms, median, warm)")
        ax.set_ylabel("fluent adherence")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    import sys

    folder = Path((list(argv) if argv is not None else sys.argv[1:] or ["docs/eval"])[0])
    if not (folder / "results.json").is_file():
        raise FintsEdgeError(f"{folder}/results.json: not found; run `make eval` first")
    render_all(folder)
    print(f"wrote {folder}/README.md, pareto.png and {STEERABILITY_PNG} from results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
