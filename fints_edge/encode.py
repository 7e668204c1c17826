"""The sentence encoder on device: ONNX all-MiniLM-L6-v2 via onnxruntime + ``tokenizers``.

Embeddings are mean-pooled over real tokens (attention mask) and L2-normalised, exactly as
sentence-transformers does, so keys built offline and queries embedded here live in one space.
A profile stores the embedding of :data:`PROBE_SENTENCE`; :meth:`Encoder.check_compatible`
re-embeds it to refuse an encoder that would put queries in a different space than the keys.
A manifest with ``"kind": "static"`` is a model2vec folder instead (``fints_edge.encode_static``:
token rows averaged in numpy, no ONNX); a missing "kind" is "onnx".
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fints_edge._vectors import unit_rows
from fints_edge.encode_static import StaticEmbeddings
from fints_edge.errors import FintsEdgeError

PROBE_SENTENCE = "A short probe sentence to check that two sentence encoders agree."
MANIFEST = "encoder.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
PROBE_MIN_COSINE = 0.99
KINDS = ("onnx", "static")  # encoder.json "kind"; a missing one is "onnx"

_EXPORT_HINT = "export it with `python -m export.onnx --force`"


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        m = json.loads(path.read_text())
        name, dim, max_length = str(m["name"]), int(m["dim"]), int(m["max_length"])
    except FileNotFoundError as e:
        raise FintsEdgeError(f"{path}: encoder not found; {_EXPORT_HINT}") from e
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as e:
        raise FintsEdgeError(f"{path}: corrupt encoder manifest ({e}); {_EXPORT_HINT}") from e
    if m.get("pooling") != "mean" or m.get("normalize") is not True or dim < 1 or max_length < 2:
        raise FintsEdgeError(f"{path}: unsupported encoder settings {str(m)[:200]}; {_EXPORT_HINT}")
    kind = m.get("kind", "onnx")
    if kind not in KINDS:
        raise FintsEdgeError(f"{path}: unknown encoder kind {kind!r} (known: {', '.join(KINDS)})")
    return {**m, "name": name, "dim": dim, "max_length": max_length, "kind": kind}


class Encoder:
    """``Encoder(dir).encode(["some text"])`` -> float32 [1, d] unit vectors.

    ``threads`` sets onnxruntime's threads; a static encoder needs none (one numpy mean)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(path)
        manifest = _read_manifest(self.path / MANIFEST)
        self.name: str = manifest["name"]
        self.dim: int = manifest["dim"]
        self.max_length: int = manifest["max_length"]
        self.kind: str = manifest["kind"]
        self._static: StaticEmbeddings | None = None
        if self.kind == "static":
            self._static = StaticEmbeddings(self.path, manifest)
            self._probe = self._static.encode([PROBE_SENTENCE])[0]  # float32 [d]
            return
        for f in (MODEL_FILE, TOKENIZER_FILE):
            if not (self.path / f).is_file():
                raise FintsEdgeError(f"{self.path / f}: missing; {_EXPORT_HINT}")
        # tokenizers and onnxruntime raise bare Exception subclasses for unreadable files.
        try:
            tok = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
            tok.encode(PROBE_SENTENCE)  # a damaged vocabulary can load and fail only here
        except Exception as e:
            raise FintsEdgeError(
                f"{self.path / TOKENIZER_FILE}: corrupt ({e}); {_EXPORT_HINT}"
            ) from e
        tok.enable_truncation(max_length=self.max_length)
        pad_id = tok.token_to_id("[PAD]")
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")  # to longest
        self._tokenizer = tok
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        model = self.path / MODEL_FILE
        try:
            self._session = ort.InferenceSession(
                str(model), opts, providers=["CPUExecutionProvider"]
            )
            # names of a damaged file can be invalid UTF-8: read them inside this try
            self._input_names = {i.name for i in self._session.get_inputs()}
            outputs = self._session.get_outputs()
            out_dim = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        except Exception as e:
            raise FintsEdgeError(f"{model}: corrupt ({e}); {_EXPORT_HINT}") from e
        if not {"input_ids", "attention_mask"} <= self._input_names:
            raise FintsEdgeError(
                f"{model}: not a sentence encoder (inputs {sorted(self._input_names)}); "
                f"{_EXPORT_HINT}"
            )
        if out_dim != self.dim:
            raise FintsEdgeError(
                f"{model}: outputs {out_dim} dims but {MANIFEST} says {self.dim}; {_EXPORT_HINT}"
            )
        # One real run: a damaged graph or weights can load and fail (or give NaN) only here.
        # The result is the probe embedding every profile check needs anyway.
        try:
            self._probe = self._encode_batch([PROBE_SENTENCE])[0]  # float32 [d]
        except Exception as e:
            raise FintsEdgeError(f"{model}: the encoder fails to run ({e}); {_EXPORT_HINT}") from e
        if not np.isfinite(self._probe).all():
            raise FintsEdgeError(f"{model}: the encoder outputs NaN or infinity; {_EXPORT_HINT}")

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings float32 [n, d]; batches are sorted by length to pad less."""
        if isinstance(texts, str):
            raise FintsEdgeError("encode() takes a list of texts, not one string")
        out = np.zeros((len(texts), self.dim), np.float32)  # [n, d]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), max(1, batch_size)):
            chunk = order[start : start + batch_size]
            out[chunk] = self._encode_batch([texts[i] for i in chunk])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        if self._static is not None:
            return self._static.encode(texts)
        encs = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)  # [b, t]
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)  # [b, t]
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encs], dtype=np.int64)
        hidden = self._session.run(None, feeds)[0]  # [b, t, d]
        m = mask[:, :, None].astype(np.float32)  # [b, t, 1]
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)  # [b, d]
        return unit_rows(pooled)

    def probe(self) -> np.ndarray:
        """This encoder's embedding of PROBE_SENTENCE, float32 [d] (computed once, at load)."""
        return self._probe.copy()

    def check_compatible(
        self, profile_encoder_name: str, profile_probe: np.ndarray, profile_path: str
    ) -> None:
        """Refuse to query a profile whose keys came from a different encoder."""
        fix = (
            "rebuild the profile with `python -m export.build`, or use the encoder folder it "
            "was built with"
        )
        if profile_encoder_name != self.name:
            raise FintsEdgeError(
                f"{profile_path}: built with encoder '{profile_encoder_name}' but "
                f"{self.path} is '{self.name}'; {fix}"
            )
        probe = np.asarray(profile_probe, dtype=np.float32).reshape(-1)  # [d]
        if probe.shape[0] != self.dim:
            raise FintsEdgeError(
                f"{profile_path}: encoder probe has {probe.shape[0]} dims, {self.path} "
                f"makes {self.dim}; {fix}"
            )
        mine = self.probe()
        cos = float(mine @ unit_rows(probe))
        if not cos >= PROBE_MIN_COSINE:
            raise FintsEdgeError(
                f"{profile_path}: encoder probe disagrees with {self.path} (cosine {cos:.4f} < "
                f"{PROBE_MIN_COSINE}); {fix}"
            )
