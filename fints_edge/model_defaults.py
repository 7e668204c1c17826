"""Per-model defaults: what a profile without calibration gets on each model the evaluation ran.

One global setting does not carry across models (issue 24: the strength window differs per model
and narrows with size). Each row names a model by what every profile records of it (architecture,
depth, width) and the knob changes over :data:`fints_edge.config.DEFAULTS` that ``make eval``
chose on that model's dev split, with the run that chose them; ``tests/test_model_defaults.py``
holds each row to ``docs/eval/results.json``. A model without a row gets DEFAULTS (chosen on
SmolLM2-135M). The layer is a fraction of the depth for every model (``layers.default_layer``):
both models' sweeps kept ~2/3.

What a setting is built from, lowest first: DEFAULTS, the model's row, the profile's stored
calibration (``fints_edge.calibrate``), the command line's flags (chat) or the operator's flags
(server), the request's ``fints`` object (server).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fints_edge.config import DEFAULTS, EngineConfig, check_config

if TYPE_CHECKING:
    from fints_edge.profile import ModelIdentity

# What a row may change: knobs calibration may change too (so the server sets them on every
# request), never the mode or the budget.
MODEL_KNOBS = ("strength", "prompt_strength", "k")


@dataclass(frozen=True)
class ModelRow:
    name: str  # as docs/eval/results.json names the GGUF
    arch: str
    n_layer: int
    n_embd: int
    changes: Mapping[str, Any] = field(default_factory=dict)  # knob -> value over DEFAULTS
    chosen_by: str = ""  # the evaluation run and benchmark that chose the changes

    def matches(self, model: ModelIdentity) -> bool:
        return (self.arch, self.n_layer, self.n_embd) == (model.arch, model.n_layer, model.n_embd)


TABLE: tuple[ModelRow, ...] = (
    ModelRow(
        "qwen2.5-coder-0.5b-instruct.gguf",
        "qwen2",
        24,
        896,
        {"strength": 0.125, "prompt_strength": 0.0},
        "make eval MODEL=qwen0.5b, commits dev split, steering alone: ROUGE-L of fluent answers "
        "0.227 vs 0.211 at the global defaults",
    ),
)


def row_for(model: ModelIdentity | None) -> ModelRow | None:
    """The table's row for ``model``, or None (DEFAULTS apply)."""
    if model is None:
        return None
    return next((r for r in TABLE if r.matches(model)), None)


def model_changes(model: ModelIdentity | None) -> dict[str, Any]:
    row = row_for(model)
    return dict(row.changes) if row is not None else {}


def model_base(model: ModelIdentity | None, base: EngineConfig = DEFAULTS) -> EngineConfig:
    """``base`` with ``model``'s row applied."""
    return check_config(replace(base, **model_changes(model)))


def describe(model: ModelIdentity | None) -> str:
    """ "the defaults for NAME (strength 0.125, ...)" or "" when the model has no row."""
    row = row_for(model)
    if row is None or not row.changes:
        return ""
    knobs = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in row.changes.items())
    return f"the defaults for {row.name} ({knobs}; {row.chosen_by})"
