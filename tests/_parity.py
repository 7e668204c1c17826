"""Helpers of the llama.cpp-vs-torch parity tests (tests/test_inject.py, tests/export/test_arch_parity.py)."""

from __future__ import annotations

import numpy as np

N_GEN = 20  # greedy tokens generated after the prompt in every parity run


def random_vectors(tiny, sites, layers, scale=2.0, seed=0) -> np.ndarray:
    """float32 [S, L, n_embd] steering vectors for a tiny model."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(len(sites), len(layers), tiny.n_embd)) * scale).astype(np.float32)


def llama_run(llm, prompt: list[int]) -> tuple[list[int], np.ndarray]:
    """Prompt in one batch, then N_GEN greedy tokens one at a time; logits at every position."""
    llm.reset()
    llm.eval(prompt)
    tokens = list(prompt)
    for _ in range(N_GEN):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(nxt)
        llm.eval([nxt])
    return tokens, np.array(llm.scores[: llm.n_tokens], dtype=np.float32)


def torch_logits(hf, tokens, vectors, sites, layers, strength=1.0) -> np.ndarray:
    """The torch reference's logits for ``tokens`` with the same vectors (None: unsteered)."""
    from export.reference import logits, vectors_from_array

    mapping = None if vectors is None else vectors_from_array(vectors, sites, layers)
    return logits(hf, tokens, mapping, strength)
