"""``make figures``: README.md's "Measured figures" section, rendered from the results files.

Why: figures typed into a README drift from the runs they quote (a median of paired ratios
printed beside two medians whose ratio it is not, a prompt length from another benchmark). This
renders the text between ``BEGIN`` and ``END`` from docs/eval/results.json (`make eval`) and
bench/results.json (`make bench`), with the command and the machine beside each table; `make
eval` and `make bench` run it after writing their results, and tests/test_figures.py fails when
README.md differs from what the committed files give. Stdlib only (no torch, no model); the text
names files by their path in the repository, never by an absolute path.

    python -m bench.figures           # rewrite README.md's section
    python -m bench.figures --check   # exit 1 when it differs from the results files
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.machine import machine_text

ROOT = Path(__file__).resolve().parent.parent
BENCH = "bench/results.json"
EVAL = "docs/eval/results.json"
README = "README.md"
BEGIN = (
    "<!-- figures:begin (rendered by `make figures` from bench/results.json and "
    "docs/eval/results.json; do not edit) -->"
)
END = "<!-- figures:end -->"
# A sourced sentence on whether steered (greedy) text depends on the CPU's floating-point path
# (SIMD kernels, thread count); None renders a placeholder until someone can cite it.
FLOAT_PATH_NOTE: str | None = (
    "Steered text depends on the CPU's floating-point path: llama.cpp picks its SIMD kernels "
    "from the CPU flags it was built for (fints_edge/llama/build_flags.py) and the thread "
    "count changes the order of its sums, so greedy answers near a tie can differ between "
    "machines. Seen here: the same commit's `make demo` judged 11/12 steered answers fluent in "
    "the session that recorded it and 7/12 on a fresh clone in a later session (issue #22); "
    "compare figures measured on the same CPU."
)
FLOAT_PATH_PLACEHOLDER = (
    "[Placeholder for the maintainers: whether the steered text of these runs depends on the "
    "CPU's floating-point path (SIMD kernels, thread count); no source for it yet, so nothing "
    "is claimed here.]"
)
# docs/eval's order (evals/report.py); methods it does not know follow in the file's order.
METHOD_ORDER = ("zero-shot", "rag-1", "rag-2", "rag-3", "prefix-cached", "static", "random",
                "fints-exact", "fints-cvec", "fints+rag-1", "fints-torch-profile", "fints-torch",
                "fints-recency")  # fmt: skip
# The benchmarks with fluent adherence, and what each asks of the method
ADHERENCE_BENCHMARKS = {
    "personas-conditional": "a style per kind of input",
    "personas": "one style per user",
}


class FiguresError(Exception):
    """README.md has no (or more than one) pair of figure markers."""


def _f(x: Any, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _n(n: int, noun: str, count: bool = True) -> str:
    word = noun if n == 1 else f"{noun}s"
    return f"{n} {word}" if count else word


def _ci(d: dict | None) -> str:
    if not d:
        return ""
    lo, hi = d["ci95"]
    return f"{d['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


# -- make eval ------------------------------------------------------------------------------------
def _method_table(bench: dict) -> list[str]:
    methods = bench["methods"]
    order = [m for m in METHOD_ORDER if m in methods] + [
        m for m in methods if m not in METHOD_ORDER
    ]
    lines = [
        "| method | n | fluent adherence | vs `rag-1` (95% interval) | adherence | fluent | "
        "added prompt tokens | first token ms | KiB per user |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in order:
        e = methods[m]
        ttft = _f(e.get("first_token_ms"), 0)
        if e.get("cold_first_token_ms") is not None:
            ttft += f" (cold {e['cold_first_token_ms']:.0f})"
        kib = "" if e.get("memory_bytes") is None else f"{e['memory_bytes'] / 1024:.0f}"
        lines.append(
            f"| `{m}` | {e['n']} | {_f(e.get('fluent_adherence'))} | "
            f"{_ci(e.get('fluent_adherence_vs_rag-1'))} | {_f(e.get('adherence'))} | "
            f"{_f(e.get('fluent'))} | {_f(e.get('added_prompt_tokens'), 0)} | {ttft} | {kib} |"
        )
    return lines


def _goal_table(g: dict) -> list[str]:
    def cmp(c: dict | None) -> str:
        if not c:
            return "n/a"
        return f"{c['method']:.2f} vs {c['other']:.2f}: {_ci(c)} (n {c['n']})"

    yes = {True: "met", False: "not met"}
    fe, fr = g["fints_exact"], g["fints_rag1"]
    share = fr.get("added_first_token_share_of_rag-3")
    ms = fr.get("first_token_ms") or {}
    added = (
        f"{share:.2f} of `rag-3`'s added time ({ms['fints+rag-1']:.0f} vs {ms['rag-3']:.0f} ms, "
        f"zero-shot {ms['zero-shot']:.0f} ms)"
        if share is not None and {"fints+rag-1", "rag-3", "zero-shot"} <= set(ms)
        else "n/a"
    )
    return [
        f"Goals (issue 15; `{g['benchmark']}`, fluent adherence, the 95% interval of the "
        "difference; `goals` in the file):",
        "",
        "| goal | figures | |",
        "|---|---|---|",
        f"| `fints-exact` >= `rag-1` | {cmp(fe.get('vs_rag-1'))} | {yes[fe['at_least_rag-1']]} |",
        f"| `fints-exact` > `static` | {cmp(fe.get('vs_static'))} | {yes[fe['above_static']]} |",
        f"| `fints-exact` > `prefix-cached` | {cmp(fe.get('vs_prefix-cached'))} | "
        f"{yes[fe['above_prefix-cached']]} |",
        f"| `fints+rag-1` >= `rag-3` | {cmp(fr.get('vs_rag-3'))} | {yes[fr['at_least_rag-3']]} |",
        f"| `fints+rag-1` adds at most half of `rag-3`'s first-token time | {added} | "
        f"{yes[fr['at_most_half_the_added_time']]} |",
    ]


def _sweep_by_unit(sweep: dict) -> str:
    """The dev sweep's highest adherence per strength unit, with the setting that gave it."""
    best: dict[str, dict] = {}
    for t in sweep.get("tried", []):
        unit = t.get("setting", {}).get("strength_unit")
        if unit and t.get("adherence") is not None:
            if unit not in best or t["adherence"] > best[unit]["adherence"]:
                best[unit] = t
    parts = [
        f"{unit} {t['adherence']:.2f} (`{t['label']}`, fluent {_f(t.get('fluent'))})"
        for unit, t in best.items()
    ]
    return "; ".join(parts)


