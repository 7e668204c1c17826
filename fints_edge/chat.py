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

from fints_edge._cli import cli_main
from fints_edge.errors import FintsEdgeError

HELP = """commands:
  /steer on|off     turn personal steering on or off
  /strength X       steering strength (in --strength-unit: a share of the residual by default)
  /k N              how many history items to retrieve
  /rag N            how many retrieved items to show the model as earlier turns (0 = none)
  /opening X        opening-signal strength where the answer starts (0 = off; exact mode)
  /why [TEXT]       the setting in use, and the retrieved history items and their weights for
                    TEXT (default: last input)
  /compare [TEXT]   unsteered and steered answers side by side (default: last input)
  /want TEXT        TEXT is the answer you wanted for the last input: learn it now
  /good             the last answer was right for you: learn it now
  /forget [ID]      drop history item ID from the profile (default: the last one learned)
  /help             this list
  /quit             leave (Ctrl-D works too)"""


def build_parser() -> argparse.ArgumentParser:
    from fints_edge.config import (
        GENERATION_FLAGS,
        STEERING_FLAGS,
        add_gate_and_sites,
        add_knob_arguments,
    )

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
    add_knob_arguments(steer, STEERING_FLAGS)
    add_gate_and_sites(steer)
    steer.add_argument("--no-steer", action="store_true", help="baseline: no steering at all")
    add_knob_arguments(p.add_argument_group("generation"), GENERATION_FLAGS)

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


def check_flags(args: argparse.Namespace, base=None):  # -> EngineConfig
    """Refuse bad combinations before anything is loaded; the config the flags ask for, over
    ``base`` (default: the defaults)."""
    from fints_edge.config import DEFAULTS, config_from_args

    if (args.json or args.compare) and not args.prompt:
        raise FintsEdgeError("--json and --compare go with --prompt TEXT")
    if args.compare and args.no_steer:
        raise FintsEdgeError("--compare already shows the unsteered answer; drop --no-steer")
    return config_from_args(args, base or DEFAULTS)


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)  # the flags alone, before any file is read
    base, calibrated = calibrated_base(args.profile)
    config = check_flags(args, base)
    if calibrated:
        print(f"using {calibrated} (flags override it)", file=sys.stderr)
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


def calibrated_base(profile: str):  # -> (EngineConfig, what it is or "")
    """The defaults with the profile's model's row (fints_edge.model_defaults) and its stored
    calibration (fints_edge.calibrate) applied, and what to call it: "P's calibrated setting:
    ...", for a profile built for calibration that has not been calibrated yet "P's stored
    setting: ..." with the command that calibrates it, "the defaults for MODEL (...)" or ""."""
    from dataclasses import replace

    from fints_edge.calibrate import stored_changes
    from fints_edge.model_defaults import describe, model_base
    from fints_edge.profile import read_header

    header = read_header(profile)
    base, calibration = model_base(header.model), header.calibration
    changes = stored_changes(calibration, str(profile))
    if not changes:
        return base, describe(header.model)
    assert calibration is not None
    label = str(calibration.get("label", ""))
    if calibration.get("provisional"):
        label = (f"{profile}'s stored setting: {label}; python -m fints_edge.learn --calibrate "
                 f"{profile} chooses yours")  # fmt: skip
    else:
        label = f"{profile}'s calibrated setting: {label}"
    return replace(base, **changes), label


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
    from fints_edge.calibrate import label

    plan = engine.plan(text)
    print(f"setting: {label(engine.config)}")  # calibrated, the model's defaults or the flags
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
