"""The torch reference for steered generation: exact Pulse-and-Re-Pulse with forward hooks.

At each steered decoder layer: v_attn is added to the attention block's output (every
position), so the MLP that follows runs on the steered residual (the "re-pulse"), and v_mlp is
added to the MLP's output. This is the oracle every llama.cpp injection path is tested against.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from export.extract import check_layers, decoder_layers, prompt_ids, register_hooks
from fints_edge.layers import Site
from fints_edge.profile import PromptFormat

Vectors = Mapping[int, Mapping[Site, np.ndarray | torch.Tensor]]  # hf_layer -> site -> [n_embd]


def vectors_from_array(
    arr: np.ndarray, sites: Sequence[Site], layers: Sequence[int]
) -> dict[int, dict[Site, np.ndarray]]:
    """Profile layout [S, L, n_embd] -> {hf_layer: {site: vector}}."""
    arr = np.asarray(arr, dtype=np.float32)
    return {
        int(layer): {site: arr[i, j] for i, site in enumerate(sites)}
        for j, layer in enumerate(layers)
    }


@contextmanager
def steer(model: Any, vectors: Vectors | None, strength: float = 1.0) -> Iterator[None]:
    """Hooks that add strength * v at the attention and MLP outputs; removed in ``finally``."""
    if not vectors:
        yield
        return
    mods = decoder_layers(model)
    check_layers(model, sorted(vectors))
    hooks: list[tuple[Any, str, Any]] = []
    for layer, by_site in vectors.items():
        for site, vec in by_site.items():
            v = torch.as_tensor(np.asarray(vec, dtype=np.float32)) * strength
            if site == "attn":
                hooks.append((mods[layer].self_attn, "forward", _add_to_first(v)))
            elif site == "mlp":
                hooks.append((mods[layer].mlp, "forward", _add(v)))
            else:
                raise ValueError(f"unknown site {site!r}")
    handles = register_hooks(hooks)
    try:
        yield
    finally:
        handles.remove()


def _add(v: torch.Tensor) -> Any:
    return lambda module, args, output: output + v.to(output.dtype)


def _add_to_first(v: torch.Tensor) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + v.to(output[0].dtype), *output[1:])
        return output + v.to(output.dtype)

    return hook


def logits(
    model: Any, ids: Sequence[int], vectors: Vectors | None = None, strength: float = 1.0
) -> np.ndarray:
    """float32 [T, vocab] for one token sequence, steered or not."""
    with torch.no_grad(), steer(model, vectors, strength):
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    prompt_format: PromptFormat = "chat",
    vectors: Vectors | None = None,
    strength: float = 1.0,
) -> str:
    """Greedy steered generation; returns only the new text."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt, prompt_format)])
    with torch.no_grad(), steer(model, vectors, strength):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
