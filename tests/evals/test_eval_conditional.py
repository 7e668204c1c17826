"""Conditional personas: a style per kind of input, enough history for retrieval to matter."""

from __future__ import annotations

import json

import pytest

from evals.conditional import build_conditional_rows, load_conditional
from evals.styles import parse_styles
from fints_edge.errors import FintsEdgeError

STYLES = {s.name: s for s in parse_styles(
    {"styles": [{"name": "quiet", "rules": [{"rule": "lowercase"}]},
                {"name": "shouter", "rules": [{"rule": "uppercase"}]}]}, "spec")}  # fmt: skip


def test_rows_follow_the_style_of_their_kind(tmp_path):
    spec = tmp_path / "c.json"
    spec.write_text(json.dumps({"users": [{"review": "quiet", "email": "shouter"}]}))
    templates = load_conditional(spec, STYLES, {"review", "email", "story"})
    picks = [{"review": [f"r{i}" for i in range(5)], "email": [f"e{i}" for i in range(5)]}]
    answers = {t: f"Answer To {t}" for p in picks for ts in p.values() for t in ts}
    rows = build_conditional_rows(picks, templates, answers, per_kind=3, tests_per_kind=1, seed=0)
    assert len(rows) == 10
    for r in rows:
        assert r["style"] == {"review": "quiet", "email": "shouter"}[r["kind"]]
        assert r["output"] == STYLES[r["style"]].apply(r["rejected"])
    hist = [r for r in rows if r["split"] == "history"]
    assert sorted(r["kind"] for r in hist) == ["email"] * 3 + ["review"] * 3
    assert [r["kind"] for r in hist] != sorted(r["kind"] for r in hist)  # interleaved, not blocks
    assert [r["timestamp"] for r in hist] == sorted(r["timestamp"] for r in hist)
    assert {r["split"] for r in rows} == {"history", "dev", "test"}


def test_bad_specs_are_refused_with_the_names(tmp_path):
    spec = tmp_path / "c.json"
    spec.write_text(json.dumps({"users": [{"review": "quiet", "memo": "loud"}]}))
    with pytest.raises(FintsEdgeError, match=r"unknown kinds \['memo'\] or styles \['loud'\]"):
        load_conditional(spec, STYLES, {"review"})
    spec.write_text(json.dumps({"users": [{"review": "quiet"}]}))
    with pytest.raises(FintsEdgeError, match="at least two kinds"):
        load_conditional(spec, STYLES, {"review"})
    spec.write_text("not json")
    with pytest.raises(FintsEdgeError, match="not a conditional spec"):
        load_conditional(spec, STYLES, {"review"})


def test_the_bundled_spec_names_real_kinds_and_styles():
    from evals.conditional import DEFAULT_CONDITIONAL
    from evals.personas import DEFAULT_STYLES, load_pool_rows
    from evals.styles import load_styles

    styles = {s.name: s for s in load_styles(DEFAULT_STYLES)}
    kinds = {r["kind"] for r in load_pool_rows()}
    users = load_conditional(DEFAULT_CONDITIONAL, styles, kinds)
    assert len(users) >= 8 and all(len({s.name for s in u.values()}) == 2 for u in users)
