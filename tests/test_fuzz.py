"""Fuzzing every file fints-edge reads: each damaged input ends in a FintsEdgeError (or a clean load),
fast, in bounded memory, and never runs code from the file (no pickle).

Inputs: profiles (truncations, bit flips, swapped members, wrong dtypes and shapes, huge declared
shapes, extra members, zip bombs), history JSONL (bad encodings, missing fields, huge lines), the
ONNX aggregator and encoder (manifest, tokenizer.json, model.onnx), and model GGUFs (check_gguf +
llama.cpp, in a worker process because llama.cpp may abort the process).

Each property runs twice: a fast test (few examples; the file runs in well under 20 s) and a
``slow`` twin with SLOW times more examples (``make test-slow``).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fints_edge.errors import FintsEdgeError, HistoryError, ProfileError
from fints_edge.history import MAX_LINE_BYTES, HistoryItem, read_history
from fints_edge.profile import Profile
from tests._factories import profile

SLOW = 25  # the slow twin runs this many times the examples
MAX_SECONDS = 2.0  # per damaged file; a clean refusal takes milliseconds
_COMMON: dict[str, Any] = {
    "deadline": None,  # timing is asserted explicitly, with room for a busy machine
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def fuzz(n: int, **strategies: st.SearchStrategy) -> Callable[[Callable], tuple[Any, Any]]:
    """``check`` as a fast test with ``n`` examples and a slow twin with ``n * SLOW``."""

    def make(check: Callable) -> tuple[Any, Any]:
        fast = settings(max_examples=n, **_COMMON)(given(**strategies)(check))
        slow = settings(max_examples=n * SLOW, **_COMMON)(given(**strategies)(check))
        return fast, pytest.mark.slow(slow)

    return make


# How each example ended (refused, loaded, ...), per test: docs/reliability.md shows it.
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _record_outcomes(record_property):
    OUTCOMES.clear()
    yield
    if OUTCOMES:
        record_property("note", ", ".join(f"{n:,} {what}" for what, n in OUTCOMES.most_common()))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder for every example's file (hypothesis reuses a fixture across examples)."""
    return tmp_path_factory.mktemp("fuzz")


@contextmanager
def bounded(max_bytes: int = 16 << 20):
    """Fails the example if it takes over MAX_SECONDS, allocates over ``max_bytes`` (Python and
    numpy allocations, traced) or unpickles anything."""

    def unpickled(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the loader called pickle")

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with (
            mock.patch.object(pickle, "load", unpickled),
            mock.patch.object(pickle, "loads", unpickled),
        ):
            yield
    finally:
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert seconds < MAX_SECONDS, f"took {seconds:.1f} s"
    assert peak < max_bytes, f"allocated {peak:,} bytes"


# == profiles ======================================================================================
def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)  # hostile files may hold pickles
    return buf.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


_BASE = profile(n=5)
MEMBERS = {f"{k}.npy": _npy(v) for k, v in _BASE.to_arrays().items()}
PROFILE = _zip(MEMBERS)


def _load(work: Path, data: bytes, max_bytes: int = 16 << 20) -> Profile | ProfileError:
    """The loaded profile or the ProfileError; anything else fails the example."""
    path = work / "me.npz"
    path.write_bytes(data)
    with bounded(max_bytes):
        try:
            got: Profile | ProfileError = Profile.load(path)
        except ProfileError as e:
            assert str(e).startswith(f"{path}:"), str(e)  # the error names the file
            got = e
    OUTCOMES["refused" if isinstance(got, ProfileError) else "loaded"] += 1
    return got


def _flip(data: bytes, flips: list[tuple[float, int]]) -> bytes:
    out = bytearray(data)
    for where, bit in flips:
        out[int(where * (len(out) - 1))] ^= 1 << bit
    return bytes(out)


_flips = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=8)


def _check_truncated(work, cut):
    got = _load(work, PROFILE[: int(cut * (len(PROFILE) - 1))])
    assert isinstance(got, ProfileError)


