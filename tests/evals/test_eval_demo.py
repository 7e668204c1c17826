"""The fluency check on the demo's answers (evals/demo.py), on the tiny model."""

from __future__ import annotations

import json

import pytest

from evals.demo import check, load_answers, main
from evals.fluency import FluencyRule


def test_a_looping_answer_fails_and_lowercase_is_counted(tiny, onnx_encoder_dir):
    rows = [
        {"input": "Write a headline: rain", "unsteered": "Rain Expected Tomorrow",
         "steered": "rain expected tomorrow in the valley"},
        {"input": "Write a headline: fair", "unsteered": "Fair Opens",
         "steered": "the fair the fair the fair the fair the fair"},
        {"input": "Write a headline: bus", "unsteered": "New Bus Line",
         "steered": "New Bus Line Opens Monday"},
    ]  # fmt: skip
    rule = FluencyRule(max_repetition=0.3, max_perplexity=float("inf"), min_topic=-1.0)
    got = check(rows, rule, tiny.gguf_path, onnx_encoder_dir, threads=1)
    assert [a["fluent"] for a in got["answers"]] == [True, False, True]
    assert [a["lowercase"] for a in got["answers"]] == [True, True, False]
    assert (got["n"], got["fluent"], got["lowercase"], got["fluent_and_lowercase"]) == (3, 2, 2, 1)
    assert got["answers"][1]["repetition"] > 0.5


def test_missing_or_broken_answers_and_rules_are_one_line_errors(tmp_path, capsys):
    from fints_edge.errors import FintsEdgeError

    with pytest.raises(FintsEdgeError, match="run `make demo` first"):
        load_answers(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x"}\n')
    with pytest.raises(FintsEdgeError, match="unreadable demo answers"):
        load_answers(bad)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"input": "x", "unsteered": "y", "steered": "z"}) + "\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text('{"models": {}}')
    rc = main(["--answers", str(good), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "no fluency rule" in err and "run `make eval` first" in err
    assert "Traceback" not in err
