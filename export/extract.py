"""Offline signal extraction: per history item, chosen-minus-rejected activations at the
attention and MLP sites of chosen decoder layers, averaged over the ANSWER tokens only.

Works for Llama/Qwen2-style HF decoders (``model.model.layers[i]`` with ``self_attn``, ``mlp``
and ``post_attention_layernorm``). Hooks sit at the exact sites and always remove themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fints_edge.errors import FintsEdgeError
from fints_edge.layers import SITES, AttnReading, Site
from fints_edge.profile import PromptFormat


class HookHandles:
    """Registered hooks; ``remove()`` is safe to call twice."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def add(self, handle: Any) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


def decoder_layers(model: Any) -> Any:
    try:
        return model.model.layers
    except AttributeError:
        raise FintsEdgeError(
            f"{type(model).__name__}: not a Llama/Qwen2-style decoder (no model.model.layers)"
        ) from None


def check_layers(model: Any, layers: Sequence[int]) -> list[int]:
    n = len(decoder_layers(model))
    out = [int(x) for x in layers]
    if not out or out != sorted(set(out)) or out[0] < 0 or out[-1] >= n:
        raise FintsEdgeError(
            f"layers {list(layers)}: need sorted, distinct decoder indices in 0..{n - 1}"
        )
    return out


def register_hooks(hooks: Sequence[tuple[Any, str, Any]]) -> HookHandles:
    """Register (module, kind, fn) hooks; if one fails, the earlier ones are removed first."""
    handles = HookHandles()
    try:
        for module, kind, fn in hooks:
            if kind == "forward":
                handles.add(module.register_forward_hook(fn))
            else:
                handles.add(module.register_forward_pre_hook(fn))
    except BaseException:
        handles.remove()
        raise
    return handles


@contextmanager
def record_activations(
    model: Any, layers: Sequence[int], attn_reading: AttnReading = "output"
) -> Iterator[dict[tuple[str, int], torch.Tensor]]:
    """Yield a dict filled on each forward: ("attn"|"mlp"|"out", hf_layer) -> [T, n_embd]."""
    store: dict[tuple[str, int], torch.Tensor] = {}
    hooks: list[tuple[Any, str, Any]] = []
    mods = decoder_layers(model)
    for layer in check_layers(model, layers):
        block = mods[layer]

        def keep(key: tuple[str, int], tensor: torch.Tensor) -> None:
            store[key] = tensor[0].detach().float()  # batch of one -> [T, n_embd]

        if attn_reading == "output":
            hooks.append(
                (block.self_attn, "forward", lambda m, i, o, k=("attn", layer): keep(k, o[0]))
            )
        else:  # residual after attention = the input of the post-attention norm
            hooks.append(
                (
                    block.post_attention_layernorm,
                    "pre",
                    lambda m, i, k=("attn", layer): keep(k, i[0]),
                )
            )
        hooks.append((block.mlp, "forward", lambda m, i, o, k=("mlp", layer): keep(k, o)))
        hooks.append(
            (
                block,
                "forward",
                lambda m, i, o, k=("out", layer): keep(k, o[0] if isinstance(o, tuple) else o),
            )
        )
    handles = register_hooks(hooks)
    try:
        yield store
    finally:
        handles.remove()


def prompt_ids(tokenizer: Any, text: str, prompt_format: PromptFormat) -> list[int]:
    """Token ids of the prompt exactly as the device lays it out before the answer."""
    if prompt_format == "chat":
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text + "\n", add_special_tokens=False)["input_ids"])


def encode_pair(
    tokenizer: Any, text: str, answer: str, prompt_format: PromptFormat
) -> tuple[list[int], int]:
    """(ids, answer_start): the answer is tokenized on its own so ids[answer_start:] is exactly it."""
    prompt = prompt_ids(tokenizer, text, prompt_format)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not answer_ids:
        raise FintsEdgeError(f"empty answer after tokenization for input {text[:40]!r}")
    return prompt + answer_ids, len(prompt)


@dataclass(frozen=True)
class Extracted:
    signals: np.ndarray  # float32 [N, S, L, n_embd]  mean(chosen answer) - mean(rejected answer)
    residual_norms: np.ndarray  # float32 [L]  mean |layer output| over chosen answer tokens


def extract_signals(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str, str]],
    layers: Sequence[int],
    *,
    attn_reading: AttnReading = "output",
    prompt_format: PromptFormat = "chat",
    sites: Sequence[Site] = SITES,
    progress: bool = True,
) -> Extracted:
    """One forward per text; pairs are (input, chosen, rejected)."""
    layers = check_layers(model, layers)
    if not pairs:
        raise FintsEdgeError("no contrast pairs to extract signals from")
    out = np.zeros((len(pairs), len(sites), len(layers), model.config.hidden_size), np.float32)
    norms = np.zeros(len(layers), np.float64)
    with record_activations(model, layers, attn_reading) as store, torch.no_grad():
        for n, (text, chosen, rejected) in enumerate(
            tqdm(pairs, desc="signals", unit="pair", disable=not progress)
        ):
            means = []
            for which, answer in enumerate((chosen, rejected)):
                ids, start = encode_pair(tokenizer, text, answer, prompt_format)
                model(torch.tensor([ids]))
                means.append({k: v[start:].mean(0) for k, v in store.items() if k[0] != "out"})
                if which == 0:  # residual norms over the user's own answers
                    for j, layer in enumerate(layers):
                        norms[j] += float(store[("out", layer)][start:].norm(dim=-1).mean())
            for i, site in enumerate(sites):
                for j, layer in enumerate(layers):
                    out[n, i, j] = (means[0][(site, layer)] - means[1][(site, layer)]).numpy()
    return Extracted(out, (norms / len(pairs)).astype(np.float32))