test_truncated_profiles, test_truncated_profiles_slow = fuzz(25, cut=st.floats(0, 1))(
    _check_truncated
)


def _check_bit_flips(work, flips):
    got = _load(work, _flip(PROFILE, flips))
    if isinstance(got, Profile):  # a flip in a float or a text byte can leave a valid profile
        assert got.n_items == 5 and np.isfinite(got.signals).all()


test_bit_flipped_profiles, test_bit_flipped_profiles_slow = fuzz(40, flips=_flips)(_check_bit_flips)


def _check_overwritten(work, writes):
    out = bytearray(PROFILE)
    for where, value in writes:
        out[int(where * (len(out) - 1))] = value
    _load(work, bytes(out))


test_overwritten_profiles, test_overwritten_profiles_slow = fuzz(
    25, writes=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=16)
)(_check_overwritten)


def _check_swapped(work, pair):
    a, b = pair
    members = dict(MEMBERS)
    members[a], members[b] = MEMBERS[b], MEMBERS[a]
    got = _load(work, _zip(members))
    big = {"signals.npy", "keys.npy", "inputs_offsets.npy", "timestamps.npy", "layers.npy"}
    if {a, b} & big:
        assert isinstance(got, ProfileError)


_names = sorted(MEMBERS)
test_swapped_members, test_swapped_members_slow = fuzz(
    20,
    pair=st.tuples(st.sampled_from(_names), st.sampled_from(_names)).filter(lambda p: p[0] != p[1]),
)(_check_swapped)

_DTYPES = ["<f2", "<f4", "<f8", ">f2", "<i4", "<i8", "|u1", "|b1", "<c8", "<U3", "|S3", "|O", "|V4"]


def _check_wrong_array(work, name, dtype, shape):
    members = dict(MEMBERS)
    arr = np.zeros(shape, dtype=np.dtype(dtype))
    if arr.dtype.hasobject:
        arr[...] = _Payload()
    members[name] = _npy(arr)
    _load(work, _zip(members))  # refused, or loads if it happens to fit (int32 for int64 ...)
    assert not _RAN


_RAN: list[str] = []


def _ran() -> None:
    _RAN.append("code from a profile ran")


class _Payload:
    """Unpickling this runs _ran, as a hostile pickle would run os.system."""

    def __reduce__(self):
        return (_ran, ())


test_wrong_dtypes_and_shapes, test_wrong_dtypes_and_shapes_slow = fuzz(
    40,
    name=st.sampled_from(_names),
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(0, 9), max_size=4).map(tuple),
)(_check_wrong_array)


def _npy_claiming(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _check_huge_shape(work, name, dtype, shape, data):
    members = dict(MEMBERS)
    members[name] = _npy_claiming(shape, dtype, data)
    got = _load(work, _zip(members), max_bytes=4 << 20)
    assert isinstance(got, ProfileError)


test_huge_declared_shapes, test_huge_declared_shapes_slow = fuzz(
    20,
    name=st.sampled_from(_names),
    dtype=st.sampled_from(["<f2", "<f4", "<i8", "|u1", "<U9"]),
    shape=st.lists(st.integers(0, 2**40), min_size=1, max_size=4)
    .map(tuple)
    .filter(lambda s: math.prod(s) > 10**6),
    data=st.binary(max_size=64),
)(_check_huge_shape)


def _check_extra_member(work, name, data):
    got = _load(work, _zip({**MEMBERS, name: data}))
    assert isinstance(got, ProfileError)
    assert "unexpected member" in str(got) or "appears twice" in str(got)


test_extra_members, test_extra_members_slow = fuzz(
    15,
    name=st.text(
        st.characters(codec="utf-8", exclude_characters="\x00/\\"), min_size=1, max_size=30
    ).filter(lambda n: n not in MEMBERS),
    data=st.binary(max_size=100),
)(_check_extra_member)


def _declare_size(data: bytes, name: str, size: int) -> bytes:
    """Patch ``name``'s sizes in the central directory, as a zip bomb lies about them."""
    at = 0
    while True:
        at = data.index(b"PK\x01\x02", at)
        n = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + n] == name.encode():
            usize = size.to_bytes(4, "little")
            return data[: at + 24] + usize + data[at + 28 :]
        at += 4


