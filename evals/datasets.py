"""Public personalization data sets in their published layouts, as per-user tasks.

The evaluation runs a 7-user LongLaMP mini set shipped in ``evals/data/longlamp_abstract_mini/``
(:data:`LONGLAMP_MINI`; its README gives provenance, license and sha256). Users who have the
public data can run the evaluation on it (``python -m evals --longlamp FILE``; LaMP sets load
with :func:`load_lamp`) besides the synthetic personas.
LaMP (https://lamp-benchmark.github.io): a questions file ``[{"id", "input", "profile": [...]}]``
and an outputs file ``{"task", "golds": [{"id", "output"}]}``. LongLaMP
(https://longlamp-benchmark.github.io) abstract generation: one JSON list of records
``{"id", "name", "input", "output", "profile": [{"id", "title", "abstract"}]}``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fints_edge.errors import FintsEdgeError
from fints_edge.history import HistoryItem


@dataclass(frozen=True)
class UserTask:
    user: str  # user id
    history: list[HistoryItem]  # the user's profile items as (input, output) pairs
    query: str  # the test input
    target: str  # the gold output


# LaMP generation tasks whose profile items pair an input-like field with an output field:
# task -> (input field, output field, prompt for the input field, phrased like the task input).
LAMP_TASKS: dict[str, tuple[str, str, str]] = {
    "LaMP_4": ("text", "title", "Generate a headline for the following article: {}"),
    "LaMP_5": ("abstract", "title", "Generate a title for the following abstract of a paper: {}"),
}
LONGLAMP_PROMPT = 'Generate an abstract for the title "{}".'
# The LongLaMP mini set shipped with the evaluation (README.md beside it: provenance, license)
LONGLAMP_DIR = Path(__file__).resolve().parent / "data" / "longlamp_abstract_mini"
LONGLAMP_MINI = LONGLAMP_DIR / "abstract_generation_mini.json"
_JSON_NAMES = {list: "list", dict: "object"}


def _read_json(path: Path, expect: type, layout: str) -> Any:
    """Every way a file can be unreadable ends as one line naming it."""
    if not path.is_file():
        raise FintsEdgeError(f"{path}: no such file; expected a {layout} JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FintsEdgeError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FintsEdgeError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    if not isinstance(data, expect):
        raise FintsEdgeError(
            f"{path}: expected a JSON {_JSON_NAMES[expect]} at the top level ({layout} layout)"
        )
    return data


def _text(obj: Any, key: str) -> str:
    """A stripped string field; anything missing or not a string counts as empty."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value.strip() if isinstance(value, str) else ""


def _id(obj: Any) -> str:
    """Ids are strings in LaMP and LongLaMP but numbers in some copies; compare them as text."""
    value = obj.get("id") if isinstance(obj, dict) else None
    return str(value).strip() if isinstance(value, str | int) else ""


def _date(item: Any) -> float:
    """LaMP items may carry an ISO ``date``; use it for recency when it parses, else unknown."""
    value = _text(item, "date")
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        return math.nan
    return (t if t.tzinfo else t.replace(tzinfo=_dt.UTC)).timestamp()


# -- LongLaMP ------------------------------------------------------------------------------------
def load_longlamp(path: str | Path) -> list[UserTask]:
    """LongLaMP abstract generation: each profile paper becomes (title prompt -> abstract)."""
    path = Path(path)
    records = _read_json(path, list, "LongLaMP")
    if not records:
        raise FintsEdgeError(f"{path}: the list has no records (LongLaMP layout)")
    return [_longlamp_task(rec, n, path) for n, rec in enumerate(records, 1)]


def _longlamp_task(rec: Any, n: int, path: Path) -> UserTask:
    where = f"{path}: record {n}"
    query, target = _text(rec, "input"), _text(rec, "output")
    profile = rec.get("profile") if isinstance(rec, dict) else None
    if not query or not target or not isinstance(profile, list):
        raise FintsEdgeError(
            f"{where} needs non-empty 'input' and 'output' and a 'profile' list; "
            'expected the LongLaMP layout {"id", "name", "input", "output", "profile"}'
        )
    history = [
        HistoryItem(LONGLAMP_PROMPT.format(_text(p, "title")), _text(p, "abstract"))
        for p in profile
        if _text(p, "title") and _text(p, "abstract")
    ]
    if not history:
        raise FintsEdgeError(
            f"{where} (id {_id(rec)!r}): no profile item has both 'title' and 'abstract'"
        )
    user = _text(rec, "name") or _id(rec) or str(n)
    return UserTask(user, history, query, target)


# -- LaMP ----------------------------------------------------------------------------------------
def _lamp_task_name(task: str) -> str:
    """Accept LaMP_4, LaMP-4, lamp4 or 4 alike; the outputs files say ``LaMP_4``."""
    digits = "".join(c for c in str(task) if c.isdigit())
    return f"LaMP_{digits}" if digits else str(task)


def _lamp_task(task: str | None, file_task: Any, outputs: Path) -> str:
    if task is None and not file_task:
        raise FintsEdgeError(f"{outputs}: no 'task' field; pass the task (LaMP_4 or LaMP_5)")
    name = _lamp_task_name(task if task is not None else file_task)
    if task is not None and file_task and _lamp_task_name(file_task) != name:
        raise FintsEdgeError(
            f"{outputs}: the file is for {file_task!r} but task {task!r} was asked for; "
            "pass the matching outputs file"
        )
    if name not in LAMP_TASKS:
        raise FintsEdgeError(
            f"{outputs}: task {name!r} is not supported; supported: {', '.join(LAMP_TASKS)} "
            "(generation tasks whose profile items pair an input with an output)"
        )
    return name


def _lamp_golds(out: dict, outputs: Path) -> dict[str, str]:
    golds = out.get("golds")
    if not isinstance(golds, list):
        raise FintsEdgeError(
            f'{outputs}: no \'golds\' list; expected {{"task", "golds": [{{"id", "output"}}]}}'
        )
    return {_id(g): _text(g, "output") for g in golds if isinstance(g, dict)}


def load_lamp(
    questions: str | Path, outputs: str | Path, task: str | None = None
) -> list[UserTask]:
    """LaMP-4 (headlines) or LaMP-5 (paper titles); one user per question, as in LaMP."""
    questions, outputs = Path(questions), Path(outputs)
    qs = _read_json(questions, list, "LaMP questions")
    out = _read_json(outputs, dict, "LaMP outputs")
    name = _lamp_task(task, out.get("task"), outputs)
    golds = _lamp_golds(out, outputs)
    if not qs:
        raise FintsEdgeError(f"{questions}: the list has no questions (LaMP layout)")
    source, target_key, template = LAMP_TASKS[name]
    tasks = []
    for n, q in enumerate(qs, 1):
        qid = _id(q)
        profile = q.get("profile") if isinstance(q, dict) else None
        if not qid or not _text(q, "input") or not isinstance(profile, list):
            raise FintsEdgeError(
                f"{questions}: question {n} needs 'id', 'input' and a 'profile' list "
                "(LaMP questions layout)"
            )
        if not golds.get(qid):
            raise FintsEdgeError(f"{outputs}: no gold output for question id {qid}")
        history = [
            HistoryItem(template.format(_text(p, source)), _text(p, target_key), None, _date(p))
            for p in profile
            if _text(p, source) and _text(p, target_key)
        ]
        if not history:
            raise FintsEdgeError(
                f"{questions}: question id {qid} has no profile item with both "
                f"'{source}' and '{target_key}' ({name})"
            )
        tasks.append(UserTask(qid, history, _text(q, "input"), golds[qid]))
    return tasks
