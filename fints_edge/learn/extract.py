"""On-device signal extraction: the contrast of ``export/extract.py``, read from llama.cpp's graph.

For one history item, the prompt is decoded once, then the chosen and the rejected answer are each
decoded after it (the KV cache is rewound in between), with the eval callback copying the site
tensors of the steered layers at the answer positions. Signal = mean(chosen) - mean(rejected).
Within :meth:`DeviceExtractor.reusing_prompts` (the learner's loop) the contrast reuses the KV of
the prompt its negative's generation computed (the same pass from position 0 that the contrast
would make: the same numbers, one prompt pass fewer per item).

Graph tensors per site come from ``fints_edge.llama.arch`` (torch twins in ``export/extract.py``); for
llama: attention ``attn_out-L`` (reading ``output``) or ``ffn_inp-L`` (``residual``), MLP
``ffn_out-L``, residual norms ``l_out-L``. qwen2 names no attention output: it is read as
``ffn_inp-L`` minus the residual entering the layer. gemma3 reads the post-normed block outputs.

Prompt layout: ``chat`` applies the GGUF's chat template; a GGUF without one (a base model such as
gemma-3-270m) is laid out ``plain`` instead, and the extractor says so in ``prompt_format`` (the
profile records it). ``plain`` = input + newline, with BOS first when the model adds one.

When the last layer is steered, every answer position asks for logits: llama.cpp otherwise
computes the last layer for the final position only (a mean over one token).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from fints_edge.errors import FintsEdgeError
from fints_edge.generate import complete
from fints_edge.layers import ATTN_READINGS, SITES, AttnReading, Site, check_layers
from fints_edge.learn.pairs import RETRY_SAMPLING
from fints_edge.llama.context import decode_at, decode_error, forget_tokens
from fints_edge.llama.inject import CallbackInjector
from fints_edge.llama.model import has_chat_template, n_layers
from fints_edge.profile import PROMPT_FORMATS, PromptFormat
from fints_edge.prompt import prompt_tokens as layout_tokens

_ITEM_FIX = "shorten the history item, or raise --n-ctx"
DEFAULT_ANSWER_TOKENS = 48  # answer length of the negatives and persona answers (both halves)


DEFAULT_OPENING_TOKENS = 3  # as export.extract


@dataclass(frozen=True)
class ItemSignal:
    signal: np.ndarray  # float32 [S, L, n_embd]  mean(chosen answer) - mean(rejected answer)
    residual_norms: np.ndarray  # float32 [L]  mean |layer output| over the chosen answer
    opening: np.ndarray  # float32 [S, L, n_embd]  the same over the first answer positions


class DeviceExtractor:
    """Signals for (input, chosen, rejected) from a llama context opened with the eval callback.

    Example: ``DeviceExtractor(llm, llm.injector, [22], ("attn", "mlp")).signal(x, mine, base)``
    """

    def __init__(
        self,
        llm: Any,
        injector: object,
        layers: Sequence[int],
        sites: Sequence[Site] = SITES,
        attn_reading: AttnReading = "output",
        prompt_format: PromptFormat = "chat",
        opening_tokens: int = DEFAULT_OPENING_TOKENS,
    ) -> None:
        n_layer = n_layers(llm)
        self.layers = check_layers(layers, n_layer)
        self.sites = tuple(sites)
        if (
            not self.sites
            or len(set(self.sites)) != len(self.sites)
            or set(self.sites) - set(SITES)
        ):
            raise FintsEdgeError(f"sites {list(sites)}: need distinct names from {SITES}")
        if attn_reading not in ATTN_READINGS:
            raise FintsEdgeError(f"attn_reading {attn_reading!r}: use one of {ATTN_READINGS}")
        if prompt_format not in PROMPT_FORMATS:
            raise FintsEdgeError(f"prompt_format {prompt_format!r}: use one of {PROMPT_FORMATS}")
        if not isinstance(injector, CallbackInjector):
            raise FintsEdgeError("on-device extraction needs a model opened in exact mode")
        self.llm = llm
        self.injector: CallbackInjector = injector
        self.attn_reading = attn_reading
        # A base model has no chat template: lay its prompts out plain, and say so.
        self.prompt_format: PromptFormat = (
            "plain" if prompt_format == "chat" and not has_chat_template(llm) else prompt_format
        )
        if opening_tokens < 1:
            raise FintsEdgeError(f"opening_tokens must be >= 1, got {opening_tokens}")
        self.opening_tokens = opening_tokens
        graph = injector.graph  # this model's tensor names per site (fints_edge.llama.arch)
        self._readings = [
            [graph.reading(s, j, attn_reading) for j in self.layers] for s in self.sites
        ]  # [S][L]
        # Only the last layer needs every position's logits requested (its rows are pruned).
        self._every_position = self.layers[-1] == n_layer - 1
        self._out_names = [graph.layer_output(j) for j in self.layers]
        self._reusing = False
        self._held: tuple[int, ...] = ()  # tokens whose unsteered KV this extractor left cached

    @contextmanager
    def reusing_prompts(self) -> Iterator[DeviceExtractor]:
        """Within: the prompt computed for an item's negative is reused by its contrast. Only this
        extractor may use the context meanwhile; it is cleared on the way in and out, so nothing
        computed elsewhere (steered, or another prompt) is ever reused."""
        self._clear()
        self._reusing = True
        try:
            yield self
        finally:
            self._reusing = False
            self._clear()

    # -- tokens, laid out exactly as export.extract.prompt_ids / encode_pair do -------------------
    def prompt_tokens(self, text: str) -> list[int]:
        """The input as plain text in its layout (plain: BOS if the GGUF adds one, then input
        and newline); see fints_edge.prompt."""
        return layout_tokens(self.llm, [{"role": "user", "content": text}], self.prompt_format)

    def answer_tokens(self, answer: str, text: str, which: str = "answer") -> list[int]:
        """``answer`` (the item's ``which``: output or rejected text) as plain-text ids; ``text``
        is the item's input, named when the answer gives no token."""
        ids = list(self.llm.tokenize(answer.encode(), add_bos=False, special=False))
        if not ids:
            raise FintsEdgeError(
                f"the {which} for input {text[:40]!r} is empty after tokenization; give it some "
                "text or drop the item from the history"
            )
        return ids

    # -- the contrast ---------------------------------------------------------------------------
    def signal(self, text: str, chosen: str, rejected: str) -> ItemSignal:
        """One prompt decode plus one decode per answer; steering must be off."""
        if self.injector.active:
            raise FintsEdgeError("clear steering before extracting signals")
        prompt = self.prompt_tokens(text)
        answers = [
            self.answer_tokens(chosen, text, "output"),
            self.answer_tokens(rejected, text, "rejected text"),
        ]
        need = len(prompt) + max(len(a) for a in answers)
        if need > self.llm.n_ctx():
            raise FintsEdgeError(
                f"input + answer is {need} tokens but the context holds {self.llm.n_ctx()}; "
                "shorten the item or raise --n-ctx"
            )
        means: list[np.ndarray] = []  # per answer: [S, L, n_embd]
        firsts: list[np.ndarray] = []  # per answer, over the first answer positions only
        norms = np.zeros(len(self.layers))
        tapped = [r.names for row in self._readings for r in row] + [tuple(self._out_names)]
        names = list(dict.fromkeys(n for group in tapped for n in group))
        with self._call():
            self._hold(prompt)
            for which, answer in enumerate(answers):
                forget_tokens(self.llm, keep=len(prompt))  # rewind to the prompt
                with self.injector.tapping(names) as taps:
                    self._decode(answer, len(prompt), every_position=self._every_position)
                rows = {name: self._rows(taps, name, len(answer)) for name in names}
                acts = [  # [S][L] of [tokens, n_embd]: plus - minus where the site is derived
                    [rows[r.plus] - rows[r.minus] if r.minus else rows[r.plus] for r in row]
                    for row in self._readings
                ]
                means.append(np.stack([[a.mean(0) for a in row] for row in acts]))
                m = self.opening_tokens
                firsts.append(np.stack([[a[:m].mean(0) for a in row] for row in acts]))
                if which == 0:  # residual norms over the user's own answer
                    norms = np.array(
                        [np.linalg.norm(rows[n], axis=-1).mean() for n in self._out_names]
                    )
            forget_tokens(self.llm, keep=len(prompt))  # the prompt stays, the answers go
        return ItemSignal(
            (means[0] - means[1]).astype(np.float32),
            norms.astype(np.float32),
            (firsts[0] - firsts[1]).astype(np.float32),
        )

    def _rows(self, taps: dict[str, list[np.ndarray]], name: str, n_tokens: int) -> np.ndarray:
        """The answer's rows of one tapped tensor, float64 [n_tokens, n_embd]."""
        parts = taps.get(name) or []
        rows = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 1))
        if rows.shape[0] != n_tokens:
            raise FintsEdgeError(
                f"llama.cpp gave {rows.shape[0]} rows of {name} for {n_tokens} answer tokens; "
                "this model's graph is not supported for on-device extraction"
            )
        return rows

    def _clear(self) -> None:
        """Forget every cached token, so the next decode or generation starts from nothing."""
        forget_tokens(self.llm)
        self._held = ()

    def _hold(self, prompt: Sequence[int]) -> None:
        """Leave ``prompt`` computed in the KV cache: kept from the item's negative within
        :meth:`reusing_prompts`, else decoded from position 0 in one pass, as the negative's
        generation decodes it (the same numbers)."""
        n = len(prompt)
        if self._reusing and self._held[:n] == tuple(prompt):
            forget_tokens(self.llm, keep=n)
            return
        self._clear()
        self._decode(prompt, 0, every_position=False)
        self._held = tuple(prompt)

    @contextmanager
    def _call(self) -> Iterator[None]:
        """Around a call: a failure leaves nothing cached; outside :meth:`reusing_prompts`,
        neither does success."""
        try:
            yield
        except BaseException:
            self._clear()
            raise
        if not self._reusing:
            self._clear()

    def _decode(self, tokens: Sequence[int], n_past: int, *, every_position: bool) -> None:
        llm = self.llm
        for start in range(0, len(tokens), llm.n_batch):
            chunk = list(tokens[start : start + llm.n_batch])
            try:
                decode_at(llm, chunk, n_past + start, logits_all=every_position)
            except RuntimeError as e:
                self.injector.raise_error()  # the likelier cause when there is one
                raise decode_error(e, llm, _ITEM_FIX) from e
            self.injector.raise_error()  # a failure inside the eval callback, after the decode

    # -- the model's own answer, as the default negative --------------------------------------------
    def own_answer(
        self, text: str, attempt: int = 0, max_tokens: int = DEFAULT_ANSWER_TOKENS, seed: int = 0
    ) -> str:
        """Greedy on the first attempt, sampled (T 0.9, top-p 0.95) on a retry; never steered."""
        if self.injector.active:
            raise FintsEdgeError("clear steering before generating a negative")
        prompt = self.prompt_tokens(text)
        sampling = RETRY_SAMPLING if attempt else {"temperature": 0.0, "top_p": 0.95}
        self._clear()
        with self._call():  # not create_completion: its budget fails on unfinished UTF-8
            answer = complete(
                self.llm,
                prompt,
                max_tokens,
                seed=seed + attempt,
                temperature=sampling["temperature"],
                top_p=sampling["top_p"],
                injector=self.injector,
                fix=_ITEM_FIX,
            )
            self._held = tuple(prompt)  # decoded from position 0 in one pass, answer after it
        return answer
