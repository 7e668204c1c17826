"""Build the ``commits`` benchmark extract from bare git mirrors (issue #23).

Each item is one commit: the input is its cleaned body and changed paths, the output the subject
line its author wrote, so a personalized model can learn an author's subject habits (area prefix,
case, trailing period, length, ticket references). Only commit messages and paths are extracted,
never code. The output is a pure function of the mirrors at the given commits and the options:
running it twice gives byte-identical files (``evals/data/commits/README.md`` records sha256)::

    python -m evals.commits_build --mirror gotools=/path/to/tools.git@<commit> ... \\
        --out evals/data/commits
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fints_edge.agreement import split_prefix
from fints_edge.errors import FintsEdgeError

DATA_FILE = "commits.jsonl"
MANIFEST_FILE = "manifest.json"
README_FILE = "README.md"
PROMPT = "Write the one-line subject for this commit.\nFiles: {files}\n\n{body}"

# Where the short names used in the pseudonyms come from (for the README); others are "local".
ORIGINS = {
    "gotools": "golang/tools",
    "gonet": "golang/net",
    "scipy": "scipy/scipy",
    "mypy": "python/mypy",
    "astropy": "astropy/astropy",
    "pytest": "pytest-dev/pytest",
}
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.rst", "LICENSE.md", "COPYING")
# Permissive licenses recognised by a phrase of their text; the earliest phrase in the file wins
# (a LICENSE may append the licenses of bundled parts after the project's own).
LICENSE_PHRASES = (
    ("MIT", "Permission is hereby granted, free of charge"),
    ("Apache-2.0", "Apache License"),
    ("PSF-2.0", "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2"),
    ("BSD", "Redistribution and use in source and binary forms"),
)

# Trailer keys removed wherever a line starts with them (case-insensitive).
TRAILER_KEYS = (
    "Signed-off-by",
    "Change-Id",
    "Reviewed-on",
    "Reviewed-by",
    "Run-TryBot",
    "TryBot-Result",
    "TryBot-Bypass",
    "Auto-Submit",
    "Co-authored-by",
    "Cq-Include-Trybots",
    "LUCI-TryBot-Result",
    "Commit-Queue",
    "Approved-by",
    "Acked-by",
    "Tested-by",
    "Reported-by",
    "Suggested-by",
    "Helped-by",
    "Requested-by",
    "Original-commit",
    "GitOrigin-RevId",
    "Bypass-Reason",
    "Trust",
    "gopls-CI",
    "Hg-Commit",
)
TRAILER_LINE = re.compile(
    r"^\s*(?:(?:" + "|".join(re.escape(k) for k in TRAILER_KEYS) + r")\s*:.*"
    r"|Co-authored-by\s+[\w -]{1,40})$",  # "Co-authored-by Codex", a trailer without colon
    re.IGNORECASE,
)
CHERRY_PICK = re.compile(r"^\s*\(cherry[ -]picked from .*\)\s*$", re.IGNORECASE)
KEY_VALUE = re.compile(r"^([A-Za-z][A-Za-z0-9-]{0,40}):\s+(\S.*)$")
HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
RULE_LINE = re.compile(r"^\s*[-=*_]{3,}\s*$")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_EMAIL_OR_BRACKETED = re.compile(f"<{EMAIL.pattern}>|{EMAIL.pattern}")


def hide_emails(text: str) -> str:
    """Every e-mail address (with its angle brackets, if any) becomes ``<email>``."""
    return _EMAIL_OR_BRACKETED.sub("<email>", text)


NOREPLY = re.compile(r"^(?:\d+\+)?([A-Za-z0-9][A-Za-z0-9-]*)@users\.noreply\.github\.com$", re.I)
BOT = re.compile(
    r"\[bot\]|\bbot\b|robot|gobot@|dependabot|pre-commit-ci|github-actions|renovate", re.I
)
REVERT = re.compile(r"^revert\b", re.IGNORECASE)
PR_REF = re.compile(r"\s*\(#\d+\)$")
NAME = re.compile(r"^[a-z][a-z0-9]*$")


@dataclass(frozen=True)
class Options:
    """The selection rule; every value is written to the manifest and the README."""

    min_kept: int = 40  # an author needs this many kept commits to be chosen
    per_author: int = 50  # at most this many newest kept commits per author
    dev: int = 8  # the newer commits: dev, then the newest: test
    test: int = 12
    max_authors: int = 10  # per repository, the authors with the most kept commits
    min_body: int = 40  # characters of cleaned body, else the commit is dropped
    body_chars: int = 1200  # longer bodies are cut at a paragraph or line boundary
    max_paths: int = 12  # more paths are listed as ", ... (N more)"
    min_core: int = 20  # a subject's core this long found in the body drops the commit


@dataclass(frozen=True)
class Mirror:
    name: str  # short name, the pseudonyms' prefix
    path: Path  # bare git directory
    commit: str  # as given; resolved to the full hash by the build


@dataclass
class Commit:
    sha: str
    date: int
    name: str
    email: str
    subject: str
    body: str
    paths: list[str]
    aliases: tuple[str, str] = ("", "")  # name and e-mail as recorded, before the mailmap


@dataclass
class RepoResult:
    mirror: Mirror
    commit: str
    license_id: str
    license_file: str
    items: list[dict] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    authors_eligible: int = 0
    commits_seen: int = 0


# -- git -----------------------------------------------------------------------------------------
def _git_env() -> dict[str, str]:
    """No user or system config, so the output depends on the mirror alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, LC_ALL="C", TZ="UTC")
    return env


