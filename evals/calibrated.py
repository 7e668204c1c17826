"""The calibrated rows of every benchmark: each user's own setting, as the product chooses it.

What a user gets without calibration is the chat's global default with the model's row applied
(:func:`product_default`); ``fints_edge.calibrate`` starts from it on the user's profile, on
their HISTORY only (never dev or test items), with the product's budget, and the row
answers the test split at the setting it chose. ``fints-calibrated`` steers alone and
``fints+rag-1-calibrated`` steers on top of one retrieved example, each compared with its
unsteered twin and with the dev-chosen setting of the same family (issue 24: calibrated >=
the global default on every benchmark and model).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from evals.run import Setting, UserData
from fints_edge.calibrate import DEFAULT_BUDGET_S, GRID, budget_text, resolution
from fints_edge.config import DEFAULTS
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import default_layer

if TYPE_CHECKING:
    from evals.evaluate import Evaluation

# method -> retrieved examples in its prompt (fixed: the row compares with its unsteered twin)
CALIBRATED_METHODS = {"fints-calibrated": 0, "fints+rag-1-calibrated": 1}
CALIBRATED_PAIRS = (("fints-calibrated", "zero-shot"), ("fints-calibrated", "fints-exact"),
                    ("fints+rag-1-calibrated", "rag-1"),
                    ("fints+rag-1-calibrated", "fints+rag-1"))  # fmt: skip


def shipped(n_layer: int) -> Setting:
    """The chat's global default (fints_edge.config) as an evaluation setting."""
    d = DEFAULTS
    return Setting(
        (default_layer(n_layer),),
        d.strength,
        k=d.k,
        sites=("attn",),
        strength_unit=d.strength_unit,
        item_norm=d.item_norm,
        prompt_strength=d.prompt_strength,
        repeat_fade=d.repeat_fade,
        block_repeats=d.block_repeats,
        opening_strength=d.strength * d.opening_scale,
    )


def product_default(ev: Evaluation) -> Setting:
    """What a user of this model gets without calibration: the chat's global default with the
    model's row (fints_edge.model_defaults) applied; calibration starts from it."""
    from fints_edge.model_defaults import model_changes

    s = replace(shipped(ev.n_layer), **model_changes(ev.identity))  # the row's knobs are fields
    return replace(s, opening_strength=s.strength * DEFAULTS.opening_scale)


def calibration_rule() -> str:
    """How calibration chose (fints_edge.calibrate.SELECTION_RULE), recorded with the rows."""
    from fints_edge.calibrate import MARGIN_SE, SELECTION_RULE

    return (
        f"a setting replaces the best so far when its mean held-out score is higher by more "
        f"than {MARGIN_SE:g} standard error of their paired per-item differences "
        f"({SELECTION_RULE})"
    )


def calibrated(ev: Evaluation, u: UserData, method: str, rag: int,
               base: Setting) -> tuple[Setting, dict]:  # fmt: skip
    """The user's own setting: fints_edge.calibrate on their profile (history items only),
    from ``base`` (the model's product default), ``rag`` fixed; cached per user, method and
    starting point like the answers (user names are unique across benchmarks)."""
    from fints_edge._atomic import write_text
    from fints_edge.calibrate import SELECTION_RULE, Calibrator

    # another start, rule, budget or grid is another calibration
    key = f"{base.label()}|{SELECTION_RULE}|{budget_text(DEFAULT_BUDGET_S)}|{GRID}"
    start = hashlib.sha256(key.encode()).hexdigest()[:8]
    path = ev.cache.folder / f"calibration-{method}-{u.user}-{start}.json"
    if path.is_file():
        got = json.loads(path.read_text(encoding="utf-8"))
    else:
        assert ev.runner is not None
        ev.runner.use(ev.profiles[u.user])
        ev.runner.configure(ev.runner.exact, base, rag)
        result = Calibrator(ev.runner.exact, rag=rag).run()  # the product's default budget
        got = result.to_json()
        write_text(path, json.dumps(got))  # atomic: a crash never leaves half a file
    c = got["changes"]
    strength = float(c.get("strength", base.strength))
    opening = base.opening_strength / base.strength if base.strength else 0.0
    s = replace(base, strength=strength, opening_strength=strength * opening,
                k=int(c.get("k", base.k)), layers=tuple(c.get("layers") or base.layers),
                sites=tuple(c.get("sites") or base.sites),
                prompt_strength=float(c.get("prompt_strength", base.prompt_strength)))  # fmt: skip
    keep = ("label", "changes", "score", "unsteered_score", "default_score", "seconds")
    # computed here, not read from the file: calibrations cached before it have none
    noise = resolution([t["scores"] for t in got["tried"]])
    return s, {k: got[k] for k in keep} | {
        "tried": len(got["tried"]),
        "resolution": None if math.isnan(noise) else noise,
    }


def calibrated_answers(ev: Evaluation, bench: str,
                       users: Sequence[UserData]) -> tuple[list[dict], dict[str, Any]]:  # fmt: skip
    """Every calibrated row's test answers for ``users``, and the record of how each user's
    setting was chosen (results.json's ``calibration``). A user calibration refuses (a history
    too short to hold items out) is recorded with the reason and has no calibrated answers."""
    start, preds, records = product_default(ev), [], []
    for method, rag in CALIBRATED_METHODS.items():
        for u in users:
            if u.user not in ev.profiles:
                continue
            try:
                s, record = calibrated(ev, u, method, rag, start)
            except FintsEdgeError as e:
                records.append({"method": method, "user": u.user, "error": str(e)})
                continue
            records.append({"method": method, "user": u.user, **record})
            preds += ev.answer(bench, [u], "test", method, s)
    return preds, {"budget_s": DEFAULT_BUDGET_S, "from": start.label(), "grid": GRID,
                   "rule": calibration_rule(), "users": records}  # fmt: skip
