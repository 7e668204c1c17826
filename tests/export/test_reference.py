"""The torch reference hooks: exact Pulse-and-Re-Pulse semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.extract import record_activations
from export.reference import generate, logits, steer

IDS = [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30]


@pytest.fixture(scope="module")
def hf(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny.hf_dir)


def _hs(model, vectors=None, strength=1.0):
    with torch.no_grad(), steer(model, vectors, strength):
        return [h[0] for h in model(torch.tensor([IDS]), output_hidden_states=True).hidden_states]


def _v(seed=0):
    return np.random.default_rng(seed).normal(size=64).astype(np.float32)


def test_zero_vector_and_zero_strength_change_nothing(hf):
    model, _ = hf
    base = logits(model, IDS)
    np.testing.assert_array_equal(
        logits(model, IDS, {2: {"attn": np.zeros(64), "mlp": np.zeros(64)}}), base
    )
    np.testing.assert_array_equal(logits(model, IDS, {2: {"mlp": _v()}}, strength=0.0), base)


@pytest.mark.parametrize("site", ["attn", "mlp"])
def test_earlier_layers_untouched_and_steered_layer_changes(hf, site):
    model, _ = hf
    base, steered = _hs(model), _hs(model, {2: {site: _v()}})
    for i in range(3):  # hidden_states[0..2] = embeddings and outputs of layers 0, 1
        assert torch.equal(base[i], steered[i]), i
    assert (steered[3] - base[3]).abs().max() > 0.1


def test_mlp_site_shifts_layer_output_by_exactly_the_vector(hf):
    model, _ = hf
    v = _v()
    base, steered = _hs(model), _hs(model, {2: {"mlp": v}}, strength=2.5)
    np.testing.assert_allclose(
        steered[3] - base[3], np.broadcast_to(2.5 * v, base[3].shape), atol=1e-5
    )


def test_attn_site_is_re_pulsed_through_the_mlp(hf):
    """layer output == h + (a + v) + mlp(post_norm(h + a + v)): the MLP sees the steered residual."""
    model, _ = hf
    v = torch.from_numpy(_v())
    with record_activations(model, [2]) as store, torch.no_grad():
        base = [h[0] for h in model(torch.tensor([IDS]), output_hidden_states=True).hidden_states]
        a = store[("attn", 2)]
    layer = model.model.layers[2]
    with torch.no_grad():
        r = base[2] + a + v
        want = r + layer.mlp(layer.post_attention_layernorm(r))
    np.testing.assert_allclose(_hs(model, {2: {"attn": v.numpy()}})[3], want, atol=1e-5)


def test_hooks_removed_after_exception(hf):
    model, _ = hf
    with pytest.raises(ValueError), steer(model, {1: {"mlp": _v()}}):
        raise ValueError("inside")
    assert all(not m._forward_hooks for m in model.modules())


def test_generate_is_greedy_and_steerable(hf):
    model, tok = hf
    a = generate(model, tok, "Hello", max_new_tokens=8)
    assert a == generate(model, tok, "Hello", max_new_tokens=8)
    b = generate(model, tok, "Hello", max_new_tokens=8, vectors={2: {"mlp": 20 * _v()}})
    assert a != b
