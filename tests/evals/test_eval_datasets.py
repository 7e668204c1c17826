"""Loaders for the public LaMP / LongLaMP layouts, on small fixtures and the shipped mini set."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

import pytest

import evals
from evals.datasets import LONGLAMP_DIR, LONGLAMP_MINI, load_lamp, load_longlamp
from fints_edge.errors import FintsEdgeError

FIXTURES = Path(__file__).parent / "fixtures"
QUESTIONS = FIXTURES / "lamp4_questions.json"
OUTPUTS = FIXTURES / "lamp4_outputs.json"


def _write(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


# -- LaMP ----------------------------------------------------------------------------------------
def test_lamp4_users_history_and_golds():
    tasks = load_lamp(QUESTIONS, OUTPUTS)
    assert [t.user for t in tasks] == ["310", "311"]
    first, second = tasks
    assert len(first.history) == 2  # the item without article text is skipped
    assert first.history[0].input == (
        "Generate a headline for the following article: "
        "A new ferry links Velm and Ostra twice a day from May."
    )
    assert first.history[0].output == "ferry to ostra starts in may"
    assert first.history[0].timestamp == dt.datetime(2019, 4, 2, tzinfo=dt.UTC).timestamp()
    assert math.isnan(first.history[1].timestamp)  # no date
    assert first.query == (
        "Generate a headline for the following article: "
        "The harbour town of Velm opened its first night market on Friday."
    )
    assert first.target == "night market lights up velm"
    assert len(second.history) == 2
    assert second.history[0].input == (  # whitespace stripped
        "Generate a headline for the following article: "
        "The cycling club elected a new chair on Monday."
    )
    assert second.history[0].output == "Cycling Club Picks New Chair"
    assert math.isnan(second.history[1].timestamp)  # an unparseable date is ignored
    assert second.target == "Rain Holds Up Regional Race"


def test_lamp5_titles_from_abstracts(tmp_path):
    question = {
        "id": 7,
        "input": "Generate a title for the following abstract of a paper: We count owls.",
        "profile": [{"id": "70", "abstract": "We count bats.", "title": "Counting Bats"}],
    }
    questions = _write(tmp_path / "q5.json", [question])
    outputs = _write(tmp_path / "o5.json", {"golds": [{"id": "7", "output": "Owl Census"}]})
    (task,) = load_lamp(questions, outputs, task="LaMP-5")  # the file has no task field
    assert task.user == "7"  # numeric ids match string gold ids
    assert task.history[0].input == (
        "Generate a title for the following abstract of a paper: We count bats."
    )
    assert task.history[0].output == "Counting Bats"
    assert task.target == "Owl Census"


def test_lamp_gold_missing_names_the_id_and_file(tmp_path):
    outputs = _write(
        tmp_path / "o.json", {"task": "LaMP_4", "golds": [{"id": "310", "output": "x"}]}
    )
    with pytest.raises(FintsEdgeError, match="no gold output for question id 311") as e:
        load_lamp(QUESTIONS, outputs)
    assert "o.json" in str(e.value)


@pytest.mark.parametrize(
    ("outputs", "task", "needle"),
    [
        (
            {"task": "LaMP_2", "golds": []},
            None,
            "'LaMP_2' is not supported; supported: LaMP_4, LaMP_5",
        ),
        ({"task": "LaMP_4", "golds": []}, "LaMP_7", "for 'LaMP_4' but task 'LaMP_7'"),
        ({"golds": []}, None, "no 'task' field"),
        ({"task": "LaMP_4"}, None, "no 'golds' list"),
        ([], None, "expected a JSON object"),
    ],
)
def test_lamp_outputs_refusals_name_the_file(tmp_path, outputs, task, needle):
    path = _write(tmp_path / "outs.json", outputs)
    with pytest.raises(FintsEdgeError, match=needle) as e:
        load_lamp(QUESTIONS, path, task=task)
    assert "outs.json" in str(e.value)


@pytest.mark.parametrize(
    ("questions", "needle"),
    [
        (None, "no such file"),
        ("[{", "not valid JSON"),
        ({"id": "310"}, "expected a JSON list"),
        ([], "no questions"),
        ([{"id": "310", "input": "x"}], "question 1 needs 'id', 'input' and a 'profile' list"),
        ([{"id": "310", "input": "x", "profile": []}], "question id 310 has no profile item"),
    ],
)
def test_lamp_questions_refusals_name_the_file(tmp_path, questions, needle):
    path = tmp_path / "qs.json"
    if questions is not None:
        _write(path, questions)
    with pytest.raises(FintsEdgeError, match=needle) as e:
        load_lamp(path, OUTPUTS)
    assert "qs.json" in str(e.value) and "\n" not in str(e.value)


# -- LongLaMP ------------------------------------------------------------------------------------
def test_longlamp_fixture():
    tasks = load_longlamp(FIXTURES / "longlamp_mini.json")
    assert [t.user for t in tasks] == ["user_a", "1"]  # name, else id
    assert [len(t.history) for t in tasks] == [2, 1]  # the blank abstract is skipped
    assert tasks[0].history[1].input == 'Generate an abstract for the title "Medium steering".'
    assert tasks[0].history[1].output == "we steer medium models."
    assert tasks[0].query == (
        'Generate an abstract for the title "Tiny steering" using the following items: '
        "steering, small models."
    )
    assert tasks[0].target == "We study steering in small models."


def test_the_shipped_longlamp_mini_set():
    """evals/data/longlamp_abstract_mini/, inside the repository: a clone runs it, so a missing
    file fails here rather than being skipped."""
    assert LONGLAMP_MINI == (
        Path(evals.__file__).resolve().parent
        / "data"
        / "longlamp_abstract_mini"
        / "abstract_generation_mini.json"
    )
    assert LONGLAMP_MINI.is_file(), f"{LONGLAMP_MINI}: the shipped LongLaMP mini set is missing"
    tasks = load_longlamp(LONGLAMP_MINI)
    assert len(tasks) == 7 and all(len(t.history) == 4 for t in tasks)
    assert [t.user for t in tasks] == [f"user_{i}" for i in range(7)]
    first = tasks[0]
    assert first.query.startswith(
        'Generate an abstract for the title "2-D DOA tracking using variational sparse Bayesian '
        'learning embedded with Kalman filter" using the following items: 2-D DOA tracking,'
    )
    assert first.target.startswith("In this paper, we consider the 2-D direction-of-arrival")
    assert first.history[0].input == (
        'Generate an abstract for the title "Off-grid DOA estimation in real spherical harmonics '
        'domain using sparse Bayesian inference.".'
    )
    assert first.history[0].output.startswith("when true targets do not locate exactly on")


def test_the_mini_set_readme_records_its_sha256_and_provenance():
    readme = (LONGLAMP_DIR / "README.md").read_text(encoding="utf-8")
    digest = hashlib.sha256(LONGLAMP_MINI.read_bytes()).hexdigest()
    assert f"| `{LONGLAMP_MINI.name}` | {LONGLAMP_MINI.stat().st_size} | `{digest}` |" in readme
    assert "JIJI5647/longLaMP" in readme and "License" in readme and "unchanged" in readme


def test_a_missing_longlamp_file_is_an_error_not_a_skip(tmp_path, monkeypatch, capsys):
    from evals import evaluate

    parse = evaluate.build_parser().parse_args
    assert evaluate.longlamp_path(parse([])) == LONGLAMP_MINI
    gone = tmp_path / "gone.json"
    with pytest.raises(FintsEdgeError, match="no such LongLaMP file; pass --longlamp FILE or"):
        evaluate.longlamp_path(parse(["--longlamp", str(gone)]))
    monkeypatch.setattr(evaluate, "LONGLAMP_MINI", gone)  # a checkout without the shipped set
    with pytest.raises(FintsEdgeError, match="gone.json: no such LongLaMP file .*shipped"):
        evaluate.longlamp_path(parse([]))
    # the run stops before any model loads (the model named here does not exist either)
    assert evaluate.main(["--model", str(tmp_path / "no.gguf")]) == 1
    err = capsys.readouterr().err
    assert "gone.json: no such LongLaMP file" in err and "no.gguf" not in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe[", "cannot read it as UTF-8"),
        ('{"a": 1}', "expected a JSON list"),
        ("[]", "no records"),
        ('[{"id": "1", "input": "x", "output": "y"}]', "record 1 needs .* 'profile' list"),
        (
            '[{"id": "1", "input": "x", "profile": []}]',
            "record 1 needs non-empty 'input' and 'output'",
        ),
        ('[{"id": "1", "input": "x", "output": "y", "profile": []}]', "record 1 .*no profile item"),
        (
            '[{"id": "1", "input": "x", "output": "y", "profile": [{"title": "t"}]}]',
            "no profile item has both 'title' and 'abstract'",
        ),
    ],
)
def test_longlamp_refusals_name_the_file(tmp_path, content, needle):
    path = tmp_path / "ll.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(FintsEdgeError, match=needle) as e:
        load_longlamp(path)
    assert "ll.json" in str(e.value) and "\n" not in str(e.value)


def test_the_lamp_path_of_the_cli_reads_the_published_layout(tmp_path, capsys):
    """`python -m evals --lamp QUESTIONS OUTPUTS`: the files become one user per question
    (profile -> history, the question -> one test row); bad files stop the run before any model
    loads, with one error line."""
    from evals import evaluate

    assert "--lamp" in evaluate.build_parser().format_help()
    args = evaluate.build_parser().parse_args(["--lamp", str(QUESTIONS), str(OUTPUTS)])
    users = evaluate.task_users(load_lamp(*args.lamp))
    assert [u.user for u in users] == ["310", "311"]
    assert [len(u.history) for u in users] == [2, len(load_lamp(QUESTIONS, OUTPUTS)[1].history)]
    assert users[0].history[1]["timestamp"] is None  # an undated item stays undated
    assert len(users[0].test) == 1 and users[0].test[0]["output"]
    assert users[0].items()[0].output == "ferry to ostra starts in may"
    missing = tmp_path / "none.json"
    assert evaluate.main(["--lamp", str(missing), str(OUTPUTS), "--skip", "longlamp"]) == 1
    err = capsys.readouterr().err
    assert f"{missing}: no such file" in err and len(err.strip().splitlines()) == 1
