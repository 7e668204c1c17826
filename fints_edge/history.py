"""A user's history file: JSONL, one ``{"input", "output"}`` object per line.

Optional per line: ``"rejected"`` (a non-personal answer for the same input, used as the
contrast) and ``"timestamp"`` (unix seconds or an ISO 8601 string, for recency).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fints_edge.errors import HistoryError

_KNOWN = {"input", "output", "rejected", "timestamp", "id"}


@dataclass(frozen=True)
class HistoryItem:
    input: str
    output: str
    rejected: str | None = None
    timestamp: float = math.nan  # unix seconds; NaN when unknown


def read_history(path: str | os.PathLike[str]) -> list[HistoryItem]:
    """Parse and check every line; errors name the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise HistoryError(f"{path}: no such history file")
    items: list[HistoryItem] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            items.append(_parse_line(line, f"{path}:{lineno}"))
    if not items:
        raise HistoryError(
            f'{path}: the history is empty; add one JSON object per line: {{"input": ..., "output": ...}}'
        )
    return items


def _parse_line(line: str, where: str) -> HistoryItem:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise HistoryError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise HistoryError(f'{where}: expected an object like {{"input": ..., "output": ...}}')
    for key in ("input", "output"):
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise HistoryError(f"{where}: '{key}' must be a non-empty string")
    unknown = set(obj) - _KNOWN
    if unknown:
        raise HistoryError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_KNOWN)}"
        )
    rejected = obj.get("rejected")
    if rejected is not None and (not isinstance(rejected, str) or not rejected.strip()):
        raise HistoryError(f"{where}: 'rejected' must be a non-empty string when given")
    return HistoryItem(
        obj["input"], obj["output"], rejected, _timestamp(obj.get("timestamp"), where)
    )


def _timestamp(value: object, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise HistoryError(f"{where}: 'timestamp' must be unix seconds or an ISO 8601 string")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            t = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise HistoryError(f"{where}: 'timestamp' {value!r} is not ISO 8601") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.UTC)
        return t.timestamp()
    raise HistoryError(f"{where}: 'timestamp' must be unix seconds or an ISO 8601 string")
