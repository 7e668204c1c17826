"""``python -m fints_edge.chat --model q4.gguf --profile me.npz``: personal chat on this device.

Interactive by default (streamed answers, slash commands), or one-shot with ``--prompt`` and
optionally ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import fields

from fints_edge._cli import cli_main
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import SITE_CHOICES, parse_sites
from fints_edge.scaling import STRENGTH_UNITS

HELP = """commands:
  /steer on|off     turn personal steering on or off
  /strength X       steering strength (in --strength-unit: a share of the residual by default)
  /k N              how many history items to retrieve
  /rag N            how many retrieved items to show the model as earlier turns (0 = none)
  /opening X        opening-signal strength where the answer starts (0 = off; exact mode)
  /why [TEXT]       the retrieved history items and their weights for TEXT (default: last input)
  /compare [TEXT]   unsteered and steered answers side by side (default: last input)
  /want TEXT        TEXT is the answer you wanted for the last input: learn it now
  /good             the last answer was right for you: learn it now
  /forget [ID]      drop history item ID from the profile (default: the last one learned)
  /help             this list
  /quit             leave (Ctrl-D works too)"""


def build_parser() -> argparse.ArgumentParser:
    from fints_edge.engine import EngineConfig

    d = EngineConfig()
    p = argparse.ArgumentParser(
        prog="python -m fints_edge.chat",
        description="Chat with a llama.cpp model steered toward one user's style (Fints).",
        epilog="Interactive commands: /steer, /strength, /k, /rag, /why, /compare, /want, /good, "
        "/forget, /help, /quit. /want, /good and /forget update the profile file at once.",
    )
    files = p.add_argument_group("files")
    files.add_argument(
        "--model", help="GGUF model (default: the embedded SmolLM2-135M-Instruct Q4_1)"
    )
    files.add_argument(
        "--profile", required=True, help="the user's profile, built by `python -m export.build`"
    )
    files.add_argument(
        "--encoder", help="ONNX encoder folder (default: the one `python -m export.onnx` wrote)"
    )
    files.add_argument(
        "--aggregator", help="aggregator.onnx (default: the one `python -m export.onnx` wrote)"
    )

    steer = p.add_argument_group("steering")
    steer.add_argument(
        "--mode",
        choices=["exact", "cvec"],
        default=d.mode,
        help=f"exact = eval-callback Pulse-and-Re-Pulse; cvec = built-in control vector (default: {d.mode})",
    )
    steer.add_argument(
        "--strength",
        type=float,
        default=d.strength,
        help=f"in --strength-unit units (default: {d.strength:g})",
    )
    steer.add_argument(
        "--strength-unit",
        choices=STRENGTH_UNITS,
        default=d.strength_unit,
        help="absolute = a multiplier of the aggregated signal; residual = a share of the "
        f"layer's residual-stream norm for a typical item, comparable across models (default: {d.strength_unit})",
    )
    steer.add_argument(
        "--prompt-strength",
        type=float,
        default=d.prompt_strength,
        metavar="X",
        help="share of the steering on the prompt; 0 = steer the answer only "
        f"(default: {d.prompt_strength:g})",
    )
    steer.add_argument(
        "--item-norm",
        action=argparse.BooleanOptionalAction,
        default=d.item_norm,
        help="give each retrieved item's signal the same norm before averaging",
    )
    steer.add_argument(
        "--keep-norm",
        dest="preserve_norm",
        action=argparse.BooleanOptionalAction,
        default=d.preserve_norm,
        help="rescale each steered hidden state to its unsteered norm (exact mode)",
    )
    steer.add_argument(
        "--block-repeats",
        type=int,
        default=d.block_repeats,
        metavar="N",
        help="a steered answer may not repeat a sequence of N tokens it already wrote; 0 = off "
        f"(default: {d.block_repeats})",
    )
    steer.add_argument(
        "--repeat-fade",
        type=float,
        default=d.repeat_fade,
        metavar="F",
        help="multiply the steering by F each time the answer repeats itself; 1 = off "
        f"(default: {d.repeat_fade:g})",
    )
    steer.add_argument(
        "-k",
        "--top-k",
        dest="k",
        type=int,
        default=d.k,
        help=f"history items retrieved per request (default: {d.k})",
    )
    steer.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        help="softmax(similarity/T) weights; 0 = uniform mean (default: 0)",
    )
    steer.add_argument(
        "--sites",
        choices=SITE_CHOICES,
        default="both",
        help="which signals to inject (default: both)",
    )
    steer.add_argument(
        "--gate",
        metavar="FLOOR:FULL",
        help="fade steering out when the best similarity is below FULL, off at FLOOR (default: off)",
    )
    steer.add_argument(
        "--half-life",
        dest="half_life_days",
        type=float,
        default=d.half_life_days,
        metavar="DAYS",
        help="favour recent items: weight halves every DAYS before the newest item (default: off)",
    )
    steer.add_argument(
        "--opening-scale",
        type=float,
        metavar="X",
        help="steer where the answer starts with the profile's opening signals at --strength "
        f"x X (exact mode; default: {d.opening_scale:g}, 0 = off; profiles built without "
        "opening signals steer without them)",
    )
    steer.add_argument("--no-steer", action="store_true", help="baseline: no steering at all")

    gen = p.add_argument_group("generation")
    gen.add_argument(
        "--rag",
        type=int,
        default=d.rag,
        help=f"retrieved examples shown as earlier turns (default: {d.rag})",
    )
    gen.add_argument(
        "--max-tokens", type=int, default=d.max_tokens, help=f"default: {d.max_tokens}"
    )
    gen.add_argument(
        "--n-ctx", type=int, default=d.n_ctx, help=f"context length (default: {d.n_ctx})"
    )
    gen.add_argument(
        "--threads", type=int, help="CPU threads for prompt and generation (default: all, up to 4)"
    )

    once = p.add_argument_group("one-shot")
    once.add_argument("--prompt", help="answer this one input and exit")
    once.add_argument(
        "--json",
        action="store_true",
        help="with --prompt: print one JSON object (text, retrieved, timings)",
    )
    once.add_argument(
        "--compare", action="store_true", help="with --prompt: print unsteered and steered answers"
    )
    return p


def _config_from(args: argparse.Namespace):  # -> EngineConfig
    from fints_edge.engine import EngineConfig

    sim_floor = sim_full = 0.0
    if args.gate:
        try:
            sim_floor, sim_full = (float(x) for x in args.gate.split(":"))
        except ValueError:
            raise FintsEdgeError(
                f"--gate takes FLOOR:FULL similarities, e.g. 0.2:0.5, not '{args.gate}'"
            ) from None
        if not (math.isfinite(sim_floor) and math.isfinite(sim_full) and sim_full > sim_floor):
            raise FintsEdgeError(f"--gate {args.gate}: FLOOR:FULL needs finite FULL > FLOOR")
    sites = None if args.sites == "both" else parse_sites(args.sites)
    known = {f.name for f in fields(EngineConfig)}
    values = {k: v for k, v in vars(args).items() if k in known and v is not None}
    values.update(sim_floor=sim_floor, sim_full=sim_full, sites=sites)
    return EngineConfig(**values)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse bad combinations before anything is loaded."""
    if (args.json or args.compare) and not args.prompt:
        raise FintsEdgeError("--json and --compare go with --prompt TEXT")
    if args.compare and args.no_steer:
        raise FintsEdgeError("--compare already shows the unsteered answer; drop --no-steer")
    if args.k < 1 or args.max_tokens < 1 or args.rag < 0 or args.n_ctx < 64:
        raise FintsEdgeError("need -k >= 1, --max-tokens >= 1, --rag >= 0 and --n-ctx >= 64")
    if args.threads is not None and args.threads < 1:
        raise FintsEdgeError("--threads must be at least 1")
    if not args.half_life_days >= 0 or not math.isfinite(args.half_life_days):
        raise FintsEdgeError("--half-life must be a finite number of days >= 0 (0 = off)")
    if args.opening_scale and args.mode != "exact":
        raise FintsEdgeError(
            "--opening-scale needs position-scoped injection: use --mode exact, or leave it out"
        )
    for flag, value in (
        ("--strength", args.strength),
        ("--opening-scale", args.opening_scale or 0.0),
        ("--temperature", args.temperature),
        ("--prompt-strength", args.prompt_strength),
        ("--repeat-fade", args.repeat_fade),
    ):
        if not math.isfinite(value):
            raise FintsEdgeError(f"{flag} must be a finite number, got {value}")
    if args.block_repeats < 0 or args.block_repeats == 1:
        raise FintsEdgeError("--block-repeats takes 0 (off) or an n-gram size of 2 or more")
    if not 0 <= args.repeat_fade <= 1 or args.prompt_strength < 0:
        raise FintsEdgeError("--repeat-fade must be in [0, 1] (1 = off), --prompt-strength >= 0")
    if args.mode == "cvec" and args.preserve_norm:
        raise FintsEdgeError(
            "--keep-norm acts inside the graph: use --mode exact or --no-keep-norm"
        )
    if args.temperature < 0:
        raise FintsEdgeError("--temperature must be >= 0 (0 = uniform weights)")


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    config = _config_from(args)
    from fints_edge._paths import default_gguf
    from fints_edge.engine import Engine

    model = args.model or default_gguf()
    with Engine(
        model, args.profile, config, encoder_dir=args.encoder, aggregator_path=args.aggregator
    ) as engine:
        c = engine.config
        if c.opening_scale and c.mode == "exact" and engine.profile.opening is None:
            print(
                f"note: {args.profile} has no opening signals, so the answer's start is steered "
                "like the rest; rebuild it (python -m fints_edge.learn --history ...) to add them",
                file=sys.stderr,
            )
        if args.prompt:
            return _one_shot(engine, args)
        return _interactive(engine, steer=not args.no_steer)


