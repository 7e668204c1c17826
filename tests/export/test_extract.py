"""Extraction checked against a by-hand recomputation of each layer that uses none of our hooks.

The tiny models here tokenize one UTF-8 byte per token, so the tests count answer tokens as
len(answer.encode()) and never ask encode_pair where the answer starts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.extract import encode_pair, extract_signals, record_activations, start_recording
from fints_edge.errors import FintsEdgeError
from tests.export._torch_tiny import N_EMBD, byte_tokenizer, no_hooks_left, tiny_decoder

PAIRS = [
    ("Write a headline about a new bridge.", "bridge opens", "City Opens New Bridge Downtown"),
    ("Pick a letter.", "x", "y"),  # one-token answers: an off-by-one start is plainly wrong
    ("Say it in French.", "très bien", "very good"),
]
LAYERS = [0, 2, 3]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def hf(request):
    torch.set_num_threads(1)
    return tiny_decoder(request.param), byte_tokenizer()


def _by_hand(model, ids, L):
    """Layer L's sites from its own modules on hidden_states[L]: no hooks, explicit causal mask."""
    with torch.no_grad():
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        h, T = hs[L], len(ids)
        layer = model.model.layers[L]
        rope = model.model.rotary_emb(h, torch.arange(T)[None])
        causal = torch.full((T, T), float("-inf")).triu(1)[None, None]
        a = layer.self_attn(
            hidden_states=layer.input_layernorm(h), position_embeddings=rope, attention_mask=causal
        )[0]
        m = layer.mlp(layer.post_attention_layernorm(h + a))
        out = h + a + m
        # HF's last hidden state is after the final norm; the recomputation must reproduce it
        seen = model.model.norm(out) if L == len(model.model.layers) - 1 else out
    torch.testing.assert_close(seen, hs[L + 1], atol=1e-5, rtol=0)
    return {"output": a[0], "residual": (h + a)[0], "mlp": m[0], "out": out[0]}


def _full_ids(tok, text, answer, fmt):
    prompt = (
        tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        if fmt == "chat"
        else text + "\n"
    )
    return tok(prompt + answer, add_special_tokens=False)["input_ids"]


def _answer_mean(model, tok, text, answer, fmt, L, kind):
    n = len(answer.encode())  # one token per byte
    return _by_hand(model, _full_ids(tok, text, answer, fmt), L)[kind][-n:].mean(0)


@pytest.mark.parametrize("fmt", ["chat", "plain"])
@pytest.mark.parametrize("reading", ["output", "residual"])
def test_signals_equal_hook_free_recomputation(hf, fmt, reading):
    model, tok = hf
    ex = extract_signals(
        model, tok, PAIRS, LAYERS, attn_reading=reading, prompt_format=fmt, progress=False
    )
    assert ex.signals.shape == (3, 2, 3, N_EMBD) and ex.signals.dtype == np.float32
    for n, (text, chosen, rejected) in enumerate(PAIRS):
        for j, L in enumerate(LAYERS):
            for i, kind in enumerate([reading, "mlp"]):
                want = _answer_mean(model, tok, text, chosen, fmt, L, kind) - _answer_mean(
                    model, tok, text, rejected, fmt, L, kind
                )
                np.testing.assert_allclose(ex.signals[n, i, j], want, atol=2e-6, rtol=0)
                assert want.abs().max() > 1e-3  # 500x the tolerance: a wrong site would show


def test_off_by_one_answer_start_would_be_caught(hf):
    """With one-token answers the signal is exactly last-minus-last; start +- 1 is far off."""
    model, tok = hf
    text = "Pick a letter."
    ex = extract_signals(model, tok, [(text, "x", "y")], [2], prompt_format="plain", progress=False)
    got = ex.signals[0, 1, 0]  # mlp site
    x, y = (_by_hand(model, _full_ids(tok, text, a, "plain"), 2)["mlp"] for a in "xy")
    np.testing.assert_allclose(got, x[-1] - y[-1], atol=1e-6, rtol=0)
    one_early = x[-2:].mean(0) - y[-2:].mean(0)  # start - 1 also averages the prompt's "\n"
    assert np.abs(got - one_early.numpy()).max() > 1e-2
    ids, start = encode_pair(tok, text, "x", "plain")
    assert (len(ids) - start, ids[start:]) == (1, tok("x")["input_ids"])


def test_residual_norms_are_layer_output_norms_over_chosen_answers(hf):
    model, tok = hf
    ex = extract_signals(model, tok, PAIRS, LAYERS, progress=False)
    for j, L in enumerate(LAYERS):
        norms = []
        for text, chosen, _ in PAIRS:
            out = _by_hand(model, _full_ids(tok, text, chosen, "chat"), L)["out"]
            norms.append(out[-len(chosen.encode()) :].norm(dim=-1).mean())
        np.testing.assert_allclose(ex.residual_norms[j], torch.stack(norms).mean(), rtol=1e-5)
    assert ex.residual_norms.shape == (3,) and ex.residual_norms.dtype == np.float32


def test_equal_answers_give_zero_and_another_answer_changes_the_signal(hf):
    model, tok = hf
    same = extract_signals(
        model, tok, [("Say hi.", "hello there", "hello there")], [1], progress=False
    )
    assert not same.signals.any() and same.residual_norms[0] > 0
    a = extract_signals(model, tok, [("Say hi.", "hello there", "good day")], [1], progress=False)
    b = extract_signals(model, tok, [("Say hi.", "hello there", "good night")], [1], progress=False)
    assert np.abs(a.signals - b.signals).max() > 1e-2


