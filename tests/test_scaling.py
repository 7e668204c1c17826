"""Strength units and per-item normalisation (fints_edge.scaling) and the repeat fade."""

from __future__ import annotations

import numpy as np
import pytest

from fints_edge.errors import FintsEdgeError
from fints_edge.fade import RepeatFade
from fints_edge.scaling import item_normalised, relative_factor, typical_norms


def _signals(seed=0, n=5):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 2, 3, 8)) * rng.uniform(0.1, 10.0, size=(n, 1, 1, 1))
    return s.astype(np.float16)  # profiles store float16


def test_typical_norms_are_the_mean_item_norm_per_site_and_layer():
    s = _signals()
    want = np.linalg.norm(s.astype(np.float32), axis=-1).mean(axis=0)
    np.testing.assert_allclose(typical_norms(s), want, rtol=1e-6)
    big = np.repeat(s, 120, axis=0)  # crosses the 256-item chunk boundary
    np.testing.assert_allclose(typical_norms(big), want, rtol=1e-5)


def test_item_normalisation_keeps_directions_and_sets_every_norm_to_the_typical_one():
    s = _signals(1)
    typ = typical_norms(s)
    out = item_normalised(s, typ)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.broadcast_to(typ, (5, 2, 3)),
                               rtol=1e-5)  # fmt: skip
    cos = (out * s.astype(np.float32)).sum(-1) / (
        np.linalg.norm(out, axis=-1) * np.linalg.norm(s.astype(np.float32), axis=-1)
    )
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    s[0, 1, 2] = 0  # a site that never fired stays zero, no NaN
    out = item_normalised(s, typ)
    assert np.isfinite(out).all() and not out[0, 1, 2].any()


def test_relative_factor_makes_strength_a_fraction_of_the_residual_norm():
    s = _signals(2)
    typ = typical_norms(s)
    residual = np.array([10.0, 20.0, 40.0], np.float32)
    f = relative_factor(residual, typ)  # [S, L]
    np.testing.assert_allclose(f * typ, np.broadcast_to(residual, (2, 3)), rtol=1e-6)
    with pytest.raises(FintsEdgeError, match="2 residual norms for 3 layers"):
        relative_factor(residual[:2], typ)
    assert relative_factor(residual, np.zeros_like(typ)).max() == 0.0


def test_unknown_unit_is_one_clear_error():
    """The strength unit is checked where every knob is (its declared choices in config)."""
    from fints_edge.config import EngineConfig, check_config

    check_config(EngineConfig(strength_unit="residual"))
    with pytest.raises(FintsEdgeError, match="'percent': choose one of absolute, residual"):
        check_config(EngineConfig(strength_unit="percent"))  # type: ignore[arg-type]


class _Scale:
    def __init__(self):
        self.scales: list[float] = []

    def set_scale(self, scale: float) -> None:
        self.scales.append(scale)


def test_fade_halves_steering_at_each_repeated_token_ngram_only():
    inj = _Scale()
    fade = RepeatFade(inj, 0.5, n=3)  # type: ignore[arg-type]
    tokens: list[int] = []
    for t in [1, 2, 3, 4, 5, 6, 1, 2, 3, 1, 2, 3]:  # 1 2 3 comes back twice
        tokens.append(t)
        fade(tokens)
    # 3-grams in order: 123 234 345 456 561 612 123* 231 312 123* (* = seen before)
    assert fade.repeats == 2 and inj.scales == [0.5, 0.25] and fade.scale == 0.25


def test_fade_never_fires_on_an_answer_without_repeats():
    inj = _Scale()
    fade = RepeatFade(inj, 0.5)  # type: ignore[arg-type]
    tokens: list[int] = []
    for t in range(40):
        tokens.append(t)
        fade(tokens)
    assert fade.repeats == 0 and inj.scales == []


@pytest.mark.parametrize("factor", [-0.1, 1.5])
def test_fade_factor_is_checked(factor):
    with pytest.raises(FintsEdgeError, match="must be in"):
        RepeatFade(_Scale(), factor)  # type: ignore[arg-type]


def test_repeat_block_bans_exactly_the_tokens_that_would_repeat_an_ngram():
    from fints_edge.fade import RepeatBlock

    block = RepeatBlock(3, prompt_len=2)
    # answer after a 2-token prompt: 5 6 7 5 6 -> next 7 would repeat "5 6 7"
    assert block.banned([5, 6, 7, 5, 6]) == {7}
    assert block.banned([5, 6, 7, 5, 6, 8, 5, 6]) == {7, 8}
    assert block.banned([5, 6]) == set() and block.banned([1, 2, 3]) == set()
    scores = np.zeros(10, np.float32)
    out = block(np.array([1, 1, 5, 6, 7, 5, 6], np.intc), scores)  # the prompt's tokens ignored
    assert np.isneginf(out[7]) and np.isfinite(np.delete(out, 7)).all() and block.blocked == 1
    with pytest.raises(FintsEdgeError, match="2 tokens or more"):
        RepeatBlock(1, 0)
