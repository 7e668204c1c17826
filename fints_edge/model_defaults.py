"""Per-model defaults: what a profile without calibration gets on each model the evaluation ran.

One global setting does not carry across models (issue 24: the strength window differs per model
and narrows with size). Each row names a model by what every profile records of it (architecture,
depth, width) and the knob changes over :data:`fints_edge.config.DEFAULTS` that ``make eval``
chose on that model's dev split, with the run that chose them; ``tests/test_model_defaults.py``
holds each row to ``docs/eval/results.json``. A model without a row gets DEFAULTS (chosen on
SmolLM2-135M). The layer is a fraction of the depth for every model (``layers.default_layer``):
SmolLM2's and Qwen-0.5B's sweeps kept ~2/3 (the commits runs of gemma and Qwen-1.5B did not
vary it: layer 12 of 18, 19 of 28).

What a setting is built from, lowest first: DEFAULTS, the model's row, the profile's stored
calibration (``fints_edge.calibrate``), the command line's flags (chat) or the operator's flags
(server), the request's ``fints`` object (server).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Union

from fints_edge.config import DEFAULTS, EngineConfig, check_config

if TYPE_CHECKING:
    from fints_edge.profile import ModelIdentity

# What a row may change: knobs calibration may change too (so the server sets them on every
# request), never the mode or the budget.
MODEL_KNOBS = ("strength", "prompt_strength", "k")
# a model as a row matches it: a profile's identity or a GGUF's (arch, layers, width)
ModelKey = Union["ModelIdentity", tuple[str, int, int]]


@dataclass(frozen=True)
class ModelRow:
    name: str  # as docs/eval/results.json names the GGUF
    arch: str
    n_layer: int
    n_embd: int
    changes: Mapping[str, Any] = field(default_factory=dict)  # knob -> value over DEFAULTS
    chosen_by: str = ""  # the evaluation run and benchmark that chose the changes

    def matches(self, model: ModelKey) -> bool:
        """``model``: a profile's identity, or a GGUF's (arch, layers, width)
        (``fints_edge.llama.model.model_shape``)."""
        if not isinstance(model, tuple):
            model = (model.arch, model.n_layer, model.n_embd)
        return (self.arch, self.n_layer, self.n_embd) == model


TABLE: tuple[ModelRow, ...] = (
    ModelRow(
        "qwen2.5-coder-0.5b-instruct.gguf",
        "qwen2",
        24,
        896,
        {"strength": 0.125},
        "make eval MODEL=qwen0.5b, commits dev split, steering alone: ROUGE-L of fluent answers "
        "0.213 vs 0.202 at the global defaults (an AVX2 host; an earlier host's run chose the "
        "same strength with the prompt unsteered, 0.227 vs 0.211)",
    ),
    ModelRow(
        "qwen2.5-coder-1.5b-instruct.gguf",
        "qwen2",
        28,
        1536,
        {"strength": 0.125, "prompt_strength": 0.0},
        "make eval MODEL=qwen1.5b EVAL_ARGS='... --commit-users 2', commits dev split (2 authors, "
        "16 answers per setting), steering alone: ROUGE-L of fluent answers 0.240 vs 0.209 at the "
        "global defaults (an AVX2 host; zero-shot 0.214)",
    ),
    ModelRow(
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3",
        18,
        640,
        {"strength": 0.125},
        "make eval MODEL=gemma270m, commits dev split, steering alone: ROUGE-L of fluent answers "
        "0.070 vs 0.052 at the global defaults (an AVX2 host; zero-shot 0.071)",
    ),
)


def row_for(model: ModelKey | None) -> ModelRow | None:
    """The table's row for ``model``, or None (DEFAULTS apply)."""
    if model is None:
        return None
    return next((r for r in TABLE if r.matches(model)), None)


def model_changes(model: ModelKey | None) -> dict[str, Any]:
    row = row_for(model)
    return dict(row.changes) if row is not None else {}


def under_flags(config: EngineConfig, model: ModelKey | None, flags: Iterable[str]) -> EngineConfig:
    """What a user of ``model`` gets before any calibration: ``config`` with the model's row
    applied except where ``flags`` (the knobs the operator's or the chat's flags named) set
    the knob: the server's health defaults and its calibrating builds both start here."""
    named = set(flags)
    row = {k: v for k, v in model_changes(model).items() if k not in named}
    return check_config(replace(config, **row))


def model_base(model: ModelKey | None, base: EngineConfig = DEFAULTS) -> EngineConfig:
    """``base`` with ``model``'s row applied."""
    return under_flags(base, model, ())


def describe(model: ModelKey | None) -> str:
    """ "the defaults for NAME (strength 0.125, ...)" or "" when the model has no row."""
    row = row_for(model)
    if row is None or not row.changes:
        return ""
    knobs = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in row.changes.items())
    return f"the defaults for {row.name} ({knobs}; {row.chosen_by})"
