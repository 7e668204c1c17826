"""Extraction checked against hidden states computed without any of our hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.extract import encode_pair, extract_signals, record_activations
from fints_edge.errors import FintsEdgeError

PAIRS = [
    (
        "Write a headline about a new bridge.",
        "bridge opens downtown",
        "City Opens New Bridge Downtown",
    ),
    ("Summarize: the cat sat on the mat.", "cat sits, mat happy", "The cat sat on the mat."),
]


@pytest.fixture(scope="module")
def hf(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny.hf_dir)


def _hidden(model, ids):
    with torch.no_grad():
        return [h[0] for h in model(torch.tensor([ids]), output_hidden_states=True).hidden_states]


def _answer_mean_delta(model, tok, fmt, layer, fn):
    """mean over answer tokens of fn(hidden_states, layer), chosen minus rejected, per pair."""
    out = []
    for text, chosen, rejected in PAIRS:
        means = []
        for answer in (chosen, rejected):
            ids, start = encode_pair(tok, text, answer, fmt)
            means.append(fn(_hidden(model, ids), layer)[start:].mean(0))
        out.append((means[0] - means[1]).numpy())
    return np.stack(out)


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_attn_plus_mlp_signal_equals_layer_delta_from_hidden_states(hf, fmt):
    model, tok = hf
    ex = extract_signals(model, tok, PAIRS, [1, 2], prompt_format=fmt, progress=False)
    assert ex.signals.shape == (2, 2, 2, 64) and ex.signals.dtype == np.float32
    for j, layer in enumerate([1, 2]):
        want = _answer_mean_delta(model, tok, fmt, layer, lambda hs, L: hs[L + 1] - hs[L])
        np.testing.assert_allclose(ex.signals[:, 0, j] + ex.signals[:, 1, j], want, atol=1e-5)
        assert np.abs(want).max() > 1e-2


def test_residual_reading_is_output_reading_plus_layer_input(hf):
    model, tok = hf
    out = extract_signals(model, tok, PAIRS, [2], attn_reading="output", progress=False)
    res = extract_signals(model, tok, PAIRS, [2], attn_reading="residual", progress=False)
    hs_in = _answer_mean_delta(model, tok, "chat", 2, lambda hs, L: hs[L])
    np.testing.assert_allclose(res.signals[:, 0, 0], out.signals[:, 0, 0] + hs_in, atol=1e-5)
    np.testing.assert_array_equal(res.signals[:, 1], out.signals[:, 1])  # MLP site unchanged


def test_hooked_sites_are_the_modules_outputs(hf):
    """mlp == mlp(post_norm(input + attn)) and input + attn + mlp == layer output, per token."""
    model, tok = hf
    ids, _ = encode_pair(tok, *PAIRS[0][:2], "chat")
    layer = model.model.layers[1]
    with record_activations(model, [1]) as store, torch.no_grad():
        hs = [h[0] for h in model(torch.tensor([ids]), output_hidden_states=True).hidden_states]
        a, m = store[("attn", 1)], store[("mlp", 1)]
        np.testing.assert_allclose(
            m, layer.mlp(layer.post_attention_layernorm(hs[1] + a)), atol=1e-5
        )
    np.testing.assert_allclose(hs[1] + a + m, hs[2], atol=1e-5)


def test_answer_tokens_start_exactly_after_the_prompt(hf):
    _, tok = hf
    text, answer = "Name a colour.", "blue like the sea"
    ids, start = encode_pair(tok, text, answer, "plain")
    assert ids[start:] == tok(answer, add_special_tokens=False)["input_ids"]
    assert ids[:start] == tok(text + "\n", add_special_tokens=False)["input_ids"]
    chat_ids, chat_start = encode_pair(tok, text, answer, "chat")
    assert tok.decode(chat_ids[:chat_start]).endswith("<|im_start|>assistant\n")
    assert tok.decode(chat_ids[chat_start:]) == answer


def test_equal_answers_give_zero_signal_and_norms_are_positive(hf):
    model, tok = hf
    ex = extract_signals(
        model, tok, [("Say hi.", "hello there", "hello there")], [1], progress=False
    )
    assert not ex.signals.any()
    assert ex.residual_norms.shape == (1,) and ex.residual_norms[0] > 0


def test_only_answer_tokens_count(hf):
    """Moving the contrast from the answer into a prompt-only change must give a zero signal."""
    model, tok = hf
    a = extract_signals(
        model, tok, [("Q one?", "same answer", "other answer words")], [2], progress=False
    )
    b = extract_signals(model, tok, [("Q one?", "same answer", "same answer")], [2], progress=False)
    assert np.abs(a.signals).max() > 1e-2 and not b.signals.any()


def test_bad_layers_are_refused(hf):
    model, tok = hf
    for layers in ([4], [2, 1], [], [-1]):
        with pytest.raises(FintsEdgeError, match="decoder indices"):
            extract_signals(model, tok, PAIRS, layers, progress=False)


def test_hooks_are_removed_even_after_an_error(hf):
    model, _ = hf
    with pytest.raises(RuntimeError), record_activations(model, [1, 2]):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
