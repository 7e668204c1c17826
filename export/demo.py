"""``make demo``: build a profile for a user with an unmistakable style, then chat with it.

The demo user writes every headline in lowercase. Their history (export/data/demo_history.jsonl)
pairs 36 fictional news snippets with the default model's own zero-shot headline (``rejected``)
and the same headline in lowercase (``output``), so the contrast is pure style. Twelve held-out
snippets are then answered unsteered and steered on the quantized GGUF, side by side, with the
share of lowercase letters and of repeated word 3-grams (a loop) for both. The steering setting
is the product default (``EngineConfig``, chosen by `make eval`'s dev sweep), not a demo tuning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from fints_edge._cli import cli_main
from fints_edge._paths import cache_dir, default_aggregator_path, default_encoder_dir, default_gguf
from fints_edge.engine import EngineConfig

DATA = Path(__file__).parent / "data"
SNIPPETS = DATA / "news.jsonl"
HISTORY = DATA / "demo_history.jsonl"
TASK = "Write a one-line headline for this news snippet: "
ANSWERS = cache_dir() / "demo" / "answers.jsonl"  # the last run's answers, for evals.demo


def snippets(split: str) -> list[str]:
    """History: the first three snippets of each topic (36); test: the fourth of each topic (12)."""
    with SNIPPETS.open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        rank = seen[row["topic"]] = seen.get(row["topic"], 0) + 1
        if (rank == 4) == (split == "test"):
            out.append(row["snippet"])
    return out


def lowercase_share(text: str) -> float:
    """Lowercase letters / all letters: 1.0 is the demo user's style."""
    letters = [c for c in text if c.isalpha()]
    return sum(c.islower() for c in letters) / len(letters) if letters else 0.0


def regenerate_history(out: Path = HISTORY) -> None:
    """Zero-shot headlines from the default GGUF (greedy), saved with their lowercase twins."""
    from fints_edge.generate import complete
    from fints_edge.llama.model import open_llama
    from fints_edge.prompt import prompt_tokens

    llm = open_llama(default_gguf(), n_ctx=512)
    rows = []
    for snippet in snippets("history"):
        prompt = prompt_tokens(llm, [{"role": "user", "content": TASK + snippet}])
        text = complete(llm, prompt, 32)  # greedy
        headline = text.strip().splitlines()[0].strip().strip('"') if text.strip() else ""
        if not headline or headline.lower() == headline:
            continue  # no visible contrast for this item
        rows.append({"input": TASK + snippet, "output": headline.lower(), "rejected": headline})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {out} ({len(rows)} items)", file=sys.stderr)


def ensure_profile(force: bool = False) -> Path:
    from export.build import BuildOptions, build_profile
    from export.onnx import export_aggregator, export_encoder

    export_encoder(default_encoder_dir())
    export_aggregator(default_aggregator_path())
    out = cache_dir() / "demo" / "me.npz"
    if out.is_file() and not force and out.stat().st_mtime > HISTORY.stat().st_mtime:
        from fints_edge.learn.recipe import Recipe
        from fints_edge.profile import Profile

        built = Profile.load(out)
        wanted = (Recipe().layers_for(built.model.n_layer), Recipe().sites)
        if (built.layers.tolist(), built.sites) == wanted and built.opening is not None:
            print(f"using the demo profile built earlier: {out}", file=sys.stderr)
            return out
        print(
            "the default layer, sites or opening signals changed since the demo profile was built",
            file=sys.stderr,
        )
    print("building the demo profile (torch, once)...", file=sys.stderr)
    opts = BuildOptions(negatives="given")  # the default layer, sites and opening signals
    build_profile(default_gguf(), HISTORY, out, opts)
    return out


def setting_label(c: EngineConfig) -> str:
    """The steering knobs a user would pass to the chat to get the same answers."""
    flags = [f"--strength {c.strength:g}", f"--strength-unit {c.strength_unit}", f"-k {c.k}"]
    flags += [f"--prompt-strength {c.prompt_strength:g}"] if c.prompt_strength != 1 else []
    flags += ["--item-norm"] if c.item_norm else []
    flags += ["--keep-norm"] if c.preserve_norm else []
    flags += [f"--repeat-fade {c.repeat_fade:g}"] if c.repeat_fade != 1 else []
    flags += [f"--block-repeats {c.block_repeats}"] if c.block_repeats else []
    flags += (
        [f"--opening-scale {c.opening_scale:g}"] if c.opening_scale and c.mode == "exact" else []
    )
    flags += [f"--temperature {c.temperature:g}"] if c.temperature else []
    return " ".join(flags)


