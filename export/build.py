"""``python -m export.build --model M --history H.jsonl --out me.npz``: a user's profile.

history -> contrast pairs -> per-item attention/MLP signals (torch hooks) + retrieval keys
(the same ONNX encoder the device uses) -> an atomically written, model-bound profile.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fints_edge._cli import cli_main
from fints_edge.errors import FintsEdgeError
from fints_edge.history import HistoryItem, read_history
from fints_edge.layers import (
    AttnReading,
    Site,
    check_layers,
)
from fints_edge.learn.extract import DEFAULT_ANSWER_TOKENS
from fints_edge.learn.pairs import (
    DEFAULT_ROUGE_THRESHOLD,
    NEGATIVE_SOURCES,
    RETRY_SAMPLING,
    NegativeFn,
    build_pairs,
    others_negative,
)
from fints_edge.learn.recipe import Recipe, add_recipe_arguments, recipe_from_args
from fints_edge.profile import Profile, PromptFormat

_NEW = Recipe()  # a new profile's layers, sites, reading, layout, openings: as on the device


@dataclass(frozen=True)
class BuildOptions:
    layers: tuple[int, ...] | None = _NEW.layers  # HF decoder indices; None = ~2/3 of the depth
    sites: tuple[Site, ...] = _NEW.sites
    attn_reading: AttnReading = _NEW.attn_reading
    negatives: str = "zero-shot"
    others: Path | None = None
    rouge_threshold: float = DEFAULT_ROUGE_THRESHOLD
    prompt_format: PromptFormat = _NEW.prompt_format
    max_new_tokens: int = DEFAULT_ANSWER_TOKENS
    # Answer positions the opening signals average over; 0 = store none (half the signal
    # bytes). The chat steers with them by default (the dev sweep kept them: docs/eval).
    opening_tokens: int = _NEW.opening_tokens
    encoder_dir: Path | None = None
    seed: int = 0
    progress: bool = True


def build_profile(
    model_ref: str | Path, history: str | Path, out: str | Path, opts: BuildOptions
) -> Profile:
    """Build and save a profile; returns it. Reads everything before writing anything."""
    import torch

    from export.extract import extract_signals
    from export.models import identity_from_hf, load_hf
    from export.onnx import export_encoder
    from fints_edge.encode import Encoder

    items = read_history(history)  # fails fast on a bad file, before any model loads
    others = read_history(opts.others) if opts.others else None
    if opts.negatives == "others" and others is None:
        raise FintsEdgeError("--negatives others needs --others OTHER_USERS.jsonl")
    torch.manual_seed(opts.seed)

    model, tokenizer = load_hf(model_ref)
    _check_lengths(items, tokenizer, model.config, opts, history)
    identity = identity_from_hf(model, tokenizer)
    layers = opts.layers or tuple(_NEW.layers_for(identity.n_layer))
    layers = tuple(check_layers(sorted(set(layers)), identity.n_layer))
    from export.extract import resolve_prompt_format

    # a model without a chat template is prompted plain, and the profile must say so
    opts = replace(opts, prompt_format=resolve_prompt_format(tokenizer, opts.prompt_format))

    negative: NegativeFn | None
    if opts.negatives == "zero-shot":
        negative = _zero_shot(model, tokenizer, opts)
    elif opts.negatives == "others":
        assert others is not None
        negative = others_negative(others, opts.seed)
    else:
        negative = None
    pairs, report = build_pairs(
        items, negative, threshold=opts.rouge_threshold, progress=opts.progress
    )
    _say(report.summary())

    extracted = extract_signals(
        model,
        tokenizer,
        [(p.input, p.chosen, p.rejected) for p in pairs],
        layers,
        attn_reading=opts.attn_reading,
        prompt_format=opts.prompt_format,
        sites=opts.sites,
        opening_tokens=max(1, opts.opening_tokens),
        progress=opts.progress,
    )
    encoder = Encoder(export_encoder(opts.encoder_dir))
    kept = [items[p.index] for p in pairs]
    profile = Profile.from_learned(
        model=identity,
        layers=layers,
        sites=opts.sites,
        attn_reading=opts.attn_reading,
        prompt_format=opts.prompt_format,
        inputs=[p.input for p in pairs],
        outputs=[p.chosen for p in pairs],
        signals=extracted.signals,  # [N, S, L, n_embd]
        keys=encoder.encode([p.input for p in pairs]),  # [N, D]
        timestamps=[it.timestamp for it in kept],  # NaN stays NaN (unknown)
        residual_norms=extracted.residual_norms,
        encoder_name=encoder.name,
        encoder_probe=encoder.probe(),
        opening=extracted.opening if opts.opening_tokens else None,
        opening_tokens=opts.opening_tokens,
    )
    profile.save(out)
    return profile


def _check_lengths(
    items: Sequence[HistoryItem], tokenizer, config, opts: BuildOptions, history: str | Path
) -> None:
    """Refuse an item longer than the model's positions before any work: torch would compute
    signals past them (garbage), and llama.cpp on the device refuses such an item anyway."""
    from export.extract import prompt_ids

    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        return
    for i, it in enumerate(items):
        answers = [it.output, it.rejected or ""]
        longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        if it.rejected is None:
            longest = max(longest, opts.max_new_tokens)  # room for the generated negative
        n = len(prompt_ids(tokenizer, it.input, opts.prompt_format)) + longest
        if n > limit:
            raise FintsEdgeError(
                f"{history}: item {i + 1} (input {it.input[:30]!r}...) is {n:,} tokens with its "
                f"answer, over the {limit:,} positions the model handles; shorten or drop it"
            )


def _zero_shot(model, tokenizer, opts: BuildOptions) -> NegativeFn:
    """The base model's own answer: greedy first, one sampled retry (the authors' two tries)."""
    import torch

    from export.extract import prompt_ids

    def answer(text: str, attempt: int) -> str:
        ids = torch.tensor([prompt_ids(tokenizer, text, opts.prompt_format)])
        sampling = {"do_sample": True, **RETRY_SAMPLING} if attempt else {"do_sample": False}
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=opts.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                **sampling,
            )
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    return answer


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    d = BuildOptions()
    p = argparse.ArgumentParser(prog="python -m export.build", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        required=True,
        help="HF model folder or .gguf (a GGUF is dequantized once and cached)",
    )
    p.add_argument(
        "--history",
        required=True,
        help='JSONL, one {"input", "output"[, "rejected", "timestamp"]} per line',
    )
    p.add_argument("--out", required=True, help="profile to write (.npz); replaced atomically")
    add_recipe_arguments(p.add_argument_group("signals"))
    n = p.add_argument_group("negatives")
    n.add_argument(
        "--negatives",
        choices=NEGATIVE_SOURCES,
        default=d.negatives,
        help="where rejected texts come from when a line has none (default: zero-shot)",
    )
    n.add_argument("--others", type=Path, help="other users' history JSONL, for --negatives others")
    n.add_argument(
        "--rouge-threshold",
        type=float,
        default=d.rouge_threshold,
        help=f"drop generated negatives with ROUGE-L >= this vs the output (default: {d.rouge_threshold})",
    )
    n.add_argument(
        "--max-new-tokens", type=int, default=d.max_new_tokens, help="zero-shot answer length"
    )
    p.add_argument(
        "--encoder-dir", type=Path, help="ONNX encoder folder (exported once if missing)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@cli_main("interrupted; the profile file is unchanged")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    recipe = recipe_from_args(args)
    opts = BuildOptions(
        layers=recipe.layers,
        sites=recipe.sites,
        attn_reading=recipe.attn_reading,
        negatives=args.negatives,
        others=args.others,
        rouge_threshold=args.rouge_threshold,
        prompt_format=recipe.prompt_format,
        max_new_tokens=args.max_new_tokens,
        opening_tokens=recipe.opening_tokens,
        encoder_dir=args.encoder_dir,
        seed=args.seed,
        progress=not args.quiet,
    )
    if not Path(args.out).name.endswith(".npz"):
        raise FintsEdgeError(f"--out {args.out}: a profile file name must end in .npz")
    if Path(args.out).is_dir():
        raise FintsEdgeError(f"--out {args.out}: is a folder; name the profile file to write")
    if args.max_new_tokens < 1:
        raise FintsEdgeError("--max-new-tokens must be >= 1")
    if not np.isfinite(args.rouge_threshold):
        raise FintsEdgeError(
            f"--rouge-threshold must be a finite number, got {args.rouge_threshold}"
        )
    t0 = time.perf_counter()
    profile = build_profile(args.model, args.history, args.out, opts)
    dt = time.perf_counter() - t0
    _say(
        f"wrote {args.out}: {profile.n_items} items, layers {profile.layers.tolist()}, "
        f"sites {', '.join(profile.sites)} ({dt:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