def render_eval(results: dict | None) -> list[str]:
    if results is None:
        return ["### Evaluation (`make eval`)", "", f"No `{EVAL}` yet: run `make eval`.", ""]
    lines = [
        "### Evaluation (`make eval`)",
        "",
        f"From `{EVAL}`; every table of the run, and the fluency check's examples, are in "
        "[`docs/eval/README.md`](docs/eval/README.md). Fluent adherence (the primary metric) "
        "counts an answer only if it follows the user's style AND passes the fluency check.",
        "",
    ]
    for name, m in results.get("models", {}).items():
        command = m.get("command", "")
        sweep, rule = m.get("sweep", {}), m.get("fluency_rule", {})
        machine = m.get("machine") or results.get("machine")
        where = _measured_on({"machine": machine, "llama_build": m.get("llama_build")})
        lines += [f"#### {name}", ""]
        facts = [
            f"Command: `{command}`" + (" (`make eval`)" if command == "python -m evals" else ""),
        ]
        if m.get("seconds") is not None:
            cache = m.get("cache") or {}
            reused = (
                f", {cache['reused']} of {cache['answers']} answers reused from the run cache"
                if {"reused", "answers"} <= set(cache)
                else ""
            )
            facts.append(f"the recorded run took {m['seconds']:.0f} s{reused}")
        lines.append("; ".join(facts) + ".")
        threads = (machine or {}).get("threads") or {}
        lines.append(
            f"Machine: {where}"
            + (
                "; threads: " + ", ".join(f"{k} {v}" for k, v in threads.items())
                if threads
                else "; threads not recorded"
            )
            + "."
        )
        if sweep.get("chosen_label"):  # a commits-only run has no persona sweep
            n_layer = (m.get("model") or {}).get("n_layer")
            chosen = sweep.get("chosen", {})
            layers = ", ".join(str(x) for x in chosen.get("layers", []))
            lines.append(
                f"Setting chosen on the {sweep.get('split', 'dev')} split ({sweep.get('n')} "
                f"answers): `{sweep['chosen_label']}`"
                + (
                    f" ({_n(len(chosen['layers']), 'layer', False)} {layers} of {n_layer})"
                    if layers and n_layer
                    else ""
                )  # fmt: skip
                + "."
            )
        if sweep.get("tried"):
            lines.append(f"Highest dev adherence per strength unit: {_sweep_by_unit(sweep)}.")
        if rule:
            from evals.rule_text import describe_rule

            lines.append(
                f"Fluency check calibrated on {rule.get('calibrated_on')} dev answers of "
                f"zero-shot and RAG: {describe_rule(rule)}."
            )
        lines.append("")
        benchmarks = m.get("benchmarks", {})
        for b, what in ADHERENCE_BENCHMARKS.items():
            if b not in benchmarks:
                continue
            bb = benchmarks[b]
            lines += [
                f"`{b}` ({what}), {bb['split']} split, {bb['users']} users (first token: median, warm; "
                "KiB per user: the profile, or the KV cache for `prefix-cached`):",
                "",
                *_method_table(bb),
                "",
            ]
        if "commits" in benchmarks:
            lines += [*_commits_table(benchmarks["commits"], m.get("runs", {}).get("commits")), ""]
        others = [b for b in benchmarks if b not in ADHERENCE_BENCHMARKS and b != "commits"]
        if others:
            lines += [
                "Also in this run (tables in docs/eval/README.md): "
                + ", ".join(f"`{b}`" for b in others)
                + ".",
                "",
            ]
        if m.get("goals"):
            lines += [*_goal_table(m["goals"]), ""]
        demo = m.get("demo")
        if demo:
            lines += [
                f"`{demo.get('command', 'make demo')}`, then `python -m evals.demo --record`: "
                f"{demo['fluent']}/{demo['n']} steered answers pass the fluency check, "
                f"{demo['lowercase']}/{demo['n']} all lowercase.",
                "",
            ]
    if not any(m.get("demo") for m in results.get("models", {}).values()):
        lines += [
            "`make demo`'s figures (its answers' share of lowercase letters, the answers that "
            f"loop) are printed by the command and not recorded in `{EVAL}`; `python -m "
            "evals.demo --record` records its fluency check there.",
            "",
        ]
    return lines