def _git(git_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(
            ["git", f"--git-dir={git_dir}", *args], capture_output=True, env=_git_env()
        )
    except FileNotFoundError:
        raise FintsEdgeError("git is not installed; install git to build the extract") from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise FintsEdgeError(
            f"{git_dir}: git {' '.join(args[:2])} failed: {err[-1] if err else proc.returncode}"
        )
    return proc


def resolve(mirror: Mirror) -> str:
    proc = _git(
        mirror.path, "rev-parse", "--verify", "--quiet", f"{mirror.commit}^{{commit}}", check=False
    )
    sha = proc.stdout.decode().strip()
    if proc.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", sha):
        raise FintsEdgeError(
            f"{mirror.path}: commit {mirror.commit!r} not found; pass --mirror NAME=GITDIR@COMMIT "
            "with a commit of that bare mirror"
        )
    return sha


def find_license(git_dir: Path, commit: str) -> tuple[str, str]:
    """(license id, file name) of the project's license at ``commit``; permissive ones only."""
    for fname in LICENSE_FILES:
        proc = _git(git_dir, "show", f"{commit}:{fname}", check=False)
        if proc.returncode != 0:
            continue
        text = proc.stdout.decode("utf-8", "replace")
        found = [(text.find(p), lid) for lid, p in LICENSE_PHRASES if p in text]
        if not found:
            break
        lid = min(found)[1]
        if lid == "BSD":
            lid = (
                "BSD-3-Clause"
                if re.search(r"Neither the name|names of its", text)
                else "BSD-2-Clause"
            )
        return lid, fname
    raise FintsEdgeError(
        f"{git_dir}: no permissive license (MIT, BSD, Apache-2.0, PSF-2.0) found in "
        f"{'/'.join(LICENSE_FILES)} at {commit}; only permissively licensed projects are used"
    )


def read_commits(git_dir: Path, commit: str, label: str) -> list[Commit]:
    """Every non-merge commit reachable from ``commit``, with the paths it changed."""
    args = ["-c", "core.quotePath=false"]
    mailmap = _git(git_dir, "cat-file", "-e", f"{commit}:.mailmap", check=False).returncode == 0
    # The mailmap at the snapshot, not the one at HEAD a bare repository would use by default
    args += ["-c", f"mailmap.blob={commit}:.mailmap" if mailmap else "mailmap.blob="]
    fmt = "%x1e%H%x1f%at%x1f%aN%x1f%aE%x1f%an%x1f%ae%x1f%B%x1f"
    args += ["log", "--no-merges", "--no-renames", "--name-only", "--encoding=UTF-8"]
    args += [f"--format={fmt}", commit, "--"]
    out = _git(git_dir, *args).stdout.decode("utf-8", "replace")
    commits = []
    for rec in tqdm(out.split("\x1e")[1:], desc=f"{label}: commits", unit=" commits"):
        sha, date, name, email, raw_name, raw_email, rest = rec.split("\x1f", 6)
        message, paths = rest.rsplit("\x1f", 1)
        subject, body = _split_message(message)
        files = [p for p in paths.split("\n") if p.strip()]
        aliases = (raw_name.strip(), raw_email.strip())
        commits.append(
            Commit(sha, int(date), name.strip(), email.strip(), subject, body, files, aliases)
        )
    return commits


def _split_message(message: str) -> tuple[str, str]:
    """(first line, rest); a first paragraph of several lines leaves a newline in the subject."""
    message = message.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    head, _, body = message.partition("\n\n")
    return head.strip(), body


# -- cleaning ------------------------------------------------------------------------------------
def _is_trailer_paragraph(lines: list[str]) -> bool:
    """A last paragraph whose every line is ``Key: value`` (or a continuation) is trailers."""
    seen = False
    for line in lines:
        if line[:1].isspace() and seen:
            continue
        m = KEY_VALUE.match(line)
        if not m:
            return False
        key, value = m.groups()
        if not (
            "-" in key
            or key.casefold() in _TRAILER_FOLD
            or " " not in value.strip()
            or "@" in value
            or "://" in value
        ):
            return False  # "Note: this changes x" is prose
        seen = True
    return seen


_TRAILER_FOLD = {k.casefold() for k in TRAILER_KEYS} | {
    "fixes",
    "bug",
    "closes",
    "issue",
    "refs",
    "see",
}


def clean_body(body: str) -> str:
    """The body without trailers, review-tool lines, HTML comments and e-mail addresses."""
    body = HTML_COMMENT.sub("", body.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [
        line.rstrip()
        for line in body.split("\n")
        if not TRAILER_LINE.match(line) and not CHERRY_PICK.match(line)
    ]
    paragraphs = [p for p in "\n".join(lines).split("\n\n")]
    paragraphs = [p.strip("\n") for p in paragraphs if p.strip()]
    while paragraphs:
        last = paragraphs[-1].split("\n")
        if _is_trailer_paragraph(last) or all(RULE_LINE.match(x) for x in last):
            paragraphs.pop()
            continue
        while last and RULE_LINE.match(last[-1]):  # a "-----" left above removed trailers
            last.pop()
        paragraphs[-1] = "\n".join(last)
        break
    text = "\n\n".join(p for p in paragraphs if p.strip())
    return hide_emails(text).strip()


def cap_body(body: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a paragraph, else a line, else a word boundary."""
    if len(body) <= limit:
        return body
    head = body[: limit + 1]
    for sep in ("\n\n", "\n", " "):
        cut = head.rfind(sep)
        if cut >= limit // 2:
            return body[:cut].rstrip()
    return body[:limit].rstrip()


def format_paths(paths: list[str], limit: int) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def subject_core(subject: str) -> str:
    """The subject without its area prefix, a trailing ``(#123)`` and a trailing period."""
    core = split_prefix(subject)[1]
    return PR_REF.sub("", core).rstrip(" .")


def drop_reason(c: Commit, body: str, opts: Options) -> str | None:
    """Why a commit is not used, or None to keep it (``body`` already cleaned)."""
    if BOT.search(f"{c.name} <{c.email}>"):
        return "bot author"
    if REVERT.match(c.subject) or "This reverts commit" in c.body:
        return "revert"
    if not c.subject or "\n" in c.subject:
        return "subject spans lines"
    if not c.paths:
        return "no paths"
    if len(body) < opts.min_body:
        return "short body"
    folded = _fold(body)
    core = _fold(subject_core(c.subject))
    if _fold(c.subject) in folded or (len(core) >= opts.min_core and core in folded):
        return "body contains subject"
    if restates(c.subject, body):
        return "body restates subject"
    return None


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def restates(subject: str, body: str, threshold: float = 0.8) -> bool:
    """A line of the body nearly equal to the subject (a squashed commit's list, say)."""
    target = _norm(PR_REF.sub("", subject))
    for line in body.split("\n"):
        line = _norm(line)
        if len(line) >= len(target) // 2 and len(target) <= 2 * len(line):
            if difflib.SequenceMatcher(None, target, line, autojunk=False).ratio() >= threshold:
                return True
    return False


# -- authors -------------------------------------------------------------------------------------
class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _identity_keys(c: Commit) -> tuple[str, str]:
    return "n:" + _fold(c.name), "e:" + c.email.casefold()


def author_clusters(commits: list[Commit]) -> dict[str, str]:
    """Identity node -> author key: commits sharing a name or an e-mail are one author.

    The key is the author's smallest e-mail address (casefolded), so it does not depend on the
    order of the history.
    """
    uf = _Union()
    for c in commits:
        name, email = _identity_keys(c)
        uf.union(name, email)
        for alias in ("n:" + _fold(c.aliases[0]), "e:" + c.aliases[1].casefold()):
            if alias[2:]:
                uf.union(email, alias)
    members: dict[str, list[str]] = defaultdict(list)
    for node in list(uf.parent):
        members[uf.find(node)].append(node)
    key_of = {}
    for nodes in members.values():
        emails = sorted(n[2:] for n in nodes if n.startswith("e:"))
        key = emails[0] if emails else sorted(nodes)[0]
        for n in nodes:
            key_of[n] = key
    return key_of


_GENERIC_LOCAL = {
    "admin",
    "code",
    "contact",
    "dev",
    "email",
    "git",
    "github",
    "hello",
    "info",
    "mail",
    "me",
    "noreply",
    "opensource",
    "root",
    "user",
    "web",
}  # e-mail local parts that are words, not handles


def _word(w: str, flags: int = re.IGNORECASE) -> re.Pattern:
    return re.compile(r"(?<![\w.])" + w + r"(?![\w])", flags)


def scrub_patterns(
    identities: dict[str, tuple[set[str], set[str]]],
) -> list[tuple[re.Pattern, str]]:
    """Patterns for the chosen authors' names, e-mails and handles -> their pseudonyms.

    Per author: every full name (its words joined by a space, ``.``, ``_``, ``-`` or nothing),
    the GitHub handle of a noreply address, the local part of each e-mail address (unless a
    word such as ``mail``); then, case-sensitively, each capitalised word of 4+ letters of a
    multi-word name that no other chosen author shares ("Thanks, Pierre"). Longest first.
    """
    full: dict[str, set[str]] = defaultdict(set)
    parts: dict[str, set[str]] = defaultdict(set)
    for pseudonym, (names, emails) in identities.items():
        for name in names:
            words = re.findall(r"[^\s()\[\],\"']+", name)
            if len(words) > 1:
                full[re.escape(name)].add(pseudonym)
                full[r"[\s._-]?".join(re.escape(w) for w in words)].add(pseudonym)
                for w in words:
                    if len(w) >= 4 and w[0].isupper() and w.isalpha():
                        parts[w].add(pseudonym)
            elif words and len(words[0]) >= 3:
                full[re.escape(words[0])].add(pseudonym)
        for email in emails:
            local = email.split("@")[0].casefold()
            m = NOREPLY.match(email)
            handle = m.group(1) if m else local
            if len(handle) >= 3 and handle not in _GENERIC_LOCAL:
                full[re.escape(handle)].add(pseudonym)
    pats = [(len(w), w, _word(w), min(ps)) for w, ps in full.items() if len(ps) == 1] + [
        (len(w), w, _word(re.escape(w), 0), min(ps)) for w, ps in parts.items() if len(ps) == 1
    ]
    return [(pat, ps) for _, _, pat, ps in sorted(pats, key=lambda t: (-t[0], t[1]))]


HOME_DIR = re.compile(r"(/home/|/Users/|\\Users\\)[^/\\\s]+")


def scrub(text: str, patterns: list[tuple[re.Pattern, str]]) -> str:
    """Chosen authors' identities -> pseudonyms; anyone's home folder name -> ``user``."""
    text = HOME_DIR.sub(lambda m: m.group(1) + "user", text)
    for pat, pseudonym in patterns:
        text = pat.sub(pseudonym, text)
    return text


# -- build ---------------------------------------------------------------------------------------
def build_repo(mirror: Mirror, opts: Options) -> RepoResult:
    commit = resolve(mirror)
    license_id, license_file = find_license(mirror.path, commit)
    res = RepoResult(mirror, commit, license_id, license_file)
    commits = read_commits(mirror.path, commit, mirror.name)
    res.commits_seen = len(commits)
    humans = [c for c in commits if not BOT.search(f"{c.name} <{c.email}>")]
    key_of = author_clusters(humans)
    kept: dict[str, list[tuple[Commit, str]]] = defaultdict(list)
    identities: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for c in tqdm(commits, desc=f"{mirror.name}: cleaning", unit=" commits"):
        body = clean_body(c.body)
        reason = drop_reason(c, body, opts)
        if reason:
            res.drops[reason] += 1
            continue
        key = key_of[_identity_keys(c)[1]]
        kept[key].append((c, body))
    for c in humans:
        key = key_of[_identity_keys(c)[1]]
        identities[key][0].update(" ".join(n.split()) for n in (c.name, c.aliases[0]) if n)
        identities[key][1].update(e for e in (c.email, c.aliases[1]) if e)
    eligible = [k for k, v in kept.items() if len(v) >= opts.min_kept]
    res.authors_eligible = len(eligible)
    chosen = sorted(eligible, key=lambda k: (-len(kept[k]), k))[: opts.max_authors]
    pseudonyms = {k: f"{mirror.name}-author-{i:02d}" for i, k in enumerate(sorted(chosen), 1)}
    patterns = scrub_patterns({pseudonyms[k]: identities[k] for k in chosen})
    for key in sorted(chosen, key=lambda k: pseudonyms[k]):
        mine = sorted(kept[key], key=lambda cb: (cb[0].date, cb[0].sha))[-opts.per_author :]
        n = len(mine)
        for i, (c, body) in enumerate(mine):
            split = split_of(i, n, opts)
            files = format_paths(c.paths, opts.max_paths)
            body_out = scrub(cap_body(body, opts.body_chars), patterns)
            res.items.append(
                {
                    "commit": c.sha,
                    "date": c.date,
                    "input": PROMPT.format(files=files, body=body_out),
                    "output": scrub(hide_emails(c.subject), patterns),
                    "repo": mirror.name,
                    "split": split,
                    "user": pseudonyms[key],
                }
            )
    return res


def split_of(i: int, n: int, opts: Options) -> str:
    """The i-th of an author's n commits, oldest first: the newest are test, then dev."""
    if i >= n - opts.test:
        return "test"
    return "dev" if i >= n - opts.test - opts.dev else "history"


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def _command(mirrors: Sequence[Mirror], results: list[RepoResult], opts: Options, out: str) -> str:
    by_name = {r.mirror.name: r for r in results}
    parts = ["python -m evals.commits_build"]
    for m in sorted(mirrors, key=lambda m: m.name):
        parts.append(f"--mirror {m.name}=/path/to/{m.name}.git@{by_name[m.name].commit}")
    for f, default in Options.__dataclass_fields__.items():
        value = getattr(opts, f)
        if value != default.default:
            parts.append(f"--{f.replace('_', '-')} {value}")
    parts.append(f"--out {out}")
    return " \\\n    ".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows])


def _day(t: int) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%d")


def _readme(results: list[RepoResult], opts: Options, files: dict[str, bytes], command: str) -> str:
    """The README beside the extract: provenance, licenses, the rule, counts and sha256."""
    items = [it for r in results for it in r.items]
    n_users = len({it["user"] for it in items})
    o = opts
    keys = ", ".join(f"`{k}:`" for k in TRAILER_KEYS)
    repo_rows = [
        (
            r.mirror.name,
            f"[{ORIGINS[r.mirror.name]}](https://github.com/{ORIGINS[r.mirror.name]})"
            if r.mirror.name in ORIGINS
            else "local",
            f"`{r.commit}`",
            f"{r.license_id} (`{r.license_file}`)",
            r.commits_seen,
            r.authors_eligible,
            len({it["user"] for it in r.items}),
        )
        for r in results
    ]
    user_rows = []
    for r in results:
        per: dict[str, list[dict]] = defaultdict(list)
        for it in r.items:
            per[it["user"]].append(it)
        for user, its in sorted(per.items()):
            c = Counter(it["split"] for it in its)
            dates = [it["date"] for it in its]
            user_rows.append(
                (
                    user,
                    r.mirror.name,
                    c["history"],
                    c["dev"],
                    c["test"],
                    _day(min(dates)),
                    _day(max(dates)),
                )
            )
    file_rows = [(f"`{n}`", len(b), f"`{hashlib.sha256(b).hexdigest()}`") for n, b in files.items()]
    file_table = _table(("file", "bytes", "sha256"), file_rows)
    repo_table = _table(
        ("repo", "project", "snapshot commit", "license (file)", "commits read")
        + ("authors eligible", "authors used"),
        repo_rows,
    )
    drop_table = _table(
        ("repo", *REASONS), [(r.mirror.name, *(r.drops[x] for x in REASONS)) for r in results]
    )
    user_table = _table(
        ("user", "repo", "history", "dev", "test", "first date", "last date"), user_rows
    )
    return f"""\
# commits: per-author commit subjects (real data, extracted by a script)

`{DATA_FILE}` is the data of the `commits` benchmark (issue #23): {len(results)} repositories,
{n_users} authors, {len(items)} items. It is generated by `python -m evals.commits_build`
(`evals/commits_build.py`) from public git histories; do not edit it by hand, rebuild it (below).
Load it with `evals.commits.load_commits`; `evals.commits` also has the style-agreement scores.

Each line of `{DATA_FILE}` is one commit, a JSON object with `user` (pseudonym), `repo` (short
name), `date` (author date, unix seconds), `split` (`history`, `dev` or `test`), `input`, `output`
and `commit` (the source commit's hash, for provenance only; it is in no text). `input` is

    Write the one-line subject for this commit.
    Files: <changed paths, comma-separated>

    <cleaned commit body>

and `output` is the subject line the author wrote. `{MANIFEST_FILE}` holds the same provenance,
options and counts in JSON.

{file_table}

## Provenance and license

Only commit messages (subject and cleaned body) and the paths each commit changed were
extracted, from the public git histories of these permissively licensed projects; no code and
no other file content of them is shipped. The snapshot commit is the commit of the bare mirror
the history was read from (it and all its non-merge ancestors); the license is the one in the
named file at that commit (`git show <commit>:<file>`), which the build reads and checks.

{repo_table}

The commit messages are their authors' work, published in these repositories under the licenses
named; keep this README (projects, licenses, snapshot commits) with any copy of the extract.
Authors appear only as pseudonyms (`<repo>-author-NN`): the extract has no author names and no
e-mail addresses.

## Selection rule

Per repository, every non-merge commit reachable from the snapshot commit is read (`git log
--no-merges --no-renames --name-only`, with the repository's `.mailmap` at that commit, if any).
Subject = the first line of the message, body = the rest after the first blank line.

Cleaning of the body: HTML comments (pull-request templates) are removed. Lines starting with a
review-system trailer key ({keys}, any case), `Co-authored-by <name>` lines and
`(cherry picked from ...)` lines are removed wherever they are. Trailing paragraphs made only of
`Key: value` lines (each with a hyphenated or known key, a one-word value, an e-mail address or
a URL) and trailing `---` rules are removed. E-mail addresses become `<email>`.

A commit is dropped when (counts per repository below):

- its author is a bot (`[bot]`, `bot`, `robot`, `dependabot`, `pre-commit-ci`,
  `github-actions` or `renovate` in the name or e-mail);
- it is a revert (the subject starts with `Revert`, or the body says `This reverts commit`);
- its first paragraph has more than one line (no one-line subject);
- it changed no paths;
- its cleaned body is shorter than {o.min_body} characters;
- its cleaned body contains the subject (case and whitespace ignored), or the subject's core
  (without area prefix, trailing `(#N)` and trailing period) when the core has at least
  {o.min_core} characters;
- a line of the body restates the subject (difflib ratio >= 0.8 on lower-cased words, as in a
  squashed pull request's list of commits).

Authors: commits sharing an author name or an e-mail address (as recorded or as mailmapped)
are one author. Authors with at least {o.min_kept} kept commits are eligible; per repository the
{o.max_authors} with the most kept commits are used (ties by identity). The pseudonyms number the
chosen authors of a repository in the order of their smallest e-mail address. Per author the
newest {o.per_author} kept commits (by author date, then hash) are used, split by time as in
LaMP's time-based setting: the newest {o.test} are `test`, the {o.dev} before them `dev`, the
older ones (at least {o.min_kept - o.dev - o.test}) `history`; history dates <= dev dates <= test
dates per author.

Then, in bodies and subjects: the chosen authors' names (as recorded and as mailmapped; their
words joined by a space, `.`, `_`, `-` or nothing), e-mail local parts, GitHub handles and
capitalised name words of 4+ letters that no other chosen author shares become their
pseudonyms; home folders (`/home/<name>`, `/Users/<name>`) become `/home/user`. Bodies longer
than {o.body_chars} characters are cut at the last paragraph break before that length (else line
break, else space). At most {o.max_paths} paths are listed (git's order), then `, ... (N more)`.

## Dropped commits

{drop_table}

## Per-author counts

{user_table}

## Rebuild

From bare mirrors of the repositories (any clone that has the snapshot commits), in the
repository root:

```
{command}
```

The output is the same byte for byte on every run (fixed ordering and JSON formatting, no build
time, no absolute paths): compare the sha256 above (`sha256sum {DATA_FILE} {MANIFEST_FILE}`).
"""


REASONS = (
    "bot author",
    "revert",
    "subject spans lines",
    "no paths",
    "short body",
    "body contains subject",
    "body restates subject",
)


def build(
    mirrors: Sequence[Mirror], out: Path, opts: Options, out_label: str | None = None
) -> None:
    names = [m.name for m in mirrors]
    if len(set(names)) != len(names):
        raise FintsEdgeError(f"--mirror names must differ; got {', '.join(names)}")
    for m in mirrors:
        if not NAME.match(m.name):
            raise FintsEdgeError(f"--mirror name {m.name!r}: use lower-case letters and digits")
    results = [build_repo(m, opts) for m in sorted(mirrors, key=lambda m: m.name)]
    items = [it for r in results for it in r.items]
    data = "".join(_dumps(it) + "\n" for it in items).encode("utf-8")
    manifest_obj = {
        "options": {f: getattr(opts, f) for f in Options.__dataclass_fields__},
        "prompt": PROMPT,
        "repos": [
            {
                "name": r.mirror.name,
                "origin": ORIGINS.get(r.mirror.name, "local"),
                "commit": r.commit,
                "license": r.license_id,
                "license_file": r.license_file,
                "commits_read": r.commits_seen,
                "authors_eligible": r.authors_eligible,
                "dropped": {x: r.drops[x] for x in REASONS},
                "users": {
                    u: dict(
                        sorted(Counter(it["split"] for it in r.items if it["user"] == u).items())
                    )
                    for u in sorted({it["user"] for it in r.items})
                },
            }
            for r in results
        ],
    }
    manifest = (
        json.dumps(manifest_obj, ensure_ascii=False, sort_keys=True, indent=1) + "\n"
    ).encode()
    label = out_label if out_label is not None else _relative(out)
    files = {DATA_FILE: data, MANIFEST_FILE: manifest}
    readme = _readme(results, opts, files, _command(mirrors, results, opts, label))
    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_FILE).write_bytes(data)
    (out / MANIFEST_FILE).write_bytes(manifest)
    (out / README_FILE).write_bytes(readme.encode("utf-8"))


def _relative(out: Path) -> str:
    """The --out as written in the README: relative to the working directory, never absolute."""
    try:
        return os.path.relpath(out.resolve(), Path.cwd()) if out.is_absolute() else str(out)
    except ValueError:
        return out.name


def parse_mirror(spec: str) -> Mirror:
    name, eq, rest = spec.partition("=")
    path, at, commit = rest.rpartition("@")
    if not eq or not at or not name or not path or not commit:
        raise FintsEdgeError(f"--mirror {spec!r}: expected NAME=GITDIR@COMMIT")
    if not Path(path).is_dir():
        raise FintsEdgeError(f"--mirror {spec!r}: {path} is not a directory (a bare git mirror)")
    return Mirror(name, Path(path), commit)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evals.commits_build", description=__doc__.split("\n")[0]
    )
    p.add_argument("--mirror", action="append", required=True, metavar="NAME=GITDIR@COMMIT")
    p.add_argument("--out", required=True, type=Path)
    for f, default in Options.__dataclass_fields__.items():
        p.add_argument(f"--{f.replace('_', '-')}", type=int, default=default.default)
    args = p.parse_args(argv)
    opts = Options(**{f: getattr(args, f) for f in Options.__dataclass_fields__})
    try:
        if opts.per_author < opts.dev + opts.test + 1 or opts.min_kept < opts.dev + opts.test + 1:
            raise FintsEdgeError("--per-author and --min-kept must exceed --dev + --test")
        build([parse_mirror(s) for s in args.mirror], args.out, opts)
    except FintsEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
