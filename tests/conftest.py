"""Shared fixtures: a tiny random Llama (HF folder + f32 GGUF, SmolLM2 tokenizer) built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """export.tiny.TinyModel: hf_dir, gguf_path (f32), n_layer, n_embd; ~seconds to build."""
    from export.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def onnx_encoder_dir(tmp_path_factory):
    """The ONNX sentence encoder exported once per session (~5 s): model.onnx + tokenizer.json."""
    import torch

    from export.onnx import export_encoder

    torch.set_num_threads(2)
    return export_encoder(tmp_path_factory.mktemp("onnx") / "encoder")


@pytest.fixture(scope="session")
def onnx_aggregator_path(tmp_path_factory):
    """The ONNX aggregation graph exported once per session (< 1 s)."""
    from export.onnx import export_aggregator

    return export_aggregator(tmp_path_factory.mktemp("onnx") / "aggregator.onnx")
