"""Per-model defaults (fints_edge.model_defaults): each row is what the evaluation chose for its
model, and a setting is layered DEFAULTS < model row < calibration < flags < request."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fints_edge import model_defaults
from fints_edge.config import DEFAULTS
from fints_edge.model_defaults import MODEL_KNOBS, TABLE, ModelRow, model_base, row_for
from fints_edge.serve.wire import Knobs
from tests._factories import identity, profile

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "eval" / "results.json"
TINY_ROW = ModelRow("tiny.gguf", "llama", 4, 8, {"strength": 7.0, "prompt_strength": 0.0}, "a test")


def test_every_row_is_the_setting_the_evaluation_chose_for_its_model():
    """A row's changes are its model's steering-alone choice on the real-writing benchmark's
    dev split (docs/eval/results.json), at the default layer fraction; the chat's defaults
    themselves (no row) were chosen on SmolLM2-135M."""
    results = json.loads(RESULTS.read_text(encoding="utf-8"))["models"]
    assert TABLE, "no model has a row"
    assert not any(r.arch == "llama" and r.n_layer == 30 and r.n_embd == 576 for r in TABLE)
    for row in TABLE:
        entry = results[row.name]
        assert entry["model"]["n_layer"] == row.n_layer
        chosen = entry["benchmarks"]["commits"]["dev"]["chosen"]["steer"]
        assert set(row.changes) <= set(MODEL_KNOBS)
        assert row.changes == {k: chosen[k] for k in row.changes}, (row.name, chosen)
        want = replace(DEFAULTS, **{k: chosen[k] for k in MODEL_KNOBS if k in chosen})
        got = model_base(_identity_of(row))
        assert {k: getattr(got, k) for k in MODEL_KNOBS} == {
            k: getattr(want, k) for k in MODEL_KNOBS
        }, row.name
        assert "commits" in row.chosen_by


def _identity_of(row: ModelRow):
    return replace(identity(row.n_layer, row.n_embd), arch=row.arch)


def test_a_row_applies_only_to_its_model(monkeypatch):
    monkeypatch.setattr(model_defaults, "TABLE", (TINY_ROW,))
    assert row_for(identity(4, 8)) is TINY_ROW
    assert row_for(identity(4, 16)) is None and row_for(None) is None
    assert model_base(identity(4, 8)).strength == 7.0
    assert model_base(identity(4, 16)) == DEFAULTS
    assert model_defaults.describe(identity(4, 8)) == (
        "the defaults for tiny.gguf (strength 7, prompt strength 0; a test)"
    )


def test_the_chat_layers_the_row_under_the_calibration_and_flags(monkeypatch, tmp_path):
    from fints_edge.chat import build_parser, calibrated_base, check_flags

    monkeypatch.setattr(model_defaults, "TABLE", (TINY_ROW,))
    path = profile(n_layer=4, n_embd=8).save(tmp_path / "me.npz")
    base, said = calibrated_base(str(path))
    assert (base.strength, base.prompt_strength, base.k) == (7.0, 0.0, DEFAULTS.k)
    assert said.startswith("the defaults for tiny.gguf")
    calibration = {"version": 1, "changes": {"strength": 0.5, "k": 5}, "label": "mine"}
    replace(profile(n_layer=4, n_embd=8), calibration=calibration).save(path)
    base, said = calibrated_base(str(path))
    assert (base.strength, base.prompt_strength, base.k) == (0.5, 0.0, 5)  # row kept under it
    assert said == f"{path}'s calibrated setting: mine"
    args = build_parser().parse_args(["--profile", str(path), "--strength", "2"])
    assert check_flags(args, base).strength == 2.0


def test_the_servers_own_flags_win_over_the_row_and_the_calibration_the_request_over_all():
    config = replace(DEFAULTS, strength=3.0, k=4)
    stored = {"strength": 0.5, "k": 5, "prompt_strength": 0.0}
    plain = Knobs(True, config).changes(stored)
    assert (plain["strength"], plain["k"], plain["prompt_strength"]) == (0.5, 5, 0.0)
    operator = Knobs(True, config, operator=frozenset({"strength"})).changes(stored)
    assert (operator["strength"], operator["k"]) == (3.0, 5)
    asked = replace(config, k=1)
    request = Knobs(True, asked, frozenset({"k"}), frozenset({"strength"})).changes(stored)
    assert (request["strength"], request["k"], request["prompt_strength"]) == (3.0, 1, 0.0)


@pytest.mark.parametrize(("flags", "named"), [([], set()), (["--strength", "2"], {"strength"}),
                                              (["-k", "4", "--rag", "1"], {"k", "rag"})])  # fmt: skip
def test_the_server_cli_knows_which_knobs_the_operator_named(flags, named):
    from fints_edge.config import flag_values
    from fints_edge.serve.__main__ import build_parser

    assert set(flag_values(build_parser().parse_args(flags))) == named
