"""Running methods for the evaluation: one user at a time, every method through the edge runtime.

A :class:`Setting` is one steering configuration; :class:`Runner` owns the llama contexts (exact
and cvec) for the whole run and switches users with ``Engine.use_profile`` instead of reloading.

Methods (the names in results.json):
- ``zero-shot``; ``rag-1`` ``rag-2`` ``rag-3``: the top retrieved history items as earlier chat
  turns (pays their tokens on every request);
- ``prefix-cached``: the user's most central history items as earlier turns, the same for every
  request, their KV computed once per user and restored per request (llama.cpp state load):
  memory instead of time;
- ``static``: the mean of ALL the user's signals (CAA-style user vector); ``random``: same-norm
  random directions (control);
- ``fints-exact`` / ``fints-cvec``: per-request top-K aggregation, eval callback / control
  vector; ``fints+rag-1``: Fints with one retrieved example; ``fints-recency`` (shift set);
- ``fints-torch``: the torch reference (HF fp32 + hooks) steered by the edge's own plan.
A failing generation is recorded (``error``) and the run goes on.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fints_edge.engine import Engine, EngineConfig, Plan
from fints_edge.errors import FintsEdgeError
from fints_edge.history import HistoryItem

RAG_METHODS = {"rag-1": 1, "rag-2": 2, "rag-3": 3, "fints+rag-1": 1, "fints+rag-3": 3,
               "fints+rag-1-calibrated": 1}  # fmt: skip
STEERED = ("static", "random", "fints-cvec", "fints-exact", "fints+rag-1", "fints+rag-3",
           "fints-recency", "fints-calibrated", "fints+rag-1-calibrated")  # fmt: skip
PREFIX_EXAMPLES = 3  # prefix-cached: as many examples as rag-3, chosen once per user


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
    # the method ideas (issue 15); defaults are the plain method, left out of the label
    strength_unit: str = "absolute"
    item_norm: bool = False
    prompt_strength: float = 1.0
    preserve_norm: bool = False
    repeat_fade: float = 1.0
    sim_floor: float = 0.0
    sim_full: float = 0.0
    center: bool = False  # subtract the other users' mean signal (leave-one-out, same benchmark)
    block_repeats: int = 0
    opening_strength: float = 0.0  # opening signals at the answer's first positions (exact)

    def label(self) -> str:
        unit = "r" if self.strength_unit == "residual" else "x"
        s = (
            f"layers {','.join(map(str, self.layers))} {unit}{self.strength:g} k{self.k} "
            f"{'+'.join(self.sites)} T{self.temperature:g} {self.reading}"
        )
        extras = [
            f"half-life {self.half_life_days:g}d" if self.half_life_days else "",
            "item-norm" if self.item_norm else "",
            f"prompt {self.prompt_strength:g}" if self.prompt_strength != 1.0 else "",
            "keep-norm" if self.preserve_norm else "",
            f"fade {self.repeat_fade:g}" if self.repeat_fade != 1.0 else "",
            f"gate {self.sim_floor:g}-{self.sim_full:g}" if self.sim_full > self.sim_floor else "",
            "centred" if self.center else "",
            f"block {self.block_repeats}" if self.block_repeats else "",
            f"opening {self.opening_strength:g}" if self.opening_strength else "",
        ]
        return " ".join([s, *(e for e in extras if e)])

    def engine_config(self) -> dict[str, Any]:
        """The EngineConfig knobs of this setting."""
        return {
            "k": self.k,
            "strength": self.strength,
            "temperature": self.temperature,
            "sites": tuple(self.sites),
            "layers": tuple(self.layers),
            "half_life_days": self.half_life_days,
            "strength_unit": self.strength_unit,
            "item_norm": self.item_norm,
            "prompt_strength": self.prompt_strength,
            "preserve_norm": self.preserve_norm,
            "repeat_fade": self.repeat_fade,
            "block_repeats": self.block_repeats,
            "opening_scale": self.opening_strength / self.strength if self.strength else 0.0,
            "sim_floor": self.sim_floor,
            "sim_full": self.sim_full,
        }

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


class _PrefixCache:
    """prefix-cached for the loaded user: the examples, their KV state, and its costs."""

    def __init__(self, user_path: Path, examples: list[int]) -> None:
        self.user_path = user_path
        self.examples = examples
        self.state: Any = None
        self.prefix_tokens: list[int] = []
        self.kv_bytes = 0
        self.cold_ms: float | None = None


class Runner:
    """Answers rows with a named method for the user whose profile is loaded."""

    def __init__(self, model: Path, first_profile: Path, *, max_tokens: int,
                 n_ctx: int = 2048, threads: int | None = None) -> None:  # fmt: skip
        self.model = model
        base = EngineConfig(max_tokens=max_tokens, n_ctx=n_ctx, threads=threads, rag=0)
        self.exact = Engine(model, first_profile, base)
        self._cvec_base = base
        self._cvec: Engine | None = None
        self._torch: tuple[Any, Any] | None = None
        self._prefix: _PrefixCache | None = None

    def close(self) -> None:
        self.exact.close()
        if self._cvec is not None:
            self._cvec.close()

    def use(self, profile: Path, center: np.ndarray | None = None) -> None:
        """Switch to a user; ``center``: the reference mean their signals are centred on."""
        self.exact.use_profile(profile)
        self.exact.planner.center = center
        if self._cvec is not None:
            self._cvec.use_profile(profile)
            self._cvec.planner.center = center

    def cvec(self) -> Engine:
        if self._cvec is None:
            self._cvec = Engine(
                self.model, self.exact.profile_path, replace(self._cvec_base, mode="cvec")
            )
            self._cvec.planner.center = self.exact.planner.center
        return self._cvec

    def configure(self, engine: Engine, s: Setting, rag: int) -> None:
        config = s.engine_config()
        if engine.config.mode == "cvec":  # the control vector has no positions, no rescaling
            config.update(preserve_norm=False, opening_scale=0.0)
        engine.configure(rag=rag, **config)

    def answer(self, method: str, text: str, s: Setting, seed: int = 0) -> dict[str, Any]:
        """{"prediction", "prompt_tokens", "first_token_ms"[, "error"]} for one input; a
        failure is recorded, never raised: one broken answer must not lose the run."""
        try:
            return self._answer(method, text, s, seed)
        except FintsEdgeError as e:
            self.exact.reset_context()  # the next request starts clean
            return {"prediction": "", "prompt_tokens": None, "first_token_ms": None,
                    "error": " ".join(str(e).split())}  # fmt: skip

    def _answer(self, method: str, text: str, s: Setting, seed: int) -> dict[str, Any]:
        if method == "fints-torch":
            return self._torch_answer(text, s)
        if method == "prefix-cached":
            return self._prefix_answer(text)
        engine = self.cvec() if method == "fints-cvec" else self.exact
        self.configure(engine, s, RAG_METHODS.get(method, 0))
        if method == "fints-recency" and not s.half_life_days:
            raise FintsEdgeError("fints-recency needs a setting with half_life_days > 0")
        plan: Plan | None = None
        if method == "static":
            plan = Plan(engine.static_steering(), [], 1.0)
        elif method == "random":  # the method's plan, its directions (openings too) random
            plan = engine.plan(text)
            if plan.steering is not None:
                st = plan.steering
                opening = None if st.opening is None else _same_norm_random(st.opening, seed + 1)
                plan.steering = replace(
                    st, vectors=_same_norm_random(st.vectors, seed), opening=opening
                )
        reply = engine.reply(text, steer=method in STEERED, plan=plan)
        return {
            "prediction": reply.text,
            "prompt_tokens": reply.prompt_tokens,
            "first_token_ms": reply.timings_ms["first_token"],
        }

    # -- prefix-cached ------------------------------------------------------------------------
    def prefix_cost(self) -> dict[str, Any]:
        """The loaded user's prefix: KV bytes kept, cold first-token time, examples."""
        p = self._prefix
        return {} if p is None else {"kv_bytes": p.kv_bytes, "cold_first_token_ms": p.cold_ms,
                                     "examples": p.examples}  # fmt: skip

    def _prefix_answer(self, text: str) -> dict[str, Any]:
        from fints_edge.generate import Generation

        engine = self.exact
        engine.configure(rag=0)
        p = self._prefix
        if p is None or p.user_path != engine.profile_path:
            p = self._prefix = _PrefixCache(engine.profile_path, central_items(engine.profile))
        messages = self._prefix_messages(engine, p.examples, text)
        prompt = engine.prompt_ids(messages)
        t0 = time.perf_counter()
        engine.reset_context()
        cold = p.state is None
        if cold:
            p.prefix_tokens = self._shared_prefix(engine, p.examples)
            engine.llm.eval(p.prefix_tokens)
            p.state = engine.llm.save_state()
            p.kv_bytes = int(p.state.llama_state_size)
        else:
            engine.llm.load_state(p.state)
        if prompt[: len(p.prefix_tokens)] != p.prefix_tokens:
            raise FintsEdgeError("prefix-cached: the chat template did not keep the prefix")
        gen = Generation(engine.llm, prompt, engine.config.max_tokens, seed=engine.config.seed)
        reply = "".join(gen).strip()
        first = ((gen.first_token_time or time.perf_counter()) - t0) * 1e3
        if cold:
            p.cold_ms = first
        engine.reset_context()
        return {"prediction": reply, "prompt_tokens": len(prompt), "first_token_ms": first,
                "cold": cold}  # fmt: skip

    @staticmethod
    def _prefix_messages(engine: Engine, examples: list[int], text: str) -> list[dict[str, str]]:
        msgs: list[dict[str, str]] = []
        for i in examples:
            msgs += [
                {"role": "user", "content": str(engine.profile.inputs[i])},
                {"role": "assistant", "content": str(engine.profile.outputs[i])},
            ]
        return msgs + [{"role": "user", "content": text}]

    def _shared_prefix(self, engine: Engine, examples: list[int]) -> list[int]:
        """Tokens every request of this user starts with: what two different inputs share."""
        a = engine.prompt_ids(self._prefix_messages(engine, examples, "a"))
        b = engine.prompt_ids(self._prefix_messages(engine, examples, "zz"))
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return a[:n]

    # -- the torch reference ----------------------------------------------------------------------
    def _torch_answer(self, text: str, s: Setting) -> dict[str, Any]:
        """The torch reference: HF fp32 with hooks, steered by the edge's own aggregated plan
        (main and opening vectors; the repeat fade and block are the engine's, not here)."""
        from export.models import load_hf
        from export.reference import generate, vectors_from_array

        if self._torch is None:
            print("loading the torch reference model...", file=sys.stderr)
            self._torch = load_hf(self.model)
        model, tok = self._torch
        self.configure(self.exact, s, 0)
        plan = self.exact.plan(text)
        p = self.exact.profile
        st = plan.steering
        vectors = {} if st is None else vectors_from_array(st.vectors, st.sites, list(st.layers))
        opening = None
        if st is not None and st.opening is not None:
            first = vectors_from_array(st.opening, st.sites, list(st.layers))
            opening = {j: v for j, v in first.items() if j in s.layers}
        t0 = time.perf_counter()
        text_out = generate(
            model,
            tok,
            text,
            max_new_tokens=self.exact.config.max_tokens,
            prompt_format=p.prompt_format,
            vectors={j: v for j, v in vectors.items() if j in s.layers},
            opening=opening,
            opening_window=self.exact.config.opening_window,
            prompt_strength=s.prompt_strength,
            preserve_norm=s.preserve_norm,
        )
        return {
            "prediction": text_out,
            "prompt_tokens": None,
            "first_token_ms": (time.perf_counter() - t0) * 1e3,  # whole generation: no streaming
        }


def central_items(profile: Any, n: int = PREFIX_EXAMPLES) -> list[int]:
    """The ``n`` history items most similar on average to the user's other items (keys)."""
    keys = profile.keys.astype(np.float32)  # [N, D] unit rows
    sims = keys @ keys.T
    score = (sims.sum(axis=1) - np.diag(sims)) / max(len(keys) - 1, 1)
    return [int(i) for i in np.argsort(-score, kind="stable")[:n]]


def _same_norm_random(vectors: np.ndarray, seed: int) -> np.ndarray:
    """The control: random directions with the steering vectors' norm per site and layer."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=vectors.shape)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (r / np.linalg.norm(r, axis=-1, keepdims=True) * norms).astype(np.float32)
