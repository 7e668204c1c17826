"""How close an answer is to what the user actually wrote: ROUGE-L F and three writing habits.

The calibration on the device (fints_edge.calibrate) and the evaluation's real-writing benchmark
(evals/commits_bench.py) score answers the same way, so the rule lives here, once. The habits
were read off commit subjects, but none is specific to them: a leading area prefix, the case
of the first letter after it, a trailing period. The answer is its first non-empty line.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

__all__ = ["STYLE", "answer_score", "first_line", "rouge_l", "split_prefix", "style_agreement"]
STYLE = ("prefix", "case", "period")

# -- style agreement ---------------------------------------------------------------------------
# A subject's area prefix, the leading token before the rest of the subject:
#   * a bracketed tag at the start, "[mypyc] ", "[clang] " (1 to 40 characters inside, no
#     nested brackets), followed by whitespace; or
#   * a leading token ending in ":" and followed by whitespace, the token having no whitespace
#     except after commas: "net/http: ", "BUG: ", "TST/DEP: ", "gh-12345: ", "fix(cli): ",
#     "feat!: ", "cmd/go, go/build: ". A parenthesised scope may hold anything but parentheses.
# "Python 3.12: ..." has no prefix (a space before the colon), nor has "http://x".
_PREFIX = re.compile(
    r"^(?:\[[^\[\]\n]{1,40}\]"
    r"|[^\s:\[\]()]+(?:\([^()\n]{0,40}\))?!?"
    r"(?:,\s*[^\s:\[\]()]+(?:\([^()\n]{0,40}\))?!?)*:)"
    r"(?=\s)"
)
_TICKET = re.compile(r"\d{3,}")


def first_line(answer: str) -> str:
    """The answer's first non-empty line, stripped ("" when there is none)."""
    for line in answer.splitlines():
        if line.strip():
            return line.strip()
    return ""


def split_prefix(subject: str) -> tuple[str, str]:
    """(prefix token or "", the rest stripped); see the rule above :data:`_PREFIX`."""
    subject = subject.strip()
    m = _PREFIX.match(subject)
    if not m:
        return "", subject
    return m.group(0), subject[m.end() :].strip()


def prefix_token(subject: str) -> str:
    """The prefix compared between answers: numbers of 3+ digits (ticket ids) count as equal."""
    return _TICKET.sub("#", split_prefix(subject)[0])


def prefix_agrees(answer: str, gold: str) -> bool:
    """Gold has a prefix: the answer has the same one (case-sensitive); gold has none: neither."""
    return prefix_token(first_line(answer)) == prefix_token(gold)


def _first_letter(text: str) -> str:
    return next((ch for ch in split_prefix(text)[1] if ch.isalpha()), "")


def case_agrees(answer: str, gold: str) -> bool:
    """The first letter after any prefix is upper case in both or in neither.

    A subject with no letter after its prefix agrees only with another such subject.
    """
    a, g = _first_letter(first_line(answer)), _first_letter(gold)
    if not a or not g:
        return not a and not g
    return a.isupper() == g.isupper()


def period_agrees(answer: str, gold: str) -> bool:
    """Both end in a period, or neither does (after stripping whitespace)."""
    return first_line(answer).endswith(".") == gold.strip().endswith(".")


def style_agreement(answer: str, gold: str) -> dict[str, bool]:
    """The three habits for one answer: {"prefix", "case", "period"}."""
    return {
        "prefix": prefix_agrees(answer, gold),
        "case": case_agrees(answer, gold),
        "period": period_agrees(answer, gold),
    }


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(answer: str, gold: str) -> float:
    """ROUGE-L F of the answer's first line against the gold text (stemmed, as the evaluation)."""
    return float(_scorer().score(gold, first_line(answer))["rougeL"].fmeasure)


def answer_score(answer: str, gold: str) -> float:
    """One number per answer, in [0, 1]: the mean of ROUGE-L F and the share of habits kept."""
    habits = style_agreement(answer, gold)
    return 0.5 * rouge_l(answer, gold) + 0.5 * sum(habits.values()) / len(habits)
