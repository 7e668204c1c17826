"""The profile file (``me.npz``): one user's steering signals, bound to one model.

Plain arrays only (loaded with ``allow_pickle=False``), a versioned format name, and the model's
identity so that a profile built for another model is refused instead of steering garbage.
Writes are atomic: a temp file in the same folder, fsync, then rename over the old file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fints_edge.errors import ProfileError
from fints_edge.layers import ATTN_READINGS, SITES, AttnReading, Site

FORMAT_NAME = "fints-edge-profile"
FORMAT_VERSION = 2  # 2 adds the optional opening signals; version 1 files still load
READABLE_VERSIONS = (1, 2)

PromptFormat = Literal["chat", "plain"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("chat", "plain")

_REBUILD = "rebuild it with `python -m export.build`"
_UNSAVED = "profile (not saved yet)"


def tokenizer_fingerprint(tokens: Iterable[str]) -> str:
    """sha256 of the vocabulary in id order; HF and llama.cpp agree on these strings."""
    h = hashlib.sha256()
    for tok in tokens:
        h.update(tok.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What a profile must match: architecture, sizes and the exact vocabulary."""

    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    tokenizer_sha256: str

    def mismatch(self, other: ModelIdentity) -> str | None:
        """A human sentence naming the first difference, or None when they match."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                if f.name == "tokenizer_sha256":
                    return "the tokenizer vocabularies differ"
                return f"{f.name} is {mine} in the profile but {theirs} in the model"
        return None


@dataclass(frozen=True, eq=False)
class Profile:
    """One user's personalization for one model. Arrays carry their shapes in comments."""

    model: ModelIdentity
    layers: np.ndarray  # int32 [L]   HF 0-based decoder indices (hf_layer), ascending
    sites: tuple[Site, ...]  # S sites, in the order of the signals' axis 1
    attn_reading: AttnReading
    signals: np.ndarray  # float16 [N, S, L, n_embd]  chosen minus rejected, answer-token means
    keys: np.ndarray  # float16 [N, D]  L2-normalised encoder embeddings of the inputs
    inputs: np.ndarray  # str [N]  history inputs (for RAG prompts and "why")
    outputs: np.ndarray  # str [N]  the user's outputs
    timestamps: np.ndarray  # float64 [N]  unix seconds, NaN when unknown
    residual_norms: np.ndarray  # float32 [L]  mean residual norm at each layer (relative strength)
    encoder_name: str
    encoder_probe: np.ndarray  # float32 [D]  the encoder's embedding of PROBE_SENTENCE
    prompt_format: PromptFormat  # how input + answer were laid out during extraction
    created: str  # ISO 8601, UTC
    # float16 [N, S, L, n_embd]: the contrast over the first ``opening_tokens`` answer positions
    # only, for position-scoped injection where the answer starts; None in version-1 files.
    opening: np.ndarray | None = None
    opening_tokens: int = 0

    def __post_init__(self) -> None:
        _validate(self, _UNSAVED)

    # -- shape helpers -------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return int(self.signals.shape[0])

    @property
    def n_embd(self) -> int:
        return int(self.signals.shape[3])

    def site_index(self, site: Site) -> int:
        if site not in self.sites:
            raise ProfileError(f"profile has no '{site}' signals (it has {', '.join(self.sites)})")
        return self.sites.index(site)

    def user_vector(self) -> np.ndarray:
        """Mean of all signals, float32 [S, L, n_embd]: the static, user-level (CAA) vector."""
        return self.signals.astype(np.float32).mean(axis=0)

    def check_model(self, model: ModelIdentity, path: str | os.PathLike[str] = "profile") -> None:
        """Refuse a model this profile was not built for."""
        why = self.model.mismatch(model)
        if why:
            raise ProfileError(
                f"{path}: built for another model ({why}); rebuild the profile for this model "
                "with `python -m export.build --model <this model>`"
            )

    # -- editing (returns new profiles; the file is only changed by save) -----------------
    def with_items(
        self,
        signals: np.ndarray,
        keys: np.ndarray,
        inputs: list[str],
        outputs: list[str],
        timestamps: np.ndarray | None = None,
        opening: np.ndarray | None = None,
    ) -> Profile:
        """A new profile with items appended (signals and opening [n, S, L, n_embd], keys [n, D]).

        A profile with opening signals needs them for the new items too."""
        n = len(inputs)
        ts = np.full(n, np.nan) if timestamps is None else np.asarray(timestamps, np.float64)
        if self.opening is not None and opening is None:
            raise ProfileError("this profile has opening signals; give them for the new items")
        return replace(
            self,
            opening=None
            if self.opening is None
            else np.concatenate([self.opening, np.asarray(opening).astype(np.float16)]),
            signals=np.concatenate([self.signals, signals.astype(np.float16)]),
            keys=np.concatenate([self.keys, normalised_keys(keys)]),
            inputs=np.concatenate([self.inputs, np.asarray(inputs, dtype=str)]),
            outputs=np.concatenate([self.outputs, np.asarray(outputs, dtype=str)]),
            timestamps=np.concatenate([self.timestamps, ts]),
        )

    def take(self, items: Iterable[int]) -> Profile:
        """A new profile with only these items, in this order (e.g. the first n, by time)."""
        ids = np.asarray(list(items), dtype=np.int64)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= self.n_items:
            raise ProfileError(f"items {ids.tolist()[:5]}...: need ids in 0..{self.n_items - 1}")
        return replace(
            self,
            opening=None if self.opening is None else self.opening[ids],
            signals=self.signals[ids],
            keys=self.keys[ids],
            inputs=self.inputs[ids],
            outputs=self.outputs[ids],
            timestamps=self.timestamps[ids],
        )

    def without_item(self, item: int) -> Profile:
        """A new profile without history item ``item`` (0-based)."""
        if not 0 <= item < self.n_items:
            raise ProfileError(f"no history item {item}; valid ids are 0..{self.n_items - 1}")
        if self.n_items == 1:
            raise ProfileError("cannot forget the last history item: a profile needs at least one")
        keep = np.arange(self.n_items) != item
        return replace(
            self,
            opening=None if self.opening is None else self.opening[keep],
            signals=self.signals[keep],
            keys=self.keys[keep],
            inputs=self.inputs[keep],
            outputs=self.outputs[keep],
            timestamps=self.timestamps[keep],
        )

    # -- file I/O ------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        m = self.model
        return {
            "format_name": np.array(FORMAT_NAME),
            "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
            "model_arch": np.array(m.arch),
            "model_n_layer": np.array(m.n_layer, dtype=np.int32),
            "model_n_embd": np.array(m.n_embd, dtype=np.int32),
            "model_n_vocab": np.array(m.n_vocab, dtype=np.int32),
            "model_tokenizer_sha256": np.array(m.tokenizer_sha256),
            "layers": self.layers,
            "sites": np.array(self.sites, dtype=str),
            "attn_reading": np.array(self.attn_reading),
            "signals": self.signals,
            "keys": self.keys,
            **_pack_texts("inputs", self.inputs),
            **_pack_texts("outputs", self.outputs),
            "timestamps": self.timestamps,
            "residual_norms": self.residual_norms,
            "encoder_name": np.array(self.encoder_name),
            "encoder_probe": self.encoder_probe,
            "prompt_format": np.array(self.prompt_format),
            "created": np.array(self.created),
        } | (
            {}
            if self.opening is None
            else {
                "opening": self.opening,
                "opening_tokens": np.array(self.opening_tokens, dtype=np.int32),
            }
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: the old file survives any failure before the final rename."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ProfileError(f"{path}: a profile file name must end in .npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **self.to_arrays())  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Load and validate every field; errors name the file and the field."""
        path = Path(path)
        if not path.is_file():
            raise ProfileError(f"{path}: no such profile; build one with `python -m export.build`")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
            raise ProfileError(f"{path}: not a readable profile ({e}); {_REBUILD}") from e
        return cls.from_arrays(arrays, source=str(path))

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], source: str = "profile") -> Profile:
        name = _scalar(a, "format_name", str, source)
        if name != FORMAT_NAME:
            raise ProfileError(f"{source}: not a fints-edge profile (format '{name}')")
        version = _scalar(a, "format_version", int, source)
        if version not in READABLE_VERSIONS:
            raise ProfileError(
                f"{source}: profile format version {version}, this fints-edge reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; {_REBUILD}"
            )
        has_opening = version >= 2 and "opening" in a
        model = ModelIdentity(
            arch=_scalar(a, "model_arch", str, source),
            n_layer=_scalar(a, "model_n_layer", int, source),
            n_embd=_scalar(a, "model_n_embd", int, source),
            n_vocab=_scalar(a, "model_n_vocab", int, source),
            tokenizer_sha256=_scalar(a, "model_tokenizer_sha256", str, source),
        )
        try:
            return cls(
                model=model,
                layers=_array(a, "layers", source),
                sites=tuple(str(s) for s in _array(a, "sites", source).tolist()),  # type: ignore[misc]
                attn_reading=_scalar(a, "attn_reading", str, source),  # type: ignore[arg-type]
                signals=_array(a, "signals", source),
                keys=_array(a, "keys", source),
                inputs=_unpack_texts(a, "inputs", source),
                outputs=_unpack_texts(a, "outputs", source),
                timestamps=_array(a, "timestamps", source),
                residual_norms=_array(a, "residual_norms", source),
                encoder_name=_scalar(a, "encoder_name", str, source),
                encoder_probe=_array(a, "encoder_probe", source),
                prompt_format=_scalar(a, "prompt_format", str, source),  # type: ignore[arg-type]
                created=_scalar(a, "created", str, source),
                opening=_array(a, "opening", source) if has_opening else None,
                opening_tokens=_scalar(a, "opening_tokens", int, source) if has_opening else 0,
            )
        except ProfileError as e:
            raise ProfileError(str(e).replace(_UNSAVED, source, 1)) from None


def normalised_keys(keys: np.ndarray) -> np.ndarray:
    """float16 [N, D] unit rows: half the bytes of float32, cosine error ~1e-3 (top-K unchanged)."""
    k = np.asarray(keys, dtype=np.float32)
    return (k / np.linalg.norm(k, axis=1, keepdims=True)).astype(np.float16)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# -- texts: UTF-8 bytes + offsets on disk (numpy str arrays are UTF-32, padded to the longest) --
def _pack_texts(name: str, texts: np.ndarray) -> dict[str, np.ndarray]:
    blobs = [t.encode("utf-8") for t in texts.tolist()]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)  # [N + 1]
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return {
        f"{name}_utf8": np.frombuffer(b"".join(blobs), dtype=np.uint8),
        f"{name}_offsets": offsets,
    }


def _unpack_texts(a: dict[str, np.ndarray], name: str, source: str) -> np.ndarray:
    data, offsets = _array(a, f"{name}_utf8", source), _array(a, f"{name}_offsets", source)
    ok = (
        data.dtype == np.uint8
        and data.ndim == 1
        and offsets.dtype == np.int64
        and offsets.ndim == 1
        and offsets.size >= 1
        and offsets[0] == 0
        and offsets[-1] == data.size
        and bool(np.all(np.diff(offsets) >= 0))
    )
    if not ok:
        raise _fail(source, f"{name}_offsets", "does not index its UTF-8 text bytes")
    raw = data.tobytes()
    try:
        texts = [raw[i:j].decode("utf-8") for i, j in zip(offsets[:-1], offsets[1:], strict=True)]
    except UnicodeDecodeError:
        raise _fail(source, f"{name}_utf8", "is not valid UTF-8") from None
    return np.asarray(texts, dtype=str)


# -- validation ------------------------------------------------------------------------------
def _fail(source: str, field: str, problem: str) -> ProfileError:
    return ProfileError(f"{source}: field '{field}' {problem}; {_REBUILD}")


def _array(a: dict[str, np.ndarray], key: str, source: str) -> np.ndarray:
    if key not in a:
        raise _fail(source, key, "is missing")
    return a[key]


def _scalar(a: dict[str, np.ndarray], key: str, kind: type, source: str) -> Any:
    arr = _array(a, key, source)
    if arr.shape != ():
        raise _fail(source, key, f"should be a scalar, has shape {arr.shape}")
    if kind is str and arr.dtype.kind != "U":
        raise _fail(source, key, f"should be text, is {arr.dtype}")
    if kind is int and arr.dtype.kind not in "iu":
        raise _fail(source, key, f"should be an integer, is {arr.dtype}")
    return kind(arr.item())


def _validate(p: Profile, source: str) -> None:
    def need(ok: bool, field: str, problem: str) -> None:
        if not ok:
            raise _fail(source, field, problem)

    m = p.model
    need(m.n_layer > 0 and m.n_embd > 0 and m.n_vocab > 0, "model_n_layer", "sizes must be > 0")
    need(len(m.tokenizer_sha256) == 64, "model_tokenizer_sha256", "is not a sha256 hex digest")
    need(len(p.sites) > 0 and len(set(p.sites)) == len(p.sites), "sites", "must be distinct")
    need(all(s in SITES for s in p.sites), "sites", f"must be among {SITES}, got {p.sites}")
    need(p.attn_reading in ATTN_READINGS, "attn_reading", f"must be one of {ATTN_READINGS}")
    need(p.prompt_format in PROMPT_FORMATS, "prompt_format", f"must be one of {PROMPT_FORMATS}")

    need(p.layers.ndim == 1 and p.layers.size > 0, "layers", "must be a non-empty 1-D array")
    need(p.layers.dtype.kind in "iu", "layers", f"must be integers, is {p.layers.dtype}")
    need(bool(np.all(np.diff(p.layers) > 0)), "layers", "must be strictly ascending")
    need(
        bool(p.layers.min() >= 0 and p.layers.max() < m.n_layer),
        "layers",
        f"must be decoder indices in 0..{m.n_layer - 1}",
    )
    sig = p.signals
    need(sig.dtype == np.float16, "signals", f"must be float16, is {sig.dtype}")
    need(sig.ndim == 4, "signals", f"must be [N, sites, layers, n_embd], has shape {sig.shape}")
    n = sig.shape[0]
    need(n > 0, "signals", "is empty: a profile needs at least one history item")
    expect = (n, len(p.sites), p.layers.size, m.n_embd)
    need(sig.shape == expect, "signals", f"has shape {sig.shape}, expected {expect}")
    need(bool(np.isfinite(sig).all()), "signals", "contains NaN or infinity")
    if p.opening is not None:
        need(
            p.opening.dtype == np.float16 and p.opening.shape == sig.shape,
            "opening",
            f"must be float16 of the signals' shape {sig.shape}",
        )
        need(bool(np.isfinite(p.opening).all()), "opening", "contains NaN or infinity")
        need(p.opening_tokens >= 1, "opening_tokens", "must be >= 1 with opening signals")

    need(p.keys.dtype == np.float16 and p.keys.ndim == 2, "keys", "must be float16 [N, D]")
    need(p.keys.shape[0] == n, "keys", f"has {p.keys.shape[0]} rows for {n} items")
    norms = np.linalg.norm(p.keys.astype(np.float32), axis=1)
    need(bool(np.allclose(norms, 1.0, atol=2e-3)), "keys", "rows must be L2-normalised")
    d = p.keys.shape[1]
    probe = p.encoder_probe
    need(
        probe.dtype == np.float32 and probe.shape == (d,), "encoder_probe", f"must be float32 [{d}]"
    )
    for field in ("inputs", "outputs"):
        arr = getattr(p, field)
        need(arr.dtype.kind == "U" and arr.shape == (n,), field, f"must be {n} strings")
    need(
        p.timestamps.dtype == np.float64 and p.timestamps.shape == (n,),
        "timestamps",
        f"must be float64 [{n}]",
    )
    need(
        p.residual_norms.dtype == np.float32 and p.residual_norms.shape == (p.layers.size,),
        "residual_norms",
        f"must be float32 [{p.layers.size}]",
    )


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform can open a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
