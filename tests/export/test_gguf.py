"""export.gguf against torch: logits, tokenization, control vectors, f16 and Q4_K_M files."""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from export.gguf import (
    _interleave_rope_rows,
    gguf_file_type,
    main,
    profile_to_control_vector,
    quantize,
    write_control_vector,
    write_gguf,
)
from export.models import load_hf
from export.tiny import EXACT_KV
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import cvec_row
from fints_edge.llama.model import chat_prompt, open_llama
from tests._factories import profile as make_profile

PROMPT = "The quick brown fox jumps over the lazy dog near the river."
STRINGS = [
    "Hello world",
    "In 2024, 12345 people   ran\n\ttabs",
    "café naïve 日本語 😀 — “quotes” don't I'll",
]


@pytest.fixture(scope="module")
def hf(tiny):
    torch.set_num_threads(2)
    return load_hf(tiny.hf_dir)


@pytest.fixture(scope="module")
def llm(tiny):
    llm = open_llama(tiny.gguf_path, n_ctx=256, n_threads=2, logits_all=True, **EXACT_KV)
    yield llm
    llm.close()


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()  # [T, n_vocab]


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])  # [T, n_vocab]


def test_interleave_rope_rows_pairs_each_half_with_its_partner():
    w = np.arange(8)[:, None] * np.ones((1, 3))  # 2 heads of 4 rows
    out = _interleave_rope_rows(w, n_head=2)
    assert out[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_parity_tiny_logits_hf_vs_llama(tiny, hf, llm):
    model, tok = hf
    ids = tok(PROMPT)["input_ids"]
    assert 10 <= len(ids) <= 16
    ref = _hf_logits(model, ids)
    diff = np.abs(ref - _llama_logits(llm, ids)).max()
    assert diff < 1e-4, diff  # f32 weights, f32 KV cache: rounding only
    assert ref.std() > 0.2  # not flat: a wrong layer would show
    # the device default (f16 KV cache) still within 1e-3
    default = open_llama(tiny.gguf_path, n_ctx=256, n_threads=2, logits_all=True)
    try:
        diff_f16kv = np.abs(ref - _llama_logits(default, ids)).max()
    finally:
        default.close()
    assert diff_f16kv < 1e-3, diff_f16kv


def test_parity_tiny_qwen2_logits_hf_vs_llama(tmp_path):
    """Qwen2 layout: no q/k interleave (NEOX rope), q/k/v biases."""
    from export.tiny import make_tiny_model

    qwen = make_tiny_model(tmp_path, n_layer=2, arch="qwen2")
    model, tok = load_hf(qwen.hf_dir)
    assert model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0
    ids = tok(PROMPT)["input_ids"]
    ref = _hf_logits(model, ids)
    llm = open_llama(qwen.gguf_path, n_ctx=256, n_threads=2, logits_all=True, **EXACT_KV)
    try:
        assert llm.metadata["general.architecture"] == "qwen2"
        diff = np.abs(ref - _llama_logits(llm, ids)).max()
    finally:
        llm.close()
    assert diff < 1e-4, diff


def test_tokenization_hf_equals_llama(hf, llm):
    _, tok = hf
    for s in STRINGS:
        assert tok(s)["input_ids"] == llm.tokenize(s.encode(), add_bos=False, special=False), s
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 😀"}]
    text = chat_prompt(llm, messages)
    assert text == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert ids == tok(text)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_gguf_hyperparameters(tiny, llm):
    meta = llm.metadata
    assert meta["general.architecture"] == "llama"
    assert int(meta["llama.block_count"]) == tiny.n_layer
    assert int(meta["llama.embedding_length"]) == tiny.n_embd == llm.n_embd()
    assert int(meta["llama.attention.head_count_kv"]) == 2
    assert int(meta["general.file_type"]) == 0
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert llm.n_vocab() == 49152


def test_write_gguf_refuses_other_tokenizer(tiny, tmp_path, monkeypatch):
    import gguf

    monkeypatch.setenv("FINTS_EDGE_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(other, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "c"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FintsEdgeError, match="tokenizer .* differs"):
        write_gguf(tiny.hf_dir, tmp_path / "x.gguf", tokenizer_from=other)
    assert not (tmp_path / "x.gguf").exists()


def test_write_gguf_refuses_other_arch(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(FintsEdgeError, match="'gpt2' is not supported"):
        write_gguf(tmp_path, tmp_path / "x.gguf")


def test_f16_and_q4_k_m_files_load(tiny, hf, tmp_path):
    import gguf

    f16 = write_gguf(tiny.hf_dir, tmp_path / "tiny-f16.gguf", "f16")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(f16).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    q4 = quantize(f16, tmp_path / "tiny-q4km.gguf", "Q4_K_M")
    assert gguf_file_type(f16) == 1
    assert gguf_file_type(q4) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert q4.stat().st_size < f16.stat().st_size

    model, tok = hf
    ids = tok(PROMPT)["input_ids"]
    ref = _hf_logits(model, ids)
    for path, tol in ((f16, 0.05), (q4, 1.0)):
        llm = open_llama(path, n_ctx=256, n_threads=2, logits_all=True)
        try:
            got = _llama_logits(llm, ids)
        finally:
            llm.close()
        assert np.abs(got - ref).max() < tol, path.name
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95, path.name


def test_quantize_refuses_quantized_source_and_unknown_type(tiny, tmp_path):
    with pytest.raises(FintsEdgeError, match="choose one of"):
        quantize(tiny.gguf_path, tmp_path / "x.gguf", "Q3_BOGUS")
    q8 = quantize(tiny.gguf_path, tmp_path / "q8.gguf", "Q8_0")
    with pytest.raises(FintsEdgeError, match="already quantized"):
        quantize(q8, tmp_path / "x.gguf", "Q4_0")
    assert not (tmp_path / "x.gguf").exists()


# -- control vectors ----------------------------------------------------------------------------------
def _vectors(n_layer: int, n_embd: int, layers: dict[int, float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = np.zeros((n_layer, n_embd), np.float32)  # [n_layer, n_embd], row = hf_layer
    for layer, norm in layers.items():
        d = rng.normal(size=n_embd).astype(np.float32)
        v[layer] = norm * d / np.linalg.norm(d)
    return v


def _read_cvec(path):
    import gguf

    r = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data) for t in r.tensors}
    return fields, tensors


def test_control_vector_file_layout(tmp_path):
    v = _vectors(4, 8, {1: 1.0, 2: 2.0, 3: 3.0})
    path = write_control_vector(v, tmp_path / "cv.gguf", "llama")
    fields, tensors = _read_cvec(path)
    assert fields == {
        "general.architecture": "controlvector",
        "controlvector.model_hint": "llama",
        "controlvector.layer_count": 3,
    }
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]
    for n in (1, 2, 3):  # direction.N is added to the output of HF layer N = cvec row N - 1
        assert tensors[f"direction.{n}"].shape == (8,)
        assert tensors[f"direction.{n}"].dtype == np.float32
        np.testing.assert_array_equal(tensors[f"direction.{n}"], v[n])
        assert cvec_row(n) == n - 1


def test_control_vector_rejects_layer0_and_bad_shapes(tmp_path):
    v = _vectors(4, 8, {0: 1.0})
    with pytest.raises(FintsEdgeError, match="layer 0"):
        write_control_vector(v, tmp_path / "cv.gguf", "llama")
    with pytest.raises(FintsEdgeError, match="shape"):
        write_control_vector(np.zeros(8, np.float32), tmp_path / "cv.gguf", "llama")
    assert not (tmp_path / "cv.gguf").exists()


def _add_hook(vec: np.ndarray):
    add = torch.from_numpy(vec)  # [n_embd]

    def hook(_module, _inputs, out):
        return out + add  # the decoder layer's output: the residual stream after the MLP

    return hook


def test_parity_control_vector_file_vs_torch_hook(tiny, hf, tmp_path):
    """The file's directions via llama_set_adapter_cvec == adding them to HF layer outputs."""
    import llama_cpp

    model, tok = hf
    n_layer, n_embd = tiny.n_layer, tiny.n_embd
    v = _vectors(n_layer, n_embd, {1: 4.0, 3: 8.0})
    _, tensors = _read_cvec(write_control_vector(v, tmp_path / "cv.gguf", "llama"))
    buf = np.zeros((n_layer - 1, n_embd), np.float32)  # llama.cpp rows: row k -> layer k + 1
    for name, t in tensors.items():
        buf[int(name.split(".")[1]) - 1] = t

    ids = tok(PROMPT)["input_ids"]
    base = _hf_logits(model, ids)
    handles = [
        model.model.layers[layer].register_forward_hook(_add_hook(v[layer])) for layer in (1, 3)
    ]
    try:
        ref = _hf_logits(model, ids)
    finally:
        for h in handles:
            h.remove()

    llm = open_llama(tiny.gguf_path, n_ctx=256, n_threads=2, logits_all=True, **EXACT_KV)
    try:
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, buf.size, n_embd, 1, n_layer - 1)
        assert rc == 0
        got = _llama_logits(llm, ids)
        assert llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, n_embd, 0, 0) == 0
        cleared = _llama_logits(llm, ids)
    finally:
        llm.close()
    assert np.abs(ref - base).max() > 0.3  # the steering really moves the logits
    assert np.abs(got - ref).max() < 1e-3
    assert np.abs(cleared - base).max() < 1e-3


