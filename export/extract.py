"""Offline signal extraction: per history item, chosen-minus-rejected activations at the
attention and MLP sites of chosen decoder layers, averaged over the ANSWER tokens only.

Works for the HF decoders in ``fints_edge.llama.arch``'s table (Llama, Mistral, Qwen2, Gemma 3:
``model.model.layers[i]``); the module each site is read from comes from that table, the twin of
the llama.cpp tensors ``fints_edge.learn.extract`` reads. Hooks sit at the exact sites and always
remove themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fints_edge.errors import FintsEdgeError
from fints_edge.layers import ATTN_READINGS, SITES, AttnReading, Site
from fints_edge.layers import check_layers as layers_in_range
from fints_edge.learn.extract import DEFAULT_OPENING_TOKENS
from fints_edge.llama.arch import graph_of_hf
from fints_edge.profile import PROMPT_FORMATS, PromptFormat

# Keys of a recording: (kind, hf_layer) with kind "attn" | "mlp" | "out" (the layer's output).
Key = tuple[str, int]


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
            f"{type(model).__name__}: not a decoder of fints_edge.llama.arch's table "
            "(no model.model.layers)"
        ) from None


def check_layers(model: Any, layers: Sequence[int]) -> list[int]:
    """The layers as sorted, distinct ints in range, or one clear error."""
    return layers_in_range(layers, len(decoder_layers(model)))


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def register_hooks(hooks: Sequence[tuple[Any, str, Any]]) -> HookHandles:
    """Register (module, "forward"|"pre"|"pre_kwargs", fn) hooks; if one fails, the earlier ones go first."""
    handles = HookHandles()
    try:
        for module, kind, fn in hooks:
            if kind == "forward":
                handles.add(module.register_forward_hook(fn))
            elif kind == "pre_kwargs":
                handles.add(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.add(module.register_forward_pre_hook(fn))
    except BaseException:
        handles.remove()
        raise
    return handles


@dataclass
class Recording:
    """Activations of the LAST forward (batch of one): ``store[(kind, hf_layer)]`` is [T, n_embd]."""

    store: dict[Key, torch.Tensor] = field(default_factory=dict)
    handles: HookHandles = field(default_factory=HookHandles)

    def remove(self) -> None:
        self.handles.remove()


def start_recording(
    model: Any, layers: Sequence[int], attn_reading: AttnReading = "output"
) -> Recording:
    """Hooks that fill a :class:`Recording`; call ``.remove()`` when done (or use the ``with``)."""
    if attn_reading not in ATTN_READINGS:
        raise FintsEdgeError(f"attn_reading {attn_reading!r}: use one of {ATTN_READINGS}")
    rec = Recording()
    mods = decoder_layers(model)
    graph = graph_of_hf(model.config.model_type, type(model).__name__)

    def keep(key: Key) -> Any:
        def put(tensor: torch.Tensor) -> None:
            rec.store[key] = tensor[0].detach().float()  # [1, T, n_embd] -> [T, n_embd]

        return put

    hooks: list[tuple[Any, str, Any]] = []
    for layer in check_layers(model, layers):
        block = mods[layer]
        put_attn, put_mlp, put_out = (
            keep(("attn", layer)),
            keep(("mlp", layer)),
            keep(("out", layer)),
        )
        if attn_reading == "output":  # the attention block's output (o_proj; gemma3: post-norm)
            attn = getattr(block, graph.hf_attn_output)
            hooks.append((attn, "forward", lambda m, i, o, f=put_attn: f(_first(o))))
        else:  # residual after attention = the input of the MLP's pre-norm
            norm = getattr(block, graph.hf_attn_residual)
            hooks.append((norm, "pre", lambda m, i, f=put_attn: f(i[0])))
        mlp = getattr(block, graph.hf_mlp_output)
        hooks.append((mlp, "forward", lambda m, i, o, f=put_mlp: f(_first(o))))
        hooks.append((block, "forward", lambda m, i, o, f=put_out: f(_first(o))))
    rec.handles = register_hooks(hooks)
    return rec


def _first(output: Any) -> torch.Tensor:
    """A module's output tensor: attention modules return a tuple, norms and MLPs a tensor."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_activations(
    model: Any, layers: Sequence[int], attn_reading: AttnReading = "output"
) -> Iterator[dict[Key, torch.Tensor]]:
    """Yield a dict refilled on each forward: ("attn"|"mlp"|"out", hf_layer) -> [T, n_embd].

    Example: ``with record_activations(model, [15]) as acts: model(ids); acts[("mlp", 15)]``
    """
    rec = start_recording(model, layers, attn_reading)  # registered before the try
    try:
        yield rec.store
    finally:
        rec.remove()


