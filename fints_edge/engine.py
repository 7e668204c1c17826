"""One request, end to end: plan (encode, retrieve, aggregate), inject, generate.

The Engine owns every native resource (llama context, ONNX sessions, index) in one ExitStack;
``close()`` is idempotent and the Engine is a context manager. What to steer is the planner's
(``fints_edge.plan``, pure numpy); how to inject it is the injector's (``fints_edge.llama``):
the engine never asks which injection mode it has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fints_edge._paths import default_aggregator_path, default_encoder_dir
from fints_edge.aggregate import OnnxAggregator
from fints_edge.config import SETTING_KNOBS, EngineConfig, check_config
from fints_edge.encode import Encoder
from fints_edge.errors import FintsEdgeError
from fints_edge.fade import RepeatBlock, RepeatFade
from fints_edge.generate import Finish, Generation
from fints_edge.history import HistoryItem, surrogate_at
from fints_edge.index import Index
from fints_edge.llama.context import forget_tokens
from fints_edge.llama.inject import applied, open_steerable
from fints_edge.llama.model import check_gguf, identity_from_llama
from fints_edge.plan import Plan, Planner, Retrieved, Steering
from fints_edge.profile import Profile
from fints_edge.prompt import prompt_tokens

if TYPE_CHECKING:  # learning pulls in rouge-score; chat-only sessions do not pay for it
    from fints_edge.learn.learner import Learner

__all__ = ["Engine", "EngineConfig", "Plan", "Reply", "Retrieved", "Steering", "checked_text"]


@dataclass
class Reply:
    text: str
    steered: bool  # steering was added to this answer (not: asked for and gated to nothing)
    plan: Plan | None
    prompt_tokens: int
    completion_tokens: int
    timings_ms: dict[str, float]
    finish: Finish | None = None  # "stop" (end of answer) or "length" (max_tokens reached)
    # the knobs it was written under (config.SETTING_KNOBS: k, strength, rag, layers, ...)
    setting: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "steered": self.steered,
            "retrieved": self.plan.retrieved if self.plan else [],
            "gate": self.plan.gate if self.plan else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish": self.finish,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "setting": self.setting,
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
        self.config = check_config(config or EngineConfig())
        self._stack = ExitStack()
        try:
            self.model_path = check_gguf(model_path)  # cheap file checks first, heavy loading last
            self.profile_path = Path(profile_path)
            profile = Profile.load(profile_path)
            self.encoder = Encoder(
                encoder_dir or default_encoder_dir(), threads=self.config.threads
            )
            self.encoder.check_compatible(
                profile.encoder_name, profile.encoder_probe, str(profile_path)
            )
            aggregator = OnnxAggregator(
                aggregator_path or default_aggregator_path(), threads=self.config.threads
            )
            self.planner = Planner(profile, self.encoder, Index(profile.keys), aggregator)
            self.llm, self.injector = open_steerable(
                model_path,
                self.config.mode,
                n_ctx=self.config.n_ctx,
                n_threads=self.config.threads,
                seed=self.config.seed,
            )
            self._stack.callback(self.llm.close)
            self.model_identity = identity_from_llama(self.llm)  # hashes the vocabulary: once
            profile.check_model(self.model_identity, profile_path)
        except BaseException:
            self._stack.close()
            raise
        self._learner: Learner | None = None
        self._extract_ctx: tuple[Any, Any] | None = None  # (llm, injector) with the eval callback

    @property
    def profile(self) -> Profile:
        return self.planner.profile

    @property
    def index(self) -> Index:
        return self.planner.index

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
        config = check_config(replace(self.config, **changes))
        self.planner.selection(config)  # refused now, not at every request after
        self.config = config
        return config

    # -- one request --------------------------------------------------------------------------
    def plan(self, text: str) -> Plan:
        """Encode the input, retrieve the top-K history items and aggregate their signals."""
        return self.planner.plan(checked_text(text), self.config)

    def static_steering(self) -> Steering | None:
        """The static (CAA-style) baseline under the current config (``Planner.static``)."""
        return self.planner.static(self.config)

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
        """Yield text pieces as they are generated, then the final :class:`Reply`.

        The first-token time counts from here: planning (the encoder) is inside it."""
        if not checked_text(text).strip():
            raise FintsEdgeError("the input is empty")
        c = self.config
        t0 = time.perf_counter()
        if plan is None and (steer or c.rag):
            plan = self.plan(text)
        prompt = self.prompt_ids(self.messages(text, plan))
        steering = plan.steering if (steer and plan is not None) else None
        if steering is not None and not steering.active:
            steering = None  # strength 0 or a closed gate: nothing to add, nothing to guard
        self.reset_context()  # never reuse KV computed under different steering
        fade = block = None  # loop guards of steered answers
        if steering is not None:
            if c.repeat_fade < 1.0:
                fade = RepeatFade(self.injector, c.repeat_fade)
            if c.block_repeats:
                block = RepeatBlock(c.block_repeats, len(prompt))
        gen = Generation(
            self.llm,
            prompt,
            c.max_tokens,
            seed=c.seed,
            injector=self.injector,
            on_token=fade,
            logits_processor=block,
        )
        pieces: list[str] = []
        t_apply = 0.0
        try:
            with applied(self.injector, steering, prompt):  # cleared however this ends
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
        setting = {n: getattr(c, n) for n in SETTING_KNOBS}
        yield Reply(
            text, steering is not None, plan, len(prompt), len(gen.tokens), timings, gen.finish,
            setting,
        )  # fmt: skip

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
        self.profile_path = Path(profile_path)
        self.planner.use(profile, Index(profile.keys))
        self.planner.center = None  # it was another user's reference
        self._learner = None
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
        index = self.index
        if appended:
            index.add(profile.keys[-appended:])
        else:
            index = Index(profile.keys)
        self.planner.use(profile, index)

    def learner(self) -> Learner:
        """The on-device learner; a cvec engine opens a second, callback-enabled context once."""
        from fints_edge.learn.learner import Learner
        from fints_edge.learn.recipe import extractor_for

        if self._learner is None:
            if self._extract_ctx is None:
                self._extract_ctx = (self.llm, self.injector)
                if not self.injector.can_tap:
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
        forget_tokens(self.llm)
        self.injector.rewind()

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The token ids of a chat, as a request lays it out in the profile's prompt format
        (template, room for the answer checked). Message texts (the input, RAG examples) stay
        plain text: typed markers never become control tokens (fints_edge.prompt)."""
        tokens = prompt_tokens(self.llm, messages, self.profile.prompt_format)
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
    at = surrogate_at(text)
    if at is not None:
        raise FintsEdgeError(
            f"the {what} is not valid Unicode (a lone surrogate at character {at}); send UTF-8 text"
        )
    return text
