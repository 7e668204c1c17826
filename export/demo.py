"""``make demo``: build a profile for a user with an unmistakable style, then chat with it.

The demo user writes every headline in lowercase. Their history (export/data/demo_history.jsonl)
pairs 36 fictional news snippets with the default model's own zero-shot headline (``rejected``)
and the same headline in lowercase (``output``), so the contrast is pure style. Twelve held-out
snippets are then answered unsteered and steered on the quantized GGUF, side by side, and the
share of lowercase letters is printed for both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fints_edge._cli import cli_main
from fints_edge._paths import cache_dir, default_aggregator_path, default_encoder_dir, default_gguf

DATA = Path(__file__).parent / "data"
SNIPPETS = DATA / "news.jsonl"
HISTORY = DATA / "demo_history.jsonl"
TASK = "Write a one-line headline for this news snippet: "


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
    from fints_edge.model import open_llama
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


# The demo user is calibrated on its own (calibration.md: lowercase sticks at layer 22 of 30 with
# both sites at strength 4); the product defaults come from the mixed-style dev sweep instead.
DEMO_LAYERS = (22,)
DEMO_K = 5


def ensure_profile(force: bool = False) -> Path:
    from export.build import BuildOptions, build_profile
    from export.onnx import export_aggregator, export_encoder

    export_encoder(default_encoder_dir())
    export_aggregator(default_aggregator_path())
    out = cache_dir() / "demo" / "me.npz"
    if out.is_file() and not force and out.stat().st_mtime > HISTORY.stat().st_mtime:
        print(f"using the demo profile built earlier: {out}", file=sys.stderr)
        return out
    print("building the demo profile (torch, once)...", file=sys.stderr)
    opts = BuildOptions(layers=DEMO_LAYERS, sites=("attn", "mlp"), negatives="given")
    build_profile(default_gguf(), HISTORY, out, opts)
    return out


def run_chat(profile: Path, n: int, strength: float, mode: str) -> None:
    from fints_edge.chat import side_by_side
    from fints_edge.engine import Engine, EngineConfig

    tests = snippets("test")[:n]
    config = EngineConfig(mode=mode, strength=strength, k=DEMO_K, max_tokens=32)  # type: ignore[arg-type]
    shares: dict[str, list[float]] = {"unsteered": [], "steered": []}
    with Engine(default_gguf(), profile, config) as engine:
        print(
            f"\n== demo chat: {engine.profile.n_items} history items, layer(s) "
            f"{engine.profile.layers.tolist()}, strength {strength}, mode {mode} =="
        )
        for snippet in tests:
            text = TASK + snippet
            plan = engine.plan(text)
            base, steered = (
                engine.reply(text, steer=False, plan=plan),
                engine.reply(text, plan=plan),
            )
            shares["unsteered"].append(lowercase_share(base.text))
            shares["steered"].append(lowercase_share(steered.text))
            print(f"\n> {snippet[:90]}...")
            print(side_by_side(base.text, steered.text))
    mean = {k: sum(v) / len(v) for k, v in shares.items()}
    all_lower = {k: sum(s > 0.99 for s in v) for k, v in shares.items()}
    print(
        f"\nlowercase share of letters over {len(tests)} held-out inputs: "
        f"unsteered {mean['unsteered']:.2f}, steered {mean['steered']:.2f}; "
        f"all-lowercase answers: {all_lower['unsteered']}/{len(tests)} -> {all_lower['steered']}/{len(tests)}"
    )
    print(
        "try it yourself (the demo's calibrated setting; the chat's defaults come from make eval):"
        f"\n  .venv/bin/python -m fints_edge.chat --profile {profile} --strength {strength:g} -k {DEMO_K}"
    )


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12, help="held-out inputs to answer (default: 12)")
    p.add_argument("--strength", type=float, default=4.0, help="default: 4.0 (calibration.md)")
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
