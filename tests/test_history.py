import math
import tracemalloc

import pytest

from fints_edge.errors import HistoryError
from fints_edge.history import MAX_LINE_BYTES, read_history


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


def _write_bytes(tmp_path, data: bytes):
    p = tmp_path / "h.jsonl"
    p.write_bytes(data)
    return p


GOOD = b'{"input": "a", "output": "b"}\n'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            GOOD + '{"input": "caf\u00e9", "output": "b"}\n'.encode("latin-1"),
            r"h\.jsonl:2: not UTF-8 text \(byte 0xe9 at byte 15 of the line\); save the file as UTF-8",
        ),
        ('{"input": "a", "output": "b"}\n'.encode("utf-16"), r"h\.jsonl:1: not UTF-8 text"),
        (b"", r"h\.jsonl: the history is empty"),
        (b'{"input": "a"}\n', r"h\.jsonl:1: missing 'output'; each line needs"),
        (b'{"output": "a"}\n', r"h\.jsonl:1: missing 'input'"),
        (b'{"input": "a", "output": 3}\n', r"h\.jsonl:1: 'output' must be a non-empty string"),
        (b"42\n", r"h\.jsonl:1: expected an object"),
        (b'"input"\n', r"h\.jsonl:1: expected an object"),
        (b"null\n", r"h\.jsonl:1: expected an object"),
        (GOOD + b"[" * 200_000 + b"\n", r"h\.jsonl:2: JSON nested too deeply"),
        (
            b'{"input": "a", "output": "b", "id": ' + b"9" * 5000 + b"}\n",
            r"h\.jsonl:1: not usable JSON",
        ),
        (b'{"input": "a", "output": "b", "timestamp": Infinity}\n', r"'timestamp' must be finite"),
        (b'{"input": "a", "output": "b", "timestamp": 1e999}\n', r"'timestamp' must be finite"),
        (b'{"input": "a", "output": "b", "timestamp": ' + b"9" * 400 + b"}\n", "must be finite"),
        (b'{"input": "\\ud800", "output": "b"}\n', r"h\.jsonl:1: 'input' holds '\\ud800', half of"),
    ],
)
def test_bad_files_give_one_history_error(tmp_path, data, message):
    with pytest.raises(HistoryError, match=message):
        read_history(_write_bytes(tmp_path, data))


def test_an_absurdly_long_line_is_refused_without_reading_it_whole(tmp_path):
    line = b'{"input": "a", "output": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n'
    path = _write_bytes(tmp_path, GOOD + line * 20)  # ~20 MB
    tracemalloc.start()
    try:
        with pytest.raises(HistoryError, match=r"h\.jsonl:2: line longer than 1,048,576 bytes"):
            read_history(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_LINE_BYTES  # one line's worth, never the file


def test_a_folder_is_not_a_history(tmp_path):
    with pytest.raises(HistoryError, match="is a folder; pass the history file"):
        read_history(tmp_path)


def test_a_byte_order_mark_and_windows_line_ends_are_fine(tmp_path):
    data = b"\xef\xbb\xbf" + GOOD.replace(b"\n", b"\r\n") + GOOD
    assert [i.output for i in read_history(_write_bytes(tmp_path, data))] == ["b", "b"]
