"""A fluency rule's bounds in words, from its JSON alone: ``make figures`` renders README from
results files without numpy or the runtime (tests/test_figures.py), so this stays plain Python."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe_rule(rule: Mapping[str, Any]) -> str:
    """ "repeated word 3-grams <= 0.100, case-folded perplexity <= 42.0, ..." (the bounds a
    rule written before a signal existed lacks are left out)."""
    kind = "case-folded" if rule.get("casefold") else "cased"
    parts = [
        f"repeated word 3-grams <= {rule['max_repetition']:.3f}",
        f"{kind} perplexity <= {rule['max_perplexity']:.1f}",
        f"topic >= {rule['min_topic']:.3f}",
    ]
    if "max_phrases" in rule:
        parts.append(f"a word pair at most {rule['max_phrases']:.0f} times")
    if "max_nonwords" in rule:
        parts.append(f"non-words <= {rule['max_nonwords']:.3f}")
    return ", ".join(parts)
