"""Every per-request knob, declared once: its default, its bounds and its help.

:class:`EngineConfig` is the value; each field's ``knob(...)`` metadata is the declaration that
the chat's and the server's command lines (:func:`add_knob_arguments`), the server's per-request
``fints`` object (:func:`parse_request_knobs`) and the engine (:func:`check_config`) all derive
from, so a bound or a default changes in one place.

The steering defaults are the setting ``make eval`` chose on the dev split on SmolLM2-135M
(docs/eval/README.md): layer ~2/3 of the depth (``layers.default_layer``), the attention site
(``layers.DEFAULT_SITES``), strength 0.25 of the residual norm, K 3, uniform weights, per-item
normalisation, the repeat fade at 0.5, no repeated token 3-grams, opening signals at 1x.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

from fints_edge.errors import FintsEdgeError
from fints_edge.layers import SITE_CHOICES, Site, parse_sites
from fints_edge.scaling import STRENGTH_UNITS, StrengthUnit

Mode = Literal["cvec", "exact"]
MODES: tuple[Mode, ...] = get_args(Mode)


@dataclass(frozen=True)
class Knob:
    """How one :class:`EngineConfig` field is set, shown and checked."""

    help: str
    flag: str | None = None  # the CLI flag; None = set through another flag (--gate, --sites)
    short: str | None = None  # e.g. "-k"
    lo: float | None = None  # inclusive bounds
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    exact_only: bool = False  # a non-default value needs --mode exact
    at_start: bool = False  # fixed for an engine's life (a new Engine to change it)
    request: bool = False  # the server's per-request "fints" object may set it
    metavar: str | None = None


def knob(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field whose metadata is its :class:`Knob`."""
    return field(default=default, metadata={"knob": Knob(help, **kw)})


@dataclass(frozen=True)
class EngineConfig:
    """Per-request knobs of :class:`fints_edge.engine.Engine` (``at_start`` ones per engine)."""

    mode: Mode = knob(
        "exact",
        "exact = eval-callback Pulse-and-Re-Pulse; cvec = built-in control vector",
        flag="--mode",
        choices=MODES,
        at_start=True,
    )
    k: int = knob(3, "history items retrieved per request", flag="--top-k", short="-k", lo=1,
                  hi=64, request=True)  # fmt: skip
    strength: float = knob(
        0.25, "steering strength, in --strength-unit units", flag="--strength", lo=-100.0,
        hi=100.0, request=True,
    )  # fmt: skip
    strength_unit: StrengthUnit = knob(
        "residual",
        "absolute = a multiplier of the aggregated signal; residual = a share of the layer's "
        "residual-stream norm for a typical item, comparable across models",
        flag="--strength-unit",
        choices=STRENGTH_UNITS,
    )
    item_norm: bool = knob(
        True, "give each retrieved item's signal the same norm before averaging", flag="--item-norm"
    )
    prompt_strength: float = knob(
        1.0,
        "share of the steering on the prompt but its last token; 0 = steer the answer only",
        flag="--prompt-strength",
        lo=0.0,
        metavar="X",
    )
    preserve_norm: bool = knob(
        False,
        "rescale each steered hidden state to its unsteered norm",
        flag="--keep-norm",
        exact_only=True,
    )
    repeat_fade: float = knob(
        0.5,
        "multiply the steering by F each time the answer repeats a token 4-gram; 1 = off",
        flag="--repeat-fade",
        lo=0.0,
        hi=1.0,
        metavar="F",
    )
    block_repeats: int = knob(
        3,
        "a steered answer may not repeat a sequence of N tokens it already wrote; 0 = off",
        flag="--block-repeats",
        lo=0,
        metavar="N",
    )
    temperature: float = knob(
        0.0, "softmax(similarity/T) weights; 0 = uniform mean (the paper's)", flag="--temperature",
        lo=0.0,
    )  # fmt: skip
    sim_floor: float = knob(0.0, "novelty gate: no steering at or below this best similarity")
    sim_full: float = knob(0.0, "... full steering at or above it; FULL <= FLOOR = no gate")
    sites: tuple[Site, ...] | None = knob(None, "steer only these sites; None = all the profile's")
    layers: tuple[int, ...] | None = knob(None, "steer only these layers; None = all the profile's")
    half_life_days: float = knob(
        0.0,
        "favour recent items: weight halves every DAYS before the newest item; 0 = off",
        flag="--half-life",
        lo=0.0,
        metavar="DAYS",
    )
    opening_scale: float = knob(
        1.0,
        "steer where the answer starts with the profile's opening signals at --strength x X "
        "(0 = off; profiles without opening signals steer without them)",
        flag="--opening-scale",
        exact_only=True,
        metavar="X",
    )
    opening_window: int = knob(
        3, "positions from the last prompt token that get the opening signal", lo=1
    )
    rag: int = knob(
        0, "retrieved examples shown as earlier chat turns", flag="--rag", lo=0, hi=16,
        request=True,
    )  # fmt: skip
    max_tokens: int = knob(128, "most tokens an answer may have", flag="--max-tokens", lo=1)
    n_ctx: int = knob(2048, "context length", flag="--n-ctx", lo=64, at_start=True)
    threads: int | None = knob(
        None, "CPU threads for prompt and generation (default: all, up to 4)", flag="--threads",
        lo=1, at_start=True,
    )  # fmt: skip
    seed: int = knob(0, "sampling seed", flag="--seed")


