"""A user's history file: JSONL, one ``{"input", "output"}`` object per line.

Optional per line: ``"rejected"`` (a non-personal answer for the same input, used as the
contrast) and ``"timestamp"`` (unix seconds or an ISO 8601 string, for recency).

The file is the user's, edited by hand or exported by some other tool, so every way it can be
wrong (not UTF-8, a folder, a line of 2 GB, JSON nested a million deep, text a profile cannot
store) ends in one HistoryError naming the file, the line and the fix; nothing is read whole.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fints_edge.errors import HistoryError

_KNOWN = {"input", "output", "rejected", "timestamp", "id"}
MAX_LINE_BYTES = 1 << 20  # one history item; longer lines are refused, never read whole
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, as some editors write; skipped


@dataclass(frozen=True)
class HistoryItem:
    input: str
    output: str
    rejected: str | None = None
    timestamp: float = math.nan  # unix seconds; NaN when unknown


def read_history(path: str | os.PathLike[str]) -> list[HistoryItem]:
    """Parse and check every line; errors name the file and line number."""
    path = Path(path)
    if path.is_dir():
        raise HistoryError(f"{path}: is a folder; pass the history file (.jsonl) itself")
    if not path.is_file():
        raise HistoryError(f"{path}: no such history file")
    items: list[HistoryItem] = []
    try:
        with path.open("rb") as f:
            for lineno, text in _lines(f, path):
                if text.strip():
                    items.append(_parse_line(text, f"{path}:{lineno}"))
    except OSError as e:
        raise HistoryError(f"{path}: cannot read it ({e.strerror or e})") from e
    if not items:
        raise HistoryError(
            f'{path}: the history is empty; add one JSON object per line: {{"input": ..., "output": ...}}'
        )
    return items


def _lines(f: BinaryIO, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) with each line's length and UTF-8 checked before it is parsed."""
    for lineno in itertools.count(1):
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise HistoryError(
                f"{path}:{lineno}: line longer than {MAX_LINE_BYTES:,} bytes (the limit for one "
                "history item); shorten or split it"
            )
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HistoryError(
                f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte "
                f"{e.start + 1} of the line); save the file as UTF-8"
            ) from None
        yield lineno, text


def _parse_line(line: str, where: str) -> HistoryItem:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise HistoryError(f"{where}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise HistoryError(f"{where}: JSON nested too deeply; one flat object per line") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise HistoryError(f"{where}: not usable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise HistoryError(f'{where}: expected an object like {{"input": ..., "output": ...}}')
    for key in ("input", "output"):
        if key not in obj:
            raise HistoryError(f'{where}: missing \'{key}\'; each line needs "input" and "output"')
        value = obj[key]
        if not isinstance(value, str) or not value.strip():
            raise HistoryError(f"{where}: '{key}' must be a non-empty string")
    unknown = set(obj) - _KNOWN
    if unknown:
        raise HistoryError(
            f"{where}: unknown field(s) {[k[:40] for k in sorted(unknown)[:10]]}; "
            f"allowed: {sorted(_KNOWN)}"
        )
    rejected = obj.get("rejected")
    if rejected is not None and (not isinstance(rejected, str) or not rejected.strip()):
        raise HistoryError(f"{where}: 'rejected' must be a non-empty string when given")
    for key in ("input", "output", "rejected"):
        _check_unicode(obj.get(key), key, where)
    return HistoryItem(
        obj["input"], obj["output"], rejected, _timestamp(obj.get("timestamp"), where)
    )


def surrogate_at(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (None: UTF-8 can carry it). JSON can spell them
    ("\\ud800"); no UTF-8 file, profile or tokenizer takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _check_unicode(value: object, key: str, where: str) -> None:
    if isinstance(value, str) and (at := surrogate_at(value)) is not None:
        raise HistoryError(
            f"{where}: '{key}' holds {value[at]!r}, half of a UTF-16 surrogate pair "
            "and not text; fix the \\u escape"
        )


def _timestamp(value: object, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise HistoryError(f"{where}: 'timestamp' must be unix seconds or an ISO 8601 string")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            raise HistoryError(f"{where}: 'timestamp' must be finite unix seconds")
        return seconds
    if isinstance(value, str):
        try:
            t = _dt.datetime.fromisoformat(value)
            if t.tzinfo is None:
                t = t.replace(tzinfo=_dt.UTC)
            return t.timestamp()
        except (ValueError, OverflowError):
            raise HistoryError(f"{where}: 'timestamp' {value[:40]!r} is not ISO 8601") from None
    raise HistoryError(f"{where}: 'timestamp' must be unix seconds or an ISO 8601 string")
