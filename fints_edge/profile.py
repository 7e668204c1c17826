"""The profile file (``me.npz``): one user's steering signals, bound to one model.

Plain arrays only (never a pickle), a versioned format name, and the model's identity so that a
profile built for another model is refused instead of steering garbage. Writes are atomic and
durable (``fints_edge._atomic``): a failed or killed write leaves the old file intact.

Loading trusts nothing in the file: member names, declared sizes (a zip bomb is refused before
anything is decompressed) and every ``.npy`` header (dtype, shape against the profile's own
dimensions) are checked before a byte of array data is read. ``read_header`` gives a listing's
facts with the same checks, without reading the large arrays. A file that cannot be opened says
why (permissions, not a file); only a damaged archive is called "not a readable profile".
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import lzma
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from fints_edge._atomic import atomic_write, write_failed
from fints_edge._vectors import unit_rows
from fints_edge.errors import ProfileError
from fints_edge.layers import ATTN_READINGS, SITES, AttnReading, Site

FORMAT_NAME = "fints-edge-profile"
# 2 adds the optional opening signals, 3 the optional calibration; older files still load
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

PromptFormat = Literal["chat", "plain"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("chat", "plain")

# Limits on what a profile file may declare, checked before anything is decompressed. 4 GiB holds
# 100k items x 2 sites x 2 layers x 896 float16 signals (0.72 GB; 1.43 GB with opening signals)
# plus keys and texts, with room to spare.
MAX_PROFILE_BYTES = 4 << 30  # uncompressed, all members together
MAX_SMALL_BYTES = 1 << 16  # each scalar, ``layers`` and ``sites``
MAX_INFLATION = 200  # profiles are written uncompressed; >200x inflation is a zip bomb
_INFLATION_FREE = 1 << 20  # members below 1 MiB may compress as well as they like
_NPY_MAX_HEADER = 10_000  # numpy's own default for untrusted files
_READ_CHUNK = 1 << 20

_REBUILD = "rebuild it with `python -m export.build`"
_UNSAVED = "profile (not saved yet)"

_TEXT_SCALARS = (
    "format_name",
    "model_arch",
    "model_tokenizer_sha256",
    "attn_reading",
    "encoder_name",
    "prompt_format",
    "created",
    "calibration",
)
_INT_SCALARS = (
    "format_version",
    "model_n_layer",
    "model_n_embd",
    "model_n_vocab",
    "opening_tokens",
)
_SMALL = (*_TEXT_SCALARS, *_INT_SCALARS, "layers", "sites")
# the rest, read in this order once their headers match the dimensions found so far
_LARGE = (
    "signals",
    "keys",
    "encoder_probe",
    "timestamps",
    "residual_norms",
    "inputs_offsets",
    "inputs_utf8",
    "outputs_offsets",
    "outputs_utf8",
    "opening",
)
_OPTIONAL = ("opening", "opening_tokens", "calibration")
_FIELDS = frozenset((*_SMALL, *_LARGE))


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
    # The setting calibration chose on this user's held-out items (fints_edge.calibrate, JSON);
    # None: never calibrated (the defaults apply).
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _validate(self, _UNSAVED)

    @classmethod
    def from_learned(
        cls,
        *,
        model: ModelIdentity,
        layers: Sequence[int],
        sites: Sequence[Site],
        attn_reading: AttnReading,
        prompt_format: PromptFormat,
        inputs: Sequence[str],
        outputs: Sequence[str],
        signals: np.ndarray,
        keys: np.ndarray,
        timestamps: Sequence[float] | np.ndarray,
        residual_norms: np.ndarray,
        encoder_name: str,
        encoder_probe: np.ndarray,
        opening: np.ndarray | None = None,
        opening_tokens: int = 0,
    ) -> Profile:
        """A new profile from learned items (torch's ``export.build`` and the device's learner),
        in the stored types: float16 signals [N, S, L, n_embd] (and openings, stored only when
        given), unit float16 keys [N, D] from raw embeddings, created now."""
        return cls(
            model=model,
            layers=np.asarray(layers, dtype=np.int32),
            sites=tuple(sites),
            attn_reading=attn_reading,
            signals=np.asarray(signals).astype(np.float16),
            keys=normalised_keys(keys),
            inputs=np.asarray(list(inputs), dtype=str),
            outputs=np.asarray(list(outputs), dtype=str),
            timestamps=np.asarray(timestamps, dtype=np.float64),
            residual_norms=np.asarray(residual_norms).astype(np.float32),
            encoder_name=encoder_name,
            encoder_probe=np.asarray(encoder_probe, dtype=np.float32),
            prompt_format=prompt_format,
            created=utc_now(),
            opening=None if opening is None else np.asarray(opening).astype(np.float16),
            opening_tokens=0 if opening is None else opening_tokens,
        )

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

    def raw_mean_signal(self) -> np.ndarray:
        """Mean of all stored signals, float32 [S, L, n_embd], in the signals' own units (raw
        activation differences): no centring, item norm, strength or residual units. The
        static control vector of ``export.gguf`` is this times its strength; the engine's static
        baseline (``fints_edge.plan.Planner.static``) is a different vector, shaped and scaled
        like a request's."""
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
        return (
            {
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
            }
            | (
                {}
                if self.opening is None
                else {
                    "opening": self.opening,
                    "opening_tokens": np.array(self.opening_tokens, dtype=np.int32),
                }
            )
            | (
                {}
                if self.calibration is None
                else {"calibration": np.array(json.dumps(self.calibration, sort_keys=True))}
            )
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically and durably; on any failure the old file is left as it was.

        A new file is private to the user (0600): it holds their history."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ProfileError(f"{path}: a profile file name must end in .npz")
        try:
            with atomic_write(path, perms=0o600) as f:
                np.savez(f, **self.to_arrays())  # type: ignore[arg-type]
        except OSError as e:  # full disk, read-only folder, no permission
            raise ProfileError(write_failed(path, e, "profile")) from e
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Load and validate every field; errors name the file and the field."""
        path = Path(path)
        with _open(path) as f:
            arrays = _read_npz(f, str(path))
        return cls.from_arrays(arrays, source=str(path))

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], source: str = "profile") -> Profile:
        version = _check_format(a, source)
        has_opening = version >= 2 and "opening" in a
        model = _identity(a, source)
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
                calibration=_calibration(a, version, source),
            )
        except ProfileError as e:
            raise ProfileError(str(e).replace(_UNSAVED, source, 1)) from None


def normalised_keys(keys: np.ndarray) -> np.ndarray:
    """float16 [N, D] unit rows: half the bytes of float32, cosine error ~1e-3 (top-K unchanged)."""
    return unit_rows(keys).astype(np.float16)


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


@dataclass(frozen=True)
class ProfileHeader:
    """The cheap facts of a profile file (:func:`read_header`): no signal is read."""

    model: ModelIdentity
    n_items: int
    layers: tuple[int, ...]
    sites: tuple[str, ...]
    created: str
    format_version: int
    has_opening: bool
    calibration: dict[str, Any] | None = None


def read_header(path: str | os.PathLike[str]) -> ProfileHeader:
    """What a listing shows, read with every check ``Profile.load`` makes on the same members
    (member names, declared sizes, ``.npy`` headers), without reading the large arrays' data."""
    path = Path(path)
    source = str(path)
    with _open(path) as f, _zip_errors(source):
        with zipfile.ZipFile(f) as z:
            members = _members(z, source)
            a = _read_small(z, members, source)
            version = _check_format(a, source)
            dims = _Dims(source, a)
            if "signals" not in members:
                raise _fail(source, "signals", "is missing")
            with z.open(members["signals"]) as m:
                _checked_header(m, members["signals"], source, dims.rule("signals"))
    layers = _array(a, "layers", source)
    if not (layers.size and bool(np.all(np.diff(layers) > 0))):
        raise _fail(source, "layers", "must be strictly ascending")
    sites = tuple(str(x) for x in _array(a, "sites", source).tolist())
    if not all(x in SITES for x in sites):
        raise _fail(source, "sites", f"must be among {SITES}, got {sites}")
    return ProfileHeader(
        model=_identity(a, source),
        n_items=dims.N,
        layers=tuple(int(x) for x in layers),
        sites=sites,
        created=_scalar(a, "created", str, source),
        format_version=version,
        has_opening=version >= 2 and "opening" in members,
        calibration=_calibration(a, version, source),
    )


# -- reading a file nobody vouches for ------------------------------------------------------------
# What zipfile and its decompressors raise for a damaged or hostile archive: bad records, a zip
# "version" or feature it does not implement, undecodable member names, data cut short, and seeks
# to offsets the file declares (EINVAL). The file is already open (permissions are checked at
# open), and numpy's header errors are caught where the header is parsed, so nothing else (a bug,
# say) is ever relabelled as a damaged file.
_DAMAGED = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    UnicodeDecodeError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
)
_ZIP_FLAGS_REFUSED = {0x1: "is encrypted", 0x20: "holds patched data", 0x40: "is encrypted"}