def resolve_prompt_format(tokenizer: Any, prompt_format: PromptFormat) -> PromptFormat:
    """``chat`` becomes ``plain`` for a tokenizer without a chat template (a base model), as on
    the device (``fints_edge.learn.extract.DeviceExtractor``); a profile should record the result."""
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        return "plain"
    return prompt_format


def prompt_ids(tokenizer: Any, text: str, prompt_format: PromptFormat) -> list[int]:
    """Token ids of the prompt exactly as the device lays it out before the answer."""
    prompt_format = resolve_prompt_format(tokenizer, prompt_format)
    if prompt_format == "chat":
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if prompt_format == "plain":  # BOS first when the model adds one (gemma), as llama.cpp does
        ids = list(tokenizer(text + "\n", add_special_tokens=False)["input_ids"])
        bos = tokenizer.bos_token_id
        adds_bos = bool(getattr(tokenizer, "add_bos_token", False)) and bos is not None
        return ([bos] if adds_bos else []) + ids
    raise FintsEdgeError(f"prompt_format {prompt_format!r}: use one of {PROMPT_FORMATS}")


def encode_pair(
    tokenizer: Any, text: str, answer: str, prompt_format: PromptFormat
) -> tuple[list[int], int]:
    """(ids, answer_start): the answer is tokenized on its own so ids[answer_start:] is exactly it.

    Separate tokenization is what generation does (answer tokens follow the prompt's), and it
    keeps a BPE merge across the boundary from smuggling prompt text into the answer mean.
    """
    prompt = prompt_ids(tokenizer, text, prompt_format)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not answer_ids:
        raise FintsEdgeError(
            f"empty answer after tokenization for input {text[:40]!r}; drop the item from the history"
        )
    return prompt + answer_ids, len(prompt)


@dataclass(frozen=True)
class Extracted:
    signals: np.ndarray  # float32 [N, S, L, n_embd]  mean(chosen answer) - mean(rejected answer)
    residual_norms: np.ndarray  # float32 [L]  mean |layer output| over chosen answer tokens
    opening: np.ndarray  # float32 [N, S, L, n_embd]  the same over the first answer positions


def extract_signals(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str, str]],
    layers: Sequence[int],
    *,
    attn_reading: AttnReading = "output",
    prompt_format: PromptFormat = "chat",
    sites: Sequence[Site] = SITES,
    opening_tokens: int = DEFAULT_OPENING_TOKENS,
    progress: bool = True,
) -> Extracted:
    """One forward per text; pairs are (input, chosen, rejected).

    Example: ``extract_signals(model, tok, [("Title this: ...", "mine", "generic")], [22])``
    """
    layers = check_layers(model, layers)
    sites = list(sites)
    if not sites or len(set(sites)) != len(sites) or not set(sites) <= set(SITES):
        raise FintsEdgeError(f"sites {sites}: need distinct names from {SITES}")
    if not pairs:
        raise FintsEdgeError("no contrast pairs to extract signals from")
    device = model_device(model)
    out = np.zeros((len(pairs), len(sites), len(layers), model.config.hidden_size), np.float32)
    opening = np.zeros_like(out)
    norms = np.zeros(len(layers), np.float64)  # [L] summed over items
    with record_activations(model, layers, attn_reading) as acts, torch.no_grad():
        for n, (text, chosen, rejected) in enumerate(
            tqdm(pairs, desc="signals", unit="pair", disable=not progress)
        ):
            means, firsts = [], []  # chosen, rejected: (site, layer) -> [n_embd]
            for which, answer in enumerate((chosen, rejected)):
                ids, start = encode_pair(tokenizer, text, answer, prompt_format)
                model(torch.tensor([ids], device=device))
                means.append({(s, j): acts[(s, j)][start:].mean(0) for s in sites for j in layers})
                end = start + opening_tokens
                firsts.append(
                    {(s, j): acts[(s, j)][start:end].mean(0) for s in sites for j in layers}
                )
                if which == 0:  # residual norms over the user's own answers
                    for j, layer in enumerate(layers):
                        norms[j] += float(acts[("out", layer)][start:].norm(dim=-1).mean())
            for i, site in enumerate(sites):
                for j, layer in enumerate(layers):
                    diff = means[0][(site, layer)] - means[1][(site, layer)]
                    out[n, i, j] = diff.cpu().numpy()
                    first = firsts[0][(site, layer)] - firsts[1][(site, layer)]
                    opening[n, i, j] = first.cpu().numpy()
    return Extracted(out, (norms / len(pairs)).astype(np.float32), opening)
