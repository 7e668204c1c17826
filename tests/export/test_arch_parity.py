"""Every architecture in ``fints_edge.llama.arch``: llama.cpp against torch on a tiny random model.

Per arch (llama, qwen2, mistral -> a llama GGUF, gemma3 with an 8-token sliding window), the
same checks the Llama path has in tests/test_inject.py and tests/test_learn.py:
- injection: exact (eval callback) and cvec against the torch reference (HF + forward hooks),
  logits at every prompt position and over 20 generated tokens, max |difference| < 1e-3;
- extraction: on-device signals (``fints_edge.learn.extract``) against torch hooks (``export.extract``),
  both attention readings, layer 0 (qwen2 reads its residual input from the embeddings) and the
  last layer (llama.cpp prunes its rows);
- conversion: the direct GGUF writer against llama.cpp's own ``convert_hf_to_gguf.py``.

gemma3: llama.cpp's CPU backend computes GELU through a float16 table (``GGML_GELU_FP16`` in
ggml-cpu/vec.h), ~1e-3 off torch's tanh GELU at these sizes. The torch twin here looks GELU up in
that very table (:class:`Fp16TableGelu`) so that what is compared is the steering; a test pins
the size of the gap it closes (the real gemma-3-270m carries the same approximation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.tiny import EXACT_KV, TINY_ARCHS, make_tiny_model
from fints_edge.llama.inject import CallbackInjector, CvecInjector, open_steerable, steered
from tests._parity import llama_run, random_vectors, torch_logits

TOL = 1e-3
N_LAYERS = {"llama": 4, "qwen2": 4, "mistral": 4, "gemma3": 6}  # gemma3: layer 5 is global
# Device vs torch signals: ~1e-7 where llama.cpp computes in f32 throughout. gemma3's GELU table
# is indexed by the input rounded to float16, and an input 1e-7 off can round to the neighbour
# entry: sporadic flips leave ~5e-4 on signals of size ~2 (cosine still 1.0000).
SIGNAL_ATOL = {"gemma3": 2e-3}
PAIRS = [
    ("Write a headline about the river festival.", "river festival opens with lanterns",
     "The River Festival Returns!"),
    ("Explain rain in one line.", "rain is just water falling, friend", "Rain Forms From Clouds."),
]  # fmt: skip


class Fp16TableGelu(torch.nn.Module):
    """GELU exactly as llama.cpp's CPU backend computes it: the input rounded to float16 indexes
    ggml's own table ``ggml_table_gelu_f16`` (read from libggml-cpu, filled once a model is
    loaded); 0 below -10 and the identity above 10 (ggml_vec_geglu_f32)."""

    def __init__(self) -> None:
        super().__init__()
        import ctypes
        from pathlib import Path

        import llama_cpp

        # The wheel ships copies under several names; the one llama.cpp loaded has it filled.
        one = np.float16(1.0).view(np.uint16)
        for path in sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu.*")):
            raw = (ctypes.c_uint16 * 65536).in_dll(ctypes.CDLL(str(path)), "ggml_table_gelu_f16")
            table = np.frombuffer(raw, dtype=np.float16).astype(np.float32)  # [65536]
            if abs(table[one] - 0.8413) < 1e-3:  # gelu(1)
                self.table = torch.from_numpy(table.copy())
                return
        raise AssertionError("llama.cpp's GELU table is not filled: load a model first")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x.half().view(torch.int16).to(torch.int64) & 0xFFFF
        y = self.table[idx]
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))


def _load_hf(tiny, llama_cpp_gelu: bool = True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32).eval()
    if llama_cpp_gelu and tiny.arch == "gemma3":
        for layer in model.model.layers:
            layer.mlp.act_fn = Fp16TableGelu()
    return model, AutoTokenizer.from_pretrained(tiny.hf_dir)


@pytest.fixture(scope="module", params=TINY_ARCHS)
def arch_model(request, tmp_path_factory):
    """(arch, TinyModel, HF model, tokenizer, {mode: (llm, injector)}) for one architecture."""
    torch.set_num_threads(1)
    arch = request.param
    tiny = make_tiny_model(tmp_path_factory.mktemp(arch), n_layer=N_LAYERS[arch], arch=arch)
    engines = {
        mode: open_steerable(
            tiny.gguf_path, mode, n_ctx=256, n_threads=1, logits_all=True, **EXACT_KV
        )
        for mode in ("cvec", "exact")
    }
    hf, tok = _load_hf(tiny)  # after llama.cpp filled its GELU table
    yield arch, tiny, hf, tok, engines
    for llm, _ in engines.values():
        llm.close()


def _prompt(llm) -> list[int]:
    return llm.tokenize(b"The quick brown fox jumps over the lazy dog. It was", add_bos=False)


def _cases(n_layer: int) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    mid = n_layer // 2
    return [
        ("exact", ("attn", "mlp"), (0, n_layer - 1)),  # layer 0's residual input; pruned last
        ("exact", ("attn",), (mid,)),  # alone: the MLP of that layer must see it
        ("exact", ("mlp",), (mid,)),
        ("cvec", ("mlp",), (mid,)),  # the built-in control vector = the MLP site
    ]


def test_injection_parity_every_arch(arch_model):
    arch, tiny, hf, _, engines = arch_model
    report = []
    for mode, sites, layers in _cases(tiny.n_layer):
        llm, injector = engines[mode]
        v = random_vectors(tiny, sites, layers)
        prompt = _prompt(llm)
        _, base = llama_run(llm, prompt)
        with steered(injector, v, sites, layers):
            tokens, got = llama_run(llm, prompt)
        want = torch_logits(hf, tokens, v, sites, layers)
        moved = np.abs(want - torch_logits(hf, tokens, None, sites, layers)).max()
        err = np.abs(got - want).max()
        report.append(f"{arch} {mode} {'+'.join(sites)} @ {layers}: {err:.1e} (moved {moved:.2f})")
        assert moved > 0.1, f"the vectors must move the logits, or this could not fail: {report}"
        assert err < TOL, report
        _, again = llama_run(llm, prompt)  # cleared: the base logits come back exactly
        np.testing.assert_array_equal(again[: len(prompt)], base[: len(prompt)])
    print("\n".join(report))


def test_parity_attention_site_in_cvec_mode_is_only_approximate(arch_model):
    arch, tiny, hf, _, engines = arch_model
    llm, injector = engines["cvec"]
    sites, layers = ("attn",), (tiny.n_layer // 2,)
    v = random_vectors(tiny, sites, layers)
    prompt = _prompt(llm)
    with steered(injector, v, sites, layers):
        llm.reset()
        llm.eval(prompt)
        got = np.array(llm.scores[: len(prompt)])
    want = torch_logits(hf, prompt, v, sites, layers)
    base = torch_logits(hf, prompt, None, sites, layers)
    err, effect = np.abs(got - want).max(), np.abs(want - base).max()
    assert 10 * TOL < err < effect, f"{arch}: error {err:.3f} for an effect of {effect:.3f}"


def test_parity_callback_targets_the_table_tensors(arch_model):
    from fints_edge.llama.arch import ARCHS

    arch, tiny, _, _, engines = arch_model
    llm, injector = engines["exact"]
    assert isinstance(injector, CallbackInjector) and isinstance(engines["cvec"][1], CvecInjector)
    assert injector.graph is ARCHS[tiny.arch]  # mistral -> the llama graph
    injector.calls = 0
    with steered(injector, random_vectors(tiny, ("attn", "mlp"), (1,)), ("attn", "mlp"), (1,)):
        llm.reset()
        llm.eval(_prompt(llm))
    assert injector.calls == 2, arch  # one batch, two tensors found by name in the graph


@pytest.mark.parametrize("reading", ["output", "residual"])
def test_parity_device_signals_match_torch_every_arch(arch_model, reading):
    from export.extract import extract_signals, prompt_ids
    from fints_edge.learn.extract import DeviceExtractor

    arch, tiny, hf, tok, engines = arch_model
    layers = [0, tiny.n_layer // 2, tiny.n_layer - 1]
    ref = extract_signals(hf, tok, PAIRS, layers, attn_reading=reading, progress=False)
    llm, injector = engines["exact"]
    ex = DeviceExtractor(llm, injector, layers, ("attn", "mlp"), reading, "chat")
    got = []
    for text, chosen, rejected in PAIRS:
        assert ex.prompt_tokens(text) == prompt_ids(tok, text, "chat")
        got.append(ex.signal(text, chosen, rejected))
    signals = np.stack([g.signal for g in got])  # [N, S, L, E]
    assert signals.shape == ref.signals.shape == (len(PAIRS), 2, 3, tiny.n_embd)
    assert np.abs(ref.signals).max() > 0.05, "a zero signal would match anything"
    err = np.abs(signals - ref.signals).max()
    print(f"{arch} {reading}: max |device - torch| {err:.1e}")
    atol = SIGNAL_ATOL.get(arch, 1e-4)
    flat = signals.reshape(-1, tiny.n_embd).astype(np.float64)
    ref_flat = ref.signals.reshape(-1, tiny.n_embd).astype(np.float64)
    cos = (
        (flat * ref_flat).sum(-1)
        / np.linalg.norm(flat, axis=-1)
        / np.linalg.norm(ref_flat, axis=-1)
    )
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(signals, ref.signals, atol=atol)
    norms = np.mean([g.residual_norms for g in got], axis=0)
    np.testing.assert_allclose(norms, ref.residual_norms, rtol=1e-4)
    opening = np.stack([g.opening for g in got])
    np.testing.assert_allclose(opening, ref.opening, atol=atol)


def test_parity_gemma3_gelu_table_is_the_whole_gap(tmp_path):
    """With torch's GELU the tiny gemma3 is 1.1e-3 off llama.cpp; with llama.cpp's table, 4e-4,
    and ~1e-6 at every position before the first float16 rounding flip (see SIGNAL_ATOL): the
    table, not a site or a norm, is what the torch twin above adjusts for."""
    tiny = make_tiny_model(tmp_path, n_layer=N_LAYERS["gemma3"], arch="gemma3")
    llm, _ = open_steerable(tiny.gguf_path, "cvec", n_ctx=128, n_threads=1, logits_all=True,
                            **EXACT_KV)  # fmt: skip
    try:
        tokens, got = llama_run(llm, _prompt(llm))
    finally:
        llm.close()
    plain = np.abs(got - torch_logits(_load_hf(tiny, False)[0], tokens, None, (), ())).max()
    table = np.abs(got - torch_logits(_load_hf(tiny, True)[0], tokens, None, (), ())).max()
    print(f"gemma3 unsteered: torch GELU {plain:.1e}, llama.cpp's GELU table {table:.1e}")
    assert table < 0.5 * plain and table < TOL and plain < 1e-2


# -- the direct writer against llama.cpp's own converter ---------------------------------------------
def _converter_or_skip():
    from export.gguf import _CONVERTER_SCRIPT, converter_dir

    if not (converter_dir() / _CONVERTER_SCRIPT).is_file():
        pytest.skip("llama.cpp's converter not fetched: python -m export.gguf fetch-converter")


# Hyper-parameters that change what llama.cpp computes (tokenizer ids come from different
# sources: the direct writer copies SmolLM2's GGUF, the converter reads the HF folder).
_MATTERS = (
    "block_count", "context_length", "embedding_length", "feed_forward_length",
    "attention.head_count", "attention.head_count_kv", "attention.key_length",
    "attention.value_length", "attention.layer_norm_rms_epsilon", "attention.sliding_window",
    "rope.freq_base", "rope.freq_base_swa", "final_logit_softcapping",
)  # fmt: skip


def _gguf_contents(path):
    import gguf

    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    hparams = {k: reader.fields[f"{arch}.{k}"].contents()
               for k in _MATTERS if f"{arch}.{k}" in reader.fields}  # fmt: skip
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    return arch, hparams, tensors, tokens


def test_parity_direct_writer_equals_llama_cpp_converter(arch_model, tmp_path):
    from export.gguf import convert_official
    from fints_edge.llama.model import open_llama

    _converter_or_skip()
    arch, tiny, _, _, engines = arch_model
    official = convert_official(tiny.hf_dir, tmp_path / "official.gguf", "f32")
    a_arch, a_hp, a_t, a_tok = _gguf_contents(tiny.gguf_path)
    b_arch, b_hp, b_t, b_tok = _gguf_contents(official)
    assert a_arch == b_arch == tiny.arch
    assert a_hp == b_hp, arch
    assert sorted(a_t) == sorted(b_t), arch
    for name in a_t:
        np.testing.assert_array_equal(a_t[name], b_t[name], err_msg=f"{arch} {name}")
    assert a_tok == b_tok
    llm = open_llama(official, n_ctx=128, n_threads=1, logits_all=True, **EXACT_KV)
    try:
        prompt = _prompt(llm)
        _, got = llama_run(llm, prompt)
    finally:
        llm.close()
    direct = engines["cvec"][0]
    assert _prompt(direct) == prompt  # the same vocabulary and pre-tokenizer
    _, want = llama_run(direct, prompt)
    np.testing.assert_array_equal(got, want)


# -- the optional real models (make models-extra), when assembled ----------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "fmt"),
    [("qwen2.5-coder-0.5b", "chat"), ("qwen2.5-coder-1.5b", "chat"), ("gemma-3-270m", "plain")],
)
def test_optional_model_learns_on_device_and_steers(name, fmt, tmp_path, onnx_encoder_dir):
    """The issue's acceptance path on the real GGUF: a device profile (qwen2 used to fail with
    '0 rows of attn_out'), then exact steering moves the answer's logits and cvec runs."""
    import json

    from fints_edge import zoo
    from fints_edge.errors import FintsEdgeError
    from fints_edge.learn import main as learn_main
    from fints_edge.profile import Profile

    try:
        model = zoo.path(name)
    except FintsEdgeError as e:
        pytest.skip(str(e))
    history = tmp_path / "h.jsonl"
    history.write_text("".join(json.dumps({"input": i, "output": o, "rejected": r}) + "\n"
                               for i, o, r in PAIRS))  # fmt: skip
    out = tmp_path / "me.npz"
    rc = learn_main(["--model", str(model), "--history", str(history), "--out", str(out),
                     "--encoder", str(onnx_encoder_dir), "--threads", "1", "--quiet"])  # fmt: skip
    assert rc == 0
    profile = Profile.load(out)
    assert profile.prompt_format == fmt  # gemma-3-270m base has no chat template
    assert np.isfinite(profile.signals.astype(np.float32)).all()
    assert np.abs(profile.signals.astype(np.float32)).max() > 0
    user = profile.raw_mean_signal().astype(np.float32) * 4  # [S, L, n_embd]
    moved = {}
    for mode in ("exact", "cvec"):
        llm, injector = open_steerable(model, mode, n_ctx=256, n_threads=1, logits_all=True)
        try:
            ids = llm.tokenize(b"The river festival opens with lanterns", add_bos=True)
            llm.reset()
            llm.eval(ids)
            base = np.array(llm.scores[: len(ids)])
            with steered(injector, user, profile.sites, profile.layers.tolist()):
                llm.reset()
                llm.eval(ids)
                moved[mode] = np.abs(np.array(llm.scores[: len(ids)]) - base).max()
        finally:
            llm.close()
    assert moved["exact"] > 0.1 and moved["cvec"] > 0.1, moved
