"""``python -m evals.personas``: a synthetic persona benchmark with checkable styles.

Every user owns a style (evals/styles.py). For each input of a shared pool the base model's own
greedy answer is the neutral ``rejected`` text and the user's ``output`` is that answer in the
user's style, so a method's adherence can be checked on any generated text. Users draw disjoint
history, dev and test inputs from the pool (seeded). ``--shift`` makes preference-shift users: the
first half of the history follows style A, the second half and all dev/test items style B.

Output (one JSON object per line, documented in the README):
``{"user", "style", "split": "history"|"dev"|"test", "input", "output", "rejected", "timestamp"}``
plus ``styles.json`` (the styles used) and ``manifest.json`` (the command's parameters).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from evals.styles import Style, load_styles
from fints_edge._atomic import write_text
from fints_edge._cli import cli_main
from fints_edge._paths import cache_dir, default_gguf
from fints_edge.errors import FintsEdgeError
from fints_edge.learn.extract import DEFAULT_ANSWER_TOKENS

POOL_DIR = Path(__file__).parent / "data" / "pool"
DEFAULT_STYLES = Path(__file__).parent / "data" / "styles.json"
# Raw snippets become tasks; the other kinds are already phrased as requests.
TASK_PREFIX = {"news": "Write a one-line headline for this news snippet: "}
T0 = 1_700_000_000  # history timestamps start here, one day apart


def load_pool(folder: Path = POOL_DIR) -> list[str]:
    """Model inputs from every *.jsonl in the pool folder, in file and line order."""
    return [row["input"] for row in load_pool_rows(folder)]


def load_pool_rows(folder: Path = POOL_DIR) -> list[dict[str, str]]:
    """``{"kind", "input"}`` for every pool line (the input as the model sees it)."""
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FintsEdgeError(f"{folder}: no *.jsonl input pool files")
    rows = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    text = TASK_PREFIX.get(row["kind"], "") + row["text"]
                    rows.append({"kind": str(row["kind"]), "input": text})
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise FintsEdgeError(f"{f}:{n}: expected {{'id', 'kind', 'text'}}") from None
    return rows


def base_answers(
    inputs: Sequence[str],
    model: Path,
    max_tokens: int = DEFAULT_ANSWER_TOKENS,
    threads: int | None = None,
) -> dict[str, str]:
    """The model's greedy zero-shot answers; cached per model file, only missing ones computed."""
    from fints_edge.generate import complete
    from fints_edge.llama.model import open_llama
    from fints_edge.prompt import prompt_tokens

    key = hashlib.sha256(
        f"{model.resolve()}:{model.stat().st_size}:{max_tokens}".encode()
    ).hexdigest()[:16]
    cache = cache_dir() / "base-answers" / f"{key}.json"
    answers = _read_cache(cache)
    missing = [t for t in dict.fromkeys(inputs) if t not in answers]
    if missing:
        llm = open_llama(model, n_ctx=1024, n_threads=threads)
        try:
            for text in tqdm(missing, desc="base answers", unit="input"):
                prompt = prompt_tokens(llm, [{"role": "user", "content": text}])
                answers[text] = complete(llm, prompt, max_tokens)  # greedy, a budget that holds
        finally:
            llm.close()
        write_text(cache, json.dumps(answers))
    return {t: answers[t] for t in inputs}


def _read_cache(path: Path) -> dict[str, str]:
    """Cached answers; a missing or unreadable cache is only work to redo."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pick_inputs(inputs: Sequence[str], users: int, need: int, seed: int) -> list[list[str]]:
    """Each user's inputs (history, then dev, then test), seeded and stable per user."""
    if need > len(inputs):
        raise FintsEdgeError(
            f"each user needs {need} inputs (history + dev + test) but the pool has {len(inputs)}"
        )
    return [random.Random(f"{seed}:{u}").sample(list(inputs), need) for u in range(users)]


def make_dataset(
    inputs: Sequence[str],
    styles: Sequence[Style],
    model: Path,
    *,
    users: int,
    history: int,
    tests: int,
    seed: int,
    shift: bool,
    threads: int | None = None,
) -> list[dict]:
    """Rows for ``users`` users; only the inputs they use get a base answer."""
    picks = pick_inputs(inputs, users, history + 2 * tests, seed)
    answers = base_answers(sorted({t for p in picks for t in p}), model, threads=threads)
    return build_rows(
        inputs, answers, styles, users=users, history=history, tests=tests, seed=seed, shift=shift
    )


def build_rows(
    inputs: Sequence[str],
    answers: dict[str, str],
    styles: Sequence[Style],
    *,
    users: int,
    history: int,
    tests: int,
    seed: int,
    shift: bool,
) -> list[dict]:
    need = history + 2 * tests
    if shift and len(styles) < 2:
        raise FintsEdgeError(
            "--shift needs at least two styles (each user moves from one to the next)"
        )
    rows = []
    for u, picked in enumerate(pick_inputs(inputs, users, need, seed)):
        after = styles[u % len(styles)]
        before = styles[(u + 1) % len(styles)] if shift else after
        for i, text in enumerate(picked):
            split = "history" if i < history else ("dev" if i < history + tests else "test")
            style = before if split == "history" and i < history // 2 else after
            base = answers[text]
            styled = style.apply(base)
            if not base or styled == base:
                continue  # no usable contrast for this input
            rows.append(
                {
                    "user": f"u{u:03d}",
                    "style": style.name,
                    "split": split,
                    "input": text,
                    "output": styled,
                    "rejected": base,
                    "timestamp": T0 + 86_400 * i if split == "history" else None,
                }
            )
    return rows


@cli_main("interrupted; files already written were kept whole")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evals.personas", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--styles",
        type=Path,
        default=DEFAULT_STYLES,
        help="style spec JSON (default: the bundled one)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=12, help="default: 12")
    p.add_argument("--history", type=int, default=16, help="history items per user (default: 16)")
    p.add_argument(
        "--tests", type=int, default=10, help="dev AND test items per user, each (default: 10)"
    )
    p.add_argument(
        "--shift", action="store_true", help="preference-shift users (style changes mid-history)"
    )
    p.add_argument(
        "--model", type=Path, help="GGUF for the neutral answers (default: the embedded SmolLM2)"
    )
    p.add_argument("--pool", type=Path, default=POOL_DIR, help="folder of input pool *.jsonl files")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    if min(args.users, args.history, args.tests) < 1:
        raise FintsEdgeError("--users, --history and --tests must be at least 1")
    styles = load_styles(args.styles)
    inputs = load_pool(args.pool)
    model = args.model or default_gguf()
    rows = make_dataset(
        inputs,
        styles,
        model,
        users=args.users,
        history=args.history,
        tests=args.tests,
        seed=args.seed,
        shift=args.shift,
    )
    write_text(args.out / "dataset.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text(
        args.out / "styles.json", json.dumps({"styles": [s.to_json() for s in styles]}, indent=2)
    )
    manifest = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_text(
        args.out / "manifest.json",
        json.dumps(manifest | {"model": str(model), "rows": len(rows)}, indent=2),
    )
    print(
        f"wrote {args.out}/dataset.jsonl: {len(rows)} rows for {args.users} users", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
