"""The torch reference for steered generation: exact Pulse-and-Re-Pulse with forward hooks.

At each steered decoder layer: v_attn is added to the attention block's output (every
position), so the MLP that follows runs on the steered residual (the "re-pulse"), and v_mlp is
added to the MLP's output. This is the oracle every llama.cpp injection path is tested against.
In llama.cpp terms: v_attn lands on ``ffn_inp-L``, v_mlp on ``l_out-L`` (hf_layer L). The module
of each site comes from ``fints_edge.arch`` (gemma3: the post-attention / post-FFN norms' outputs,
what its blocks add to the residual stream).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from export.extract import (
    HookHandles,
    check_layers,
    decoder_layers,
    model_device,
    prompt_ids,
    register_hooks,
)
from fints_edge.arch import graph_of_hf
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import SITES, Site
from fints_edge.profile import PromptFormat

Vectors = Mapping[int, Mapping[Site, np.ndarray | torch.Tensor]]  # hf_layer -> site -> [n_embd]


def vectors_from_array(
    arr: np.ndarray, sites: Sequence[Site], layers: Sequence[int]
) -> dict[int, dict[Site, np.ndarray]]:
    """Profile layout [S, L, n_embd] -> {hf_layer: {site: [n_embd]}}."""
    arr = np.asarray(arr, dtype=np.float32)  # [S, L, n_embd]
    if arr.ndim != 3 or arr.shape[:2] != (len(sites), len(layers)):
        raise FintsEdgeError(
            f"steering array of shape {arr.shape}: expected [sites={len(sites)}, "
            f"layers={len(layers)}, n_embd]"
        )
    return {
        int(layer): {site: arr[i, j] for i, site in enumerate(sites)}
        for j, layer in enumerate(layers)
    }


def add_steering(
    model: Any,
    vectors: Vectors | None,
    strength: float = 1.0,
    opening: Vectors | None = None,
    window: tuple[int, int] | None = None,
) -> HookHandles:
    """Register the steering hooks and return their handle; call ``.remove()`` when done.

    ``opening`` vectors are added only at token positions ``window = (start, count)``; the
    positions come from the decoder's cache position, as llama.cpp counts them."""
    if opening and window is None:
        raise FintsEdgeError("opening vectors need a window=(start, count) of positions")
    hooks: list[tuple[Any, str, Any]] = []
    hooks += _site_hooks(model, vectors or {}, strength, _add_to_first)
    if opening and window is not None:
        where: dict[str, torch.Tensor] = {}
        hooks.append((model.model, "pre_kwargs", _track_positions(where)))
        hooks += _site_hooks(model, opening, 1.0, lambda v: _add_in_window(v, where, window))
    return register_hooks(hooks)  # everything validated before the first hook goes on


def _site_hooks(model: Any, vectors: Vectors, strength: float, make: Any) -> list:
    if not vectors:
        return []
    mods = decoder_layers(model)
    graph = graph_of_hf(model.config.model_type, type(model).__name__)
    n_embd = model.config.hidden_size
    hooks: list[tuple[Any, str, Any]] = []
    for layer in check_layers(model, sorted(vectors)):
        for site, vec in vectors[layer].items():
            v = torch.as_tensor(vec, dtype=torch.float32).detach().cpu() * strength  # [n_embd]
            if v.shape != (n_embd,):
                raise FintsEdgeError(
                    f"{site} vector for layer {layer} has shape {tuple(v.shape)}; "
                    f"the model needs [{n_embd}]"
                )
            if site == "attn":  # attention block output (first item); the MLP then sees it
                hooks.append((getattr(mods[layer], graph.hf_attn_output), "forward", make(v)))
            elif site == "mlp":
                hooks.append((getattr(mods[layer], graph.hf_mlp_output), "forward", make(v)))
            else:
                raise FintsEdgeError(f"unknown site {site!r}: use one of {SITES}")
    return hooks


def _track_positions(where: dict[str, torch.Tensor]) -> Any:
    """A decoder pre-hook that records the absolute positions of the tokens being computed."""

    def pre(module: Any, args: Any, kwargs: Any) -> None:
        pos = kwargs.get("cache_position")
        if pos is None:
            ids = kwargs.get("input_ids")
            ids = ids if ids is not None else (args[0] if args else kwargs["inputs_embeds"])
            past = kwargs.get("past_key_values")
            start = past.get_seq_length() if past is not None else 0
            pos = torch.arange(start, start + ids.shape[1])
        where["positions"] = pos.detach().cpu()

    return pre


def _add_in_window(v: torch.Tensor, where: dict[str, torch.Tensor], window: tuple[int, int]) -> Any:
    start, count = window

    def hook(module: Any, args: Any, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        pos = where["positions"]
        hit = ((pos >= start) & (pos < start + count)).to(first.device, first.dtype)
        steered = first + hit[None, :, None] * v.to(first.device, first.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


@contextmanager
def steer(
    model: Any,
    vectors: Vectors | None,
    strength: float = 1.0,
    opening: Vectors | None = None,
    window: tuple[int, int] | None = None,
) -> Iterator[None]:
    """Add strength * v at the attention and MLP outputs of each layer inside the block.

    Example: ``with steer(model, {22: {"attn": va, "mlp": vm}}, 2.0): model.generate(...)``
    """
    handles = add_steering(model, vectors, strength, opening, window)  # before the try
    try:
        yield
    finally:
        handles.remove()


def _add_to_first(v: torch.Tensor) -> Any:
    """A forward hook adding v to the output (or to its first item when it is a tuple)."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        steered = first + v.to(first.device, first.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


def logits(
    model: Any,
    ids: Sequence[int],
    vectors: Vectors | None = None,
    strength: float = 1.0,
    opening: Vectors | None = None,
    window: tuple[int, int] | None = None,
) -> np.ndarray:
    """float32 [T, vocab] for one token sequence, steered or not."""
    with torch.no_grad(), steer(model, vectors, strength, opening, window):
        out = model(torch.tensor([list(ids)], device=model_device(model)))
    return out.logits[0].float().cpu().numpy()


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    prompt_format: PromptFormat = "chat",
    vectors: Vectors | None = None,
    strength: float = 1.0,
    opening: Vectors | None = None,
    opening_window: int = 0,
) -> str:
    """Greedy steered generation; only the new text, special tokens skipped, stripped like
    the on-device engine's replies."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt, prompt_format)], device=model_device(model))
    pad = tokenizer.pad_token_id
    window = (ids.shape[1] - 1, opening_window) if opening else None  # from the last prompt token
    with torch.no_grad(), steer(model, vectors, strength, opening, window):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad if pad is not None else tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
