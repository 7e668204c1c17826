"""The rendered report (evals/report.py): a method that does not stream (the torch reference,
evals/run.py ``_torch_answer``) records its whole generation as ``first_token_ms``; the
first-token column must not show that time as if it were a time to first token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.report import method_table, render, text_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "eval"
# Methods whose answer is not streamed (evals/run.py): their first_token_ms is the whole generation
NON_STREAMING = ("fints-torch",)
WHOLE_MS = 1573.96  # what a non-streaming method records: the whole generation
STREAM_MS = 121.4


def _methods(non_streaming: str) -> dict:
    row = {"n": 4, "fluent_adherence": 0.2, "adherence": 0.2, "fluent": 1.0, "errors": 0,
           "rouge1": 0.3, "rougeL": 0.2}  # fmt: skip
    return {
        "zero-shot": row | {"first_token_ms": STREAM_MS},
        non_streaming: row | {"first_token_ms": WHOLE_MS},
    }


def _column(lines: list[str], method: str, header: str = "first token ms") -> str:
    """The ``header`` cell of ``method``'s row in a markdown table."""
    heads = [c.strip() for c in lines[0].strip("|").split("|")]
    col = heads.index(header)
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == method:
            return cells[col]
    raise AssertionError(f"no row for {method}")


def _assert_not_a_first_token_time(cell: str) -> None:
    assert "1574" not in cell and "1573" not in cell, cell
    assert "n/a" in cell and "no streaming" in cell, cell


@pytest.mark.parametrize("method", NON_STREAMING)
def test_method_table_first_token_cell_of_a_non_streaming_method(method):
    lines = method_table({"methods": _methods(method)})
    _assert_not_a_first_token_time(_column(lines, method))
    assert _column(lines, "zero-shot") == "121"  # streaming methods keep their time
    # the whole-generation time is still reported, labelled as such, outside the column
    note = [x for x in lines[2:] if not x.startswith("|")]
    assert any(method in x and "1574" in x and "whole generation" in x for x in note), lines


@pytest.mark.parametrize("method", NON_STREAMING)
def test_text_table_first_token_cell_of_a_non_streaming_method(method):
    lines = text_table({"methods": _methods(method)})
    _assert_not_a_first_token_time(_column(lines, method))
    assert _column(lines, "zero-shot") == "121"


def test_the_committed_report_data_renders_no_whole_generation_as_first_token():
    """docs/eval/results.json as committed: every non-streaming row of every table."""
    results = json.loads((DOCS / "results.json").read_text(encoding="utf-8"))
    page = render(results, {}).splitlines()
    seen = 0
    for n, line in enumerate(page):
        if not line.startswith("| method |") or "first token ms" not in line:
            continue
        table = [line]
        for row in page[n + 1 :]:
            if not row.startswith("|"):
                break
            table.append(row)
        for method in NON_STREAMING:
            if any(r.startswith(f"| {method} |") for r in table):
                seen += 1
                cell = _column(table, method)
                assert "n/a" in cell and "no streaming" in cell, (method, cell)
    assert seen, "the committed results have no non-streaming row; the test checks nothing"
