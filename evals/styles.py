"""Checkable output styles for synthetic users: composable rules, each a transform and a checker.

A style is a list of rules applied in order to a neutral answer (e.g. the base model's own):
``[{"rule": "lowercase"}, {"rule": "prefix", "text": "Wow:"}]``. Every rule has a checker, so
adherence can be scored on any generated text. A spec file lists named styles:
``{"styles": [{"name": "quiet-fan", "rules": [...]}, ...]}``. Unknown rules or parameters are
refused with the file and the style named.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fints_edge.errors import FintsEdgeError

Transform = Callable[[str], str]
Check = Callable[[str], bool]


@dataclass(frozen=True)
class Rule:
    name: str
    params: Mapping[str, Any]
    transform: Transform
    check: Check


def _words(text: str) -> list[str]:
    return text.split()


def _lowercase() -> tuple[Transform, Check]:
    return str.lower, lambda t: not any(c.isupper() for c in t)


def _uppercase() -> tuple[Transform, Check]:
    return str.upper, lambda t: not any(c.islower() for c in t)


def _prefix(text: str) -> tuple[Transform, Check]:
    return (lambda t: f"{text} {t.lstrip()}"), (lambda t: t.lstrip().startswith(text))


def _suffix(text: str) -> tuple[Transform, Check]:
    return (lambda t: f"{t.rstrip()} {text}"), (lambda t: t.rstrip().endswith(text))


def _exclaim() -> tuple[Transform, Check]:
    def transform(t: str) -> str:
        return re.sub(r"[.!?;:,\s]*$", "", t) + "!"

    return transform, lambda t: t.rstrip().endswith("!")


def _terse(max_words: int) -> tuple[Transform, Check]:
    if not isinstance(max_words, int) or max_words < 1:
        raise ValueError("max_words must be a positive integer")
    return (lambda t: " ".join(_words(t)[:max_words])), (lambda t: 0 < len(_words(t)) <= max_words)


def _replace(word: str, by: str) -> tuple[Transform, Check]:
    if not word.strip() or not by.strip():
        raise ValueError("'word' and 'by' must be non-empty")
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return (lambda t: pattern.sub(by, t)), (lambda t: pattern.search(t) is None)


# name -> (factory, documented parameters)
RULES: dict[str, tuple[Callable[..., tuple[Transform, Check]], tuple[str, ...]]] = {
    "lowercase": (_lowercase, ()),
    "uppercase": (_uppercase, ()),
    "prefix": (_prefix, ("text",)),
    "suffix": (_suffix, ("text",)),
    "exclaim": (_exclaim, ()),
    "terse": (_terse, ("max_words",)),
    "replace": (_replace, ("word", "by")),
}


def make_rule(spec: Mapping[str, Any]) -> Rule:
    """One rule from ``{"rule": NAME, **params}``; ValueError names what is wrong."""
    name = spec.get("rule")
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(RULES)}")
    factory, allowed = RULES[name]
    params = {k: v for k, v in spec.items() if k != "rule"}
    if set(params) != set(allowed):
        raise ValueError(f"rule '{name}' takes parameters {list(allowed)}, got {sorted(params)}")
    transform, check = factory(**params)
    return Rule(name, params, transform, check)


@dataclass(frozen=True)
class Style:
    name: str
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def apply(self, text: str) -> str:
        for rule in self.rules:
            text = rule.transform(text)
        return text

    def checks(self, text: str) -> dict[str, bool]:
        """Per-rule adherence of a generated text."""
        return {rule.name: bool(rule.check(text)) for rule in self.rules}

    def adheres(self, text: str) -> bool:
        return all(self.checks(text).values())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rules": [{"rule": r.name, **r.params} for r in self.rules]}


def parse_styles(obj: Any, source: str = "styles") -> list[Style]:
    if not isinstance(obj, dict) or not isinstance(obj.get("styles"), list) or not obj["styles"]:
        raise FintsEdgeError(
            f'{source}: expected {{"styles": [{{"name": ..., "rules": [...]}}, ...]}}'
        )
    styles, names = [], set()
    for i, entry in enumerate(obj["styles"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"{source}: style {i + 1} ({name or 'unnamed'})"
        if not isinstance(name, str) or not name or name in names:
            raise FintsEdgeError(f"{where}: needs a unique, non-empty 'name'")
        rules = entry.get("rules")
        if not isinstance(rules, list) or not rules:
            raise FintsEdgeError(f"{where}: 'rules' must be a non-empty list")
        try:
            styles.append(Style(name, tuple(make_rule(r) for r in rules)))
        except (ValueError, TypeError, AttributeError) as e:
            raise FintsEdgeError(f"{where}: {e}") from None
        names.add(name)
    return styles


def load_styles(path: str | os.PathLike[str]) -> list[Style]:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FintsEdgeError(f"{path}: no such style spec") from None
    except IsADirectoryError:
        raise FintsEdgeError(f"{path}: is a folder; pass a style spec .json file") from None
    except UnicodeDecodeError:
        raise FintsEdgeError(f"{path}: not UTF-8 text; save the style spec as UTF-8") from None
    except json.JSONDecodeError as e:
        raise FintsEdgeError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    return parse_styles(obj, str(path))


def adherence(style: Style, texts: Sequence[str]) -> float:
    """Share of texts that satisfy every rule of the style."""
    return sum(style.adheres(t) for t in texts) / len(texts) if texts else 0.0
