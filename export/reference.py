"""The torch reference for steered generation: exact Pulse-and-Re-Pulse with forward hooks.

At each steered decoder layer: v_attn is added to the attention block's output (every
position), so the MLP that follows runs on the steered residual (the "re-pulse"), and v_mlp is
added to the MLP's output. This is the oracle every llama.cpp injection path is tested against.
In llama.cpp terms: v_attn lands on ``ffn_inp-L``, v_mlp on ``l_out-L`` (hf_layer L). The module
of each site comes from ``fints_edge.llama.arch`` (gemma3: the post-attention / post-FFN norms' outputs,
what its blocks add to the residual stream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
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
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import SITES, Site
from fints_edge.llama.arch import graph_of_hf
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


Weight = Callable[[torch.Tensor], torch.Tensor]  # positions [T] -> per-position weights [T]


def add_steering(
    model: Any,
    vectors: Vectors | None,
    strength: float = 1.0,
    opening: Vectors | None = None,
    window: tuple[int, int] | None = None,
    *,
    prompt_strength: float = 1.0,
    answer_start: int | None = None,
    preserve_norm: bool = False,
) -> HookHandles:
    """Register the steering hooks and return their handle; call ``.remove()`` when done.

    ``opening`` vectors are added only at token positions ``window = (start, count)``; the
    positions come from the decoder's cache position, as llama.cpp counts them. The main vectors
    are x ``prompt_strength`` before position ``answer_start`` (the last prompt token), in full
    from it on. ``preserve_norm`` rescales each steered hidden state to its norm before the add
    (the residual stream after attention, and the layer's output)."""
    if opening and window is None:
        raise FintsEdgeError("opening vectors need a window=(start, count) of positions")
    if prompt_strength != 1.0 and answer_start is None:
        raise FintsEdgeError("a prompt strength needs answer_start (the last prompt position)")
    where: dict[str, torch.Tensor] = {}
    pushes: dict[tuple[int, Site], list[tuple[torch.Tensor, Weight | None]]] = {}
    main: Weight | None = None
    if prompt_strength != 1.0:
        start, ps = int(answer_start or 0), float(prompt_strength)
        main = lambda pos: torch.where(pos >= start, 1.0, ps)  # noqa: E731
    _collect(model, vectors or {}, strength, main, pushes)
    if opening and window is not None:
        w_start, count = window
        _collect(
            model,
            opening,
            1.0,
            lambda pos: ((pos >= w_start) & (pos < w_start + count)).float(),
            pushes,
        )
    if not pushes:
        return register_hooks([])
    hooks: list[tuple[Any, str, Any]] = []
    if any(w is not None for ps_ in pushes.values() for _, w in ps_):
        hooks.append((model.model, "pre_kwargs", _track_positions(where)))
    mods = decoder_layers(model)
    graph = graph_of_hf(model.config.model_type, type(model).__name__)
    for (layer, site), items in sorted(pushes.items()):
        delta = _delta(items, where)
        if site == "attn":  # attention block output (first item); the MLP then sees it
            module = getattr(mods[layer], graph.hf_attn_output)
            if preserve_norm:
                entering: dict[str, torch.Tensor] = {}
                hooks.append((mods[layer], "pre_kwargs", _keep_input(entering)))
                hooks.append((module, "forward", _steer_residual(delta, entering)))
            else:
                hooks.append((module, "forward", _steer_output(delta, keep_norm=False)))
        elif preserve_norm:  # the layer's output = residual + MLP output (+ v)
            hooks.append((mods[layer], "forward", _steer_output(delta, keep_norm=True)))
        else:
            module = getattr(mods[layer], graph.hf_mlp_output)
            hooks.append((module, "forward", _steer_output(delta, keep_norm=False)))
    return register_hooks(hooks)  # everything validated before the first hook goes on


def _collect(
    model: Any,
    vectors: Vectors,
    strength: float,
    weight: Weight | None,
    pushes: dict[tuple[int, Site], list[tuple[torch.Tensor, Weight | None]]],
) -> None:
    if not vectors:
        return
    n_embd = model.config.hidden_size
    for layer in check_layers(model, sorted(vectors)):
        for site, vec in vectors[layer].items():
            if site not in SITES:
                raise FintsEdgeError(f"unknown site {site!r}: use one of {SITES}")
            v = torch.as_tensor(vec, dtype=torch.float32).detach().cpu() * strength  # [n_embd]
            if v.shape != (n_embd,):
                raise FintsEdgeError(
                    f"{site} vector for layer {layer} has shape {tuple(v.shape)}; "
                    f"the model needs [{n_embd}]"
                )
            pushes.setdefault((int(layer), site), []).append((v, weight))


def _delta(
    items: list[tuple[torch.Tensor, Weight | None]], where: dict[str, torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [1, T, E] -> what to add to it: sum of weight(position) * v."""

    def delta(first: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(first)
        for v, weight in items:
            vv = v.to(first.device, first.dtype)
            if weight is None:
                out = out + vv
            else:
                w = weight(where["positions"]).to(first.device, first.dtype)  # [T]
                out = out + w[None, :, None] * vv
        return out

    return delta


def _keep_input(entering: dict[str, torch.Tensor]) -> Any:
    """Decoder-layer pre-hook: the residual stream entering the layer."""

    def pre(module: Any, args: Any, kwargs: Any) -> None:
        entering["h"] = args[0] if args else kwargs["hidden_states"]

    return pre


def _rescaled(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` with each position's norm set back to ``old``'s."""
    before = old.norm(dim=-1, keepdim=True)
    after = new.norm(dim=-1, keepdim=True)
    return new * torch.where(after > 0, before / after.clamp_min(1e-30), torch.ones_like(after))


def _steer_output(delta: Callable[[torch.Tensor], torch.Tensor], keep_norm: bool) -> Any:
    """A forward hook adding delta to the output (or to its first item when it is a tuple)."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        steered = first + delta(first)
        if keep_norm:
            steered = _rescaled(steered, first)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


def _steer_residual(delta: Callable[[torch.Tensor], torch.Tensor], entering: dict) -> Any:
    """Norm-preserving steering of the residual after attention, h + a, from the attention
    block's output a: returns a' with h + a' = (h + a + delta) rescaled to |h + a|."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        h = entering["h"]
        residual = h + first
        steered = _rescaled(residual + delta(first), residual) - h
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


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


@contextmanager
def steer(
    model: Any,
    vectors: Vectors | None,
    strength: float = 1.0,
    opening: Vectors | None = None,
    window: tuple[int, int] | None = None,
    **how: Any,
) -> Iterator[None]:
    """Add strength * v at the attention and MLP outputs of each layer inside the block;
    ``how``: add_steering's prompt_strength, answer_start, preserve_norm.

    Example: ``with steer(model, {22: {"attn": va, "mlp": vm}}, 2.0): model.generate(...)``
    """
    handles = add_steering(model, vectors, strength, opening, window, **how)  # before the try
    try:
        yield
    finally:
        handles.remove()


def logits(
    model: Any,
    ids: Sequence[int],
    vectors: Vectors | None = None,
    strength: float = 1.0,
    opening: Vectors | None = None,
    window: tuple[int, int] | None = None,
    **how: Any,
) -> np.ndarray:
    """float32 [T, vocab] for one token sequence, steered or not (``how``: see steer)."""
    with torch.no_grad(), steer(model, vectors, strength, opening, window, **how):
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
    prompt_strength: float = 1.0,
    preserve_norm: bool = False,
) -> str:
    """Greedy steered generation; only the new text, special tokens skipped, stripped like
    the on-device engine's replies. ``prompt_strength``: share of the steering on the prompt
    positions before the last one (as the engine's ``EngineConfig.prompt_strength``)."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt, prompt_format)], device=model_device(model))
    pad = tokenizer.pad_token_id
    window = (ids.shape[1] - 1, opening_window) if opening else None  # from the last prompt token
    how = {"prompt_strength": prompt_strength, "answer_start": ids.shape[1] - 1,
           "preserve_norm": preserve_norm}  # fmt: skip
    with torch.no_grad(), steer(model, vectors, strength, opening, window, **how):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad if pad is not None else tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
