import json

import pytest

from evals.personas import build_rows, load_pool
from evals.styles import parse_styles
from fints_edge.errors import FintsEdgeError

STYLES = parse_styles(
    {
        "styles": [
            {"name": "quiet", "rules": [{"rule": "lowercase"}]},
            {"name": "fan", "rules": [{"rule": "exclaim"}]},
        ]
    }
)
INPUTS = [f"Input number {i}" for i in range(40)]
ANSWERS = {t: f"The Answer To {t}." for t in INPUTS}


def test_splits_are_disjoint_sized_and_styled():
    rows = build_rows(INPUTS, ANSWERS, STYLES, users=3, history=6, tests=4, seed=1, shift=False)
    for u in ("u000", "u001", "u002"):
        mine = [r for r in rows if r["user"] == u]
        by = {s: [r["input"] for r in mine if r["split"] == s] for s in ("history", "dev", "test")}
        assert [len(by[s]) for s in by] == [6, 4, 4]
        assert len(set(sum(by.values(), []))) == 14
        style = STYLES[int(u[1:]) % 2]
        assert all(
            r["style"] == style.name
            and style.adheres(r["output"])
            and r["rejected"] == ANSWERS[r["input"]]
            for r in mine
        )
    assert rows == build_rows(
        INPUTS, ANSWERS, STYLES, users=3, history=6, tests=4, seed=1, shift=False
    )
    assert rows != build_rows(
        INPUTS, ANSWERS, STYLES, users=3, history=6, tests=4, seed=2, shift=False
    )


def test_shift_users_change_style_halfway_through_history():
    rows = build_rows(INPUTS, ANSWERS, STYLES, users=1, history=6, tests=2, seed=0, shift=True)
    hist = [r for r in rows if r["split"] == "history"]
    assert [r["style"] for r in hist] == ["fan"] * 3 + ["quiet"] * 3
    assert all(r["style"] == "quiet" for r in rows if r["split"] != "history")
    assert [r["timestamp"] for r in hist] == sorted(r["timestamp"] for r in hist)


def test_inputs_without_contrast_are_skipped():
    answers = dict(ANSWERS, **{t: "already lowercase" for t in INPUTS[:20]})
    rows = build_rows(
        INPUTS, answers, STYLES[:1], users=1, history=30, tests=5, seed=0, shift=False
    )
    assert all(r["output"] != r["rejected"] for r in rows) and len(rows) < 40


def test_refusals():
    with pytest.raises(FintsEdgeError, match="pool has 40"):
        build_rows(INPUTS, ANSWERS, STYLES, users=1, history=30, tests=6, seed=0, shift=False)
    with pytest.raises(FintsEdgeError, match="at least two styles"):
        build_rows(INPUTS, ANSWERS, STYLES[:1], users=1, history=4, tests=1, seed=0, shift=True)


def test_load_pool_wraps_news_and_names_bad_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"id": "a1", "kind": "news", "text": "A bridge opened."})
        + "\n"
        + json.dumps({"id": "a2", "kind": "question", "text": "How do I boil an egg?"})
        + "\n"
    )
    assert load_pool(tmp_path) == [
        "Write a one-line headline for this news snippet: A bridge opened.",
        "How do I boil an egg?",
    ]
    (tmp_path / "b.jsonl").write_text('{"id": "b1"}\n')
    with pytest.raises(FintsEdgeError, match=r"b\.jsonl:1"):
        load_pool(tmp_path)
