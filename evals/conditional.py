"""``personas-conditional``: users whose style depends on the kind of input.

Fints exists for this case: a user who writes reviews in lowercase and emails in uppercase. A
static user vector averages the two directions away and a fixed few-shot prefix shows one kind
at best; retrieving the history items like the input, and steering with those, can serve both.
A spec (``evals/data/conditional.json``) maps, per user, input kinds of the pool to style names
of the style spec. Every user gets ``per_kind`` history items of each of its kinds, so K
retrieved items are a small part of the history, plus dev and test items of each kind. Rows have
the persona rows' format plus ``kind``; a row's ``style`` is the style of its own kind, so the
usual adherence check is the conditional adherence.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from evals.personas import T0, base_answers, load_pool_rows
from evals.styles import Style
from fints_edge.errors import FintsEdgeError

DEFAULT_CONDITIONAL = Path(__file__).parent / "data" / "conditional.json"


def load_conditional(path: Path, styles: Mapping[str, Style], kinds: set[str]) -> list[dict]:
    """The users of a conditional spec, as ``[{kind: Style}]``; names checked against both."""
    try:
        users = json.loads(Path(path).read_text(encoding="utf-8"))["users"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FintsEdgeError(
            f"{path}: not a conditional spec ({e}); see {DEFAULT_CONDITIONAL.name}"
        ) from e
    out = []
    for n, user in enumerate(users):
        if not isinstance(user, dict) or len(user) < 2:
            raise FintsEdgeError(f"{path}: user {n} must map at least two kinds to styles")
        bad_kinds = set(user) - kinds
        bad_styles = set(user.values()) - set(styles)
        if bad_kinds or bad_styles:
            raise FintsEdgeError(
                f"{path}: user {n}: unknown kinds {sorted(bad_kinds)} or styles "
                f"{sorted(bad_styles)}; kinds are {sorted(kinds)}, styles {sorted(styles)}"
            )
        out.append({kind: styles[name] for kind, name in user.items()})
    return out


def make_conditional(
    styles: Sequence[Style],
    model: Path,
    *,
    users: int,
    per_kind: int,
    tests_per_kind: int,
    seed: int,
    spec: Path = DEFAULT_CONDITIONAL,
    threads: int | None = None,
) -> list[dict]:
    """Rows for ``users`` users (the spec's users in order, cycled)."""
    pool = load_pool_rows()
    by_kind: dict[str, list[str]] = {}
    for row in pool:
        by_kind.setdefault(row["kind"], []).append(row["input"])
    templates = load_conditional(spec, {s.name: s for s in styles}, set(by_kind))
    need = per_kind + 2 * tests_per_kind
    short = {k: len(v) for k, v in by_kind.items() if len(v) < need}
    if short:
        raise FintsEdgeError(f"each kind needs {need} pool inputs; too few for {short}")
    picks = []
    for u in range(users):
        template = templates[u % len(templates)]
        rng = random.Random(f"conditional:{seed}:{u}")
        picks.append({kind: rng.sample(by_kind[kind], need) for kind in template})
    texts = sorted({t for p in picks for texts in p.values() for t in texts})
    answers = base_answers(texts, model, threads=threads)
    return build_conditional_rows(picks, templates, answers, per_kind, tests_per_kind, seed)


def build_conditional_rows(
    picks: Sequence[Mapping[str, Sequence[str]]],
    templates: Sequence[Mapping[str, Style]],
    answers: Mapping[str, str],
    per_kind: int,
    tests_per_kind: int,
    seed: int,
) -> list[dict]:
    """History items of the user's kinds interleaved (seeded), then dev, then test rows."""
    rows = []
    for u, picked in enumerate(picks):
        template = templates[u % len(templates)]
        split_rows: dict[str, list[dict]] = {"history": [], "dev": [], "test": []}
        for kind, texts in picked.items():
            style = template[kind]
            for i, text in enumerate(texts):
                split = (
                    "history"
                    if i < per_kind
                    else ("dev" if i < per_kind + tests_per_kind else "test")
                )
                base = answers[text]
                styled = style.apply(base)
                if not base or styled == base:
                    continue  # no usable contrast for this input
                split_rows[split].append({
                    "user": f"c{u:03d}", "kind": kind, "style": style.name, "split": split,
                    "input": text, "output": styled, "rejected": base, "timestamp": None,
                })  # fmt: skip
        rng = random.Random(f"conditional-order:{seed}:{u}")
        rng.shuffle(split_rows["history"])
        for i, row in enumerate(split_rows["history"]):
            row["timestamp"] = T0 + 86_400 * i
        rows += split_rows["history"] + split_rows["dev"] + split_rows["test"]
    return rows
