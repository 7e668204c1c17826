"""ONNX files the device runs: the sentence encoder (optimum) and the aggregation graph (torch).

Both are written atomically (``fints_edge._atomic``: a temp file or folder next to the target,
fsynced, then renamed or swapped in), so a crash never leaves a half-written encoder or
aggregator behind, and both are skipped when a valid copy is already there. ``python -m export.onnx`` writes both to the default cache locations.

torch 2.13 exports the aggregator with the legacy TorchScript exporter (``dynamo=False``): the
dynamo exporter needs ``onnxscript``, which is not installed here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fints_edge._atomic import atomic_dir, atomic_path, write_failed
from fints_edge._cli import cli_main
from fints_edge._paths import (
    ENCODER_NAME,
    default_aggregator_path,
    default_encoder_dir,
    encoder_source_dir,
)
from fints_edge.aggregate import (
    AGGREGATOR_INPUTS,
    AGGREGATOR_OUTPUTS,
    AGGREGATOR_VERSION,
    VERSION_KEY,
    OnnxAggregator,
)
from fints_edge.encode import MANIFEST, MODEL_FILE, TOKENIZER_FILE
from fints_edge.errors import FintsEdgeError

ENCODER_FORMAT = "fints-edge-encoder"
ENCODER_FORMAT_VERSION = 1
AGGREGATOR_OPSET = 17


# -- encoder ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FintsEdgeError(f"{path}: unreadable ({e}); reinstall the encoder package") from e


def _encoder_settings(src: Path) -> dict[str, Any]:
    """dim, max_length and pooling from the sentence-transformers folder; only mean + L2 norm."""
    pooling = _read_json(src / "1_Pooling" / "config.json")
    modules = _read_json(src / "modules.json")
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    if not pooling.get("pooling_mode_mean_tokens") or not normalize:
        raise FintsEdgeError(f"{src}: only mean-pooled, normalised encoders are supported")
    st_config = _read_json(src / "sentence_bert_config.json")
    return {
        "name": ENCODER_NAME,
        "dim": int(_read_json(src / "config.json")["hidden_size"]),
        "max_length": int(st_config.get("max_seq_length", 256)),
        "pooling": "mean",
        "normalize": True,
    }


def _encoder_is_valid(out_dir: Path) -> bool:
    try:
        m = json.loads((out_dir / MANIFEST).read_text())
        return (
            m.get("format") == ENCODER_FORMAT
            and m.get("version") == ENCODER_FORMAT_VERSION
            and (out_dir / TOKENIZER_FILE).is_file()
            and (out_dir / MODEL_FILE).stat().st_size == m.get("model_bytes")
        )
    except (OSError, ValueError):
        return False


def _is_static(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("kind") == "static"
    except (OSError, ValueError, AttributeError):
        return False


def export_encoder(out_dir: Path | None = None, *, force: bool = False) -> Path:
    """all-MiniLM-L6-v2 -> ``out_dir/{model.onnx, tokenizer.json, encoder.json}``; returns out_dir.

    Example: ``Encoder(export_encoder()).encode(["hello"])``
    """
    out_dir = Path(out_dir) if out_dir is not None else default_encoder_dir()
    if not force and _encoder_is_valid(out_dir):
        return out_dir
    if not force and _is_static(out_dir):
        return out_dir  # a static encoder (export.static_encoder): never overwrite it
    src = encoder_source_dir()
    settings = _encoder_settings(src)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here; the source is a local folder
    from optimum.exporters.onnx import main_export

    with _written(out_dir, "encoder"), atomic_dir(out_dir) as tmp:
        main_export(
            str(src),
            output=tmp,
            task="feature-extraction",
            library_name="transformers",  # sentence-transformers is not installed; pool ourselves
            device="cpu",
        )
        for extra in tmp.iterdir():  # keep only what the device reads
            if extra.name not in (MODEL_FILE, TOKENIZER_FILE):
                extra.unlink()
        manifest = {
            "format": ENCODER_FORMAT,
            "version": ENCODER_FORMAT_VERSION,
            **settings,
            "model_bytes": (tmp / MODEL_FILE).stat().st_size,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out_dir


@contextmanager
def _written(path: Path, what: str) -> Iterator[None]:
    """A failed write on the disk (full, read-only) becomes one FintsEdgeError naming ``path``."""
    try:
        yield
    except OSError as e:
        raise FintsEdgeError(write_failed(path, e, what)) from e


# -- aggregator ---------------------------------------------------------------------------------
class AggregatorModule(torch.nn.Module):
    """fints_edge.aggregate's math in torch (see that module's docstring); stateless."""

    def forward(
        self,
        similarities: torch.Tensor,  # [K]
        signals: torch.Tensor,  # [K, S, L, E]
        temperature: torch.Tensor,  # []
        strength: torch.Tensor,  # []
        sim_floor: torch.Tensor,  # []
        sim_full: torch.Tensor,  # []
        item_weights: torch.Tensor,  # [K]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        one = torch.ones_like(temperature)
        softmax_on = temperature > 0
        # softmax of all zeros is the uniform mean, so one graph serves both settings.
        logits = torch.where(
            softmax_on, similarities / torch.where(softmax_on, temperature, one), 0.0
        )  # [K]
        w = torch.softmax(logits, dim=0) * item_weights
        w = w / w.sum()  # [K]
        span = sim_full - sim_floor
        gate_on = span > 0
        ramp = (similarities.max() - sim_floor) / torch.where(gate_on, span, one)
        gate = torch.where(gate_on, torch.clamp(ramp, 0.0, 1.0), one)  # []
        mixed = (w[:, None, None, None] * signals).sum(dim=0)  # [S, L, E]
        return strength * gate * mixed, w, gate


def _example_inputs() -> tuple[torch.Tensor, ...]:
    k, s, layers, e = 3, 2, 2, 8  # any sizes: every axis is dynamic
    scalar = torch.tensor(0.0)
    return (
        torch.rand(k),
        torch.rand(k, s, layers, e),
        scalar,
        scalar + 1,
        scalar,
        scalar,
        torch.ones(k),
    )


def _aggregator_is_valid(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        OnnxAggregator(path)
    except FintsEdgeError:
        return False
    return True


def export_aggregator(out_path: Path | None = None, *, force: bool = False) -> Path:
    """The aggregation graph -> ``out_path`` (dynamic K, S, L, E; opset 17); returns out_path.

    Example: ``OnnxAggregator(export_aggregator())(sims, signals, AggregateParams())``
    """
    import onnx

    out_path = Path(out_path) if out_path is not None else default_aggregator_path()
    if not force and _aggregator_is_valid(out_path):
        return out_path
    with _written(out_path, "aggregator"), atomic_path(out_path) as tmp:
        with warnings.catch_warnings():
            # The legacy exporter warns that it is legacy; it is the one that needs no onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                AggregatorModule(),
                _example_inputs(),
                str(tmp),
                input_names=list(AGGREGATOR_INPUTS),
                output_names=list(AGGREGATOR_OUTPUTS),
                dynamic_axes={
                    "similarities": {0: "K"},
                    "signals": {0: "K", 1: "S", 2: "L", 3: "E"},
                    "item_weights": {0: "K"},
                    "vectors": {0: "S", 1: "L", 2: "E"},
                    "weights": {0: "K"},
                },
                opset_version=AGGREGATOR_OPSET,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {VERSION_KEY: AGGREGATOR_VERSION})
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return out_path


# -- CLI ----------------------------------------------------------------------------------------
@cli_main("interrupted; files already in place were kept whole")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.onnx",
        description="Export the ONNX sentence encoder and the aggregator the device runs.",
    )
    p.add_argument(
        "--encoder-dir", type=Path, help=f"encoder folder (default: {default_encoder_dir()})"
    )
    p.add_argument(
        "--aggregator", type=Path, help=f"aggregator file (default: {default_aggregator_path()})"
    )
    p.add_argument("--force", action="store_true", help="re-export even if valid files exist")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    enc = export_encoder(args.encoder_dir, force=args.force)
    t1 = time.perf_counter()
    agg = export_aggregator(args.aggregator, force=args.force)
    t2 = time.perf_counter()
    print(f"encoder    {enc} ({t1 - t0:.1f} s)")
    print(f"aggregator {agg} ({t2 - t1:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
