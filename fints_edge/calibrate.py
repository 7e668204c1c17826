"""Each user's own setting, chosen on their own newest history items, on the device.

One global setting does not suit every user and model (issue 24: on real commit subjects the
shipped strength broke 180-token inputs; on Qwen-0.5B it did nothing). A user's history says what
works for them: hold out their newest items, answer each under a few settings, and keep the
setting whose answers are closest to what they actually wrote (fints_edge.agreement: ROUGE-L F
and the writing habits), never one whose answers loop (fints_edge.fade's signals).

- Held-out item i is answered with retrieval limited to items OLDER than it (its own signal holds
  its answer; newer items did not exist when it was written).
- The first candidate is the setting the user would get without calibration (the incumbent);
  another one, "no steering" first, replaces the best so far only when it beats it by more than
  one standard error of their paired per-item differences (:func:`beats`). On 4-8 held-out items
  a bare "scores higher" follows noise: on Qwen-0.5B's commit authors it swapped the model's
  default for "no steering" for 4 of 6 authors and lost 0.03 ROUGE-L on test. So calibration
  picks something measured better, beyond the noise of its own sample, or keeps the default.
  It cannot mend a held-out sample that disagrees with the user's later writing: for one Qwen
  author "no steering" led by 0.15 (> 1 SE) on 6 held-out items while steering gained 0.09
  ROUGE-L on their 12 test commits.
- The search goes by stages (retrieved examples in the prompt, sites, strength, layer, prompt
  strength, K: :data:`GRID`), each starting from the best so far. By default it measures every
  setting the stages name (at most :data:`MOST_SETTINGS`): with a 60 s budget the choice
  followed the machine and the model's size (SmolLM2 tried 9-11 settings per commit author,
  Qwen2.5-Coder-1.5B 2-4, and every 1.5B author kept the default or no steering). A time
  budget (``budget_s``, ``--budget``) is the user's cap for a slow device.
- A profile built for calibration stores a few candidate layers (``layers.candidate_layers``);
  every setting steers one of them, starting from the one nearest the default depth, and the
  stored choice always names its layer (steering all of them at once is not a candidate). A
  profile whose layers were chosen otherwise starts from all of them, as the chat steers it.
- Such a profile also stores both sites (attention and MLP) and starts from the default site
  alone: the issue's grid names sites, and on Qwen-0.5B's conditional personas the dev sweep's
  best setting steered both (docs/eval), which a calibration without a sites stage cannot reach.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fints_edge.agreement import answer_score, first_line, rouge_l
from fints_edge.config import CALIBRATED, EngineConfig
from fints_edge.errors import FintsEdgeError
from fints_edge.fade import PHRASE_FLOOR, REPETITION_FLOOR, phrase_count, repetition
from fints_edge.layers import (
    CANDIDATE_LAYER_FRACTIONS,
    DEFAULT_SITES,
    SITES,
    Site,
    candidate_layers,
    parse_sites,
    preferred_layer,
)

if TYPE_CHECKING:
    from fints_edge.engine import Engine
    from fints_edge.profile import Profile

CALIBRATION_VERSION = 1
MIN_HELD_OUT = 4
MAX_HELD_OUT = 8
MIN_OLDER = 2  # the oldest held-out item still retrieves from this many items
# None: no time cap, every setting the stages name (deterministic on any machine)
DEFAULT_BUDGET_S: float | None = None
STRENGTH_STEPS = (0.5, 2.0)  # x the best strength so far (residual units)
PROMPT_STRENGTHS = (0.0, 0.5)  # steer the prompt less than the answer (long real inputs)
KS = (1, 8)
# How a challenger must beat the best so far: its mean per-item score higher by more than this
# many standard errors of the paired differences (Breiman's one-standard-error rule; chosen as a
# rule, not tuned on any benchmark). Part of a cached calibration's identity in the evaluation.
MARGIN_SE = 1.0
SELECTION_RULE = f"paired, {MARGIN_SE:g} SE"
# The settings the stages name, in words: part of a cached calibration's identity in the
# evaluation (another grid is another calibration) and of the stored record.
GRID = (
    f"rag 0/1, sites (each, all), strength x{'/'.join(f'{f:g}' for f in STRENGTH_STEPS)}, "
    f"stored layers, prompt strength {'/'.join(f'{p:g}' for p in PROMPT_STRENGTHS)}, "
    f"K {'/'.join(map(str, KS))}"
)


def most_settings(
    n_layers: int = len(CANDIDATE_LAYER_FRACTIONS),
    rag_fixed: bool = False,
    starts_on_one: bool = True,
    n_sites: int = len(SITES),
) -> int:
    """The most settings one calibration measures on a profile storing ``n_layers`` layers and
    ``n_sites`` sites: the default, no steering, and every stage's new settings (a progress
    bar's length; stages a "no steering" best skips make it shorter). ``starts_on_one``: the
    default steers one of the stored layers (a profile built for calibration), so the layer
    stage has one fewer to try."""
    rag = 0 if rag_fixed else 2
    layers = n_layers - int(starts_on_one) if n_layers >= 2 else 0
    sites = n_sites if n_sites >= 2 else 0  # each site alone and all, less the start
    return 2 + rag + sites + len(STRENGTH_STEPS) + layers + len(PROMPT_STRENGTHS) + len(KS)


def site_choices(stored: Sequence[Site]) -> list[tuple[Site, ...]]:
    """The sites stage's settings on a profile storing ``stored``: each site alone, then all
    (none when it stores one)."""
    stored = tuple(stored)
    if len(stored) < 2:
        return []
    return [(s,) for s in stored] + [stored]


MOST_SETTINGS = most_settings()  # on a profile built for calibration (its candidate layers)


def budget_text(budget_s: float | None) -> str:
    """How long calibration tries settings, in words (the CLI's help, the evaluation's record)."""
    if budget_s is None:
        return "every setting of the grid"
    return f"a {budget_s:g} s budget"


def check_history_size(total: int, n: int | None = None) -> int:
    """How many of ``total`` items calibration holds out (default: a fifth, 4 to 8), or one
    clear error when too few would be left to retrieve from."""
    if n is None:
        n = min(MAX_HELD_OUT, max(MIN_HELD_OUT, total // 5))
    if n < 1 or total < n + MIN_OLDER:
        raise FintsEdgeError(
            f"calibration holds out {max(n, MIN_HELD_OUT)} of the newest items and needs "
            f"{MIN_OLDER} older ones to retrieve from: the history has {total} usable items; "
            "add history or build the profile without calibration"
        )
    return n


def held_out(profile: Profile, n: int | None = None) -> np.ndarray:
    """Indices of the newest ``n`` items (default: a fifth of the history, 4 to 8), oldest
    first; items without a timestamp count as older than dated ones, in file order."""
    n = check_history_size(profile.n_items, n)
    return time_order(profile)[-n:]


def time_order(profile: Profile) -> np.ndarray:
    """Item indices from oldest to newest (undated first, in file order; ties in file order)."""
    ts = np.nan_to_num(profile.timestamps.astype(np.float64), nan=-np.inf)
    return np.argsort(ts, kind="stable")


def older_than(profile: Profile, item: int) -> np.ndarray:
    """bool [N]: the items written before ``item`` (what retrieval may use when answering it)."""
    rank = np.empty(profile.n_items, np.int64)
    rank[time_order(profile)] = np.arange(profile.n_items)
    return rank < rank[item]


def answer_tokens(engine: Engine, outputs: Iterable[str], slack: int = 8, cap: int = 64) -> int:
    """Tokens per calibration answer: the longest held-out output's first line, plus slack
    (only the first line is scored; a long answer costs time and tells nothing more)."""
    llm = engine.llm
    longest = max(
        len(llm.tokenize(first_line(str(o)).encode(), add_bos=False, special=False))
        for o in outputs
    )
    return max(8, min(cap, longest + slack))


def fluent(answer: str) -> bool:
    """The guard: an answer that is empty or loops scores 0 whatever its words."""
    return (
        bool(first_line(answer))
        and repetition(answer) <= REPETITION_FLOOR
        and phrase_count(answer) <= PHRASE_FLOOR
    )


@dataclass
class Tried:
    label: str
    changes: dict[str, Any]
    score: float  # mean answer_score, 0 for a broken answer
    rouge_l: float  # mean ROUGE-L F of the first lines
    fluent: float  # share of answers the guard passed
    scores: list[float] = field(default_factory=list)  # per held-out item, in item order


def beats(challenger: Tried, best: Tried, margin_se: float = MARGIN_SE) -> bool:
    """Whether ``challenger`` is measured better than ``best`` beyond the noise of the held-out
    sample: mean paired difference > ``margin_se`` standard errors of it (and > 0)."""
    d = np.asarray(challenger.scores, np.float64) - np.asarray(best.scores, np.float64)
    if d.size == 0:
        return challenger.score > best.score
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()) > max(0.0, margin_se * se)


def resolution(scores: Sequence[Sequence[float]]) -> float:
    """The smallest held-out difference from the first setting (the default) that one standard
    error allows here: the median, over the other settings that changed some item's score, of
    the standard error of their paired per-item differences from it (nan when there is none,
    or fewer than two items). Why: on 4-8 held-out items it is often larger than the
    differences between settings on the user's later writing, and then the choice says little
    (the summary says so)."""
    first = np.asarray(scores[0], np.float64) if len(scores) else np.zeros(0)
    if first.size < 2:
        return math.nan
    diffs = [np.asarray(s, np.float64) - first for s in scores[1:]]
    ses = [float(d.std(ddof=1) / math.sqrt(d.size)) for d in diffs if d.any()]
    return float(np.median(ses)) if ses else math.nan


@dataclass
class Calibration:
    """What calibration chose and how it measured it; stored in the profile as JSON."""

    changes: dict[str, Any]  # knob -> value over the engine's config when it ran
    label: str
    score: float
    rouge_l: float
    unsteered_score: float
    unsteered_rouge_l: float
    default_score: float
    held_out: int
    seconds: float
    tried: list[Tried] = field(default_factory=list)
    budget_hit: bool = False
    rule: str = SELECTION_RULE
    grid: str = GRID

    @property
    def resolution(self) -> float:
        """See :func:`resolution` (of the settings tried, the default first)."""
        return resolution([t.scores for t in self.tried])

    def summary(self) -> str:
        r = self.resolution
        return (
            f"calibrated on {self.held_out} held-out items: {self.label}; score "
            f"{self.score:.2f} vs {self.unsteered_score:.2f} unsteered and "
            f"{self.default_score:.2f} at the default (ROUGE-L {self.rouge_l:.2f} vs "
            f"{self.unsteered_rouge_l:.2f} unsteered); {len(self.tried)} settings in "
            f"{self.seconds:.0f} s"
            + (" (time budget reached)" if self.budget_hit else "")
            + (
                ""
                if math.isnan(r)
                else f"; a difference under {r:.2f} is within one standard error on these items"
            )
        )

    def to_json(self) -> dict[str, Any]:
        noise = self.resolution
        return {
            "version": CALIBRATION_VERSION,
            "changes": {k: list(v) if isinstance(v, tuple) else v for k, v in self.changes.items()},
            "label": self.label,
            "score": self.score,
            "rouge_l": self.rouge_l,
            "unsteered_score": self.unsteered_score,
            "unsteered_rouge_l": self.unsteered_rouge_l,
            "default_score": self.default_score,
            "held_out": self.held_out,
            "seconds": self.seconds,
            "tried": [asdict(t) for t in self.tried],
            "rule": self.rule,
            "grid": self.grid,
            "resolution": None if math.isnan(noise) else noise,
            "summary": self.summary(),
        }


def stored_layers_of(profile: Profile) -> list[int]:
    return [int(x) for x in profile.layers]


def starting_layer(profile: Profile) -> int | None:
    """For a profile that stores the candidate layers (built for calibration), the one layer
    steered before calibration has chosen; None for any other profile (one layer, or layers
    chosen by hand: the chat steers all of them)."""
    stored, n_layer = stored_layers_of(profile), profile.model.n_layer
    if len(stored) < 2 or stored != candidate_layers(n_layer):
        return None
    return preferred_layer(stored, n_layer)


def starting_sites(profile: Profile) -> tuple[Site, ...] | None:
    """For a profile built for calibration that stores more sites than the default, the
    default sites (steered before calibration has chosen); None for any other profile (the
    chat steers all its sites)."""
    default = parse_sites(DEFAULT_SITES)
    stored = tuple(profile.sites)
    if starting_layer(profile) is None or stored == default or not set(default) <= set(stored):
        return None
    return default


def provisional(profile: Profile) -> dict[str, Any] | None:
    """What a profile built for calibration stores until calibration has run: its starting
    layer alone, on the default sites (an interrupted calibration never leaves it steering
    every candidate layer or site at once); None for a profile that needs nothing (see
    :func:`starting_layer`)."""
    layer = starting_layer(profile)
    if layer is None:
        return None
    stored = stored_layers_of(profile)
    changes: dict[str, Any] = {"layers": [layer]}
    where = f"layer {layer} of the stored {stored}"
    sites = starting_sites(profile)
    if sites is not None:
        changes["sites"] = list(sites)
        where += f", sites {'+'.join(sites)} of the stored {'+'.join(profile.sites)}"
    return {
        "version": CALIBRATION_VERSION,
        "changes": changes,
        "label": f"{where}, the defaults otherwise (not calibrated yet)",
        "provisional": True,
    }


def stored_changes(calibration: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """The knob changes a profile's stored calibration asks for (checked; {} when none)."""
    if not calibration:
        return {}
    if calibration.get("version") != CALIBRATION_VERSION or not isinstance(
        calibration.get("changes"), dict
    ):
        raise FintsEdgeError(
            f"{source}: calibration version {calibration.get('version')!r} is not one this "
            f"fints-edge reads ({CALIBRATION_VERSION}); run python -m fints_edge.learn "
            f"--calibrate {source} again"
        )
    changes = dict(calibration["changes"])
    unknown = set(changes) - set(CALIBRATED)
    if unknown:
        raise FintsEdgeError(f"{source}: calibration changes unknown knobs {sorted(unknown)}")
    if changes.get("layers") is not None:
        changes["layers"] = tuple(int(x) for x in changes["layers"])
    if changes.get("sites") is not None:
        changes["sites"] = tuple(str(x) for x in changes["sites"])
    return changes


