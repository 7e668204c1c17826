"""Small synthetic objects for tests that need no model."""

from __future__ import annotations

import numpy as np

from fints_edge.profile import ModelIdentity, Profile, normalised_keys, tokenizer_fingerprint


def identity(n_layer: int = 4, n_embd: int = 8) -> ModelIdentity:
    return ModelIdentity("llama", n_layer, n_embd, 3, tokenizer_fingerprint(["a", "b", "c"]))


def profile(n: int = 5, n_layer: int = 4, n_embd: int = 8, d: int = 6, seed: int = 0) -> Profile:
    rng = np.random.default_rng(seed)
    keys = normalised_keys(rng.normal(size=(n, d)))
    probe = rng.normal(size=d).astype(np.float32)
    return Profile(
        model=identity(n_layer, n_embd),
        layers=np.array([1, 3], dtype=np.int32),
        sites=("attn", "mlp"),
        attn_reading="output",
        signals=rng.normal(size=(n, 2, 2, n_embd)).astype(np.float16),
        keys=keys,
        inputs=np.array([f"input {i} é" for i in range(n)]),
        outputs=np.array([f"output {i}" for i in range(n)]),
        timestamps=np.arange(n, dtype=np.float64),
        residual_norms=np.array([3.0, 5.0], dtype=np.float32),
        encoder_name="test-encoder",
        encoder_probe=probe / np.linalg.norm(probe),
        prompt_format="chat",
        created="2026-11-28T00:00:00+00:00",
    )