def _open(path: Path) -> IO[bytes]:
    """The profile file opened for reading, or one line saying why it cannot be."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ProfileError(f"{path}: is a folder; pass the profile file (.npz) inside it")
        if not stat.S_ISREG(mode):
            raise ProfileError(f"{path}: not a regular file; pass the profile file (.npz)")
        return path.open("rb")
    except (FileNotFoundError, NotADirectoryError):
        raise ProfileError(
            f"{path}: no such profile; build one with `python -m export.build`"
        ) from None
    except PermissionError:
        raise ProfileError(
            f"{path}: cannot be read (permission denied); give your user read access to the "
            f"file and its folder (e.g. `chmod u+r {path}`)"
        ) from None
    except OSError as e:
        raise ProfileError(
            f"{path}: cannot be opened ({e.strerror or e}); check the file and its disk"
        ) from e


@contextlib.contextmanager
def _zip_errors(source: str) -> Iterator[None]:
    """A damaged archive as one line; every other exception passes as it is."""
    try:
        yield
    except _DAMAGED as e:
        why = str(e) or type(e).__name__
        raise ProfileError(f"{source}: not a readable profile ({why}); {_REBUILD}") from e


def _read_npz(f: IO[bytes], source: str) -> dict[str, np.ndarray]:
    """The profile's arrays; each member's size and ``.npy`` header is checked before its data."""
    with _zip_errors(source), zipfile.ZipFile(f) as z:
        members = _members(z, source)
        a = _read_small(z, members, source)
        version = _check_format(a, source)
        dims = _Dims(source, a)
        for key in _LARGE:
            if key == "opening" and version < 2:
                continue  # version 1 had no opening signals; a stray member is ignored
            if key not in members:
                if key in _OPTIONAL:
                    continue
                raise _fail(source, key, "is missing")
            a[key] = _read_member(z, members[key], source, dims.rule(key))
    return a


def _read_small(
    z: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], source: str
) -> dict[str, np.ndarray]:
    return {k: _read_member(z, members[k], source, _small_rule(k)) for k in _SMALL if k in members}


def _identity(a: dict[str, np.ndarray], source: str) -> ModelIdentity:
    return ModelIdentity(
        arch=_scalar(a, "model_arch", str, source),
        n_layer=_scalar(a, "model_n_layer", int, source),
        n_embd=_scalar(a, "model_n_embd", int, source),
        n_vocab=_scalar(a, "model_n_vocab", int, source),
        tokenizer_sha256=_scalar(a, "model_tokenizer_sha256", str, source),
    )


def _members(z: zipfile.ZipFile, source: str) -> dict[str, zipfile.ZipInfo]:
    """field -> ZipInfo; refuses unknown or repeated names and sizes past the limits."""
    out: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in z.infolist():
        key = info.filename.removesuffix(".npy")
        if key not in _FIELDS or not info.filename.endswith(".npy"):
            raise ProfileError(
                f"{source}: unexpected member '{info.filename[:80]}' (a profile holds only its "
                f"named .npy arrays); {_REBUILD}"
            )
        if key in out:
            raise ProfileError(f"{source}: member '{info.filename}' appears twice; {_REBUILD}")
        refused = [why for bit, why in _ZIP_FLAGS_REFUSED.items() if info.flag_bits & bit]
        if refused:
            raise ProfileError(
                f"{source}: member '{info.filename}' {refused[0]} (profiles are plain zip "
                f"files); {_REBUILD}"
            )
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ProfileError(
                f"{source}: member '{info.filename}' uses compression method "
                f"{info.compress_type} (only stored or deflated); {_REBUILD}"
            )
        total += info.file_size
        if info.file_size > MAX_PROFILE_BYTES or total > MAX_PROFILE_BYTES:
            raise ProfileError(
                f"{source}: member '{info.filename}' declares {info.file_size:,} bytes "
                f"uncompressed ({total:,} so far); profiles are limited to "
                f"{MAX_PROFILE_BYTES:,} bytes (MAX_PROFILE_BYTES); {_REBUILD}"
            )
        if info.file_size > _INFLATION_FREE and info.file_size > MAX_INFLATION * max(
            info.compress_size, 1
        ):
            raise ProfileError(
                f"{source}: member '{info.filename}' would inflate {info.compress_size:,} bytes "
                f"to {info.file_size:,} (over {MAX_INFLATION}x: a zip bomb, not a profile); "
                f"{_REBUILD}"
            )
        out[key] = info
    return out


# A rule checks one member's header: (dtype, shape) -> what is wrong, or None when it fits.
_Rule = Callable[[np.dtype, tuple[int, ...]], str | None]


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, rule: _Rule) -> np.ndarray:
    """One ``.npy`` member: header first (size, dtype, shape), data only if all of it is right."""
    key = info.filename.removesuffix(".npy")
    with z.open(info) as f:
        shape, fortran, dtype = _checked_header(f, info, source, rule)
        count = math.prod(shape)
        arr = np.ndarray(count, dtype=dtype)  # np.empty mishandles zero-width strings
        raw = arr.view(np.uint8) if arr.nbytes else arr[:0]  # [count * itemsize]
        for start in range(0, raw.size, _READ_CHUNK):  # one copy, no bytes object of it all
            got = f.readinto(raw[start : start + _READ_CHUNK])  # type: ignore[attr-defined]
            if got != min(_READ_CHUNK, raw.size - start):
                raise _fail(source, key, "is cut short")
    if fortran:
        return np.ascontiguousarray(arr.reshape(shape[::-1]).T)
    return arr.reshape(shape)


def _checked_header(
    f: IO[bytes], info: zipfile.ZipInfo, source: str, rule: _Rule
) -> tuple[tuple[int, ...], bool, np.dtype]:
    """A member's ``.npy`` header (shape, fortran order, dtype), refused unless its size fits
    the member and ``rule`` accepts it; ``f`` is left at the start of the data."""
    key = info.filename.removesuffix(".npy")
    shape, fortran, dtype = _npy_header(f, source, key)
    if dtype.hasobject:
        raise _fail(source, key, "holds Python objects (pickles are never loaded)")
    if any(d < 0 for d in shape):
        raise _fail(source, key, f"has a negative dimension in its shape {shape}")
    count = math.prod(shape)
    if info.file_size != f.tell() + count * dtype.itemsize:
        raise _fail(
            source,
            key,
            f"header says {dtype} {shape} ({count * dtype.itemsize:,} bytes) but the member "
            f"holds {info.file_size - f.tell():,} bytes of data",
        )
    problem = rule(dtype, shape)
    if problem:
        raise _fail(source, key, problem)
    return shape, fortran, dtype


def _npy_header(f: IO[bytes], source: str, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:  # numpy's header parser raises ValueError for whatever it cannot parse
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f, max_header_size=_NPY_MAX_HEADER)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f, max_header_size=_NPY_MAX_HEADER)
    except ValueError as e:
        raise _fail(source, key, f"has a damaged .npy header ({str(e)[:120]})") from None
    raise _fail(source, key, f"is in .npy format version {version}, not 1.0 or 2.0")


def _small_rule(key: str) -> _Rule:
    def rule(dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
        if dtype.itemsize * math.prod(shape) > MAX_SMALL_BYTES:
            return f"is {dtype} {shape}, far larger than such a field can be"
        if key in ("layers", "sites"):
            kinds, what = ("iu", "integers") if key == "layers" else ("U", "text")
            if len(shape) != 1 or dtype.kind not in kinds:
                return f"must be a 1-D array of {what}, is {dtype} {shape}"
            return None
        if shape != ():
            return f"should be a scalar, has shape {shape}"
        if key in _TEXT_SCALARS and dtype.kind != "U":
            return f"should be text, is {dtype}"
        if key in _INT_SCALARS and dtype.kind not in "iu":
            return f"should be an integer, is {dtype}"
        return None

    return rule


class _Dims:
    """The profile's own dimensions (N items, S sites, L layers, E = n_embd, D = key size), and a
    header rule per large member; N and D come from the headers of ``signals`` and ``keys``."""

    def __init__(self, source: str, a: dict[str, np.ndarray]) -> None:
        self.S = _array(a, "sites", source).size
        self.L = _array(a, "layers", source).size
        self.E = _scalar(a, "model_n_embd", int, source)
        if self.E < 1:
            raise _fail(source, "model_n_embd", "sizes must be > 0")
        self.N = self.D = 0

    def rule(self, key: str) -> _Rule:
        def rule(dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
            want_dtype, layout = _LAYOUT[key]
            if dtype != want_dtype:
                return f"must be {np.dtype(want_dtype)} {layout}, is {dtype}"
            if key == "signals":
                if len(shape) != 4:
                    return f"must be {layout}, has shape {shape}"
                if shape[0] == 0:
                    return "is empty: a profile needs at least one history item"
                self.N = shape[0]
            elif key == "keys":
                if len(shape) != 2:
                    return f"must be float16 {layout}, has shape {shape}"
                self.D = shape[1]
            want = self._shape(key, shape)
            return None if shape == want else f"has shape {shape}, expected {want} {layout}"

        return rule

    def _shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        n, items = self.N, (self.N, self.S, self.L, self.E)
        return {
            "signals": items,
            "opening": items,
            "keys": (n, self.D),
            "encoder_probe": (self.D,),
            "timestamps": (n,),
            "residual_norms": (self.L,),
            "inputs_offsets": (n + 1,),
            "outputs_offsets": (n + 1,),
            "inputs_utf8": shape[:1] if len(shape) == 1 else (-1,),
            "outputs_utf8": shape[:1] if len(shape) == 1 else (-1,),
        }[key]


_LAYOUT: dict[str, tuple[type, str]] = {
    "signals": (np.float16, "[N, sites, layers, n_embd]"),
    "opening": (np.float16, "[N, sites, layers, n_embd]"),
    "keys": (np.float16, "[N, D]"),
    "encoder_probe": (np.float32, "[D]"),
    "timestamps": (np.float64, "[N]"),
    "residual_norms": (np.float32, "[layers]"),
    "inputs_offsets": (np.int64, "[N + 1]"),
    "outputs_offsets": (np.int64, "[N + 1]"),
    "inputs_utf8": (np.uint8, "[bytes]"),
    "outputs_utf8": (np.uint8, "[bytes]"),
}


# -- validation ------------------------------------------------------------------------------
def _fail(source: str, field: str, problem: str) -> ProfileError:
    return ProfileError(f"{source}: field '{field}' {problem}; {_REBUILD}")


def _check_format(a: dict[str, np.ndarray], source: str) -> int:
    """The format name and a readable version, checked before anything else; returns the version."""
    name = _scalar(a, "format_name", str, source)
    if name != FORMAT_NAME:
        raise ProfileError(f"{source}: not a fints-edge profile (format '{name[:80]}')")
    version = _scalar(a, "format_version", int, source)
    if version not in READABLE_VERSIONS:
        raise ProfileError(
            f"{source}: profile format version {version}, this fints-edge reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; {_REBUILD}"
        )
    return version


def _calibration(a: dict[str, np.ndarray], version: int, source: str) -> dict[str, Any] | None:
    """The stored calibration (a JSON object), None when absent or before version 3."""
    if version < 3 or "calibration" not in a:
        return None
    try:
        value = json.loads(_scalar(a, "calibration", str, source))
    except ValueError as e:
        raise _fail(source, "calibration", f"is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise _fail(source, "calibration", "should be a JSON object")
    return value


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
    need(bool(np.isfinite(p.keys).all()), "keys", "contains NaN or infinity")
    norms = np.linalg.norm(p.keys.astype(np.float32), axis=1)
    need(bool(np.allclose(norms, 1.0, atol=2e-3)), "keys", "rows must be L2-normalised")
    d = p.keys.shape[1]
    probe = p.encoder_probe
    need(
        probe.dtype == np.float32 and probe.shape == (d,), "encoder_probe", f"must be float32 [{d}]"
    )
    need(bool(np.isfinite(probe).all()), "encoder_probe", "contains NaN or infinity")
    for field in ("inputs", "outputs"):
        arr = getattr(p, field)
        need(arr.dtype.kind == "U" and arr.shape == (n,), field, f"must be {n} strings")
    need(
        p.timestamps.dtype == np.float64 and p.timestamps.shape == (n,),
        "timestamps",
        f"must be float64 [{n}]",
    )
    need(
        not bool(np.isinf(p.timestamps).any()),
        "timestamps",
        "contains infinity (unix seconds, or NaN when unknown)",
    )
    need(
        p.residual_norms.dtype == np.float32 and p.residual_norms.shape == (p.layers.size,),
        "residual_norms",
        f"must be float32 [{p.layers.size}]",
    )
    need(
        bool(np.isfinite(p.residual_norms).all() and (p.residual_norms >= 0).all()),
        "residual_norms",
        "must be finite and >= 0",
    )
