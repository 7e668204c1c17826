"""A run that is interrupted resumes: finished answers and built profiles are kept on disk.

Everything lives under ``~/.cache/fints-edge/eval/<run key>/``, the key a hash of what decides
the answers (model bytes, plan, style specs, seed). Answers are appended to ``answers.jsonl`` one
line each, flushed as they come, so a crash loses at most the answer being generated; a torn
last line is ignored on reload.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fints_edge._paths import cache_dir


def run_key(**parts: Any) -> str:
    """A short stable hash of the JSON-able parts that decide a run's answers."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class RunCache:
    """Answers keyed by (benchmark, split, method, setting, user, input)."""

    def __init__(self, key: str, root: Path | None = None) -> None:
        self.folder = (root or cache_dir() / "eval") / key
        self.profiles = self.folder / "profiles"
        self.profiles.mkdir(parents=True, exist_ok=True)
        self._file = self.folder / "answers.jsonl"
        self._answers: dict[str, dict[str, Any]] = {}
        if self._file.is_file():
            for line in self._file.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._answers[row["key"]] = row["answer"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash
        self.reused = 0

    @staticmethod
    def key(*parts: str) -> str:
        return "\x1f".join(parts)

    def get(self, key: str) -> dict[str, Any] | None:
        got = self._answers.get(key)
        if got is not None:
            self.reused += 1
        return got

    def put(self, key: str, answer: dict[str, Any]) -> None:
        self._answers[key] = answer
        with self._file.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")
            f.flush()

    def __len__(self) -> int:
        return len(self._answers)
