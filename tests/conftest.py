"""Shared fixtures: a tiny random Llama (HF folder + f32 GGUF, SmolLM2 tokenizer) built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """export.tiny.TinyModel: hf_dir, gguf_path (f32), n_layer, n_embd; ~seconds to build."""
    from export.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"))
