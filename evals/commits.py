"""The ``commits`` benchmark: real per-author commit subjects, and style agreement on them.

Each author writes subjects with habits that depend on the commit (an area prefix such as
``net/http: ``, ``BUG: `` or ``[mypyc] ``, the case of the first word, a trailing period), so
a personalized model should match them on the author's newer commits. The extract and its
provenance are in ``evals/data/commits/`` (built by :mod:`evals.commits_build`). The habits are
scored by fints_edge/agreement.py, the rule the on-device calibration uses too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.datasets import UserTask
from fints_edge.errors import FintsEdgeError
from fints_edge.history import HistoryItem

COMMITS_DIR = Path(__file__).resolve().parent / "data" / "commits"
COMMITS_FILE = COMMITS_DIR / "commits.jsonl"
SPLITS = ("history", "dev", "test")
_FIELDS = {"user": str, "repo": str, "split": str, "input": str, "output": str}


@dataclass(frozen=True)
class CommitsUser:
    user: str  # pseudonym, e.g. "gotools-author-03"
    repo: str  # short name of the repository
    history: list[HistoryItem]  # older commits, oldest first, timestamp = author date
    dev: list[tuple[str, str]]  # newer commits: (input, gold subject), oldest first
    test: list[tuple[str, str]]  # the newest commits, likewise


def load_commits(path: str | Path = COMMITS_FILE) -> dict[str, CommitsUser]:
    """Per user (sorted by pseudonym): history items and dev / test (input, gold) pairs.

    Every way the file can be wrong ends in one FintsEdgeError naming the file (and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FintsEdgeError(f"{path}: no such file; expected the commits JSONL extract")
    rows: dict[str, dict[str, list[tuple[float, str, str]]]] = {}
    repos: dict[str, str] = {}
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    _add_row(_parse(line, f"{path}:{lineno}"), rows, repos, f"{path}:{lineno}")
    except UnicodeDecodeError as e:
        raise FintsEdgeError(f"{path}: not UTF-8 text ({e.reason}); save it as UTF-8") from None
    except OSError as e:
        raise FintsEdgeError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not rows:
        raise FintsEdgeError(f"{path}: no items; expected one JSON object per line")
    users = {}
    for user in sorted(rows):
        splits = rows[user]
        missing = [s for s in SPLITS if not splits.get(s)]
        if missing:
            raise FintsEdgeError(f"{path}: user {user!r} has no {' or '.join(missing)} items")
        users[user] = CommitsUser(
            user,
            repos[user],
            [HistoryItem(i, o, timestamp=t) for t, i, o in splits["history"]],
            [(i, o) for _, i, o in splits["dev"]],
            [(i, o) for _, i, o in splits["test"]],
        )
    return users


def _parse(line: str, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise FintsEdgeError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise FintsEdgeError(f"{where}: expected a JSON object")
    for key, typ in _FIELDS.items():
        if not isinstance(obj.get(key), typ) or not obj[key].strip():
            raise FintsEdgeError(
                f"{where}: needs a non-empty string {key!r}; expected "
                '{"user", "repo", "date", "split", "input", "output"}'
            )
    date = obj.get("date")
    if isinstance(date, bool) or not isinstance(date, int | float):
        raise FintsEdgeError(f"{where}: 'date' must be unix seconds (a number)")
    if obj["split"] not in SPLITS:
        raise FintsEdgeError(f"{where}: split {obj['split']!r} is not one of {', '.join(SPLITS)}")
    return obj


def _add_row(obj: dict, rows: dict, repos: dict[str, str], where: str) -> None:
    user = obj["user"]
    if repos.setdefault(user, obj["repo"]) != obj["repo"]:
        raise FintsEdgeError(f"{where}: user {user!r} appears with two repos")
    per = rows.setdefault(user, {s: [] for s in SPLITS})
    per[obj["split"]].append((float(obj["date"]), obj["input"], obj["output"].strip()))


def commits_tasks(users: dict[str, CommitsUser], split: str = "test") -> list[UserTask]:
    """One UserTask per dev or test pair, with the user's history, for the evaluation loop."""
    if split not in ("dev", "test"):
        raise FintsEdgeError(f"split {split!r}: use 'dev' or 'test'")
    return [
        UserTask(u.user, u.history, query, gold)
        for u in users.values()
        for query, gold in getattr(u, split)
    ]