def test_profile_to_control_vector_places_user_vector(tmp_path):
    p = make_profile(n_layer=4, n_embd=8)  # layers [1, 3], sites (attn, mlp)
    user = p.raw_mean_signal()  # [S, L, n_embd]
    _, t = _read_cvec(profile_to_control_vector(p, tmp_path / "mlp.gguf", "mlp", strength=2.0))
    np.testing.assert_allclose(t["direction.1"], 2 * user[1, 0], rtol=1e-6)
    np.testing.assert_array_equal(t["direction.2"], np.zeros(8, np.float32))
    np.testing.assert_allclose(t["direction.3"], 2 * user[1, 1], rtol=1e-6)
    _, t = _read_cvec(profile_to_control_vector(p, tmp_path / "both.gguf", "both"))
    np.testing.assert_allclose(t["direction.3"], user[0, 1] + user[1, 1], rtol=1e-6)


def test_cli(tiny, tmp_path, capsys):
    prof = make_profile(n_layer=4, n_embd=8).save(tmp_path / "me.npz")
    assert main(["cvec", "--profile", str(prof), "--out", str(tmp_path / "u.gguf")]) == 0
    assert (tmp_path / "u.gguf").is_file()
    assert (
        main(
            [
                "convert",
                "--hf",
                str(tiny.hf_dir),
                "--out",
                str(tmp_path / "t.gguf"),
                "--converter",
                "direct",
            ]
        )
        == 0
    )  # the official one is fetched on demand
    assert gguf_file_type(tmp_path / "t.gguf") == 0
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "missing.gguf"), str(tmp_path / "q.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.gguf" in err


# -- reliability: control vectors read back exactly whatever the values; failed writes leave nothing
@settings(max_examples=15, deadline=None, database=None)
@given(
    vectors=st.integers(2, 6).flatmap(
        lambda n_layer: hnp.arrays(
            np.float32,
            st.tuples(st.just(n_layer), st.integers(1, 16)),
            elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
        )
    ),
    hint=st.text(max_size=20),
)
def test_control_vectors_read_back_exactly(tmp_path_factory, vectors, hint):
    vectors[0] = 0.0  # llama.cpp cannot steer layer 0's output
    folder = tmp_path_factory.mktemp("cvec")
    fields, tensors = _read_cvec(write_control_vector(vectors, folder / "cv.gguf", hint))
    n = vectors.shape[0] - 1
    assert fields == {
        "general.architecture": "controlvector",
        "controlvector.model_hint": hint,
        "controlvector.layer_count": n,
    }
    assert sorted(tensors) == sorted(f"direction.{i}" for i in range(1, n + 1))
    for i in range(1, n + 1):
        assert tensors[f"direction.{i}"].tobytes() == vectors[i].tobytes()  # bit for bit
    assert [p.name for p in folder.iterdir()] == ["cv.gguf"]


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (np.array([[0, 0], [1, 0], [0, np.nan]], np.float32), "NaN"),
        (np.array([[0, 0], [np.inf, 1]], np.float32), "infinity"),
        (np.ones((3, 4), np.float32), "row 0"),
        (np.zeros((1, 4), np.float32), "shape"),
        (np.zeros((2, 2, 2), np.float32), "shape"),
    ],
)
def test_bad_control_vectors_write_nothing(tmp_path, vectors, message):
    with pytest.raises(FintsEdgeError, match=message):
        write_control_vector(vectors, tmp_path / "cv.gguf", "llama")
    assert list(tmp_path.iterdir()) == []


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_keeps_the_old_control_vector(tmp_path, monkeypatch):
    import gguf

    out = write_control_vector(_vectors(3, 4, {1: 1.0}), tmp_path / "cv.gguf", "llama")
    before = out.read_bytes()
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", _disk_full)
    with pytest.raises(FintsEdgeError) as e:
        write_control_vector(_vectors(3, 4, {2: 5.0}), out, "llama")
    assert str(e.value) == (
        f"{out}: could not write the file (no space left on device; free some disk space and "
        "try again); the previous file is intact"
    )
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["cv.gguf"]


def test_cli_write_failures_and_ctrl_c_are_one_line(tmp_path, monkeypatch, capsys):
    import gguf

    prof = make_profile(n_layer=4, n_embd=8).save(tmp_path / "me.npz")
    args = ["cvec", "--profile", str(prof), "--out", str(tmp_path / "u.gguf")]
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", _disk_full)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {tmp_path / 'u.gguf'}: could not write the file (no space left on device; free "
        "some disk space and try again); no file was written\n"
    )

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", interrupted)
    assert main(args) == 130
    assert capsys.readouterr().err == "\ninterrupted; no output file was changed\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.npz"]
