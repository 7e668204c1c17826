"""Running methods for the evaluation: one user at a time, every method through the same engine.

A :class:`Setting` is one steering configuration; :class:`Runner` owns the llama contexts (exact
and cvec) for the whole run and switches users with ``Engine.use_profile`` instead of reloading.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fints_edge.engine import Engine, EngineConfig, Plan
from fints_edge.errors import FintsEdgeError
from fints_edge.history import HistoryItem


@dataclass(frozen=True)
class Setting:
    """One steering configuration (what the sweeps vary)."""

    layers: tuple[int, ...]
    strength: float
    k: int = 5
    sites: tuple[str, ...] = ("attn", "mlp")
    temperature: float = 0.0
    reading: str = "output"
    half_life_days: float = 0.0
    opening_strength: float = 0.0

    def label(self) -> str:
        s = (
            f"layers {','.join(map(str, self.layers))} x{self.strength:g} k{self.k} "
            f"{'+'.join(self.sites)} T{self.temperature:g} {self.reading}"
        )
        if self.opening_strength:
            s += f" opening x{self.opening_strength:g}"
        return s + (f" half-life {self.half_life_days:g}d" if self.half_life_days else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UserData:
    """One user's rows: history (profile and RAG), dev (tuning) and test (reporting)."""

    user: str
    history: list[dict]
    dev: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    style: str | None = None

    def items(self, n: int | None = None) -> list[HistoryItem]:
        rows = self.history if n is None else self.history[:n]
        return [
            HistoryItem(
                r["input"],
                r["output"],
                r.get("rejected"),
                float(r["timestamp"]) if r.get("timestamp") is not None else float("nan"),
            )
            for r in rows
        ]


def write_history(items: Sequence[HistoryItem], path: Path) -> Path:
    """JSONL for ``export.build`` (the torch-built profile of the same items)."""
    rows = []
    for it in items:
        row: dict[str, Any] = {"input": it.input, "output": it.output}
        if it.rejected is not None:
            row["rejected"] = it.rejected
        if np.isfinite(it.timestamp):
            row["timestamp"] = it.timestamp
        rows.append(json.dumps(row) + "\n")
    path.write_text("".join(rows), encoding="utf-8")
    return path


class Runner:
    """Answers rows with a named method for the user whose profile is loaded."""

    STEERED = (
        "static",
        "random",
        "fints-cvec",
        "fints-exact",
        "fints+rag",
        "fints-recency",
        "fints-opening",
        "fints-opening+rag",
    )

    def __init__(self, model: Path, first_profile: Path, *, max_tokens: int, rag: int,
                 n_ctx: int = 2048, threads: int | None = None) -> None:  # fmt: skip
        self.model = model
        self.rag = rag
        base = EngineConfig(max_tokens=max_tokens, n_ctx=n_ctx, threads=threads, rag=0)
        self.exact = Engine(model, first_profile, base)
        self._cvec_base = base
        self._cvec: Engine | None = None
        self._torch: tuple[Any, Any] | None = None

    def close(self) -> None:
        self.exact.close()
        if self._cvec is not None:
            self._cvec.close()

    def use(self, profile: Path) -> None:
        self.exact.use_profile(profile)
        if self._cvec is not None:
            self._cvec.use_profile(profile)

    def cvec(self) -> Engine:
        if self._cvec is None:
            from dataclasses import replace

            self._cvec = Engine(
                self.model, self.exact.profile_path, replace(self._cvec_base, mode="cvec")
            )
        return self._cvec

    def _configure(self, engine: Engine, s: Setting, rag: int) -> None:
        engine.configure(
            k=s.k,
            strength=s.strength,
            temperature=s.temperature,
            sites=tuple(s.sites),  # type: ignore[arg-type]
            layers=tuple(s.layers),
            half_life_days=s.half_life_days,
            opening_strength=s.opening_strength if engine.config.mode == "exact" else 0.0,
            rag=rag,
        )

    def answer(self, method: str, text: str, s: Setting, seed: int = 0) -> dict[str, Any]:
        """{"prediction", "prompt_tokens", "first_token_ms"} for one input."""
        if method == "fints-torch":
            return self._torch_answer(text, s)
        engine = self.cvec() if method == "fints-cvec" else self.exact
        rag = self.rag if method in ("rag", "fints+rag", "fints-opening+rag") else 0
        self._configure(engine, s, rag)
        if method == "fints-recency" and not s.half_life_days:
            raise FintsEdgeError("fints-recency needs a setting with half_life_days > 0")
        if method.startswith("fints-opening") and not s.opening_strength:
            raise FintsEdgeError(f"{method} needs a setting with opening_strength > 0")
        plan: Plan | None = None
        if method == "static":
            vectors = engine.select(engine.profile.user_vector() * s.strength)
            plan = Plan(vectors.astype(np.float32), [], 1.0)
        elif method == "random":
            plan = engine.plan(text)
            plan = Plan(_same_norm_random(plan.vectors, seed), plan.retrieved, plan.gate)
        steer = method in self.STEERED
        reply = engine.reply(text, steer=steer, plan=plan)
        return {
            "prediction": reply.text,
            "prompt_tokens": reply.prompt_tokens,
            "first_token_ms": reply.timings_ms["first_token"],
        }

    def _torch_answer(self, text: str, s: Setting) -> dict[str, Any]:
        """The torch reference: HF fp32 with hooks, steered by the edge's own aggregated plan."""
        import time

        from export.models import load_hf
        from export.reference import generate, vectors_from_array

        if self._torch is None:
            print("loading the torch reference model...", file=sys.stderr)
            self._torch = load_hf(self.model)
        model, tok = self._torch
        self._configure(self.exact, s, 0)
        plan = self.exact.plan(text)
        p = self.exact.profile
        vectors = vectors_from_array(plan.vectors, p.sites, p.layers.tolist())
        t0 = time.perf_counter()
        text_out = generate(
            model,
            tok,
            text,
            max_new_tokens=self.exact.config.max_tokens,
            prompt_format=p.prompt_format,
            vectors={j: v for j, v in vectors.items() if j in s.layers},
        )
        return {
            "prediction": text_out,
            "prompt_tokens": None,
            "first_token_ms": (time.perf_counter() - t0) * 1e3,  # whole generation: no streaming
        }


def _same_norm_random(vectors: np.ndarray, seed: int) -> np.ndarray:
    """The control: random directions with the steering vectors' norm per site and layer."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=vectors.shape)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (r / np.linalg.norm(r, axis=-1, keepdims=True) * norms).astype(np.float32)