def _measured_on(run: dict) -> str:
    """The machine a run records, else the llama.cpp build it records (runs from before the
    machine was recorded with every evaluation: greedy answers can differ between builds)."""
    machine = run.get("machine")
    if machine and machine.get("cpu"):
        return machine_text(machine, EVAL)
    key = re.search(r"\bkey (\S+)", run.get("llama_build") or "")
    return f"CPU not recorded in `{EVAL}`" + (f", llama.cpp build `{key[1]}`" if key else "")


def _commits_table(b: dict, run: dict | None) -> list[str]:
    """Real commit subjects: ROUGE-L with the paired comparison the benchmark declares."""
    how = (
        f" (`{run['command']}`, {run['seconds'] / 60:.0f} min; machine: {_measured_on(run)})"
        if run
        else ""
    )
    lines = [
        f"`commits` (real commit subjects of {b['users']} authors){how}, {b['split']} split, "
        f"{b['items']['test']} commits; steering alone at `{b['setting']['steer']}`, on top of "
        f"RAG at `{b['setting']['rag']}` (each chosen on its own dev split):",
        "",
        "| method | ROUGE-L | ROUGE-1 | style agreement | fluent | added prompt tokens | "
        "ROUGE-L difference [95% interval] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in b["methods"].items():
        diffs = [
            f"vs {k[len('rougeL_vs_') :]} {v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
            for k, v in e.items()
            if k.startswith("rougeL_vs_")
        ]
        added = e.get("added_prompt_tokens")
        lines.append(
            f"| {name} | {e['rougeL']:.3f} | {e['rouge1']:.3f} | {e['style']:.2f} | "
            f"{e['fluent']:.2f} | {'' if added is None else f'{added:.0f}'} | {'; '.join(diffs)} |"
        )
    return lines


# -- make bench -----------------------------------------------------------------------------------
def _threads(r: dict, figure: str) -> str:
    t = ((r.get("machine") or {}).get("threads") or {}).get(figure)
    return "not recorded" if t is None else str(t)


def render_bench(r: dict | None) -> list[str]:
    head = ["### Speed and memory (`make bench`)", ""]
    if r is None:
        return [*head, f"No `{BENCH}` yet: run `make bench`.", ""]
    s1, s2, t = r["speed_t1"], r.get("speed_t2"), r["ttft"]
    un = s1["unsteered_decode_tps"]
    s1k = r.get("setup_1000", {})
    e, lr, sv = r.get("encoder", {}), r.get("learn", {}), r.get("serve")
    rss_items = r.get("rss_profile_items")
    rss_profile = (
        f"a {rss_items:,}-item profile"
        if rss_items
        else "the bench's grown profile (its size not recorded in this file)"
    )
    ratio_of_medians = t["steered_ms"] / t["unsteered_ms"]
    filt = "C eval filter in use" if s1.get("c_filter") else "no C eval filter"
    rows: list[tuple[str, str, str, str]] = [  # figure, value, threads, key
        ("decode, unsteered", f"{un:.1f} tok/s", "1", "speed_t1.unsteered_decode_tps"),
    ]
    if s2:
        rows.append(("decode, unsteered", f"{s2['unsteered_decode_tps']:.1f} tok/s", "2",
                     "speed_t2.unsteered_decode_tps"))  # fmt: skip
    rows += [
        (f"prompt, unsteered ({s1['prompt_tokens']}-token prompt)",
         f"{s1['unsteered_prompt_tps']:.0f} tok/s", "1", "speed_t1.unsteered_prompt_tps"),
        ("decode steered / unsteered, `cvec`", f"{r['cvec_decode_ratio']:.3f}", "1",
         "cvec_decode_ratio"),
        (f"decode steered / unsteered, `exact` ({filt})", f"{r['exact_decode_ratio']:.3f}", "1",
         "exact_decode_ratio"),
    ]  # fmt: skip
    if "exact_python_decode_tps" in s1:
        rows.append(("decode steered / unsteered, `exact` with Python answering every graph node",
                     f"{s1['exact_python_decode_tps'] / un:.3f}", "1",
                     "speed_t1.exact_python_decode_tps / unsteered"))  # fmt: skip
    if "exact_both_decode_tps" in s1:
        rows.append(("decode steered / unsteered, `exact`, both sites steered",
                     f"{s1['exact_both_decode_tps'] / un:.3f}", "1",
                     "speed_t1.exact_both_decode_tps / unsteered"))  # fmt: skip
    rows += [
        ("decode, edge `exact` / torch fp32 reference with hooks",
         f"{r['edge_vs_torch_decode_speedup']:.2f}x ({s1['exact_decode_tps']:.1f} vs "
         f"{r['torch_decode_tps_t1']:.1f} tok/s)", "1", "edge_vs_torch_decode_speedup"),
        ("time to first token, steered / unsteered: median of the paired ratios",
         f"{t['ratio']:.3f}", _threads(r, "ttft"), "ttft.ratio"),
        ("time to first token, steered / unsteered: ratio of the medians",
         f"{ratio_of_medians:.3f} ({t['steered_ms']:.1f} / {t['unsteered_ms']:.1f} ms)",
         _threads(r, "ttft"), "ttft.steered_ms / ttft.unsteered_ms"),
        ("planning in the steered first token (encode, retrieve, aggregate)",
         f"{t['plan_ms']:.1f} ms", _threads(r, "ttft"), "ttft.plan_ms"),
    ]  # fmt: skip
    if s1k:
        rows += [
            ("per-request set-up, 1,000 items", f"{s1k['total_ms']:.2f} ms", _threads(r, "setup"),
             "setup_1000.total_ms"),
            ("of which the sentence encoder", f"{s1k['encode_ms']:.2f} ms", _threads(r, "setup"),
             "setup_1000.encode_ms"),
            ("retrieve / aggregate / apply, each a median",
             f"{s1k['retrieve_ms']:.3f} / {s1k['aggregate_ms']:.3f} / {s1k['apply_ms']:.3f} ms",
             _threads(r, "setup"), "setup_1000.retrieve_ms etc."),
        ]  # fmt: skip
    if "setup_1000_t2" in r:
        rows.append(("per-request set-up, 1,000 items, 2-thread encoder",
                     f"{r['setup_1000_t2']['total_ms']:.2f} ms", "2", "setup_1000_t2.total_ms"))  # fmt: skip
    if "int8mix_t1_ms" in e:
        rows.append(("encoder int8, FFN outputs fp32 (not in use): ms; top-5 overlap with fp32 "
                     "on the pool / the bench queries",
                     f"{e['int8mix_t1_ms']:.2f} ms; {e['int8mix_t1_pool_top5_overlap']:.3f} / "
                     f"{e['int8mix_t1_top5_overlap']:.3f}", "1", "encoder.int8mix_t1_*"))  # fmt: skip
    if "m2v_t1_ms" in e:
        rows.append(("static model2vec encoder (not in use): ms; top-5 overlap on the pool",
                     f"{e['m2v_t1_ms']:.2f} ms; {e['m2v_t1_pool_top5_overlap']:.3f}", "1",
                     "encoder.m2v_t1_*"))  # fmt: skip
    rows += [
        (f"profile size per history item ({_n(r['profile_layers'], 'layer')})",
         f"{r['profile_bytes_per_item']:.0f} B", "", "profile_bytes_per_item"),
        (f"chat peak RSS, {rss_profile}", f"{r['chat_peak_rss_mb']:.0f} MB",
         _threads(r, "chat_peak_rss_mb"), "chat_peak_rss_mb"),
        (f"server peak RSS (its own process, after one steered request), {rss_profile}",
         f"{r['server_peak_rss_mb']:.0f} MB", _threads(r, "server_peak_rss_mb"),
         "server_peak_rss_mb"),
        ("model load (page cache warm)", f"{r['model_load_ms']:.0f} ms",
         _threads(r, "model_load_ms"), "model_load_ms"),
        ("profile load + index, 1k items", f"{r['profile_load_ms_1k']:.1f} ms", "",
         "profile_load_ms_1k"),
    ]  # fmt: skip
    if lr:
        rows += [
            ("on-device learning, one new item (its negative generated)",
             f"{lr['learn_item_s']:.2f} s", str(lr["threads"]), "learn.learn_item_s"),
            ("profile build with given negatives: device (Q4) / torch (fp32)",
             f"{lr['build_items_per_s_device']:.2f} / {r['build_items_per_s_torch']:.2f} items/s",
             f"{lr['threads']} / {_threads(r, 'build_items_per_s_torch')}",
             "build_items_per_s_device / build_items_per_s_torch"),
        ]  # fmt: skip
    if sv:
        n, per = sv["load_users"], sv["load_requests_per_user"]
        rows += [
            ("local server: a steered request through HTTP minus in-process",
             f"{sv['overhead_ms']:.1f} ms (paired median {sv['overhead_paired_ms']:.1f} ms)",
             str(sv["threads"]), "serve.overhead_ms"),
            (f"local server, {n} users x {per} requests at once",
             f"{sv['load_requests_per_s']:.2f} req/s, {sv['load_tokens_per_s']:.1f} tok/s; "
             f"latency p50 {sv['load_latency_p50_ms']:.0f} / p95 "
             f"{sv['load_latency_p95_ms']:.0f} ms", str(sv["threads"]), "serve.load_*"),
        ]  # fmt: skip
    pairs = (
        f"the {t['pairs']} pairs ({t['prompts']} prompts, each unsteered then steered, back to "
        "back)"
        if "pairs" in t and "prompts" in t
        else "the paired requests (each prompt unsteered then steered, back to back; how many "
        "is not recorded in this file)"
    )
    seconds = f"; the run took {r['bench_seconds']:.0f} s" if "bench_seconds" in r else ""
    return [
        *head,
        f"Command: `python -m bench.run` (`make bench`), from `{BENCH}`; every table of the run "
        "and its targets are in [`bench/README.md`](bench/README.md). Model "
        f"{r['model']}, {r['reps']} interleaved repetitions, medians, {r['n_gen']} generated "
        f"tokens per decode run{seconds}.",
        f"Machine: {machine_text(r.get('machine'), BENCH)}; threads per row.",
        "",
        "| figure | value | threads | key in bench/results.json |",
        "|---|---|---|---|",
        *[f"| {fig} | {val} | {thr} | `{key}` |" for fig, val, thr, key in rows],
        "",
        "Two ratios of time to first token: `ttft.ratio` (the bench's `ttft_ratio`) is the "
        f"median over {pairs} of steered / unsteered, the typical slowdown of one request; the "
        "ratio of the two medians compares a typical steered request with a typical unsteered "
        "one, which may be other prompts. The prompt-speed row's prompt is the decode "
        "benchmark's (`speed_t1.prompt_tokens`), not the first-token prompts.",
        "",
    ]


def render(bench: dict | None, evals: dict | None) -> str:
    """The text between ``BEGIN`` and ``END`` (both excluded) for these results."""
    lines = [
        "Every number between these markers is read from "
        f"`{EVAL}` (written by `make eval`) or `{BENCH}` (written by `make bench`); `make "
        "figures` (`python -m bench.figures`) renders them, and `tests/test_figures.py` fails "
        "when this text differs from what those files give. Speeds and times hold for the "
        "machine named beside each table.",
        "",
        FLOAT_PATH_NOTE or FLOAT_PATH_PLACEHOLDER,
        "",
        *render_eval(evals),
        *render_bench(bench),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


# -- README.md ------------------------------------------------------------------------------------
def _bounds(text: str) -> tuple[int, int]:
    """Offsets of the first character after ``BEGIN``'s line and of ``END``'s line."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise FiguresError(
            f"{README} needs exactly one line '{BEGIN}' and one '{END}' after it "
            f"(found {text.count(BEGIN)} and {text.count(END)})"
        )
    start, end = text.index(BEGIN) + len(BEGIN) + 1, text.index(END)
    if end < start:
        raise FiguresError(f"{README}: '{END}' comes before '{BEGIN}'")
    return start, end


def section(text: str) -> str:
    """The text between the markers of a README."""
    start, end = _bounds(text)
    return text[start:end].strip("\n") + "\n"


def splice(text: str, body: str) -> str:
    """``text`` with the part between its markers replaced by ``body``."""
    start, end = _bounds(text)
    return f"{text[:start]}\n{body}\n{text[end:]}"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def rendered(root: Path = ROOT) -> str:
    return render(load(root / BENCH), load(root / EVAL))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.figures", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's section is stale")
    p.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = p.parse_args(argv)
    readme = args.root / README
    text = readme.read_text(encoding="utf-8")
    try:
        new = splice(text, rendered(args.root))
    except FiguresError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{README}: the measured figures differ from {BENCH} and {EVAL}; run "
                  "`make figures`", file=sys.stderr)  # fmt: skip
            return 1
        print(f"{README}: the measured figures match {BENCH} and {EVAL}")
        return 0
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"{README}: measured figures rendered from {BENCH} and {EVAL}")
    else:
        print(f"{README}: measured figures already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
