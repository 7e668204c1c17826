"""A pytest plugin that turns a test run into a generated evidence table (docs/reliability.md).

``make reliability`` loads it: ``pytest -p tests._reliability_plugin --reliability-report
docs/reliability.md ...``. One row per test function (per ``group`` when a test records one):
what was tried, how many cases, what happened, and how long the test itself took (shared
fixtures such as the tiny model are built once and not counted).

Tests feed it through ``record_property`` (all optional):
- ``tried``: the kind of input of this case (parametrized cases list theirs in the row);
- ``cases``: how many inputs the test ran (Hypothesis examples are counted automatically);
- ``note``: a figure worth showing (the soak's RSS, how fuzzed files were refused);
- ``seconds``: the time of one case, shown as the slowest case of the row;
- ``group``: splits one parametrized test into rows (the CLI matrix: one row per tool).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LISTED = 12  # inputs listed per row before "+N more"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability")
    group.addoption(
        "--reliability-report",
        metavar="PATH",
        help="write the reliability evidence table (markdown) here",
    )
    group.addoption(
        "--reliability-command",
        default="make reliability",
        help="the command to name in the report (default: make reliability)",
    )


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--reliability-report")
    if path:
        command = config.getoption("--reliability-command")
        config.pluginmanager.register(Collector(Path(path), command), "reliability-collector")


@dataclass
class Test:
    """One collected test item and what its run left behind."""

    module: str  # tests/test_x.py
    function: str  # the test's name without parameters
    param: str  # the parameter id, "" when not parametrized
    title: str  # the name in words
    slow: bool
    outcome: str = "not run"
    seconds: float = 0.0  # call phase
    examples: int | None = None  # Hypothesis examples run
    properties: list[tuple[str, Any]] = field(default_factory=list)
    message: str = ""  # the first line of a failure, or the xfail reason


class Collector:
    def __init__(self, out: Path, command: str) -> None:
        self.out, self.command = out, command
        self.tests: dict[str, Test] = {}
        self.module_docs: dict[str, str] = {}
        self.started = _dt.datetime.now()

    # -- collecting ---------------------------------------------------------------------------
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if not isinstance(item, pytest.Function):
                continue
            module = Path(str(item.path)).resolve().relative_to(ROOT).as_posix()
            self.module_docs.setdefault(module, _first_sentence(item.module.__doc__))
            function = item.originalname
            param = item.callspec.id if hasattr(item, "callspec") else ""
            self.tests[item.nodeid] = Test(
                module=module,
                function=function,
                param=param,
                title=_words(function),  # the tests' names are sentences; docstrings say why
                slow=item.get_closest_marker("slow") is not None,
            )

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item):
        """Counts the examples Hypothesis ran (its statistics hook, chained, not replaced)."""
        try:
            from hypothesis.statistics import collector
        except ImportError:  # pragma: no cover - hypothesis is a dev dependency
            yield
            return
        outer = collector.value

        def note(stats: dict[str, Any]) -> None:
            ran = sum(
                t.get("status") in ("valid", "interesting")
                for phase, d in stats.items()
                if phase.endswith("-phase") and isinstance(d, dict)
                for t in d.get("test-cases", [])
            )
            test = self.tests.get(item.nodeid)
            if test is not None:
                test.examples = (test.examples or 0) + ran
            if outer is not None:
                outer(stats)

        with collector.with_value(note):
            yield

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = self.tests.get(report.nodeid)
        if test is None:
            return
        test.properties = list(report.user_properties)
        if report.when == "call":
            test.seconds = report.duration
        xfail = getattr(report, "wasxfail", None)
        if report.failed:
            test.outcome = "failed" if report.when == "call" else "error"
            crash = getattr(report.longrepr, "reprcrash", None)
            test.message = _clean(crash.message if crash else str(report.longrepr))
        elif report.skipped:
            if xfail is not None:
                test.outcome, test.message = "xfailed", _clean(xfail)
            elif test.outcome == "not run":
                test.outcome = "skipped"
                test.message = _clean(str(report.longrepr[-1]) if report.longrepr else "")
        elif report.when == "call":
            test.outcome = "xpassed" if xfail is not None else "passed"

    # -- writing ---------------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        ran = [t for t in self.tests.values() if t.outcome != "not run"]
        if not ran:
            return
        from fints_edge._atomic import write_text

        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.out, render(ran, self.module_docs, self.command, self.started))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"reliability report: {self.out}")


# -- the table ----------------------------------------------------------------------------------
def render(tests: list[Test], module_docs: dict[str, str], command: str, started) -> str:
    minutes = (_dt.datetime.now() - started).total_seconds() / 60
    outcomes = Counter(t.outcome for t in tests)
    cases = sum(_cases(t) for t in tests)
    lines = [
        "# Reliability: what was tried and what happened",
        "",
        f"Generated by `{command}` on {started.date().isoformat()} (never edited by hand; "
        f"re-run the command to check it): {len(tests)} tests, {cases:,} cases, "
        f"{_outcomes(outcomes)}, {minutes:.1f} min on {os.cpu_count()} CPU cores.",
        "",
        "One row per test; parametrized variants and Hypothesis examples are counted together "
        "as its cases. *slow* tests are the ones `make test` leaves out (`make test-slow` runs "
        "them). Times are the tests' own; shared fixtures (the tiny model, the ONNX encoder) are "
        "built once per run and not counted.",
    ]
    by_module: dict[str, list[Test]] = defaultdict(list)
    for t in tests:
        by_module[t.module].append(t)
    for module, group in by_module.items():
        doc = module_docs.get(module, "")
        lines += ["", f"## `{module}`" + (f": {doc}" if doc else ""), ""]
        lines += ["| what was tried | cases | what happened | time |", "|---|---:|---|---:|"]
        for row in _rows(group):
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def _rows(tests: list[Test]) -> list[tuple[str, str, str, str]]:
    rows: dict[tuple[str, str], list[Test]] = {}
    for t in tests:
        group = _prop(t, "group")
        rows.setdefault((t.function, str(group[0]) if group else ""), []).append(t)
    out = []
    for (_function, group), members in rows.items():
        first = members[0]
        title = first.title + (f" ({group})" if group else "")
        if first.slow:
            title += " *slow*"
        tried = [str(v) for t in members for v in _prop(t, "tried")]
        params = [t.param for t in members if t.param]
        if not tried and all(_readable(p) for p in params):  # "disk full at fsync", not "value3"
            tried = params
        if tried:
            shown = list(dict.fromkeys(tried))
            more = len(shown) - MAX_LISTED
            title += ": " + "; ".join(shown[:MAX_LISTED]) + (f"; +{more} more" if more > 0 else "")
        out.append(
            (
                title,
                f"{sum(_cases(t) for t in members):,}",
                _happened(members),
                _duration(sum(t.seconds for t in members)),
            )
        )
    return out


def _happened(tests: list[Test]) -> str:
    outcomes = Counter(t.outcome for t in tests)
    details = [
        f"{(_SHORT if len(tests) > 1 else _WORDS).get(t.outcome, t.outcome)}"
        f"{f' ({t.param})' if len(tests) > 1 else ''}: "
        f"{t.message}"
        for t in tests
        if t.outcome != "passed" and t.message
    ]
    summary = "passed" if set(outcomes) == {"passed"} else _outcomes(outcomes)
    parts = details if len(tests) == 1 and details else [summary, *details]
    notes = list(dict.fromkeys(str(v) for t in tests for v in _prop(t, "note")))
    parts += notes
    slowest = [float(v) for t in tests for v in _prop(t, "seconds")]
    if slowest:
        parts.append(f"slowest case {max(slowest):.1f} s")
    return "; ".join(parts)


_WORDS = {"xfailed": "known failure (strict xfail)", "xpassed": "unexpectedly passed"}
_SHORT = {"xfailed": "known", "xpassed": "unexpectedly passed"}


def _outcomes(outcomes: Counter) -> str:
    order = ("passed", "failed", "error", "xfailed", "xpassed", "skipped")
    words = _WORDS | {"xfailed": "known failures (strict xfail)"}
    return ", ".join(
        f"{outcomes[k]} {(_WORDS if outcomes[k] == 1 else words).get(k, k)}"
        for k in order
        if outcomes[k]
    )


def _readable(param: str) -> bool:
    """A parameter id a reader understands: short words, none of pytest's "value3" ids."""
    return len(param) <= 40 and not re.search(r"[a-z_]\d+\b|[\\\n\[\]{}\"]", param)


def _cases(t: Test) -> int:
    given = _prop(t, "cases")
    if given:
        return int(sum(int(v) for v in given))
    return t.examples if t.examples else 1


def _prop(t: Test, name: str) -> list[Any]:
    return [v for k, v in t.properties if k == name]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _first_sentence(doc: str | None) -> str:
    """A docstring's first sentence, on one line."""
    if not doc:
        return ""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".")


def _words(name: str) -> str:
    name = re.sub(r"_slow$", "", name.removeprefix("test_"))
    return name.replace("_", " ")


def _clean(text: str) -> str:
    """One short line, without this machine's paths."""
    text = " ".join(str(text).split()).replace(str(ROOT) + "/", "")
    text = re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+)", r".../\1", text)  # keep the file name
    return text[:240] + ("..." if len(text) > 240 else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