def knobs() -> dict[str, tuple[Knob, Any]]:
    """name -> (declaration, default), in declaration order."""
    return {f.name: (f.metadata["knob"], f.default) for f in fields(EngineConfig)}


DEFAULTS = EngineConfig()


def check_config(c: EngineConfig) -> EngineConfig:
    """Every bound of every knob, and the rules between knobs; ``c`` back, or one clear error."""
    for name, (k, default) in knobs().items():
        _check_type(name, getattr(c, name), k, default)
        check_value(name, getattr(c, name), k)
        if getattr(c, name) != default:  # the default of a graph-only knob is cvec's too
            _check_mode(name, getattr(c, name), k, c.mode)
    if c.block_repeats == 1:
        raise FintsEdgeError(
            f"block_repeats {c.block_repeats}: an n-gram size of 2 or more, or 0 (off)"
        )
    if c.sites is not None:
        bad = [s for s in c.sites if s not in get_args(Site)]
        if bad or not c.sites:
            raise FintsEdgeError(f"sites {c.sites}: choose among {', '.join(get_args(Site))}")
    return c


def _check_mode(name: str, value: Any, k: Knob, mode: str) -> None:
    """A graph-only knob set (truthy) needs the eval callback."""
    if k.exact_only and mode != "exact" and value:
        raise FintsEdgeError(f"{_label(name, k)} acts inside the graph: it needs --mode exact")


def _check_type(name: str, value: Any, k: Knob, default: Any) -> None:
    """A value of the knob's type (an int where a float is declared is fine)."""
    if value is None or default is None or isinstance(default, tuple):
        return
    want = type(default)
    kinds = {bool: bool, int: numbers.Integral, float: numbers.Real}.get(want, want)
    ok = isinstance(value, kinds) and (want is bool or not isinstance(value, bool))
    if not ok:
        raise KnobError(f"{_label(name, k)} must be {want.__name__}, got {value!r}", name)