def _one_shot(engine, args: argparse.Namespace) -> int:
    if args.compare:
        plan = engine.plan(args.prompt)
        base, steered = (
            engine.reply(args.prompt, steer=False, plan=plan),
            engine.reply(args.prompt, plan=plan),
        )
        if args.json:
            print(
                json.dumps(
                    {"unsteered": base.to_json(), "steered": steered.to_json()}, ensure_ascii=False
                )
            )
        else:
            print(side_by_side(base.text, steered.text))
        return 0
    if args.json:
        print(
            json.dumps(
                engine.reply(args.prompt, steer=not args.no_steer).to_json(), ensure_ascii=False
            )
        )
        return 0
    _stream_to_stdout(engine, args.prompt, steer=not args.no_steer)
    return 0


def _stream_to_stdout(engine, text: str, *, steer: bool):
    reply = None
    for piece in engine.stream(text, steer=steer):
        if isinstance(piece, str):
            print(piece, end="", flush=True)
        else:
            reply = piece
    print()
    return reply


def side_by_side(left: str, right: str, titles: tuple[str, str] = ("unsteered", "steered")) -> str:
    width = max(20, (shutil.get_terminal_size((100, 20)).columns - 3) // 2)
    cols = [
        [t.upper(), "-" * min(width, len(t))] + textwrap.wrap(s, width)
        for t, s in zip(titles, (left, right), strict=True)
    ]
    rows = max(len(c) for c in cols)
    lines = [
        f"{_cell(cols[0], i, width)} | {_cell(cols[1], i, width)}".rstrip() for i in range(rows)
    ]
    return "\n".join(lines)


def _cell(col: list[str], i: int, width: int) -> str:
    return (col[i] if i < len(col) else "").ljust(width)


def _print_why(engine, text: str) -> None:
    plan = engine.plan(text)
    print(
        f"gate {plan.gate:.2f}; retrieval {plan.timings_ms['encode'] + plan.timings_ms['retrieve']:.1f} ms"
    )
    inputs = distinct_parts([r["input"] for r in plan.retrieved] + [text])
    for r, shown in zip(plan.retrieved, inputs, strict=False):
        print(f"  #{r['id']:<4} sim {r['similarity']:.3f}  weight {r['weight']:.3f}  {shown}")
        print(f"        -> {textwrap.shorten(r['output'], 70)}")


def distinct_parts(texts: Sequence[str], width: int = 60) -> list[str]:
    """Each text shortened to what tells it apart: a word prefix they all share (an instruction
    such as "Write a one-line headline for this news snippet:") is replaced by "..."."""
    words = [t.split() for t in texts]
    shared = 0
    if len(words) > 1:
        for column in zip(*words, strict=False):
            if len(set(column)) > 1:
                break
            shared += 1
        shared = min(shared, min(len(w) for w in words) - 1)  # keep at least one word each
    return [
        textwrap.shorten(("... " if shared > 0 else "") + " ".join(w[max(shared, 0) :]), width)
        for w in words
    ]


def _interactive(engine, *, steer: bool) -> int:
    print(
        f"fints-edge chat: {engine.profile.n_items} history items, mode {engine.config.mode}, "
        f"steering {'on' if steer else 'off'}. /help for commands."
    )
    session = _Session()
    session.steer = steer
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        try:
            if line.startswith("/"):
                if _command(engine, session, line) == "quit":
                    return 0
                continue
            print("bot> ", end="", flush=True)
            reply = _stream_to_stdout(engine, line, steer=session.steer)
            session.heard(line, reply.text if reply else "", session.steer)
        except FintsEdgeError as e:
            print(f"\nerror: {' '.join(str(e).split())}")
        except KeyboardInterrupt:  # stops this answer or command, not the session
            print("\n(stopped; /quit or Ctrl-D to leave)")


def _command(engine, session: _Session, line: str) -> str | None:
    """Run one slash command; returns "quit" to leave. Bad arguments raise FintsEdgeError."""
    cmd, _, rest = line.partition(" ")
    rest = rest.strip()
    if cmd in ("/quit", "/exit", "/q"):
        return "quit"
    elif cmd == "/help":
        print(HELP)
    elif cmd == "/steer":
        if rest not in ("on", "off"):
            raise FintsEdgeError("usage: /steer on|off")
        session.steer = rest == "on"
        print(f"steering {rest}")
    elif cmd == "/strength":
        print(f"strength {engine.configure(strength=_number(cmd, rest, float)).strength}")
    elif cmd == "/k":
        print(f"k {engine.configure(k=_number(cmd, rest, int, least=1)).k}")
    elif cmd == "/opening":
        value = _number(cmd, rest, float)
        if engine.config.mode != "exact":
            raise FintsEdgeError(
                "/opening needs position-scoped injection: restart with --mode exact"
            )
        print(f"opening {engine.configure(opening_scale=value).opening_scale}")
    elif cmd == "/rag":
        print(f"rag {engine.configure(rag=_number(cmd, rest, int, least=0)).rag}")
    elif cmd == "/why":
        _print_why(engine, rest or session.input or _need_input())
    elif cmd == "/compare":
        text = rest or session.input or _need_input()
        session.input = text
        plan = engine.plan(text)
        print(
            side_by_side(
                engine.reply(text, steer=False, plan=plan).text,
                engine.reply(text, plan=plan).text,
            )
        )
    elif cmd in ("/want", "/good", "/forget"):
        _feedback(engine, session, cmd, rest)
    else:
        print(f"unknown command {cmd}; /help lists them")
    return None


def _number(cmd: str, text: str, kind: type, least: float | None = None):
    """A finite int/float argument of a slash command, or a usage error naming the command."""
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise FintsEdgeError(f"usage: {cmd} N ({what}, got '{text}')") from None
    if not math.isfinite(value) or (least is not None and value < least):
        bound = f" >= {least}" if least is not None else ""
        raise FintsEdgeError(f"{cmd} needs a finite {what.removeprefix('a ')}{bound}, got '{text}'")
    return value


class _Session:
    """What feedback commands refer to: the last exchange and the last item learned."""

    def __init__(self) -> None:
        self.input = ""
        self.answer = ""
        self.steered = False
        self.learned: int | None = None
        self.steer = True

    def heard(self, text: str, answer: str, steered: bool) -> None:
        self.input, self.answer, self.steered = text, answer, steered

    def forgot(self, item: int) -> None:
        """Ids after a forgotten item move down by one (Profile.without_item)."""
        if self.learned is not None:
            if self.learned == item:
                self.learned = None
            elif self.learned > item:
                self.learned -= 1


def _feedback(engine, session: _Session, cmd: str, rest: str) -> None:
    import time

    if cmd == "/forget":
        item = _number(cmd, rest, int, least=0) if rest else session.learned
        if item is None:
            raise FintsEdgeError("usage: /forget ID (the ids are shown by /why)")
        engine.forget(item)
        session.forgot(item)
        print(f"forgot item #{item}; {engine.profile.n_items} items left")
        return
    if not session.input:
        raise FintsEdgeError("no answer yet to give feedback on: type a message first")
    if cmd == "/want":
        if not rest:
            raise FintsEdgeError("usage: /want THE ANSWER YOU WANTED")
        chosen, rejected = rest, session.answer or None
    else:
        if not session.steered:
            raise FintsEdgeError(
                "the last answer was the model's own (steering off): it has nothing personal "
                "to learn; use /want TEXT with the answer you wanted"
            )
        chosen, rejected = session.answer, None  # contrast: the model's own unsteered answer
    t0 = time.perf_counter()
    item = engine.learn(session.input, chosen, rejected)
    session.learned = item
    print(
        f"learned item #{item} in {time.perf_counter() - t0:.1f} s; "
        f"{engine.profile.n_items} items in {engine.profile_path}"
    )


def _need_input() -> str:
    raise FintsEdgeError("no input yet: type a message first or give one after the command")


if __name__ == "__main__":
    sys.exit(main())
