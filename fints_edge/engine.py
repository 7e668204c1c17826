"""One request, end to end: encode, retrieve, aggregate, inject, generate.

The Engine owns every native resource (llama context, ONNX sessions, index) in one ExitStack;
``close()`` is idempotent and the Engine is a context manager.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np

from fints_edge._paths import default_aggregator_path, default_encoder_dir
from fints_edge.aggregate import AggregateParams, OnnxAggregator
from fints_edge.encode import Encoder
from fints_edge.errors import FintsEdgeError
from fints_edge.fade import RepeatBlock, RepeatFade
from fints_edge.generate import Generation, prefill
from fints_edge.history import HistoryItem
from fints_edge.index import Index
from fints_edge.inject import MODES, CallbackInjector, Mode, open_steerable, steered
from fints_edge.layers import Site
from fints_edge.model import check_gguf, identity_from_llama
from fints_edge.profile import Profile
from fints_edge.prompt import prompt_tokens
from fints_edge.scaling import (
    StrengthUnit,
    check_unit,
    item_normalised,
    relative_factor,
    typical_norms,
)

if TYPE_CHECKING:  # learning pulls in rouge-score; chat-only sessions do not pay for it
    from fints_edge.learn import Learner

RagFormat = Literal["turns", "inline"]


@dataclass(frozen=True)
class EngineConfig:
    """Per-request knobs. The steering defaults are the setting `make eval` chose on the dev
    split on SmolLM2-135M (docs/eval/README.md: layer 20 of 30 = ``layers.default_layer``,
    attention site = ``layers.DEFAULT_SITES``, strength 0.25 of the residual norm, K 3, uniform
    weights, per-item normalisation, the repeat fade at 0.5, no repeated token 4-grams)."""

    mode: Mode = "exact"
    k: int = 3
    strength: float = 0.25
    strength_unit: StrengthUnit = "residual"  # a share of the layer's residual norm; "absolute"
    item_norm: bool = True  # rescale each retrieved signal to the profile's typical norm first
    prompt_strength: float = 1.0  # share of the steering on the prompt but its last token
    preserve_norm: bool = False  # keep each steered hidden state's norm (exact mode)
    repeat_fade: float = 0.5  # steering x this at each repeated token 4-gram; 1 = off
    block_repeats: int = 3  # steered answers may not repeat a token n-gram of this size; 0 = off
    temperature: float = 0.0  # aggregation softmax temperature; 0 = uniform mean (paper default)
    sim_floor: float = 0.0  # novelty gate: steering fades out as the best similarity nears this
    sim_full: float = 0.0  # ... and is full above this; sim_full <= sim_floor disables the gate
    sites: tuple[Site, ...] | None = None  # None = every site in the profile
    layers: tuple[int, ...] | None = None  # steer only these of the profile's layers; None = all
    half_life_days: float = 0.0  # recency: weight halves per this many days of age; 0 = off
    # opening signals where the answer starts, at strength x opening_scale (exact mode only:
    # cvec has no positions); 0 = off
    opening_scale: float = 1.0
    opening_window: int = 3  # positions from the last prompt token that get the opening signal
    rag: int = 0  # history examples put in the prompt (as earlier chat turns)
    max_tokens: int = 128
    n_ctx: int = 2048
    threads: int | None = None
    seed: int = 0


class Retrieved(TypedDict):
    id: int
    similarity: float
    weight: float
    input: str
    output: str


@dataclass
class Plan:
    """What steering a request gets, and why."""

    vectors: np.ndarray  # float32 [S, L, n_embd], already scaled by strength and gate
    retrieved: list[Retrieved]
    gate: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    opening: np.ndarray | None = None  # float32 [S, L, n_embd] for the answer's first positions


@dataclass
class Reply:
    text: str
    steered: bool
    plan: Plan | None
    prompt_tokens: int
    completion_tokens: int
    timings_ms: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "steered": self.steered,
            "retrieved": self.plan.retrieved if self.plan else [],
            "gate": self.plan.gate if self.plan else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


class Engine:
    """``with Engine(model, profile) as e: print(e.reply("...").text)``"""

    def __init__(
        self,
        model_path: str | Path,
        profile_path: str | Path,
        config: EngineConfig | None = None,
        *,
        encoder_dir: str | Path | None = None,
        aggregator_path: str | Path | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self._check_config(self.config)
        self._stack = ExitStack()
        try:
            self.model_path = check_gguf(model_path)  # cheap file checks first, heavy loading last
            self.profile_path = Path(profile_path)
            self.profile = Profile.load(profile_path)
            self.encoder = Encoder(
                encoder_dir or default_encoder_dir(), threads=self.config.threads
            )
            self.encoder.check_compatible(
                self.profile.encoder_name, self.profile.encoder_probe, str(profile_path)
            )
            self.aggregator = OnnxAggregator(
                aggregator_path or default_aggregator_path(), threads=self.config.threads
            )
            self.index = Index(self.profile.keys)
            self.llm, self.injector = open_steerable(
                model_path,
                self.config.mode,
                n_ctx=self.config.n_ctx,
                n_threads=self.config.threads,
                seed=self.config.seed,
            )
            self._stack.callback(self.llm.close)
            self.model_identity = identity_from_llama(self.llm)  # hashes the vocabulary: once
            self.profile.check_model(self.model_identity, profile_path)
        except BaseException:
            self._stack.close()
            raise
        self._learner: Learner | None = None
        self._typical: dict[str, tuple[Profile, np.ndarray]] = {}  # "signals"/"opening" -> norms
        # float32 [S, L, n_embd] subtracted from every item signal before aggregation: what a
        # reference set of other users shares (mean-centring); None = off
        self.center: np.ndarray | None = None
        self._extract_ctx: tuple[Any, Any] | None = None  # (llm, injector) with the eval callback

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def configure(self, **changes: Any) -> EngineConfig:
        """Change per-request knobs (k, strength, ...); mode/n_ctx/threads need a new Engine."""
        fixed = {"mode", "n_ctx", "threads"} & set(changes)
        if fixed:
            raise FintsEdgeError(
                f"{', '.join(sorted(fixed))} can only be set when the engine starts"
            )
        config = replace(self.config, **changes)
        self._check_config(config)
        self._check_selection(config)  # refused now, not at every request after
        self.config = config
        return config

    @staticmethod
    def _check_config(c: EngineConfig) -> None:
        if c.mode not in MODES:
            raise FintsEdgeError(f"unknown mode '{c.mode}'; choose one of {', '.join(MODES)}")
        if c.k < 1:
            raise FintsEdgeError(f"K must be at least 1, got {c.k}")
        if c.rag < 0 or c.max_tokens < 1:
            raise FintsEdgeError("rag must be >= 0 and max_tokens >= 1")
        if c.preserve_norm and c.mode != "exact":
            raise FintsEdgeError(
                "norm preservation acts inside the graph: use --mode exact, or --no-keep-norm"
            )
        check_unit(c.strength_unit)
        if c.block_repeats < 0 or c.block_repeats == 1:
            raise FintsEdgeError(
                f"block_repeats {c.block_repeats}: an n-gram size of 2 or more, or 0 (off)"
            )
        if not (0.0 <= c.repeat_fade <= 1.0 and c.prompt_strength >= 0.0):
            raise FintsEdgeError(
                f"repeat fade {c.repeat_fade} must be in [0, 1] (1 = off) and prompt strength "
                f"{c.prompt_strength} >= 0"
            )
        if c.opening_window < 1:
            raise FintsEdgeError(
                f"the opening window must be >= 1 position, got {c.opening_window}"
            )
        if not c.half_life_days >= 0:
            raise FintsEdgeError(f"half-life must be >= 0 days (0 = off), got {c.half_life_days}")
        knobs = ("strength", "temperature", "sim_floor", "sim_full", "opening_scale",
                 "prompt_strength")  # fmt: skip
        odd = [f"{n} {getattr(c, n)}" for n in knobs if not math.isfinite(getattr(c, n))]
        if odd:
            raise FintsEdgeError(f"{', '.join(odd)}: these must be finite numbers")

    # -- one request --------------------------------------------------------------------------
    def plan(self, text: str) -> Plan:
        """Encode the input, retrieve the top-K history items and aggregate their signals."""
        c = self.config
        t0 = time.perf_counter()
        query = self.encoder.encode([checked_text(text)])[0]  # [D]
        t1 = time.perf_counter()
        # RAG may want more examples than steering aggregates: retrieve for both, steer with top-K.
        found, found_sims = self.index.top_k(query, max(c.k, c.rag))
        ids, sims = found[: c.k], found_sims[: c.k]  # [K'], [K']
        t2 = time.perf_counter()
        params = AggregateParams(
            temperature=c.temperature,
            strength=c.strength,
            sim_floor=c.sim_floor,
            sim_full=c.sim_full,
            item_weights=recency_weights(self.profile.timestamps, ids, c.half_life_days),
        )
        signals = self._shaped(self.profile.signals[ids])  # [K, S, L, n_embd]
        agg = self.aggregator(sims, signals, params)
        vectors = self.select(self._in_unit(agg.vectors))
        opening = None
        if self._steers_openings():
            first, typical = self._opening_shaped(self.profile.opening[ids])  # type: ignore[index]
            first_params = replace(params, strength=c.strength * c.opening_scale)
            first_agg = self.aggregator(sims, first, first_params)
            opening = self.select(self._in_unit(first_agg.vectors, typical))
        t3 = time.perf_counter()
        retrieved: list[Retrieved] = [
            {
                "id": int(i),
                "similarity": float(s),
                "weight": float(w),
                "input": str(self.profile.inputs[i]),
                "output": str(self.profile.outputs[i]),
            }
            for i, s, w in zip(
                found,
                found_sims,
                np.pad(agg.weights, (0, len(found) - len(ids))),  # RAG-only items weigh 0
                strict=True,
            )
        ]
        timings = {
            "encode": (t1 - t0) * 1e3,
            "retrieve": (t2 - t1) * 1e3,
            "aggregate": (t3 - t2) * 1e3,
        }
        return Plan(vectors, retrieved, float(agg.gate), timings, opening)

    def user_vector(self) -> np.ndarray:
        """The static (CAA-style) baseline under the current config: the mean of ALL the user's
        signals, normalised, scaled and selected like a request's aggregate."""
        signals = self._shaped(self.profile.signals)
        mean = np.asarray(signals, dtype=np.float32).mean(axis=0) * np.float32(self.config.strength)
        return self.select(self._in_unit(mean)).astype(np.float32)

    def user_opening(self) -> np.ndarray | None:
        """The static baseline's opening vector: the mean of ALL the user's opening signals,
        shaped like a request's; None when the config or the profile steers no openings."""
        if not self._steers_openings():
            return None
        first, typical = self._opening_shaped(self.profile.opening)  # type: ignore[arg-type]
        c = self.config
        mean = np.asarray(first, dtype=np.float32).mean(axis=0) * np.float32(
            c.strength * c.opening_scale
        )
        return self.select(self._in_unit(mean, typical)).astype(np.float32)

    def _steers_openings(self) -> bool:
        c = self.config
        return bool(c.opening_scale) and c.mode == "exact" and self.profile.opening is not None

    def _opening_shaped(self, opening: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Opening signals [K, S, L, E] in the same units as the main signals: their own typical
        norms play the part the signals' play (item norm, residual units); no centring."""
        typical = self._typical_norms("opening")
        if self.config.item_norm:
            opening = item_normalised(opening, typical)
        return opening, typical

    def _shaped(self, signals: np.ndarray) -> np.ndarray:
        """Item signals [K, S, L, E] as aggregation takes them: centred on ``center`` if set,
        each at the profile's typical norm with ``item_norm``; untouched (float16) otherwise."""
        if self.center is not None:
            signals = signals.astype(np.float32) - self.center
        if self.config.item_norm:
            signals = item_normalised(signals, self._typical_norms())
        return signals

    def _in_unit(self, vectors: np.ndarray, typical: np.ndarray | None = None) -> np.ndarray:
        """[S, L, E] already x strength -> x residual norm / typical norm in "residual" units
        (``typical``: [S, L] norms of the signals aggregated; default the main signals')."""
        if self.config.strength_unit == "absolute":
            return vectors
        typical = self._typical_norms() if typical is None else typical
        factor = relative_factor(self.profile.residual_norms, typical)  # [S, L]
        return (vectors * factor[:, :, None]).astype(np.float32)

    def _typical_norms(self, which: str = "signals") -> np.ndarray:
        """[S, L] for the profile's ``signals`` or ``opening``, computed once per profile version
        (learning and forgetting replace it)."""
        cached = self._typical.get(which)
        if cached is None or cached[0] is not self.profile:
            cached = (self.profile, typical_norms(getattr(self.profile, which)))
            self._typical[which] = cached
        return cached[1]

    def select(self, vectors: np.ndarray) -> np.ndarray:
        """Zero the sites and layers the config leaves out (zero vectors are never injected)."""
        c, p = self.config, self.profile
        self._check_selection(c)  # the profile may have changed since configure
        keep_site = np.array([c.sites is None or s in c.sites for s in p.sites])
        keep_layer = np.array([c.layers is None or int(j) in c.layers for j in p.layers])
        return vectors * keep_site[:, None, None] * keep_layer[None, :, None]

    def _check_selection(self, c: EngineConfig) -> None:
        p = self.profile
        unknown = set(c.sites or ()) - set(p.sites)
        if unknown:
            raise FintsEdgeError(f"profile has no {', '.join(sorted(unknown))} signals")
        missing = set(c.layers or ()) - set(p.layers.tolist())
        if missing:
            raise FintsEdgeError(
                f"profile has no signals at layer(s) {sorted(missing)}; it has {p.layers.tolist()}"
            )

    def messages(self, text: str, plan: Plan | None) -> list[dict[str, str]]:
        """The chat: optional RAG examples as earlier turns (measured best on the small model)."""
        msgs: list[dict[str, str]] = []
        if self.config.rag and plan is not None:
            for item in plan.retrieved[: self.config.rag]:
                msgs += [
                    {"role": "user", "content": item["input"]},
                    {"role": "assistant", "content": item["output"]},
                ]
        msgs.append({"role": "user", "content": text})
        return msgs

    def stream(
        self, text: str, *, steer: bool = True, plan: Plan | None = None
    ) -> Iterator[str | Reply]:
        """Yield text pieces as they are generated, then the final :class:`Reply`."""
        if not checked_text(text).strip():
            raise FintsEdgeError("the input is empty")
        c = self.config
        if plan is None and (steer or c.rag):
            plan = self.plan(text)
        prompt = self.prompt_ids(self.messages(text, plan))
        t0 = time.perf_counter()
        vectors = plan.vectors if (steer and plan is not None) else None
        opening = plan.opening if (steer and plan is not None) else None
        self.reset_context()  # never reuse KV computed under different steering
        callback = self.injector if isinstance(self.injector, CallbackInjector) else None
        fade = block = None  # loop guards of steered answers: nothing to guard at strength 0
        if vectors is not None and vectors.any():
            if c.repeat_fade < 1.0:
                fade = RepeatFade(self.injector, c.repeat_fade)
            if c.block_repeats:
                block = RepeatBlock(c.block_repeats, len(prompt))
        gen = Generation(
            self.llm,
            prompt,
            c.max_tokens,
            seed=c.seed,
            injector=callback,
            on_token=fade,
            logits_processor=block,
        )
        pieces: list[str] = []
        try:
            with self._steering(vectors, opening, len(prompt)):  # cleared however this ends
                if vectors is not None and callback is None and c.prompt_strength != 1.0:
                    self._prefill_scaled(prompt)
                t_apply = (time.perf_counter() - t0) * 1e3
                for piece in gen:
                    pieces.append(piece)
                    yield piece
        except BaseException:
            self.reset_context()  # a failed decode can leave half-written KV behind
            raise
        t_end = time.perf_counter()
        timings = dict(plan.timings_ms) if plan else {}
        timings.update(
            apply=t_apply,
            first_token=((gen.first_token_time or t_end) - t0) * 1e3,
            total_generate=(t_end - t0) * 1e3,
        )
        text = "".join(pieces).strip()
        yield Reply(text, vectors is not None, plan, len(prompt), len(gen.tokens), timings)

    def reply(self, text: str, *, steer: bool = True, plan: Plan | None = None) -> Reply:
        """The whole answer at once."""
        *_, last = self.stream(text, steer=steer, plan=plan)
        assert isinstance(last, Reply)
        return last

    def use_profile(self, profile_path: str | Path) -> Profile:
        """Switch to another profile (another user) without reloading the model."""
        profile = Profile.load(profile_path)
        self.encoder.check_compatible(
            profile.encoder_name, profile.encoder_probe, str(profile_path)
        )
        profile.check_model(self.model_identity, profile_path)
        self.profile_path, self.profile = Path(profile_path), profile
        self.index = Index(profile.keys)
        self._learner = None
        self.center = None  # it was another user's reference
        return profile

    # -- learning on the device ---------------------------------------------------------------
    def learn(self, text: str, chosen: str, rejected: str | None = None) -> int:
        """Make (text -> chosen) a history item now, the profile file updated atomically.

        ``rejected`` is the answer the user did not want; without it the model's own unsteered
        answer is generated as the contrast. Returns the new item's id.
        """
        texts = [checked_text(t, what) for t, what in ((text, "input"), (chosen, "answer"))]
        if rejected is not None:
            checked_text(rejected, "rejected answer")
        item = HistoryItem(texts[0].strip(), texts[1].strip(), rejected, time.time())
        if not item.input or not item.output:
            raise FintsEdgeError("both the input and the wanted answer must be non-empty")
        old_n = self.profile.n_items
        profile = self.learner().extend(self.profile, [item], progress=False)
        self._adopt(profile, appended=profile.n_items - old_n)
        return profile.n_items - 1

    def forget(self, item: int) -> None:
        """Drop history item ``item`` from the profile and its file."""
        self._adopt(self.profile.without_item(item))

    def _adopt(self, profile: Profile, appended: int = 0) -> None:
        """Save, then use ``profile``; appended items join the index, anything else rebuilds it."""
        profile.save(self.profile_path)  # the old file stays whole until this succeeds
        self.profile = profile
        if appended:
            self.index.add(profile.keys[-appended:])
        else:
            self.index = Index(profile.keys)

    def learner(self) -> Learner:
        """The on-device learner; a cvec engine opens a second, callback-enabled context once."""
        from fints_edge.learn import Learner, extractor_for

        if self._learner is None:
            if self._extract_ctx is None:
                self._extract_ctx = (self.llm, self.injector)
                if not isinstance(self.injector, CallbackInjector):
                    self._extract_ctx = open_steerable(
                        self.model_path,
                        "exact",
                        n_ctx=self.config.n_ctx,
                        n_threads=self.config.threads,
                        seed=self.config.seed,
                    )
                    self._stack.callback(self._extract_ctx[0].close)
            llm, injector = self._extract_ctx
            self._learner = Learner(
                extractor_for(llm, injector, self.profile), self.encoder, seed=self.config.seed
            )
        return self._learner

    def reset_context(self) -> None:
        """Forget every cached token (KV included); the eval callback counts from position 0.
        Every request starts with it; call it after using ``llm`` directly (a restored state)."""
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        if isinstance(self.injector, CallbackInjector):
            self.injector.rewind()

    @contextmanager
    def _steering(
        self, vectors: np.ndarray | None, opening: np.ndarray | None, prompt_len: int
    ) -> Iterator[None]:
        if vectors is None:
            yield  # nothing to set, nothing to clear
            return
        c, sites, layers = self.config, self.profile.sites, self.profile.layers.tolist()
        with steered(self.injector, vectors, sites, layers):  # clears the opening too
            if isinstance(self.injector, CallbackInjector):
                self.injector.set_prompt_scale(prompt_len - 1, c.prompt_strength)
                self.injector.preserve_norm = c.preserve_norm
                if opening is not None:
                    window = c.opening_window
                    self.injector.set_opening(opening, sites, layers, prompt_len - 1, window)
            try:
                yield
            finally:
                if isinstance(self.injector, CallbackInjector):
                    self.injector.preserve_norm = False

    def _prefill_scaled(self, prompt: Sequence[int]) -> None:
        """Control-vector mode's prompt strength: the prompt but its last token is computed with
        the vector x prompt_strength; the token loop then reuses that KV and computes the last
        prompt token (which picks the first answer token) and the answer in full."""
        if len(prompt) < 2:
            return
        self.injector.set_scale(self.config.prompt_strength)
        try:
            prefill(self.llm, prompt[:-1])
        finally:
            self.injector.set_scale(1.0)

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The token ids of a chat, as a request lays it out (template, room for the answer
        checked). Message texts (the input, RAG examples) stay plain text: typed markers never
        become control tokens (fints_edge.prompt)."""
        tokens = prompt_tokens(self.llm, messages)
        room = self.config.n_ctx - self.config.max_tokens
        if len(tokens) > room:
            raise FintsEdgeError(
                f"the prompt is {len(tokens)} tokens but the context leaves room for {room} "
                f"(n_ctx {self.config.n_ctx} - max_tokens {self.config.max_tokens}); "
                "shorten the input, lower --rag/--max-tokens, or raise --n-ctx"
            )
        return tokens


def checked_text(text: object, what: str = "input") -> str:
    """``text`` if it is a str that UTF-8 can carry; JSON can hold lone surrogates ("\\ud800"),
    which the tokenizers would reject with a TypeError."""
    if not isinstance(text, str):
        raise FintsEdgeError(f"the {what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise FintsEdgeError(
            f"the {what} is not valid Unicode (a lone surrogate at character {e.start}); "
            "send UTF-8 text"
        ) from None
    return text


def recency_weights(
    timestamps: np.ndarray, ids: np.ndarray, half_life_days: float
) -> np.ndarray | None:
    """Prior weights 0.5 ** (age / half-life) for the retrieved items, age measured from the
    profile's newest item (not the clock: a profile left alone keeps steering the same way).
    Items without a timestamp count as new. None when recency is off. Only the ratios matter
    (the aggregator normalises), so the youngest retrieved item weighs 1: a short half-life
    cannot underflow every weight to 0."""
    if half_life_days <= 0:
        return None
    known = timestamps[np.isfinite(timestamps)]
    if known.size == 0:
        return None
    age_days = (known.max() - timestamps[ids]) / 86400.0
    age_days = np.where(np.isfinite(age_days), np.maximum(age_days, 0.0), 0.0)  # [K]
    halvings = age_days / half_life_days
    return (0.5 ** (halvings - halvings.min())).astype(np.float32)
