"""``python -m fints_edge.learn``: new history becomes steering on this device, without torch.

    --profile me.npz --add more.jsonl       append items to a profile (atomic write)
    --history h.jsonl --out me.npz          build a whole profile on the device
    --profile me.npz --forget ID            drop one item

Each item costs one generation (the model's own unsteered answer, the default negative, unless
the line gives ``rejected``) and the decodes of ``export.extract``'s contrast, read through the
eval callback of the same quantized model the chat uses. The retrieval index is rebuilt from the
profile's keys whenever the profile is opened, so an updated file is all there is to update.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fints_edge._cli import cli_main
from fints_edge.encode import Encoder
from fints_edge.errors import FintsEdgeError
from fints_edge.extract import DEFAULT_ANSWER_TOKENS, DEFAULT_OPENING_TOKENS, DeviceExtractor
from fints_edge.history import HistoryItem, read_history
from fints_edge.layers import (
    ATTN_READINGS,
    DEFAULT_SITES,
    SITE_CHOICES,
    AttnReading,
    Site,
    default_layer,
    parse_sites,
)
from fints_edge.pairs import DEFAULT_ROUGE_THRESHOLD, ContrastPair, build_pairs
from fints_edge.profile import PROMPT_FORMATS, Profile, PromptFormat, normalised_keys, utc_now


@dataclass(frozen=True)
class Learned:
    pairs: list[ContrastPair]
    signals: np.ndarray  # float32 [N, S, L, n_embd]
    opening: np.ndarray  # float32 [N, S, L, n_embd], first answer positions only
    residual_norms: np.ndarray  # float32 [L], mean over the items
    keys: np.ndarray  # float32 [N, D]
    timestamps: np.ndarray  # float64 [N]; items without one get the time they were learned


class Learner:
    """Turns history items into profile items with one model and one encoder."""

    def __init__(
        self,
        extractor: DeviceExtractor,
        encoder: Encoder,
        *,
        rouge_threshold: float = DEFAULT_ROUGE_THRESHOLD,
        max_new_tokens: int = DEFAULT_ANSWER_TOKENS,
        seed: int = 0,
    ) -> None:
        self.extractor = extractor
        self.encoder = encoder
        self.rouge_threshold = rouge_threshold
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def negative(self, text: str, attempt: int) -> str:
        return self.extractor.own_answer(text, attempt, self.max_new_tokens, self.seed)

    def learn(self, items: Sequence[HistoryItem], *, progress: bool = True) -> Learned:
        pairs, report = build_pairs(
            items, self.negative, threshold=self.rouge_threshold, progress=progress
        )
        if progress:
            print(report.summary(), file=sys.stderr)
        signals, norms, opening = [], [], []
        for p in tqdm(pairs, desc="signals", unit="item", disable=not progress):
            got = self.extractor.signal(p.input, p.chosen, p.rejected)
            signals.append(got.signal)
            norms.append(got.residual_norms)
            opening.append(got.opening)
        now = time.time()
        stamps = [items[p.index].timestamp for p in pairs]
        return Learned(
            pairs=pairs,
            signals=np.stack(signals),
            opening=np.stack(opening),
            residual_norms=np.mean(norms, axis=0).astype(np.float32),
            keys=self.encoder.encode([p.input for p in pairs]),
            timestamps=np.asarray([now if np.isnan(t) else t for t in stamps], np.float64),
        )

    def new_profile(
        self, items: Sequence[HistoryItem], *, opening: bool = True, progress: bool = True
    ) -> Profile:
        """``opening``: also store the opening signals (the default steers with them; False
        halves the signal bytes)."""
        from fints_edge.model import identity_from_llama

        got = self.learn(items, progress=progress)
        ex = self.extractor
        return Profile(
            model=identity_from_llama(ex.llm),
            layers=np.asarray(ex.layers, dtype=np.int32),
            sites=ex.sites,
            attn_reading=ex.attn_reading,
            signals=got.signals.astype(np.float16),
            keys=normalised_keys(got.keys),
            inputs=np.asarray([p.input for p in got.pairs], dtype=str),
            outputs=np.asarray([p.chosen for p in got.pairs], dtype=str),
            timestamps=got.timestamps,
            residual_norms=got.residual_norms,
            encoder_name=self.encoder.name,
            encoder_probe=self.encoder.probe(),
            prompt_format=ex.prompt_format,
            created=utc_now(),
            opening=got.opening.astype(np.float16) if opening else None,
            opening_tokens=ex.opening_tokens if opening else 0,
        )

    def extend(
        self, profile: Profile, items: Sequence[HistoryItem], *, progress: bool = True
    ) -> Profile:
        got = self.learn(items, progress=progress)
        return profile.with_items(
            got.signals,
            got.keys,
            [p.input for p in got.pairs],
            [p.chosen for p in got.pairs],
            got.timestamps,
            got.opening,
        )


def extractor_for(llm: Any, injector: Any, profile: Profile) -> DeviceExtractor:
    """An extractor that reads exactly the profile's layers, sites and layout."""
    return DeviceExtractor(
        llm,
        injector,
        profile.layers.tolist(),
        profile.sites,
        profile.attn_reading,
        profile.prompt_format,
        profile.opening_tokens or DEFAULT_OPENING_TOKENS,
    )


# -- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fints_edge.learn",
        description="Turn history into steering signals on this device (no torch).",
    )
    p.add_argument("--model", help="GGUF model (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    what = p.add_argument_group("what to do (one of)")
    what.add_argument("--add", type=Path, metavar="JSONL", help="append these items to --profile")
    what.add_argument("--history", type=Path, metavar="JSONL", help="build a new profile (--out)")
    what.add_argument("--forget", type=int, metavar="ID", help="drop item ID from --profile")
    p.add_argument("--profile", type=Path, help="the profile to update in place (atomically)")
    p.add_argument("--out", type=Path, help="with --history: the profile to write (.npz)")
    new = p.add_argument_group("new profiles (--history)")
    new.add_argument(
        "--layers",
        type=int,
        nargs="+",
        help="HF 0-based decoder layers (default: ~2/3 of the depth)",
    )
    new.add_argument(
        "--sites", choices=SITE_CHOICES, default=DEFAULT_SITES, help=f"default: {DEFAULT_SITES}"
    )
    new.add_argument("--attn-reading", choices=ATTN_READINGS, default="output")
    new.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat")
    new.add_argument(
        "--opening-tokens",
        type=int,
        default=DEFAULT_OPENING_TOKENS,
        help="also store opening signals over this many first answer positions, for "
        f"--opening-scale (default: {DEFAULT_OPENING_TOKENS}; 0 = none, half the size)",
    )
    neg = p.add_argument_group("negatives")
    neg.add_argument(
        "--rouge-threshold",
        type=float,
        default=DEFAULT_ROUGE_THRESHOLD,
        help=f"drop generated negatives this close to the output (default: {DEFAULT_ROUGE_THRESHOLD})",
    )
    neg.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_ANSWER_TOKENS,
        help=f"length of the model's own answer (default: {DEFAULT_ANSWER_TOKENS})",
    )
    p.add_argument("--encoder", type=Path, help="ONNX encoder folder (default: the exported one)")
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, help="CPU threads (default: all, up to 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _check_args(args: argparse.Namespace) -> str:
    actions = [name for name in ("add", "history", "forget") if getattr(args, name) is not None]
    if len(actions) != 1:
        raise FintsEdgeError("give exactly one of --add JSONL, --history JSONL or --forget ID")
    action = actions[0]
    if action in ("add", "forget") and args.profile is None:
        raise FintsEdgeError(f"--{action} needs --profile me.npz (the profile to update)")
    if action == "history":
        if args.out is None:
            raise FintsEdgeError("--history needs --out me.npz (the profile to write)")
        if args.out.suffix != ".npz":
            raise FintsEdgeError(f"--out {args.out}: a profile file name must end in .npz")
        if args.out.is_dir():
            raise FintsEdgeError(f"--out {args.out}: is a folder; name the profile file to write")
    if args.threads is not None and args.threads < 1:
        raise FintsEdgeError("--threads must be at least 1")
    if args.opening_tokens < 0:
        raise FintsEdgeError("--opening-tokens must be >= 0 (0 = no opening signals)")
    if args.max_new_tokens < 1 or args.n_ctx < 64:
        raise FintsEdgeError("need --max-new-tokens >= 1 and --n-ctx >= 64")
    if not np.isfinite(args.rouge_threshold):
        raise FintsEdgeError(
            f"--rouge-threshold must be a finite number, got {args.rouge_threshold}"
        )
    return action


@cli_main("interrupted; the profile file is unchanged")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    action = _check_args(args)
    t0 = time.perf_counter()
    if action == "forget":
        profile = Profile.load(args.profile)
        profile.without_item(args.forget).save(args.profile)
        print(f"{args.profile}: forgot item {args.forget}; {profile.n_items - 1} left")
        return 0
    out, profile = _learn(args, action)
    dt = time.perf_counter() - t0
    print(
        f"wrote {out}: {profile.n_items} items, layers {profile.layers.tolist()}, "
        f"sites {', '.join(profile.sites)} ({dt:.1f} s)"
    )
    return 0


def _learn(args: argparse.Namespace, action: str) -> tuple[Path, Profile]:
    from fints_edge._paths import default_encoder_dir, default_gguf
    from fints_edge.inject import open_steerable
    from fints_edge.model import check_gguf, identity_from_llama, n_layers

    model = check_gguf(args.model or default_gguf())
    items = read_history(args.add if action == "add" else args.history)  # fail before loading
    old = Profile.load(args.profile) if action == "add" else None
    encoder = Encoder(args.encoder or default_encoder_dir(), threads=args.threads)
    if old is not None:
        encoder.check_compatible(old.encoder_name, old.encoder_probe, str(args.profile))
    llm, injector = open_steerable(model, "exact", n_ctx=args.n_ctx, n_threads=args.threads)
    try:
        if old is not None:
            old.check_model(identity_from_llama(llm), args.profile)
            extractor = extractor_for(llm, injector, old)
        else:
            n_layer = n_layers(llm)
            sites: tuple[Site, ...] = parse_sites(args.sites)
            reading: AttnReading = args.attn_reading
            fmt: PromptFormat = args.prompt_format
            extractor = DeviceExtractor(
                llm,
                injector,
                args.layers or [default_layer(n_layer)],
                sites,
                reading,
                fmt,
                args.opening_tokens or DEFAULT_OPENING_TOKENS,
            )
        learner = Learner(
            extractor,
            encoder,
            rouge_threshold=args.rouge_threshold,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
        progress = not args.quiet
        if old is not None:
            profile = learner.extend(old, items, progress=progress)
            return profile.save(args.profile), profile
        profile = learner.new_profile(items, opening=args.opening_tokens > 0, progress=progress)
        return profile.save(args.out), profile
    finally:
        llm.close()


if __name__ == "__main__":
    sys.exit(main())