def _check_declared_bomb(work, sizes):
    data = PROFILE
    for name, size in sizes:
        data = _declare_size(data, name, size)
    got = _load(work, data, max_bytes=4 << 20)
    assert isinstance(got, ProfileError)


test_zip_bombs_by_declared_size, test_zip_bombs_by_declared_size_slow = fuzz(
    15,
    sizes=st.lists(
        st.tuples(st.sampled_from(_names), st.integers(1 << 24, 2**32 - 1)), min_size=1, max_size=3
    ),
)(_check_declared_bomb)


def _check_deflated_bomb(work, name, megabytes):
    members = dict(MEMBERS)
    members[name] = _npy(np.zeros(megabytes << 20, np.uint8))  # deflates ~1000x
    data = _zip(members, zipfile.ZIP_DEFLATED)
    opened: list[str] = []
    with mock.patch.object(zipfile.ZipFile, "open", lambda *_a, **_k: opened.append("open")):
        got = _load(work, data, max_bytes=4 << 20)
    assert isinstance(got, ProfileError) and "zip bomb" in str(got) and not opened


test_zip_bombs_by_inflation, test_zip_bombs_by_inflation_slow = fuzz(
    4, name=st.sampled_from(_names), megabytes=st.integers(2, 24)
)(_check_deflated_bomb)


# == history JSONL =================================================================================
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(["input", "output", "rejected", "timestamp", "id"]) | st.text(max_size=6)
_objects = st.dictionaries(_keys, _json, max_size=5).map(
    lambda d: json.dumps(d, ensure_ascii=True).encode()  # lone surrogates become \ud800 escapes
)
_encoded = st.tuples(st.text(max_size=30), st.sampled_from(["latin-1", "utf-16", "cp1252"])).map(
    lambda t: json.dumps({"input": t[0] or "x", "output": "é" + t[0]}, ensure_ascii=False).encode(
        t[1], "replace"
    )
)
_line = _objects | _encoded | st.binary(max_size=60) | _json.map(lambda v: json.dumps(v).encode())


def _read(work: Path, data: bytes) -> list[HistoryItem] | HistoryError:
    path = work / "h.jsonl"
    path.write_bytes(data)
    with bounded(8 * MAX_LINE_BYTES):
        try:
            items = read_history(path)
        except HistoryError as e:
            assert str(e).startswith(f"{path}"), str(e)
            OUTCOMES["refused"] += 1
            return e
    OUTCOMES["accepted"] += 1
    for it in items:  # whatever is accepted, a profile can store
        for text in (it.input, it.output, it.rejected or "x"):
            assert isinstance(text, str) and text.strip()
            text.encode("utf-8")
        assert math.isnan(it.timestamp) or math.isfinite(it.timestamp)
    return items


def _check_history(work, lines):
    _read(work, b"\n".join(lines))


test_history_lines, test_history_lines_slow = fuzz(60, lines=st.lists(_line, max_size=6))(
    _check_history
)


def _check_long_line(work, size):
    pad = size - len(b'{"input": "a", "output": ""}\n')
    line = b'{"input": "a", "output": "' + b"x" * pad + b'"}\n'
    got = _read(work, line)
    if len(line) <= MAX_LINE_BYTES:
        assert isinstance(got, list) and len(got[0].output) == pad
    else:
        assert isinstance(got, HistoryError) and "longer than 1,048,576 bytes" in str(got)


test_long_history_lines, test_long_history_lines_slow = fuzz(
    4, size=st.integers(MAX_LINE_BYTES - 4, MAX_LINE_BYTES + 4) | st.integers(2**20, 2**22)
)(_check_long_line)