def test_sites_pick_and_order_slices_of_the_full_signal(hf):
    model, tok = hf
    full = extract_signals(model, tok, PAIRS, [1, 3], progress=False).signals
    mlp = extract_signals(model, tok, PAIRS, [1, 3], sites=["mlp"], progress=False).signals
    flipped = extract_signals(model, tok, PAIRS, [1, 3], sites=["mlp", "attn"], progress=False)
    np.testing.assert_array_equal(mlp, full[:, 1:])
    np.testing.assert_array_equal(flipped.signals, full[:, ::-1])


@pytest.mark.parametrize("reading", ["output", "residual"])
def test_recorded_activations_are_the_modules_outputs_per_token(hf, reading):
    model, tok = hf
    ids, _ = encode_pair(tok, *PAIRS[0][:2], "chat")
    with record_activations(model, [1, 3], reading) as acts, torch.no_grad():
        model(torch.tensor([ids]))
    for L in (1, 3):
        want = _by_hand(model, ids, L)
        for key, kind in ((("attn", L), reading), (("mlp", L), "mlp"), (("out", L), "out")):
            torch.testing.assert_close(acts[key], want[kind], atol=1e-5, rtol=0)


def test_answer_is_tokenized_on_its_own_with_a_real_bpe_tokenizer(tiny):
    """SmolLM2's BPE: the answer ids follow the chat header exactly, no merge across the seam."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.hf_dir)
    text, answer = "Name a colour.", "blue like the sea"
    ids, start = encode_pair(tok, text, answer, "plain")
    assert ids[start:] == tok(answer, add_special_tokens=False)["input_ids"]
    assert ids[:start] == tok(text + "\n", add_special_tokens=False)["input_ids"]
    chat_ids, chat_start = encode_pair(tok, text, answer, "chat")
    assert tok.decode(chat_ids[:chat_start]).endswith("<|im_start|>assistant\n")
    assert tok.decode(chat_ids[chat_start:]) == answer


def test_bad_arguments_are_refused_with_a_clear_error(hf):
    model, tok = hf
    for layers in ([4], [2, 1], [1, 1], [], [-1]):
        with pytest.raises(FintsEdgeError, match="decoder indices in 0..3"):
            extract_signals(model, tok, PAIRS, layers, progress=False)
    with pytest.raises(FintsEdgeError, match="sites"):
        extract_signals(model, tok, PAIRS, [1], sites=["ffn"], progress=False)
    with pytest.raises(FintsEdgeError, match="attn_reading"):
        extract_signals(model, tok, PAIRS, [1], attn_reading="input", progress=False)
    with pytest.raises(FintsEdgeError, match="prompt_format"):
        extract_signals(model, tok, PAIRS, [1], prompt_format="raw", progress=False)
    with pytest.raises(FintsEdgeError, match="empty answer"):
        extract_signals(model, tok, [("Q?", "", "no")], [1], progress=False)
    with pytest.raises(FintsEdgeError, match="no contrast pairs"):
        extract_signals(model, tok, [], [1], progress=False)
    with pytest.raises(FintsEdgeError, match="model.model.layers"):
        extract_signals(torch.nn.Linear(2, 2), tok, PAIRS, [0], progress=False)
    assert no_hooks_left(model)


def test_progress_bar_goes_to_stderr(hf, capsys):
    model, tok = hf
    extract_signals(model, tok, PAIRS[:1], [1], progress=True)
    captured = capsys.readouterr()
    assert "signals" in captured.err and captured.out == ""


def test_hooks_are_removed_after_an_error_and_by_the_handle(hf):
    model, _ = hf
    with pytest.raises(RuntimeError, match="boom"), record_activations(model, [1, 2]):
        assert not no_hooks_left(model)
        raise RuntimeError("boom")
    assert no_hooks_left(model)
    rec = start_recording(model, [0, 3], "residual")
    assert not no_hooks_left(model)
    rec.remove()
    rec.remove()  # twice is fine
    assert no_hooks_left(model)


def test_a_failed_registration_removes_the_hooks_already_registered(hf, monkeypatch):
    model, _ = hf

    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot hook")

    monkeypatch.setattr(model.model.layers[2].mlp, "register_forward_hook", refuse)
    with pytest.raises(RuntimeError, match="cannot hook"), record_activations(model, [1, 2]):
        pass  # never reached: layer 1's hooks went on, then layer 2's MLP refused
    assert no_hooks_left(model)


@pytest.mark.slow
def test_real_model_signals_equal_hook_free_recomputation():
    """SmolLM2-135M (dequantized default GGUF), real BPE + chat template, default layer 22."""
    from export.models import dequantized_hf, load_hf

    torch.set_num_threads(2)
    model, tok = load_hf(dequantized_hf())
    pair = (
        "Write a headline: a local bakery won the bread award.",
        "best loaf in town",
        "Bakery Wins",
    )
    ex = extract_signals(model, tok, [pair], [22], progress=False)
    means = []
    for answer in pair[1:]:
        ids, start = encode_pair(tok, pair[0], answer, "chat")
        assert tok.decode(ids[start:]) == answer
        sites = _by_hand(model, ids, 22)
        means.append(torch.stack([sites["output"][start:].mean(0), sites["mlp"][start:].mean(0)]))
    want = (means[0] - means[1]).numpy()  # [S, n_embd]
    np.testing.assert_allclose(ex.signals[0, :, 0], want, atol=1e-3 * np.abs(want).max(), rtol=0)
    assert 50 < ex.residual_norms[0] < 1000  # measured ~320 at layer 22
