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
from fints_edge.extract import DEFAULT_ANSWER_TOKENS, DEFAULT_OPENING_TOKENS
from fints_edge.history import HistoryItem, read_history
from fints_edge.layers import (
    ATTN_READINGS,
    DEFAULT_SITES,
    SITE_CHOICES,
    AttnReading,
    Site,
    check_layers,
    default_layer,
    parse_sites,
)
from fints_edge.pairs import (
    DEFAULT_ROUGE_THRESHOLD,
    NEGATIVE_SOURCES,
    RETRY_SAMPLING,
    NegativeFn,
    build_pairs,
    others_negative,
)
from fints_edge.profile import PROMPT_FORMATS, Profile, PromptFormat, normalised_keys, utc_now


@dataclass(frozen=True)
class BuildOptions:
    layers: tuple[int, ...] | None = None  # HF decoder indices; None = ~2/3 of the depth
    sites: tuple[Site, ...] = parse_sites(DEFAULT_SITES)
    attn_reading: AttnReading = "output"
    negatives: str = "zero-shot"
    others: Path | None = None
    rouge_threshold: float = DEFAULT_ROUGE_THRESHOLD
    prompt_format: PromptFormat = "chat"
    max_new_tokens: int = DEFAULT_ANSWER_TOKENS
    # Answer positions the opening signals average over; 0 = store none (half the signal
    # bytes). The chat steers with them by default (the dev sweep kept them: docs/eval).
    opening_tokens: int = DEFAULT_OPENING_TOKENS
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
    layers = opts.layers or (default_layer(identity.n_layer),)
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
    profile = Profile(
        model=identity,
        layers=np.asarray(layers, dtype=np.int32),
        sites=tuple(opts.sites),
        attn_reading=opts.attn_reading,
        signals=extracted.signals.astype(np.float16),  # [N, S, L, n_embd]
        keys=normalised_keys(encoder.encode([p.input for p in pairs])),  # [N, D]
        inputs=np.asarray([p.input for p in pairs], dtype=str),
        outputs=np.asarray([p.chosen for p in pairs], dtype=str),
        timestamps=np.asarray([it.timestamp for it in kept], dtype=np.float64),
        residual_norms=extracted.residual_norms.astype(np.float32),
        encoder_name=encoder.name,
        encoder_probe=encoder.probe(),
        prompt_format=opts.prompt_format,
        created=utc_now(),
        opening=extracted.opening.astype(np.float16) if opts.opening_tokens else None,
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
    s = p.add_argument_group("signals")
    s.add_argument(
        "--layers",
        type=int,
        nargs="+",
        help="HF 0-based decoder layers (default: ~2/3 of the depth)",
    )
    s.add_argument(
        "--sites", choices=SITE_CHOICES, default=DEFAULT_SITES, help=f"default: {DEFAULT_SITES}"
    )
    s.add_argument(
        "--attn-reading",
        choices=ATTN_READINGS,
        default=d.attn_reading,
        help="attention site: block output (paper) or residual after attention (authors' code)",
    )
    s.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default=d.prompt_format,
        help="lay input + answer out with the chat template or as plain text (default: chat)",
    )
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
    s.add_argument(
        "--opening-tokens",
        type=int,
        default=d.opening_tokens,
        help="also store opening signals averaged over this many first answer positions, for "
        f"--opening-scale in the chat (default: {d.opening_tokens}; 0 = none)",
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
    opts = BuildOptions(
        layers=tuple(args.layers) if args.layers else None,
        sites=parse_sites(args.sites),
        attn_reading=args.attn_reading,
        negatives=args.negatives,
        others=args.others,
        rouge_threshold=args.rouge_threshold,
        prompt_format=args.prompt_format,
        max_new_tokens=args.max_new_tokens,
        opening_tokens=args.opening_tokens,
        encoder_dir=args.encoder_dir,
        seed=args.seed,
        progress=not args.quiet,
    )
    if not Path(args.out).name.endswith(".npz"):
        raise FintsEdgeError(f"--out {args.out}: a profile file name must end in .npz")
    if Path(args.out).is_dir():
        raise FintsEdgeError(f"--out {args.out}: is a folder; name the profile file to write")
    if args.max_new_tokens < 1 or args.opening_tokens < 0:
        raise FintsEdgeError("need --max-new-tokens >= 1 and --opening-tokens >= 0")
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