def demo_config(mode: str = "exact", strength: float | None = None) -> EngineConfig:
    """The product defaults, 32-token answers; ``strength`` overrides the default's."""
    config = EngineConfig(mode=mode, max_tokens=32)  # type: ignore[arg-type]
    return config if strength is None else replace(config, strength=strength)


def demo_answers(
    profile: Path, config: EngineConfig, n: int = 12
) -> Iterator[tuple[str, str, str]]:
    """(input, unsteered answer, steered answer) for the first ``n`` held-out snippets; the
    steered answer uses the same retrieval plan as ``/compare`` in the chat."""
    from fints_edge.engine import Engine

    with Engine(default_gguf(), profile, config) as engine:
        for snippet in snippets("test")[:n]:
            text = TASK + snippet
            plan = engine.plan(text)
            base = engine.reply(text, steer=False, plan=plan).text
            yield text, base, engine.reply(text, plan=plan).text


def run_chat(profile: Path, n: int, strength: float | None, mode: str) -> None:
    from fints_edge.chat import side_by_side
    from fints_edge.fade import REPETITION_FLOOR, repetition
    from fints_edge.profile import Profile

    config = demo_config(mode, strength)
    p = Profile.load(profile)
    shares: dict[str, list[float]] = {"unsteered": [], "steered": []}
    loops: dict[str, int] = {"unsteered": 0, "steered": 0}
    print(
        f"\n== demo chat: {p.n_items} history items, layer(s) {p.layers.tolist()}, mode {mode}, "
        f"{setting_label(config)} =="
    )
    rows = []
    for text, base, steered in demo_answers(profile, config, n):
        rows.append({"input": text, "unsteered": base, "steered": steered})
        for name, answer in (("unsteered", base), ("steered", steered)):
            shares[name].append(lowercase_share(answer))
            loops[name] += repetition(answer) > REPETITION_FLOOR
        print(f"\n> {text[len(TASK) :][:90]}...")
        print(side_by_side(base, steered))
    n = len(shares["steered"])
    mean = {k: sum(v) / len(v) for k, v in shares.items()}
    all_lower = {k: sum(s > 0.99 for s in v) for k, v in shares.items()}
    print(
        f"\nlowercase share of letters over {n} held-out inputs: "
        f"unsteered {mean['unsteered']:.2f}, steered {mean['steered']:.2f}; "
        f"all-lowercase answers: {all_lower['unsteered']}/{n} -> {all_lower['steered']}/{n}"
    )
    print(
        f"answers that loop (over {REPETITION_FLOOR:.0%} of their word 3-grams repeated): "
        f"unsteered {loops['unsteered']}/{n}, steered {loops['steered']}/{n}"
    )
    from fints_edge._atomic import write_text

    setting = {"mode": mode, "flags": setting_label(config), "layers": p.layers.tolist()}
    write_text(ANSWERS, "".join(json.dumps(r | {"setting": setting}) + "\n" for r in rows))
    print(f"(answers saved to {ANSWERS} for `python -m evals.demo`, the fluency check)")
    extra = f" --strength {strength:g}" if strength is not None else ""
    print(f"try it yourself:\n  .venv/bin/python -m fints_edge.chat --profile {profile}{extra}")


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12, help="held-out inputs to answer (default: 12)")
    d = EngineConfig()
    p.add_argument(
        "--strength",
        type=float,
        help=f"steering strength in {d.strength_unit} units (default: the chat's, {d.strength:g})",
    )
    p.add_argument("--mode", choices=["exact", "cvec"], default="exact", help="default: exact")
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo profile")
    p.add_argument(
        "--regenerate-history",
        action="store_true",
        help="re-create export/data/demo_history.jsonl from the model (maintainers)",
    )
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.regenerate_history:
        regenerate_history()
    profile = ensure_profile(force=args.rebuild)
    run_chat(profile, args.n, args.strength, args.mode)
    print(f"(demo took {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