# == ONNX aggregator and encoder ===================================================================
def _damage(data: bytes, kind: str, where: float, value: int) -> bytes:
    i = int(where * (len(data) - 1))
    if kind == "truncate":
        return data[:i]
    out = bytearray(data)
    out[i] = (out[i] ^ (1 << (value % 8))) if kind == "flip" else value
    return bytes(out)


_damages = st.tuples(
    st.sampled_from(["truncate", "flip", "write"]), st.floats(0, 1), st.integers(0, 255)
)


def _check_aggregator(work, onnx_aggregator_path, damage):
    from fints_edge.aggregate import OnnxAggregator

    path = work / "aggregator.onnx"
    path.write_bytes(_damage(onnx_aggregator_path.read_bytes(), *damage))
    with bounded(64 << 20):
        try:
            OnnxAggregator(path, threads=1)  # loads only if it still computes the reference math
            OUTCOMES["loaded"] += 1
        except FintsEdgeError as e:
            assert str(path) in str(e)
            OUTCOMES["refused"] += 1


test_damaged_aggregators, test_damaged_aggregators_slow = fuzz(30, damage=_damages)(
    _check_aggregator
)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """An encoder folder with the real tokenizer and a 2 KB graph of the encoder's interface
    (loads in ~10 ms, so the loader's checks can be fuzzed by the hundred)."""
    import shutil

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fints_edge._paths import encoder_source_dir
    from fints_edge.encode import MANIFEST, MODEL_FILE, TOKENIZER_FILE

    d = 384
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["ids", "mask"], ["sum"]),
        helper.make_node("Unsqueeze", ["sum", "axis"], ["sum3"]),
        helper.make_node("Mul", ["sum3", "w"], ["last_hidden_state"]),  # [b, t, d]
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-encoder",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "t"])
            for n in ("input_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "t", d])],
        initializer=[
            numpy_helper.from_array(np.linspace(-1, 1, d, dtype=np.float32), "w"),
            numpy_helper.from_array(np.array([-1], np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out = tmp_path_factory.mktemp("tiny-encoder")
    onnx.save(model, out / MODEL_FILE)
    shutil.copyfile(encoder_source_dir() / TOKENIZER_FILE, out / TOKENIZER_FILE)
    manifest = {"name": "tiny", "dim": d, "max_length": 32, "pooling": "mean", "normalize": True}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def _encoder_with(work: Path, source: Path, name: str, data: bytes) -> None:
    """Load an encoder folder whose file ``name`` is ``data``: FintsEdgeError or a working one."""
    import shutil

    from fints_edge.encode import Encoder

    folder = work / "encoder"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    (folder / name).write_bytes(data)
    with bounded(256 << 20):
        try:
            enc = Encoder(folder, threads=1)
        except FintsEdgeError as e:
            assert str(folder) in str(e)
            OUTCOMES["refused"] += 1
            return
    OUTCOMES["loaded"] += 1
    x = enc.encode(["a sentence", ""])
    assert x.shape == (2, enc.dim) and np.isfinite(x).all()


def _check_encoder_model(work, tiny_encoder, damage):
    data = (tiny_encoder / "model.onnx").read_bytes()
    _encoder_with(work, tiny_encoder, "model.onnx", _damage(data, *damage))


test_damaged_encoder_graphs, test_damaged_encoder_graphs_slow = fuzz(25, damage=_damages)(
    _check_encoder_model
)


def _check_tokenizer(work, tiny_encoder, damage):
    data = (tiny_encoder / "tokenizer.json").read_bytes()
    _encoder_with(work, tiny_encoder, "tokenizer.json", _damage(data, *damage))


test_damaged_tokenizers, test_damaged_tokenizers_slow = fuzz(10, damage=_damages)(_check_tokenizer)

_manifests = (
    st.fixed_dictionaries(
        {},
        optional={
            "name": _json,
            "dim": _json | st.integers(-5, 10**6) | st.just(384),
            "max_length": _json | st.integers(-5, 10**6),
            "pooling": st.just("mean") | _json,
            "normalize": st.just(True) | _json,
        },
    ).map(lambda d: json.dumps(d).encode())
    | _json.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=40)
)


def _check_manifest(work, tiny_encoder, manifest):
    _encoder_with(work, tiny_encoder, "encoder.json", manifest)


test_damaged_encoder_manifests, test_damaged_encoder_manifests_slow = fuzz(30, manifest=_manifests)(
    _check_manifest
)


@pytest.mark.slow
@settings(max_examples=40, **_COMMON)
@given(damage=_damages)
def test_damaged_real_encoder_graphs(work, onnx_encoder_dir, damage):
    """The real 90 MB all-MiniLM-L6-v2 graph: most flips land in weights and go unnoticed
    (check_compatible's probe cosine is what catches a changed embedding); none may crash."""
    data = (onnx_encoder_dir / "model.onnx").read_bytes()
    _encoder_with(work, onnx_encoder_dir, "model.onnx", _damage(data, *damage))


# == model GGUFs ===================================================================================
_WORKER = textwrap.dedent(
    """
    import json, logging, os, sys
    import llama_cpp.llama
    from fints_edge.errors import FintsEdgeError
    from fints_edge.llama.model import open_llama
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever llama.cpp prints goes to the log, not into the results
    # verbose=True keeps stderr open for a GGML_ASSERT's last words (quiet mode points it at
    # /dev/null); the logger still drops llama.cpp's chatter below errors.
    llama_cpp.llama.set_verbose = lambda _v: logging.getLogger("llama-cpp-python").setLevel(40)
    for line in sys.stdin:
        try:
            open_llama(line.strip(), n_ctx=64, n_threads=1, verbose=True).close()
            result = {"kind": "loaded"}
        except FintsEdgeError as e:
            result = {"kind": "refused", "message": str(e)}
        except BaseException as e:
            result = {"kind": "other", "message": f"{type(e).__name__}: {e}"}
        print(json.dumps(result), file=results, flush=True)
    """
)


class LlamaWorker:
    """A process that opens GGUFs with llama.cpp: a damaged file can abort it, never pytest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        self.log = (self.folder / "worker.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def open(self, path: Path, timeout: float = 30) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            return {"kind": "hang"}
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        code = self.proc.wait()
        self.log.close()
        lines = (self.folder / "worker.log").read_text(errors="replace").splitlines()
        asserts = [ln for ln in lines if "GGML_ASSERT" in ln]
        return {"kind": "died", "code": code, "stderr": "\n".join(asserts[:5] or lines[-20:])}

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.log.close()


@pytest.fixture(scope="module")
def llama_worker(tmp_path_factory):
    worker = LlamaWorker(tmp_path_factory.mktemp("worker"))
    yield worker
    worker.close()


class Gguf:
    """The tiny model's bytes (15 MB, kept out of failure reports) and roughly where its
    metadata ends: just past the last tensor name, where the weights start."""

    def __init__(self, data: bytes, metadata_end: int) -> None:
        self.data, self.metadata_end = data, metadata_end

    def __repr__(self) -> str:
        return f"Gguf(<{len(self.data):,} bytes>, metadata_end={self.metadata_end})"


@pytest.fixture(scope="module")
def gguf_layout(tiny) -> Gguf:
    """The tiny model GGUF (gguf-py's exact data_offset takes 1.6 s: it parses the vocabulary)."""
    data = tiny.gguf_path.read_bytes()
    return Gguf(data, data.rfind(b".weight") + 64)


def _allowed(result: dict[str, Any]) -> bool:
    """Loaded, refused with FintsEdgeError, or llama.cpp's own GGML_ASSERT abort (a known
    limitation: see test_a_duplicate_token_is_refused_before_llama_cpp). Segfaults, hangs and
    other Python exceptions fail."""
    if result["kind"] in ("loaded", "refused"):
        return True
    return (
        result["kind"] == "died"
        and result["code"] == -signal.SIGABRT
        and "GGML_ASSERT" in result["stderr"]
    )


def _check_gguf(work, llama_worker, gguf_layout, damage, in_metadata):
    from fints_edge.llama.model import check_gguf

    data, data_offset = gguf_layout.data, gguf_layout.metadata_end
    kind, where, value = damage
    if in_metadata:  # most of the interesting structure lives before the tensor data
        where = where * data_offset / len(data)
    path = work / "model.gguf"
    path.write_bytes(_damage(data, kind, where, value))
    try:
        check_gguf(path)
    except FintsEdgeError:
        OUTCOMES["refused before llama.cpp"] += 1
        return  # refused before any C code ran
    result = llama_worker.open(path)
    assert _allowed(result), result
    kinds = {"refused": "refused by the loader", "died": "GGML_ASSERT abort (known)"}
    OUTCOMES[kinds.get(result["kind"], result["kind"])] += 1


test_damaged_model_ggufs, test_damaged_model_ggufs_slow = fuzz(
    15, damage=_damages, in_metadata=st.booleans()
)(_check_gguf)


def _check_magic(work, head):
    from fints_edge.llama.model import check_gguf

    path = work / "model.gguf"
    path.write_bytes(head)
    with pytest.raises(FintsEdgeError, match="not a GGUF file"):
        check_gguf(path)


test_gguf_magic, test_gguf_magic_slow = fuzz(
    20, head=st.binary(max_size=8).filter(lambda b: not b.startswith(b"GGUF"))
)(_check_magic)


@pytest.mark.xfail(
    strict=True,
    reason="llama.cpp aborts the process (GGML_ASSERT id_to_token.size() == token_to_id.size()) "
    "on a vocabulary with a repeated token; fints_edge.llama.model.check_gguf does not look at tokens",
)
def test_a_duplicate_token_is_refused_before_llama_cpp(work, llama_worker, gguf_layout):
    """One flipped bit ('ĠRet' -> 'ĠSet', a token that exists) was found by the fuzzing above."""
    data = gguf_layout.data

    def entry(token: str) -> bytes:  # GGUF strings: uint64 length, then UTF-8
        raw = token.encode()
        return len(raw).to_bytes(8, "little") + raw

    assert data.count(entry("ĠRet")) == 1 and data.count(entry("ĠSet")) == 1
    path = work / "duplicate.gguf"
    path.write_bytes(data.replace(entry("ĠRet"), entry("ĠSet")))
    result = llama_worker.open(path)
    assert result["kind"] == "refused", result


@pytest.mark.slow
@settings(max_examples=12, **_COMMON)
@given(damage=_damages)
def test_damaged_ggufs_for_export(work, gguf_layout, damage):
    """export.models.gguf_scalars (the torch side's reader, gguf-py; ~2 s per file)."""
    from export.models import gguf_scalars

    data, data_offset = gguf_layout.data, gguf_layout.metadata_end
    kind, where, value = damage
    path = work / "export.gguf"
    path.write_bytes(_damage(data, kind, where * data_offset / len(data), value))
    try:
        gguf_scalars(path)
    except FintsEdgeError as e:
        assert str(path) in str(e)


def test_fuzz_helpers_catch_what_they_should(work):
    """The bounds themselves can fail: a pickle, an allocation, a wrong error type."""
    with pytest.raises(AssertionError, match="called pickle"), bounded():
        pickle.loads(pickle.dumps(1))
    with pytest.raises(AssertionError, match="allocated"), bounded(1 << 20):
        np.ones(1 << 21, np.uint8).sum()
    assert isinstance(_load(work, PROFILE), Profile)
    assert os.path.getsize(work / "me.npz") == len(PROFILE)
