"""The torch reference hooks: exact Pulse-and-Re-Pulse semantics, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.reference import add_steering, generate, logits, steer, vectors_from_array
from fints_edge.errors import FintsEdgeError
from tests.export._torch_tiny import N_EMBD, byte_tokenizer, no_hooks_left, tiny_decoder

IDS = list(b"The quick brown fox jumps.")  # byte tokenizer: token id == byte value


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def hf(request):
    torch.set_num_threads(1)
    return tiny_decoder(request.param), byte_tokenizer()


def _hs(model, vectors=None, strength=1.0):
    with torch.no_grad(), steer(model, vectors, strength):
        return [h[0] for h in model(torch.tensor([IDS]), output_hidden_states=True).hidden_states]


def _v(seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=N_EMBD)).astype(np.float32)


def _layer_by_hand(model, h, L, v_attn, v_mlp):
    """Decoder layer L on h [T, n_embd], hook-free: h + (a + v_attn) + mlp(norm(h + a + v_attn)) + v_mlp."""
    layer, T = model.model.layers[L], h.shape[0]
    with torch.no_grad():
        rope = model.model.rotary_emb(h[None], torch.arange(T)[None])
        causal = torch.full((T, T), float("-inf")).triu(1)[None, None]
        a = layer.self_attn(
            hidden_states=layer.input_layernorm(h[None]),
            position_embeddings=rope,
            attention_mask=causal,
        )[0][0]
        r = h + a + torch.from_numpy(v_attn)
        return r + layer.mlp(layer.post_attention_layernorm(r)) + torch.from_numpy(v_mlp)


def test_zero_vector_and_zero_strength_change_nothing(hf):
    model, _ = hf
    base = logits(model, IDS)
    zeros = {2: {"attn": np.zeros(N_EMBD), "mlp": np.zeros(N_EMBD)}}
    np.testing.assert_array_equal(logits(model, IDS, zeros), base)
    np.testing.assert_array_equal(logits(model, IDS, {2: {"attn": _v(), "mlp": _v(1)}}, 0.0), base)
    np.testing.assert_array_equal(logits(model, IDS, {}), base)
    assert np.abs(logits(model, IDS, {2: {"attn": _v(), "mlp": _v(1)}}) - base).max() > 0.1


@pytest.mark.parametrize("site", ["attn", "mlp"])
@pytest.mark.parametrize("layer", [0, 2])
def test_earlier_layers_untouched_and_steered_layer_changes(hf, site, layer):
    model, _ = hf
    base, steered = _hs(model), _hs(model, {layer: {site: _v()}})
    for i in range(layer + 1):  # hidden_states[0..L] = embeddings and outputs of layers < L
        assert torch.equal(base[i], steered[i]), i
    assert (steered[layer + 1] - base[layer + 1]).abs().min() > 0  # every position and dim moved


def test_mlp_site_shifts_layer_output_by_exactly_strength_times_v(hf):
    model, _ = hf
    v = _v()
    base, steered = _hs(model), _hs(model, {2: {"mlp": v}}, strength=2.5)
    want = np.broadcast_to(2.5 * v, base[3].shape)
    np.testing.assert_allclose(steered[3] - base[3], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strength", [1.0, -3.0])
def test_attn_site_is_re_pulsed_through_the_mlp(hf, strength):
    """Layer output == h + (a + s v) + mlp(post_norm(h + a + s v)): the MLP sees the steered residual."""
    model, _ = hf
    v, zero = _v(), np.zeros(N_EMBD, np.float32)
    base = _hs(model)
    got = _hs(model, {2: {"attn": v}}, strength)[3]
    torch.testing.assert_close(
        got, _layer_by_hand(model, base[2], 2, strength * v, zero), atol=1e-5, rtol=0
    )
    # a control vector at the layer output (MLP never sees v) would be measurably different
    cvec_style = _layer_by_hand(model, base[2], 2, zero, strength * v)
    assert (got - cvec_style).abs().max() > 1e-3


def test_both_sites_at_two_layers_compose_layer_by_layer(hf):
    model, _ = hf
    vecs = {1: {"attn": _v(1), "mlp": _v(2)}, 2: {"attn": _v(3), "mlp": _v(4)}}
    base, got = _hs(model), _hs(model, vecs, 0.5)
    h2 = _layer_by_hand(model, base[1], 1, 0.5 * _v(1), 0.5 * _v(2))
    torch.testing.assert_close(got[2], h2, atol=1e-5, rtol=0)
    h3 = _layer_by_hand(model, got[2], 2, 0.5 * _v(3), 0.5 * _v(4))
    torch.testing.assert_close(got[3], h3, atol=1e-5, rtol=0)


def test_vectors_from_array_and_tensor_inputs_match_the_mapping(hf):
    model, _ = hf
    arr = np.stack([np.stack([_v(1), _v(2)]), np.stack([_v(3), _v(4)])])  # [S=2, L=2, n_embd]
    mapping = vectors_from_array(arr, ["attn", "mlp"], [1, 3])
    assert sorted(mapping) == [1, 3] and np.array_equal(mapping[3]["attn"], _v(2))
    as_dict = {1: {"attn": _v(1), "mlp": _v(3)}, 3: {"attn": torch.from_numpy(_v(2)), "mlp": _v(4)}}
    np.testing.assert_array_equal(logits(model, IDS, mapping), logits(model, IDS, as_dict))
    with pytest.raises(FintsEdgeError, match="expected"):
        vectors_from_array(arr, ["attn"], [1, 3])


def test_bad_vectors_are_refused_before_any_hook_goes_on(hf):
    model, _ = hf
    bad = [
        ({1: {"mlp": _v()}, 4: {"mlp": _v()}}, "decoder indices"),
        ({1: {"mlp": _v()}, 2: {"mlp": np.zeros(3)}}, "shape"),
        ({1: {"mlp": _v()}, 2: {"ffn": _v()}}, "unknown site"),
    ]
    for vectors, msg in bad:
        with pytest.raises(FintsEdgeError, match=msg), steer(model, vectors):
            pass
        assert no_hooks_left(model)


def test_hooks_removed_after_exception_by_handle_and_after_failed_registration(hf, monkeypatch):
    model, _ = hf
    with pytest.raises(ValueError, match="inside"), steer(model, {1: {"attn": _v(), "mlp": _v()}}):
        assert not no_hooks_left(model)
        raise ValueError("inside")
    assert no_hooks_left(model)
    handles = add_steering(model, {0: {"mlp": _v()}})
    assert not no_hooks_left(model)
    handles.remove()
    handles.remove()
    assert no_hooks_left(model)

    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot hook")

    monkeypatch.setattr(model.model.layers[2].mlp, "register_forward_hook", refuse)
    with (
        pytest.raises(RuntimeError, match="cannot hook"),
        steer(model, {1: {"mlp": _v()}, 2: {"mlp": _v()}}),
    ):
        pass
    assert no_hooks_left(model)


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_generate_is_greedy_over_steered_logits(hf, fmt):
    """generate (KV cache, hooks on every step) == argmax over full-sequence steered logits."""
    model, tok = hf
    vecs = {2: {"attn": _v(5, 3.0), "mlp": _v(6, 3.0)}}
    from export.extract import prompt_ids

    ids = prompt_ids(tok, "Hello", fmt)
    for _ in range(8):
        nxt = int(np.argmax(logits(model, ids, vecs)[-1]))
        ids.append(nxt)
        if nxt == tok.eos_token_id:
            break
    new = ids[len(prompt_ids(tok, "Hello", fmt)) :]
    want = tok.decode(new, skip_special_tokens=True).strip()
    got = generate(model, tok, "Hello", max_new_tokens=8, prompt_format=fmt, vectors=vecs)
    assert got == want
    assert got != generate(model, tok, "Hello", max_new_tokens=8, prompt_format=fmt)
    assert no_hooks_left(model)
