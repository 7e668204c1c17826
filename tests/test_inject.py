"""Injection parity: llama.cpp (cvec and eval callback) vs the torch reference, on the tiny model.

Logits are compared at every prompt position and over 20 greedily generated tokens fed one by
one, so both the batched prompt path and the single-token generation path are covered.
"""

from __future__ import annotations

import numpy as np
import pytest

from export.tiny import EXACT_KV
from fints_edge.llama.inject import (
    CallbackInjector,
    CvecInjector,
    applied,
    open_steerable,
    steered,
)
from fints_edge.plan import Steering
from tests._parity import llama_run, random_vectors, torch_logits

TOL = 1e-3


@pytest.fixture(scope="module")
def hf(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny.hf_dir, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engines(tiny):
    opened = {}
    for mode in ("cvec", "exact"):
        opened[mode] = open_steerable(
            tiny.gguf_path, mode, n_ctx=128, n_threads=1, logits_all=True, **EXACT_KV
        )
    yield opened
    for llm, _ in opened.values():
        llm.close()


def _prompt(llm):
    return llm.tokenize(b"The quick brown fox jumps over the lazy dog.", add_bos=False)


@pytest.mark.parametrize(
    ("mode", "sites", "layers"),
    [
        ("cvec", ("mlp",), (2,)),
        ("exact", ("mlp",), (2,)),
        ("exact", ("attn",), (2,)),
        ("exact", ("attn", "mlp"), (1, 3)),
        ("exact", ("attn", "mlp"), (0,)),  # the callback can even steer layer 0
        ("cvec", ("mlp",), (1, 2, 3)),
    ],
)
def test_injection_parity_with_torch_reference(tiny, hf, engines, mode, sites, layers):
    llm, injector = engines[mode]
    v = random_vectors(tiny, sites, layers)
    prompt = _prompt(llm)
    _, base = llama_run(llm, prompt)
    with steered(injector, v, sites, layers):
        tokens, got = llama_run(llm, prompt)
    want = torch_logits(hf, tokens, v, sites, layers)
    unsteered_torch = torch_logits(hf, tokens, None, sites, layers)
    moved = np.abs(want - unsteered_torch).max()
    assert moved > 0.1, "the vectors must move the logits, or this test could not fail"
    assert np.abs(got - want).max() < TOL, (
        f"max |diff| {np.abs(got - want).max():.2e} (steering moved {moved:.2f})"
    )
    # cleared afterwards: the base logits come back exactly
    _, again = llama_run(llm, prompt)
    np.testing.assert_array_equal(again[: len(prompt)], base[: len(prompt)])


def test_attention_site_in_cvec_mode_is_only_approximate(tiny, hf, engines):
    """cvec adds v_attn at the layer output, so the MLP of that layer never sees it."""
    llm, injector = engines["cvec"]
    sites, layers = ("attn",), (2,)
    v = random_vectors(tiny, sites, layers)
    prompt = _prompt(llm)
    with steered(injector, v, sites, layers):
        llm.reset()
        llm.eval(prompt)
        got = np.array(llm.scores[: len(prompt)])
    want = torch_logits(hf, prompt, v, sites, layers)
    base = torch_logits(hf, prompt, None, sites, layers)
    err, effect = np.abs(got - want).max(), np.abs(want - base).max()
    print(
        f"attention site via cvec: max |logit error| {err:.3f} for a steering effect of {effect:.3f}"
    )
    assert err > 10 * TOL  # really an approximation ...
    assert err < effect  # ... but closer to steered than to unsteered


def test_strength_zero_and_zero_vectors_leave_logits_bit_identical(tiny, engines):
    for mode in ("cvec", "exact"):
        llm, injector = engines[mode]
        prompt = _prompt(llm)
        _, base = llama_run(llm, prompt)
        zeros = np.zeros((2, 1, tiny.n_embd), np.float32)
        with steered(injector, zeros, ("attn", "mlp"), (2,)):
            _, got = llama_run(llm, prompt)
        np.testing.assert_array_equal(got, base)


def test_cvec_buffer_rows_follow_llama_numbering(tiny, engines):
    _, injector = engines["cvec"]
    assert isinstance(injector, CvecInjector)
    v = random_vectors(tiny, ("attn", "mlp"), (1, 3))
    buf = injector.buffer(v, ("attn", "mlp"), (1, 3))
    assert buf.shape == (tiny.n_layer, tiny.n_embd)
    np.testing.assert_array_equal(buf[0], v[0, 0] + v[1, 0])  # HF layer 1 -> row 0
    np.testing.assert_array_equal(buf[2], v[0, 1] + v[1, 1])  # HF layer 3 -> row 2
    assert not buf[1].any() and not buf[3].any()


def test_callback_targets_the_documented_tensors(tiny, engines):
    _, injector = engines["exact"]
    assert isinstance(injector, CallbackInjector)
    graph = injector.graph
    assert (
        graph.inject_tensor("attn", 5) == "ffn_inp-5" and graph.inject_tensor("mlp", 5) == "l_out-5"
    )
    llm, _ = engines["exact"]
    injector.calls = 0
    with steered(injector, random_vectors(tiny, ("attn", "mlp"), (1,)), ("attn", "mlp"), (1,)):
        llm.reset()
        llm.eval(_prompt(llm))
    assert injector.calls == 2  # one batch, two tensors


def test_bad_vector_shape_is_refused(engines):
    from fints_edge.errors import FintsEdgeError

    _, injector = engines["exact"]
    with pytest.raises(FintsEdgeError, match="expected"):
        injector.set(np.zeros((1, 1, 3), np.float32), ("mlp",), (1,))


def test_opening_injection_parity_with_torch_reference(tiny, hf, engines):
    """Ordinary vectors everywhere plus opening vectors only at the last prompt position and the
    next two: the callback counts positions across the batched prompt and single-token steps."""
    from export.reference import logits, vectors_from_array

    llm, injector = engines["exact"]
    sites, layers = ("attn", "mlp"), (1, 3)  # 3 is the last layer
    v = random_vectors(tiny, sites, layers, scale=1.0, seed=1)
    first = random_vectors(tiny, sites, layers, scale=3.0, seed=2)
    prompt = _prompt(llm)
    window = (len(prompt) - 1, 3)
    with steered(injector, v, sites, layers):
        _, plain = llama_run(llm, prompt)
    injector.rewind()
    with applied(injector, Steering(v, sites, layers, opening=first, opening_window=3), prompt):
        tokens, got = llama_run(llm, prompt)
    assert not injector.active
    want = logits(
        hf,
        tokens,
        vectors_from_array(v, sites, layers),
        opening=vectors_from_array(first, sites, layers),
        window=window,
    )
    without = logits(hf, tokens, vectors_from_array(v, sites, layers))
    moved = np.abs(want - without)[window[0] :].max()
    assert moved > 0.1, "the opening vectors must move the logits, or this test could not fail"
    assert np.abs(got - want).max() < TOL, f"max |diff| {np.abs(got - want).max():.2e}"
    # before the window nothing changes, in llama.cpp and in torch
    np.testing.assert_array_equal(got[: window[0]], plain[: window[0]])
    assert np.abs(want - without)[: window[0]].max() == 0.0


def test_opening_window_is_validated(engines):
    from fints_edge.errors import FintsEdgeError

    _, injector = engines["exact"]
    v = np.ones((1, 1, injector.n_embd), np.float32)  # a valid shape: only the window is wrong
    steering = Steering(v, ("mlp",), (1,), opening=v, opening_window=0)
    with pytest.raises(FintsEdgeError, match=r"opening window start 2, count 0"):
        injector.apply(steering, [1, 2, 3])
    assert not injector.active  # a refused steering leaves nothing behind
    with pytest.raises(FintsEdgeError, match=r"answer start -1"):
        injector.apply(Steering(v, ("mlp",), (1,)), [])
    assert not injector.active


@pytest.mark.parametrize("prompt_scale", [0.0, 0.25])
def test_prompt_scale_parity_with_torch_reference(tiny, hf, engines, prompt_scale):
    """Steering scaled down on the prompt and full from the last prompt position on, in the
    batched prompt and the single-token steps alike."""
    from export.reference import logits, vectors_from_array

    llm, injector = engines["exact"]
    sites, layers = ("attn", "mlp"), (1, 3)
    v = random_vectors(tiny, sites, layers, scale=2.0, seed=3)
    prompt = _prompt(llm)
    start = len(prompt) - 1
    injector.rewind()
    with applied(injector, Steering(v, sites, layers, prompt_scale=prompt_scale), prompt):
        tokens, got = llama_run(llm, prompt)
    mapping = vectors_from_array(v, sites, layers)
    want = logits(hf, tokens, mapping, prompt_strength=prompt_scale, answer_start=start)
    everywhere = logits(hf, tokens, mapping)
    moved = np.abs(want - everywhere).max()
    assert moved > 0.1, "the prompt scale must change the logits, or this test could not fail"
    assert np.abs(got - want).max() < TOL, f"max |diff| {np.abs(got - want).max():.2e}"
    # cleared: the next request steers every position alike again
    with steered(injector, v, sites, layers):
        injector.rewind()
        _, full = llama_run(llm, prompt)
    assert np.abs(full - everywhere).max() < TOL


@pytest.mark.parametrize(("sites", "layers"), [(("attn",), (1,)), (("attn", "mlp"), (1, 3))])
def test_norm_preserving_parity_with_torch_reference(tiny, hf, engines, sites, layers):
    """Each steered hidden state is rescaled to its pre-steering norm, at both sites."""
    from export.reference import logits, vectors_from_array

    llm, injector = engines["exact"]
    v = random_vectors(tiny, sites, layers, scale=3.0, seed=4)
    prompt = _prompt(llm)
    with applied(injector, Steering(v, sites, layers, preserve_norm=True), prompt):
        tokens, got = llama_run(llm, prompt)
    mapping = vectors_from_array(v, sites, layers)
    want = logits(hf, tokens, mapping, preserve_norm=True)
    plain = logits(hf, tokens, mapping)
    moved = np.abs(want - plain).max()
    assert moved > 0.1, "norm preservation must change the logits, or this test could not fail"
    assert np.abs(got - want).max() < TOL, f"max |diff| {np.abs(got - want).max():.2e}"


@pytest.mark.parametrize("mode", ["cvec", "exact"])
def test_set_scale_equals_scaled_vectors(tiny, engines, mode):
    """The fade's lever: set_scale(s) steers exactly as vectors * s would, and clear resets it."""
    llm, injector = engines[mode]
    sites, layers = ("mlp",), (2,)
    v = random_vectors(tiny, sites, layers, scale=2.0, seed=5)
    prompt = _prompt(llm)
    with steered(injector, v * 0.3, sites, layers):
        _, want = llama_run(llm, prompt)
    with steered(injector, v, sites, layers):
        _, full = llama_run(llm, prompt)
        injector.set_scale(0.3)
        _, got = llama_run(llm, prompt)
    assert np.abs(full - want).max() > 0.1
    assert np.abs(got - want).max() < 1e-4, f"max |diff| {np.abs(got - want).max():.2e}"
    with steered(injector, v, sites, layers):
        _, again = llama_run(llm, prompt)
    assert np.abs(again - full).max() < 1e-4, "clear() must reset the scale"


def test_cvec_prompt_scale_by_prefill_matches_torch_reference(tiny, hf, engines):
    """Control-vector mode has no positions: the prompt but its last token is prefilled with the
    vector x scale, then the last prompt token and the answer run at full strength on that KV."""
    from export.reference import logits, vectors_from_array

    llm, injector = engines["cvec"]
    sites, layers = ("mlp",), (1, 2)  # the control vector is exact for the MLP site
    v = random_vectors(tiny, sites, layers, scale=2.0, seed=6)
    prompt = _prompt(llm)
    with applied(injector, Steering(v, sites, layers, prompt_scale=0.25), prompt):
        llm.eval([prompt[-1]])  # apply prefilled the rest at x0.25
        tokens = list(prompt)
        for _ in range(10):
            tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([tokens[-1]])
        got = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    mapping = vectors_from_array(v, sites, layers)
    want = logits(hf, tokens, mapping, prompt_strength=0.25, answer_start=len(prompt) - 1)
    everywhere = logits(hf, tokens, mapping)
    assert np.abs(want - everywhere).max() > 0.1
    assert np.abs(want - everywhere)[len(prompt) :].max() > 10 * TOL  # the prompt's KV, later
    assert np.abs(got - want).max() < TOL, f"max |diff| {np.abs(got - want).max():.2e}"
