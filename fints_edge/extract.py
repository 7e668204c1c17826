"""On-device signal extraction: the contrast of ``export/extract.py``, read from llama.cpp's graph.

For one history item, the prompt is decoded once, then the chosen and the rejected answer are each
decoded after it (the KV cache is rewound in between), with the eval callback copying the site
tensors of the steered layers at the answer positions. Signal = mean(chosen) - mean(rejected).

Graph tensors per site (Llama/Qwen2/Mistral layers; torch twin in brackets):
- attention, reading ``output``:   ``attn_out-L``  [self_attn output, o_proj]
- attention, reading ``residual``: ``ffn_inp-L``   [input of post_attention_layernorm]
- MLP:                             ``ffn_out-L``   [mlp output]
- layer output (residual norms):   ``l_out-L``     [decoder layer output]

When the last layer is steered, every answer position asks for logits: llama.cpp otherwise
computes the last layer for the final position only (a mean over one token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fints_edge.errors import FintsEdgeError
from fints_edge.inject import CallbackInjector
from fints_edge.layers import ATTN_READINGS, SITES, AttnReading, Site
from fints_edge.model import chat_prompt, n_layers
from fints_edge.profile import PROMPT_FORMATS, PromptFormat

_ATTN_TENSOR: dict[AttnReading, str] = {"output": "attn_out", "residual": "ffn_inp"}
DEFAULT_ANSWER_TOKENS = 48  # the zero-shot negative's length, as in ``export.build``


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
        self.layers = [int(x) for x in layers]
        if (
            not self.layers
            or self.layers != sorted(set(self.layers))
            or not 0 <= self.layers[0] <= self.layers[-1] < n_layer
        ):
            raise FintsEdgeError(
                f"layers {list(layers)}: need sorted, distinct decoder indices in 0..{n_layer - 1}"
            )
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
        self.prompt_format = prompt_format
        if opening_tokens < 1:
            raise FintsEdgeError(f"opening_tokens must be >= 1, got {opening_tokens}")
        self.opening_tokens = opening_tokens
        site_tensor = {"attn": _ATTN_TENSOR[attn_reading], "mlp": "ffn_out"}
        self._names = [[f"{site_tensor[s]}-{j}" for j in self.layers] for s in self.sites]
        # Only the last layer needs every position's logits requested (its rows are pruned).
        self._every_position = self.layers[-1] == n_layer - 1
        self._out_names = [f"l_out-{j}" for j in self.layers]

    # -- tokens, laid out exactly as export.extract.prompt_ids / encode_pair do -------------------
    def prompt_tokens(self, text: str) -> list[int]:
        if self.prompt_format == "chat":
            rendered = chat_prompt(self.llm, [{"role": "user", "content": text}])
            return list(self.llm.tokenize(rendered.encode(), add_bos=False, special=True))
        return list(self.llm.tokenize((text + "\n").encode(), add_bos=False, special=False))

    def answer_tokens(self, answer: str) -> list[int]:
        ids = list(self.llm.tokenize(answer.encode(), add_bos=False, special=False))
        if not ids:
            raise FintsEdgeError(f"empty answer for input {answer[:40]!r}; drop the item")
        return ids

    # -- the contrast ---------------------------------------------------------------------------
    def signal(self, text: str, chosen: str, rejected: str) -> ItemSignal:
        """One prompt decode plus one decode per answer; steering must be off."""
        if self.injector.active:
            raise FintsEdgeError("clear steering before extracting signals")
        prompt = self.prompt_tokens(text)
        answers = [self.answer_tokens(chosen), self.answer_tokens(rejected)]
        need = len(prompt) + max(len(a) for a in answers)
        if need > self.llm.n_ctx():
            raise FintsEdgeError(
                f"input + answer is {need} tokens but the context holds {self.llm.n_ctx()}; "
                "shorten the item or raise --n-ctx"
            )
        means: list[np.ndarray] = []  # per answer: [S, L, n_embd]
        firsts: list[np.ndarray] = []  # per answer, over the first answer positions only
        norms = np.zeros(len(self.layers))
        names = [n for row in self._names for n in row] + self._out_names
        self._clear()
        try:
            self._decode(prompt, 0, every_position=False)
            for which, answer in enumerate(answers):
                self.llm._ctx.kv_cache_seq_rm(-1, len(prompt), -1)  # rewind to the prompt
                with self.injector.tapping(names) as taps:
                    self._decode(answer, len(prompt), every_position=self._every_position)
                rows = {name: self._rows(taps, name, len(answer)) for name in names}
                means.append(np.stack([[rows[n].mean(0) for n in row] for row in self._names]))
                m = self.opening_tokens
                firsts.append(np.stack([[rows[n][:m].mean(0) for n in row] for row in self._names]))
                if which == 0:  # residual norms over the user's own answer
                    norms = np.array(
                        [np.linalg.norm(rows[n], axis=-1).mean() for n in self._out_names]
                    )
        finally:
            self._clear()
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
        self.llm.reset()
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)

    def _decode(self, tokens: Sequence[int], n_past: int, *, every_position: bool) -> None:
        llm = self.llm
        for start in range(0, len(tokens), llm.n_batch):
            chunk = list(tokens[start : start + llm.n_batch])
            llm._batch.set_batch(batch=chunk, n_past=n_past + start, logits_all=every_position)
            llm._ctx.decode(llm._batch)

    # -- the model's own answer, as the default negative --------------------------------------------
    def own_answer(
        self, text: str, attempt: int = 0, max_tokens: int = DEFAULT_ANSWER_TOKENS, seed: int = 0
    ) -> str:
        """Greedy on the first attempt, sampled (T 0.9, top-p 0.95) on a retry; never steered."""
        if self.injector.active:
            raise FintsEdgeError("clear steering before generating a negative")
        self._clear()
        sampling = {"temperature": 0.9, "top_p": 0.95} if attempt else {"temperature": 0.0}
        out = self.llm.create_completion(
            self.prompt_tokens(text), max_tokens=max_tokens, seed=seed + attempt, **sampling
        )
        self._clear()
        return str(out["choices"][0]["text"]).strip()