def setting_key(config: EngineConfig) -> tuple[Any, ...]:
    """What makes two settings the same for calibration: the values of the knobs it chooses."""
    return tuple(
        tuple(v) if isinstance(v, list | np.ndarray) else v
        for v in (getattr(config, k) for k in CALIBRATED)
    )


def label(config: EngineConfig) -> str:
    if not config.strength:
        return "no steering" + (f", rag {config.rag}" if config.rag else "")
    layers = ",".join(map(str, config.layers)) if config.layers else "all stored"
    sites = "+".join(config.sites) if config.sites else "all stored"
    return (
        f"layer {layers}, sites {sites}, strength {config.strength:g}, K {config.k}, "
        f"rag {config.rag}, prompt strength {config.prompt_strength:g}"
    )


class Calibrator:
    """``Calibrator(engine).run()``: the engine's profile and model, its config as the default."""

    def __init__(
        self,
        engine: Engine,
        *,
        n_held_out: int | None = None,
        budget_s: float | None = DEFAULT_BUDGET_S,
        progress: Callable[[str], None] | None = None,
        guard: Callable[[str], bool] = fluent,
        rag: int | None = None,
    ) -> None:
        """``budget_s``: stop trying settings after this long (None: try them all).
        ``progress``: called once per setting measured, with a line naming it and its score.
        ``guard``: which answers count (default :func:`fluent`); a broken one scores 0.
        ``rag``: fix the retrieved examples in the prompt (the evaluation's steering-only and
        steering-on-RAG rows); None lets calibration choose 0 or 1."""
        self.engine = engine
        self.profile = engine.profile
        self.items = held_out(self.profile, n_held_out)
        self.budget_s = budget_s
        self.progress = progress
        self.guard = guard
        self.fixed: dict[str, Any] = {} if rag is None else {"rag": rag}
        self.base = engine.config
        start = starting_layer(self.profile)
        if self.base.layers is None and start is not None:
            # built for calibration: one candidate layer per setting, always named
            self.fixed["layers"] = (start,)
        sites = starting_sites(self.profile)
        if self.base.sites is None and sites is not None:
            self.fixed["sites"] = sites  # and the default sites until the sites stage
        self.max_tokens = answer_tokens(engine, self.profile.outputs[self.items])
        # what each held-out item may retrieve: the items older than it (computed once)
        self.allowed = {int(i): older_than(self.profile, int(i)) for i in self.items}
        self._scored: dict[tuple[Any, ...], Tried] = {}
        self.stored_layers = stored_layers_of(self.profile)
        first = self.fixed.get("layers") or self.base.layers or ()
        self.most = most_settings(
            len(self.stored_layers),
            rag_fixed="rag" in self.fixed,
            starts_on_one=len(first) == 1 and int(first[0]) in self.stored_layers,
            n_sites=len(self.profile.sites),
        )

    def run(self) -> Calibration:
        t0 = time.perf_counter()
        base, stored_layers = self.base, self.stored_layers
        default = self.measure(dict(self.fixed))
        unsteered = self.measure({"strength": 0.0, "rag": 0} | self.fixed)
        best = unsteered if beats(unsteered, default) else default
        budget_hit = False
        for stage in self._stages(stored_layers):
            for changes in stage(best):
                budget_hit = self.budget_s is not None and time.perf_counter() - t0 > self.budget_s
                if budget_hit:
                    break
                got = self.measure(best.changes | changes)
                if beats(got, best):
                    best = got
            if budget_hit:
                break
        config = replace(base, **best.changes)
        return Calibration(
            changes=best.changes,
            label=label(config),
            score=best.score,
            rouge_l=best.rouge_l,
            unsteered_score=unsteered.score,
            unsteered_rouge_l=unsteered.rouge_l,
            default_score=default.score,
            held_out=len(self.items),
            seconds=time.perf_counter() - t0,
            tried=list(self._scored.values()),
            budget_hit=budget_hit,
        )

    def _stages(self, layers: Sequence[int]) -> Iterable[Callable[[Tried], list[dict[str, Any]]]]:
        base = self.base

        def rag(_best: Tried) -> list[dict[str, Any]]:
            if "rag" in self.fixed:
                return []
            # explicit strengths: merged into an unsteered best, {"rag": 1} would stay unsteered
            return [{"rag": 1, "strength": 0.0}, {"rag": 1, "strength": base.strength}]

        def sites(best: Tried) -> list[dict[str, Any]]:
            # explicit strength, as the rag stage's: from an unsteered best, steer at the default
            s = best.changes.get("strength", base.strength) or base.strength
            current = best.changes.get("sites", base.sites) or tuple(self.profile.sites)
            return [
                {"sites": x, "strength": s}
                for x in site_choices(self.profile.sites)
                if x != tuple(current)
            ]

        def strength(best: Tried) -> list[dict[str, Any]]:
            s = best.changes.get("strength", base.strength) or base.strength
            return [{"strength": s * f} for f in STRENGTH_STEPS]

        def layer(best: Tried) -> list[dict[str, Any]]:
            if len(layers) < 2 or not best.changes.get("strength", base.strength):
                return []
            return [{"layers": (x,)} for x in layers]

        def prompt(best: Tried) -> list[dict[str, Any]]:
            if not best.changes.get("strength", base.strength):
                return []
            return [{"prompt_strength": p} for p in PROMPT_STRENGTHS if p != base.prompt_strength]

        def k(best: Tried) -> list[dict[str, Any]]:
            if not best.changes.get("strength", base.strength):
                return []
            return [{"k": x} for x in KS if x != base.k]

        return (rag, sites, strength, layer, prompt, k)

    def measure(self, changes: dict[str, Any]) -> Tried:
        """Answer every held-out item under ``base + changes``, once per setting: changes that
        name what the base already holds (its layer, say) are the same setting, not a new one."""
        config = replace(self.base, **changes)
        key = setting_key(config)
        if key in self._scored:
            return self._scored[key]
        engine, profile = self.engine, self.profile
        scores, rouges, ok = [], [], []
        old = engine.config
        engine.configure(max_tokens=self.max_tokens, **{k: getattr(config, k) for k in CALIBRATED})
        try:
            for i in self.items:
                text, gold = str(profile.inputs[i]), str(profile.outputs[i])
                steer = bool(config.strength)
                plan = None
                if steer or config.rag:
                    plan = engine.planner.plan(text, engine.config, self.allowed[int(i)])
                answer = engine.reply(text, steer=steer, plan=plan).text
                good = self.guard(answer)
                scores.append(answer_score(answer, gold) if good else 0.0)
                rouges.append(rouge_l(answer, gold))
                ok.append(good)
        finally:
            engine.configure(max_tokens=old.max_tokens, **{k: getattr(old, k) for k in CALIBRATED})
        got = Tried(
            label(config),
            dict(changes),
            _mean(scores),
            _mean(rouges),
            _mean(ok),
            [float(x) for x in scores],
        )
        self._scored[key] = got
        if self.progress is not None:
            self.progress(
                f"setting {len(self._scored)} of at most {self.most}, {got.label}: "
                f"score {got.score:.3f}, fluent {got.fluent:.2f}"
            )
        return got


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan
