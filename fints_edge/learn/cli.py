"""``python -m fints_edge.learn``: new history becomes steering on this device, without torch.

    --profile me.npz --add more.jsonl       append items to a profile (atomic write)
    --history h.jsonl --out me.npz          build a whole profile on the device
    --profile me.npz --forget ID            drop one item
    --history h.jsonl --out me.npz --calibrate   ... then choose this user's own setting
    --calibrate me.npz                      choose it for an existing profile (fints_edge.calibrate)

Each item costs one generation (the model's own unsteered answer, the default negative, unless
the line gives ``rejected``) and the decodes of ``export.extract``'s contrast, read through the
eval callback of the same quantized model the chat uses. The retrieval index is rebuilt from the
profile's keys whenever the profile is opened, so an updated file is all there is to update.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from fints_edge._cli import cli_main
from fints_edge.calibrate import DEFAULT_BUDGET_S, MOST_SETTINGS, budget_text, provisional
from fints_edge.encode import Encoder
from fints_edge.errors import FintsEdgeError
from fints_edge.history import read_history
from fints_edge.learn.extract import DEFAULT_ANSWER_TOKENS
from fints_edge.learn.learner import Learner
from fints_edge.learn.pairs import DEFAULT_ROUGE_THRESHOLD
from fints_edge.learn.recipe import (
    add_recipe_arguments,
    extractor_for,
    new_extractor,
    recipe_from_args,
)
from fints_edge.profile import Profile, read_header


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
    what.add_argument(
        "--calibrate",
        nargs="?",
        const=True,
        metavar="PROFILE",
        help="choose the steering setting on the newest history items (held out) and store it "
        "in the profile: alone with a profile to calibrate it, or after --history",
    )
    p.add_argument("--profile", type=Path, help="the profile to update in place (atomically)")
    p.add_argument("--out", type=Path, help="with --history: the profile to write (.npz)")
    add_recipe_arguments(p.add_argument_group("new profiles (--history)"))
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
    cal = p.add_argument_group("calibration (--calibrate)")
    cal.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        metavar="SECONDS",
        help=f"stop trying settings after this long (default: {budget_text(DEFAULT_BUDGET_S)}, "
        f"at most {MOST_SETTINGS})",
    )
    cal.add_argument(
        "--aggregator",
        type=Path,
        help="aggregator.onnx (default: the one `python -m export.onnx` wrote)",
    )
    cal.add_argument(
        "--held-out",
        type=int,
        metavar="N",
        help="newest items answered per setting (default: a fifth of the history, 4 to 8)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _check_args(args: argparse.Namespace) -> str:
    actions = [name for name in ("add", "history", "forget") if getattr(args, name) is not None]
    if isinstance(args.calibrate, str):
        actions.append("calibrate")
        args.calibrate = Path(args.calibrate)
    elif args.calibrate and args.history is None:
        raise FintsEdgeError("--calibrate alone takes the profile to calibrate: --calibrate me.npz")
    if len(actions) != 1:
        raise FintsEdgeError(
            "give exactly one of --add JSONL, --history JSONL, --forget ID or --calibrate PROFILE"
        )
    action = actions[0]
    if args.budget is not None and not (args.budget > 0 and math.isfinite(args.budget)):
        raise FintsEdgeError(f"--budget must be a positive number of seconds, got {args.budget}")
    if args.held_out is not None and args.held_out < 1:
        raise FintsEdgeError("--held-out must be at least 1")
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
    recipe_from_args(args)  # --opening-tokens and the rest, checked before any model loads
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
    if action == "calibrate":
        _calibrate(args, args.calibrate)
        return 0
    out, profile = _learn(args, action)
    dt = time.perf_counter() - t0
    print(
        f"wrote {out}: {profile.n_items} items, layers {profile.layers.tolist()}, "
        f"sites {', '.join(profile.sites)} ({dt:.1f} s)"
    )
    if args.calibrate:
        _calibrate(args, out)
    return 0


def _calibrate(args: argparse.Namespace, path: Path) -> None:
    """Choose the profile's own setting on its newest items and store it (atomic write). The
    Engine reads the profile, and refuses a bad one, before it loads the model."""
    from fints_edge._paths import default_gguf
    from fints_edge.calibrate import Calibrator
    from fints_edge.config import EngineConfig
    from fints_edge.engine import Engine
    from fints_edge.model_defaults import model_base

    # from what the chat would use without calibration: the defaults and the model's row
    base = EngineConfig(n_ctx=args.n_ctx, threads=args.threads, seed=args.seed)
    config = model_base(read_header(path).model, base)
    with Engine(
        args.model or default_gguf(),
        path,
        config,
        encoder_dir=args.encoder,
        aggregator_path=args.aggregator,
    ) as engine:
        say = None if args.quiet else (lambda line: print(f"  {line}", file=sys.stderr))
        calibrator = Calibrator(engine, n_held_out=args.held_out, budget_s=args.budget,
                                progress=say)  # fmt: skip
        if say is not None:
            say(
                f"answering {len(calibrator.items)} held-out items per setting, at most "
                f"{calibrator.most} settings ({budget_text(args.budget)})"
            )
        result = calibrator.run()
        replace(engine.profile, calibration=result.to_json()).save(path)
    print(f"{path}: {result.summary()}")


def _learn(args: argparse.Namespace, action: str) -> tuple[Path, Profile]:
    from fints_edge._paths import default_encoder_dir, default_gguf
    from fints_edge.llama.inject import open_steerable
    from fints_edge.llama.model import check_gguf, identity_from_llama

    model = check_gguf(args.model or default_gguf())
    items = read_history(args.add if action == "add" else args.history)  # fail before loading
    old = Profile.load(args.profile) if action == "add" else None
    # the flags' defaults are the server's recipe too; built for calibration, candidate layers
    recipe = recipe_from_args(args, for_calibration=bool(args.calibrate))
    encoder = Encoder(args.encoder or default_encoder_dir(), threads=args.threads)
    if old is not None:
        encoder.check_compatible(old.encoder_name, old.encoder_probe, str(args.profile))
    llm, injector = open_steerable(model, "exact", n_ctx=args.n_ctx, n_threads=args.threads)
    try:
        if old is not None:
            old.check_model(identity_from_llama(llm), args.profile)
            extractor = extractor_for(llm, injector, old)
        else:
            extractor = new_extractor(llm, injector, recipe)
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
        profile = learner.new_profile(items, opening=recipe.stores_opening, progress=progress)
        if args.calibrate:  # until calibration has run (or if it is interrupted): one layer
            profile = replace(profile, calibration=provisional(profile))
        return profile.save(args.out), profile
    finally:
        llm.close()
