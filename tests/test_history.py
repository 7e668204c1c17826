import math

import pytest

from fints_edge.errors import HistoryError
from fints_edge.history import read_history


def _write(tmp_path, text):
    p = tmp_path / "h.jsonl"
    p.write_text(text, encoding="utf-8")
    return p


def test_reads_items_and_optional_fields(tmp_path):
    p = _write(
        tmp_path,
        '{"input": "a", "output": "b"}\n\n'
        '{"input": "c", "output": "d", "rejected": "e", "timestamp": "2024-01-01T00:00:00Z"}\n'
        '{"input": "f", "output": "g", "timestamp": 12.5}\n',
    )
    items = read_history(p)
    assert [i.input for i in items] == ["a", "c", "f"]
    assert math.isnan(items[0].timestamp) and items[0].rejected is None
    assert items[1].rejected == "e" and items[1].timestamp == 1704067200.0
    assert items[2].timestamp == 12.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"input": "a", "output": "b"}\n{"input": "a"\n', r"h\.jsonl:2: not valid JSON"),
        ('{"input": "a", "output": ""}\n', r"h\.jsonl:1: 'output' must be a non-empty string"),
        ('["a", "b"]\n', r"h\.jsonl:1: expected an object"),
        ('{"input": "a", "output": "b", "outptu": 1}\n', r"h\.jsonl:1: unknown field"),
        ('{"input": "a", "output": "b", "timestamp": "yesterday"}\n', "ISO 8601"),
        ("\n\n", "history is empty"),
    ],
)
def test_bad_lines_are_named(tmp_path, text, message):
    with pytest.raises(HistoryError, match=message):
        read_history(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(HistoryError, match="no such history file"):
        read_history(tmp_path / "nope.jsonl")
