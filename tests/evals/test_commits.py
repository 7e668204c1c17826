"""The ``commits`` benchmark: the shipped extract, its loader, the style scores and the build.

No model and no network: the build is checked on a tiny git repository made here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from evals.commits import COMMITS_DIR, COMMITS_FILE, commits_tasks, load_commits
from evals.commits_build import EMAIL, PROMPT, TRAILER_KEYS, main
from fints_edge.agreement import (
    case_agrees,
    first_line,
    period_agrees,
    prefix_agrees,
    split_prefix,
    style_agreement,
)
from fints_edge.errors import FintsEdgeError
from fints_edge.history import HistoryItem

PSEUDONYM = re.compile(r"^[a-z][a-z0-9]*-author-\d{2}$")
TRAILER = re.compile(
    r"^\s*(?:" + "|".join(re.escape(k) for k in TRAILER_KEYS) + r")\s*:", re.I | re.M
)
PERMISSIVE = {"MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "PSF-2.0"}
KEPT_OUT = {"git/git", "numpy/numpy", "rust-lang/cargo", "psf/requests"}  # independent checks


def _rows(path: Path = COMMITS_FILE) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _body(item: dict) -> str:
    head, sep, body = item["input"].partition("\n\n")
    assert sep and head.startswith("Write the one-line subject for this commit.\nFiles: ")
    return body


# -- the shipped extract -------------------------------------------------------------------------
def test_extract_meets_the_requirements():
    rows = _rows()
    assert COMMITS_FILE.stat().st_size < 3_000_000
    assert len({r["repo"] for r in rows}) >= 4
    per_user: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        assert set(r) == {"commit", "date", "input", "output", "repo", "split", "user"}
        assert PSEUDONYM.match(r["user"]) and r["user"].startswith(r["repo"] + "-author-")
        assert re.fullmatch(r"[0-9a-f]{40}", r["commit"]) and r["commit"] not in r["input"]
        per_user[r["user"]].append(r)
    assert len(per_user) >= 24
    for user, items in per_user.items():
        assert len(items) >= 40, user
        order = {"history": 0, "dev": 1, "test": 2}
        splits = [order[it["split"]] for it in items]
        assert splits == sorted(splits), user  # file order: history, dev, test
        dates = [it["date"] for it in items]
        assert dates == sorted(dates), f"{user}: splits are not ordered by time"
        assert {it["split"] for it in items} == set(order)


def test_extract_text_is_clean():
    for r in _rows():
        body, subject = _body(r), r["output"]
        assert subject == subject.strip() and "\n" not in subject and subject
        assert len(body) >= 40 and len(body) <= 1200
        assert subject.casefold() not in body.casefold()
        assert not TRAILER.search(body), (r["user"], body)
        assert not re.match(r"(?i)revert\b", subject)
        assert not EMAIL.search(r["input"]) and not EMAIL.search(subject)
        files = r["input"].split("\n", 2)[1]
        assert len(files.split(", ")) <= 13  # 12 paths, then ", ... (N more)"


def test_extract_is_loadable_per_user():
    users = load_commits()
    assert len(users) >= 24 and list(users) == sorted(users)
    for u in users.values():
        assert len(u.history) + len(u.dev) + len(u.test) >= 40
        assert all(isinstance(h, HistoryItem) and h.rejected is None for h in u.history)
        times = [h.timestamp for h in u.history]
        assert times == sorted(times)
        assert u.dev and u.test and all(q.startswith(PROMPT[:20]) for q, _ in u.test)
    tasks = commits_tasks(users, "test")
    assert len(tasks) == sum(len(u.test) for u in users.values())
    assert tasks[0].history == users[tasks[0].user].history


def test_readme_sha256_provenance_and_licenses():
    readme = (COMMITS_DIR / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([\w.]+)` \| (\d+) \| `([0-9a-f]{64})` \|$", readme, re.M)
    assert {name for name, _, _ in listed} == {"commits.jsonl", "manifest.json"}
    for name, size, sha in listed:
        data = (COMMITS_DIR / name).read_bytes()
        assert len(data) == int(size) and hashlib.sha256(data).hexdigest() == sha, name
    manifest = json.loads((COMMITS_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["repos"]) >= 4
    for repo in manifest["repos"]:
        assert repo["license"] in PERMISSIVE and repo["origin"] not in KEPT_OUT
        assert re.fullmatch(r"[0-9a-f]{40}", repo["commit"])
        assert repo["commit"] in readme and repo["origin"] in readme
        assert f"{repo['name']}={'/path/to/'}{repo['name']}.git@{repo['commit']}" in readme
    users = {u for repo in manifest["repos"] for u in repo["users"]}
    assert users == set(load_commits())
    assert "/work/" not in readme and "/tmp/" not in readme


# -- the loader's errors -------------------------------------------------------------------------
def _line(**kw) -> str:
    item = {"user": "x-author-01", "repo": "x", "date": 1, "split": "history"}
    item |= {"input": "in", "output": "out"} | kw
    return json.dumps(item)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json\n", r"\.jsonl:1: not valid JSON"),
        ("[1, 2]\n", r"\.jsonl:1: expected a JSON object"),
        (_line(output="") + "\n", r"\.jsonl:1: needs a non-empty string 'output'"),
        (_line(date="today") + "\n", r"\.jsonl:1: 'date' must be unix seconds"),
        (_line(split="train") + "\n", r"\.jsonl:1: split 'train' is not one of"),
        (_line() + "\n" + _line(split="dev", repo="y") + "\n", r"\.jsonl:2: .* two repos"),
        (_line() + "\n" + _line(split="dev") + "\n", r"\.jsonl: user 'x-author-01' has no test"),
        ("\n", r"\.jsonl: no items"),
    ],
)
def test_bad_files_give_one_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FintsEdgeError, match=message):
        load_commits(path)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(FintsEdgeError, match=r"nope\.jsonl: no such file"):
        load_commits(tmp_path / "nope.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"user": "\xe9"}\n')
    with pytest.raises(FintsEdgeError, match=r"latin\.jsonl: not UTF-8"):
        load_commits(tmp_path / "latin.jsonl")
    with pytest.raises(FintsEdgeError, match="split 'history'"):
        commits_tasks({}, "history")


# -- style agreement -----------------------------------------------------------------------------
def test_first_line():
    assert first_line("\n  \n  net/http: add X  \nmore text") == "net/http: add X"
    assert first_line("") == "" and first_line(" \n\t\n") == ""


@pytest.mark.parametrize(
    ("subject", "prefix", "rest"),
    [
        ("net/http: add X", "net/http:", "add X"),
        ("BUG: fix it", "BUG:", "fix it"),
        ("gh-12345: Fix it", "gh-12345:", "Fix it"),
        ("fix(cli): quote args", "fix(cli):", "quote args"),
        ("feat!: drop py2", "feat!:", "drop py2"),
        ("[mypyc] Inline ops", "[mypyc]", "Inline ops"),
        ("cmd/go, go/build: add x", "cmd/go, go/build:", "add x"),
        ("Python 3.12: add x", "", "Python 3.12: add x"),  # a space before the colon
        ("http://x.org is down", "", "http://x.org is down"),  # no space after the colon
        ("Fix #123 -- crash", "", "Fix #123 -- crash"),
        ("[broken", "", "[broken"),
    ],
)
def test_split_prefix(subject, prefix, rest):
    assert split_prefix(subject) == (prefix, rest)


@pytest.mark.parametrize(
    ("answer", "gold", "agrees"),
    [
        ("net/http: add X", "net/http: fix Y", True),
        ("net/url: add X", "net/http: fix Y", False),  # another area
        ("Add X", "net/http: fix Y", False),  # gold has a prefix, the answer none
        ("net/http: add X", "Add X", False),  # gold has none, the answer one
        ("Add X", "Fix Y", True),
        ("gh-123: Fix X", "gh-98765: Fix Y", True),  # ticket numbers count as equal
        ("BUG: x", "bug: x", False),  # case-sensitive
        ("[mypyc] Fix x", "[mypyc] Add y", True),
        ("[clang] Fix x", "[mypyc] Add y", False),
        ("fix(api): x", "fix(cli): y", False),
        ("Python 3.12: x", "Add y", True),
        ("\n\nBUG: x\nENH: y", "BUG: z", True),  # the answer's first line counts
    ],
)
def test_prefix_agrees(answer, gold, agrees):
    assert prefix_agrees(answer, gold) is agrees


@pytest.mark.parametrize(
    ("answer", "gold", "agrees"),
    [
        ("net/http: add x", "net/http: fix y", True),
        ("net/http: Add x", "net/http: fix y", False),  # case after the prefix
        ("Fix x", "fix y", False),
        ("[mypyc] Fix x", "Fix y", True),
        ("`foo` works", "`bar` breaks", True),  # the first letter, not the first character
        ("123", "Fix y", False),  # no letter agrees only with no letter
        ("123", "456", True),
    ],
)
def test_case_agrees(answer, gold, agrees):
    assert case_agrees(answer, gold) is agrees


@pytest.mark.parametrize(
    ("answer", "gold", "agrees"),
    [
        ("Fix x.", "Fix y.", True),
        ("Fix x", "Fix y.", False),
        ("Fix x.", "Fix y", False),
        ("Fix x.  \nmore", "Fix y. ", True),
        ("Fix x", "Fix y", True),
    ],
)
def test_period_agrees(answer, gold, agrees):
    assert period_agrees(answer, gold) is agrees


def test_style_agreement_of_one_answer():
    assert style_agreement("BUG: Fix x.", "BUG: fix y") == {
        "prefix": True,
        "case": False,
        "period": False,
    }


# -- the build, on a tiny repository -------------------------------------------------------------
T0 = 1_700_000_000
ANN = ("Ann Example", "ann@example.org")
BOB = ("Bob Builder", "bob@example.org")
BOB_OLD = ("Bob Builder", "bob@old.example.org")
CARL = ("Carl Other", "carl@example.org")
BOT = ("dependabot[bot]", "49699333+dependabot[bot]@users.noreply.github.com")


class Repo:
    def __init__(self, path: Path) -> None:
        self.path, self.tick = path, 0
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def env(self, who: tuple[str, str]) -> dict[str, str]:
        date = f"@{T0 + 3600 * self.tick} +0000"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env |= {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "TZ": "UTC"}
        env |= {"GIT_AUTHOR_NAME": who[0], "GIT_AUTHOR_EMAIL": who[1], "GIT_AUTHOR_DATE": date}
        env |= {"GIT_COMMITTER_NAME": "Committer", "GIT_COMMITTER_EMAIL": "c@example.org"}
        return env | {"GIT_COMMITTER_DATE": date}

    def git(self, *args: str, who: tuple[str, str] = ANN) -> str:
        out = subprocess.run(
            ["git", *args], cwd=self.path, env=self.env(who), check=True, capture_output=True
        )
        return out.stdout.decode().strip()

    def commit(self, who: tuple[str, str], message: str, *files: str) -> str:
        self.tick += 1
        for f in files:
            p = self.path / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"{p.read_text() if p.exists() else ''}{self.tick}\n")
            self.git("add", f)
        self.git("commit", "-q", "-m", message, who=who)
        return self.git("rev-parse", "HEAD")


def _make_repo(path: Path) -> dict[str, str]:
    """15 commits: 4 kept of Ann, 3 of Bob, 1 of Carl; the rest dropped, one of each kind."""
    r, c = Repo(path), {}
    (path / "LICENSE").write_text("Permission is hereby granted, free of charge, to any ...\n")
    c["license"] = r.commit(ANN, "Add LICENSE", "LICENSE")  # short body
    c["a1"] = r.commit(
        ANN,
        "net/http: add the Transport type\n\nThe Transport type sends requests over\n"
        "kept-alive connections.\n\nSigned-off-by: Ann Example <ann@example.org>\n"
        "Change-Id: I0123456789abcdef",
        "net/http/transport.go",
    )
    c["b1"] = r.commit(
        BOB,
        "BUG: fix the parser on empty input\n\n* An empty file made the parser read past the "
        "end of the buffer.\n\nCo-authored-by: Carl Other <carl@example.org>\n\n"
        "* Test an empty file too.\n\nReviewed-by: Ann Example <ann@example.org>",
        "parser.c",
        "tests/test_parser.py",
    )
    r.commit(BOT, "Bump x from 1 to 2\n\nBumps x from 1 to 2. Release notes are linked.", "req.txt")
    c["a2"] = r.commit(
        ANN,
        "net/http: document Transport.Close\n\nClose was undocumented; say that it waits for idle"
        "\nconnections to drain. Reported by Ann Example <ann@example.org>, see"
        "\nhttps://example.org/issue/7.\n\nFixes #7\n\nReviewed-on: https://review.example.org/c/7"
        "\nTrust: Ann Example <ann@example.org>",
        "net/http/transport.go",
    )
    c["carl"] = r.commit(
        CARL, "Tweak build\n\nThe build now runs the tests before it packs the wheel.", "Makefile"
    )
    r.tick += 1
    r.git("revert", "--no-edit", "HEAD")  # a revert, by Ann
    r.commit(
        ANN,
        "net/url: parse ports\n\nParse ports as numbers.\nnet/url: parse ports\n\n"
        "More text, long enough for the body to count.",
        "net/url/url.go",
    )  # the body contains the subject
    c["b2"] = r.commit(
        BOB_OLD,
        "BUG: handle NaN in sort\n\nSorting an array with a NaN put it first; put it last."
        "\n\n(cherry picked from commit 0123456789abcdef)",
        "sort.c",
    )
    r.git("checkout", "-q", "-b", "side")
    c["b3"] = r.commit(
        BOB,
        "DOC: explain sort order\n\nSay where NaN goes in the sorted output, with an example.",
        "doc/sort.rst",
    )
    r.git("checkout", "-q", "main")
    c["a3"] = r.commit(
        ANN,
        "net/http: close idle connections\n\nIdle connections were kept forever (seen in "
        "/home/ann/logs); close them after\na minute. Thanks to Bob Builder for the report.",
        "net/http/transport.go",
        "net/http/transport_test.go",
    )
    r.tick += 1
    r.git("merge", "-q", "--no-ff", "side", "-m", "Merge branch 'side'")  # a merge
    r.commit(ANN, "net/http: add a test\nfor Close\n\nA test that Close waits.", "net/http/t.go")
    c["a4"] = r.commit(
        ANN,
        "net/http: speed up header parsing\n\nHeaders are parsed once per request now, not once "
        "per read, and the parser keeps its buffer between requests on the same connection.\n\n"
        "On a benchmark with a thousand headers this halves the time, and it allocates a third "
        "less than before.",
        "net/http/a.go",
        "net/http/b.go",
        "net/http/c.go",
    )
    r.commit(BOB, "BUG: keep going\n\nShort.", "sort.c")  # short body
    return c


def _item(c, key, tick, split, user, files, body, subject):
    return {
        "commit": c[key],
        "date": T0 + 3600 * tick,
        "input": PROMPT.format(files=files, body=body),
        "output": subject,
        "repo": "tiny",
        "split": split,
        "user": user,
    }


def test_build_on_a_tiny_repository_is_exact_and_byte_identical(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    c = _make_repo(tmp_path / "work")
    mirror = tmp_path / "tiny.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(tmp_path / "work"), str(mirror)], check=True
    )
    monkeypatch.chdir(tmp_path)
    args = ["--mirror", f"tiny={mirror}@main", "--min-kept", "3", "--per-author", "4"]
    args += ["--dev", "1", "--test", "1", "--max-paths", "2", "--body-chars", "200"]
    assert main([*args, "--out", "out1"]) == 0
    assert main([*args, "--out", "out2"]) == 0
    for name in ("commits.jsonl", "manifest.json"):
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()
    readme1 = (tmp_path / "out1" / "README.md").read_text()
    assert readme1 == (tmp_path / "out2" / "README.md").read_text().replace("out2", "out1")
    assert str(tmp_path) not in readme1 and "--out out1" in readme1

    ann, bob = "tiny-author-01", "tiny-author-02"  # ann@ sorts before bob@
    expected = [
        _item(c, "a1", 2, "history", ann, "net/http/transport.go",
              "The Transport type sends requests over\nkept-alive connections.",
              "net/http: add the Transport type"),
        _item(c, "a2", 5, "history", ann, "net/http/transport.go",
              "Close was undocumented; say that it waits for idle\nconnections to drain. "
              f"Reported by {ann} <email>, see\nhttps://example.org/issue/7.\n\nFixes #7",
              "net/http: document Transport.Close"),
        _item(c, "a3", 11, "dev", ann, "net/http/transport.go, net/http/transport_test.go",
              "Idle connections were kept forever (seen in /home/user/logs); close them after\n"
              f"a minute. Thanks to {bob} for the report.",
              "net/http: close idle connections"),
        _item(c, "a4", 14, "test", ann, "net/http/a.go, net/http/b.go, ... (1 more)",
              "Headers are parsed once per request now, not once per read, and the parser keeps "
              "its buffer between requests on the same connection.",
              "net/http: speed up header parsing"),
        _item(c, "b1", 3, "history", bob, "parser.c, tests/test_parser.py",
              "* An empty file made the parser read past the end of the buffer.\n\n"
              "* Test an empty file too.",
              "BUG: fix the parser on empty input"),
        _item(c, "b2", 9, "dev", bob, "sort.c",
              "Sorting an array with a NaN put it first; put it last.",
              "BUG: handle NaN in sort"),
        _item(c, "b3", 10, "test", bob, "doc/sort.rst",
              "Say where NaN goes in the sorted output, with an example.",
              "DOC: explain sort order"),
    ]  # fmt: skip
    assert _rows(tmp_path / "out1" / "commits.jsonl") == expected
    manifest = json.loads((tmp_path / "out1" / "manifest.json").read_text())
    (repo,) = manifest["repos"]
    assert repo["license"] == "MIT" and repo["commits_read"] == 14
    assert repo["authors_eligible"] == 2  # Carl has one kept commit
    assert repo["dropped"] == {
        "bot author": 1,
        "revert": 1,
        "subject spans lines": 1,
        "no paths": 0,
        "short body": 2,
        "body contains subject": 1,
        "body restates subject": 0,
    }
    users = load_commits(tmp_path / "out1" / "commits.jsonl")
    assert [h.output for h in users[ann].history] == [expected[0]["output"], expected[1]["output"]]
    assert users[bob].test == [(expected[6]["input"], expected[6]["output"])]


def test_build_refuses_a_repository_without_a_permissive_license(tmp_path, capsys):
    r = Repo(tmp_path / "work")
    (tmp_path / "work" / "LICENSE").write_text("All rights reserved.\n")
    r.commit(ANN, "Add LICENSE\n\nAll rights reserved, no permission to copy anything.", "LICENSE")
    out = tmp_path / "out"
    assert main(["--mirror", f"x={tmp_path / 'work' / '.git'}@HEAD", "--out", str(out)]) == 2
    assert not out.exists()
    assert "no permissive license" in capsys.readouterr().err
