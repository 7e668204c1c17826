"""A static sentence encoder (model2vec): one embedding row per token, no network at all.

``export.static_encoder`` distils the rows from the transformer once (torch, offline); here a
text is tokenized with the folder's own tokenizer, its rows are averaged and the mean is
L2-normalised, in numpy: a table look-up instead of a transformer forward pass (``make
bench`` times both). The steps
follow model2vec 0.9's ``StaticModel.encode`` exactly (no special tokens, unknown tokens
dropped, the text cut to ``max_chars`` characters and ``max_length`` tokens), so the folder
embeds as model2vec does. One deliberate difference: a text with no known token (empty, or
only unknown symbols) gets the normalised mean row instead of model2vec's zero vector, which
no profile key could be normalised from. Read through :class:`fints_edge.encode.Encoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fints_edge._vectors import unit_rows
from fints_edge.errors import FintsEdgeError

EMBEDDINGS_FILE = "embeddings.npy"
TOKENIZER_FILE = "tokenizer.json"
_EXPORT_HINT = "export it with `python -m export.static_encoder --out DIR`"


class StaticEmbeddings:
    """Token rows float16/float32 [V, d] + a tokenizer; ``encode(texts)`` -> float32 [n, d]."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.dim: int = manifest["dim"]
        self.max_length: int = manifest["max_length"]
        max_chars = manifest.get("max_chars")
        if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
            raise FintsEdgeError(
                f"{path / 'encoder.json'}: bad max_chars {max_chars!r}; {_EXPORT_HINT}"
            )
        self.max_chars: int | None = max_chars
        rows_file = path / EMBEDDINGS_FILE
        try:
            rows = np.load(rows_file, allow_pickle=False)
        except FileNotFoundError as e:
            raise FintsEdgeError(f"{rows_file}: missing; {_EXPORT_HINT}") from e
        except (OSError, ValueError, EOFError, MemoryError) as e:
            raise FintsEdgeError(f"{rows_file}: corrupt ({e}); {_EXPORT_HINT}") from e
        if (
            rows.dtype not in (np.float16, np.float32)
            or rows.ndim != 2
            or rows.shape[1] != self.dim
        ):
            raise FintsEdgeError(
                f"{rows_file}: {rows.dtype} {list(rows.shape)}, expected float16/float32 "
                f"[vocab, {self.dim}] as encoder.json says; {_EXPORT_HINT}"
            )
        tok_file = path / TOKENIZER_FILE
        if not tok_file.is_file():
            raise FintsEdgeError(f"{tok_file}: missing; {_EXPORT_HINT}")
        try:  # tokenizers raises bare Exception subclasses for unreadable files
            tok = Tokenizer.from_file(str(tok_file))
            tok.no_padding()
            tok.no_truncation()  # cut after dropping unknown tokens, as model2vec does
            n_vocab = tok.get_vocab_size(with_added_tokens=True)
            unk = getattr(tok.model, "unk_token", None)
        except Exception as e:
            raise FintsEdgeError(f"{tok_file}: corrupt ({e}); {_EXPORT_HINT}") from e
        if n_vocab != rows.shape[0]:
            raise FintsEdgeError(
                f"{rows_file}: {rows.shape[0]} rows but {tok_file} has {n_vocab} tokens; "
                f"{_EXPORT_HINT}"
            )
        mean = rows.astype(np.float32).mean(axis=0)  # [d]
        if not np.isfinite(mean).all():
            raise FintsEdgeError(f"{rows_file}: contains NaN or infinity; {_EXPORT_HINT}")
        self._rows = rows  # [V, d]
        self._tokenizer = tok
        self._unk: int | None = tok.token_to_id(unk) if unk else None
        self._empty = unit_rows(mean)  # [d] for texts of no token

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids that are averaged, per text (model2vec's ``StaticModel.tokenize``)."""
        if self.max_chars is not None:
            texts = [t[: self.max_chars] for t in texts]
        encs = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [[i for i in e.ids if i != self._unk][: self.max_length] for e in encs]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 [n, d]: the mean of each text's token rows, L2-normalised."""
        out = np.empty((len(texts), self.dim), np.float32)  # [n, d]
        for i, ids in enumerate(self.token_ids(texts)):
            mean = self._rows[ids].astype(np.float32).mean(axis=0) if ids else None  # [d]
            out[i] = self._empty if mean is None or not mean.any() else unit_rows(mean)
        return out
