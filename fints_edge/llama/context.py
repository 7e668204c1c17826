"""The llama context below llama-cpp-python's public surface: its KV cache, its batch, its sampler.

llama-cpp-python's ``Llama`` keeps these as private attributes (``_ctx``, ``_batch``,
``_sampler``); every use of them is here, so an upgrade that renames one is a change to this file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fints_edge.errors import FintsEdgeError


def forget_tokens(llm: Any, keep: int = 0) -> None:
    """Drop the cached tokens (KV included) from position ``keep`` on, and cut the Llama's own
    token count to match (``Llama.eval`` and ``Llama.generate`` continue from it: a generation
    whose prompt starts with the kept tokens reuses their KV); ``keep=0`` starts from nothing."""
    if keep == 0:
        llm.reset()
        llm._ctx.kv_cache_clear()
    else:
        llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        llm.n_tokens = min(llm.n_tokens, keep)


def decode_at(llm: Any, tokens: Sequence[int], n_past: int, *, logits_all: bool) -> None:
    """Decode ``tokens`` (at most ``llm.n_batch``) at positions n_past.. into the KV cache;
    llama.cpp's failure arrives as the RuntimeError llama-cpp-python raises."""
    llm._batch.set_batch(batch=list(tokens), n_past=n_past, logits_all=logits_all)
    llm._ctx.decode(llm._batch)


def free_sampler(llm: Any) -> None:
    """``Llama.generate`` leaves its sampler chain on the Llama, held in a reference cycle that
    only the cyclic garbage collector breaks; until it runs, their native memory piles up
    (``tests/test_soak.py`` measures RSS over many short requests)."""
    sampler, llm._sampler = getattr(llm, "_sampler", None), None
    if sampler is not None:
        sampler.close()


_DECODE_CODE = re.compile(r"llama_decode returned (-?\d+)")
CONTEXT_FIX = "lower --max-tokens or --rag, shorten the input, or raise --n-ctx"


def decode_error(error: RuntimeError, llm: Any, fix: str = CONTEXT_FIX) -> FintsEdgeError:
    """llama-cpp-python's RuntimeError from a decode as an error a user can act on.

    llama_decode's codes: 1 = no room left in the KV cache (the context is full), 2 = aborted,
    -1 = an invalid batch, other negatives = a failed computation.
    """
    match = _DECODE_CODE.search(str(error))
    code = int(match.group(1)) if match else None
    if code == 1:
        return FintsEdgeError(f"llama.cpp's context ({llm.n_ctx()} tokens) is full: {fix}")
    if code == 2:
        return FintsEdgeError(
            "llama.cpp aborted the computation; the request was dropped, retry it"
        )
    where = f"code {code}" if code is not None else str(error)
    return FintsEdgeError(
        f"llama.cpp failed to decode ({where}); the request was dropped. If it happens again, "
        "check this machine's build with `python -m fints_edge.llama.doctor`"
    )


def prefill(llm: Any, tokens: Sequence[int], fix: str = CONTEXT_FIX) -> None:
    """Compute ``tokens`` into the KV cache from position 0 (llama.cpp failures as a
    FintsEdgeError); a :class:`Generation` whose prompt starts with them reuses that KV."""
    llm.reset()
    try:
        llm.eval(list(tokens))
    except RuntimeError as e:
        raise decode_error(e, llm, fix) from e