class KnobError(FintsEdgeError):
    """A knob out of its declared bounds; ``param`` names it as the caller spelled it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check_value(name: str, value: Any, k: Knob, label: str | None = None) -> None:
    """``value`` within knob ``k``'s declaration, or a :class:`KnobError` naming ``label``
    (default: the flag)."""
    label = label or _label(name, k)
    if value is None:
        return
    if k.choices is not None:
        if value not in k.choices:
            raise KnobError(
                f"{label} {value!r}: choose one of {', '.join(map(str, k.choices))}", label
            )
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise KnobError(f"{label} must be a finite number, got {value}", label)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    lo, hi = k.lo, k.hi
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        what = "an integer" if isinstance(value, int) else "a number"
        if lo is not None and hi is not None:
            bounds = f"in [{lo:g}, {hi:g}]"
        else:
            bounds = f">= {lo:g}" if lo is not None else f"<= {hi:g}"
        raise KnobError(f"{label} must be {what} {bounds}, got {value}", label)


def _label(name: str, k: Knob) -> str:
    if k.flag is None:
        return name
    return f"{k.short}/{k.flag}" if k.short else k.flag


# -- command lines -------------------------------------------------------------------------------
# The knobs the chat and the server offer as flags, by group.
STEERING_FLAGS = (
    "mode", "strength", "strength_unit", "prompt_strength", "item_norm", "preserve_norm",
    "block_repeats", "repeat_fade", "k", "temperature", "half_life_days", "opening_scale",
)  # fmt: skip
GENERATION_FLAGS = ("rag", "max_tokens", "n_ctx", "threads")


def add_knob_arguments(
    group: argparse._ActionsContainer, names: Iterable[str], base: EngineConfig = DEFAULTS
) -> None:
    """One argparse flag per named knob, its help ending in the default it falls back to.
    Defaults are left as None (not given) so a caller can tell a flag from a default."""
    table = knobs()
    for name in names:
        k, _ = table[name]
        default = getattr(base, name)
        if isinstance(default, bool) or default is None:
            shown = "on" if default else "off"
        else:
            shown = default
        opts: dict[str, Any] = {
            "dest": name,
            "default": None,
            "help": f"{k.help} (default: {shown})",
        }
        if isinstance(default, bool):
            opts["action"] = argparse.BooleanOptionalAction
        else:
            opts["type"] = type(default) if default is not None else int
            if k.choices is not None:
                opts["choices"] = k.choices
            if k.metavar:
                opts["metavar"] = k.metavar
        if k.flag is None:
            raise FintsEdgeError(f"knob {name} has no flag of its own")
        flags = [k.short, k.flag] if k.short else [k.flag]
        group.add_argument(*flags, **opts)


def add_gate_and_sites(group: argparse._ActionsContainer) -> None:
    """The two knobs whose flag is not a plain value: --gate FLOOR:FULL and --sites."""
    group.add_argument(
        "--gate",
        metavar="FLOOR:FULL",
        help="fade steering out when the best similarity is below FULL, off at FLOOR "
        "(default: off)",
    )
    group.add_argument(
        "--sites",
        choices=SITE_CHOICES,
        help="which of the profile's signals to inject (default: every site it has)",
    )


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The knobs the command line named (flags left at None are not given); --gate and --sites
    parsed here."""
    values = {
        f.name: getattr(args, f.name)
        for f in fields(EngineConfig)
        if getattr(args, f.name, None) is not None and f.name not in ("sites",)
    }
    gate = getattr(args, "gate", None)
    if gate:
        values.update(zip(("sim_floor", "sim_full"), _gate(gate), strict=True))
    sites = getattr(args, "sites", None)
    if sites and sites != "both":
        values["sites"] = parse_sites(sites)
    return values


def config_from_args(args: argparse.Namespace, base: EngineConfig = DEFAULTS) -> EngineConfig:
    """The flags given (not None) over ``base``, checked."""
    values = flag_values(args)
    table, mode = knobs(), values.get("mode", base.mode)
    for name, value in values.items():  # asked for by flag: refused even at the default value
        _check_mode(name, value, table[name][0], mode)
    return check_config(replace(base, **values))


def _gate(text: str) -> tuple[float, float]:
    try:
        floor, full = (float(x) for x in text.split(":"))
    except ValueError:
        raise FintsEdgeError(
            f"--gate takes FLOOR:FULL similarities, e.g. 0.2:0.5, not '{text}'"
        ) from None
    if not (math.isfinite(floor) and math.isfinite(full) and full > floor):
        raise FintsEdgeError(f"--gate {text}: FLOOR:FULL needs finite FULL > FLOOR")
    return floor, full


# -- the server's per-request object -------------------------------------------------------------
REQUEST_KNOBS: tuple[str, ...] = tuple(n for n, (k, _) in knobs().items() if k.request)
# What per-user calibration (fints_edge.calibrate) may choose and a profile may store; a reply
# reports these and the request knobs as the setting it was written under.
CALIBRATED: tuple[str, ...] = ("strength", "layers", "sites", "k", "rag", "prompt_strength")
SETTING_KNOBS: tuple[str, ...] = tuple(dict.fromkeys((*REQUEST_KNOBS, *CALIBRATED)))


def parse_request_knobs(
    obj: Mapping[str, Any], base: EngineConfig, where: str = "fints"
) -> EngineConfig:
    """A request's ``fints`` knobs over ``base``: only :data:`REQUEST_KNOBS`, each type- and
    bound-checked by the same declaration as the flags (a :class:`KnobError` naming the field,
    e.g. ``'fints.k'``)."""
    table, values = knobs(), {}
    for name in REQUEST_KNOBS:
        if name not in obj:
            continue
        value, default, label = obj[name], getattr(base, name), f"'{where}.{name}'"
        integer = isinstance(default, int)
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            k = table[name][0]
            what = "an integer" if integer else "a number"
            bounds = (
                f" in [{k.lo:g}, {k.hi:g}]"
                if integer and k.lo is not None and k.hi is not None
                else ""
            )
            raise KnobError(f"{label} must be {what}{bounds}", f"{where}.{name}")
        try:
            check_value(name, type(default)(value), table[name][0], label)
        except KnobError as e:
            raise KnobError(str(e).split(", got ")[0], f"{where}.{name}") from None
        values[name] = type(default)(value)
    return check_config(replace(base, **values))
