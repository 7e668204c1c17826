"""The planner on synthetic profiles, with llama_cpp blocked from import: what a request steers
is decided in numpy alone."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from fints_edge.aggregate import numpy_aggregate
from fints_edge.config import EngineConfig
from fints_edge.errors import FintsEdgeError
from fints_edge.index import Index
from fints_edge.plan import Planner, Steering
from tests._factories import profile as make_profile

# the plain method: the paper's absolute multiplier, uniform mean, nothing else
PLAIN = EngineConfig(k=3, strength=1.0, strength_unit="absolute", item_norm=False)


@pytest.fixture(autouse=True)
def _no_llama(monkeypatch):
    """Any import of llama_cpp inside a test fails: the planner must not need it."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)


class QueryIs:
    """An encoder that embeds every text as the same fixed query."""

    def __init__(self, query: np.ndarray) -> None:
        self.query = query.astype(np.float32)

    def encode(self, texts):
        return np.stack([self.query for _ in texts])


class Recording:
    """numpy_aggregate, remembering what it was fed."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, float]] = []

    def __call__(self, sims, signals, params):
        self.calls.append((np.asarray(signals), params.strength))
        return numpy_aggregate(sims, signals, params)


def _planner(p=None, item: int = 0, aggregator=None) -> Planner:
    p = p or make_profile(n=6)
    query = p.keys[item].astype(np.float32)  # the item's own key: it is the nearest
    return Planner(p, QueryIs(query), Index(p.keys), aggregator or numpy_aggregate)


def test_one_item_at_weight_one_is_that_items_signal():
    planner = _planner(item=2)
    plan = planner.plan("x", replace(PLAIN, k=1))
    assert [r["id"] for r in plan.retrieved] == [2] and plan.retrieved[0]["weight"] == 1.0
    np.testing.assert_array_equal(
        plan.steering.vectors, planner.profile.signals[2].astype(np.float32)
    )
    assert plan.steering.sites == ("attn", "mlp") and plan.steering.layers == (1, 3)


def test_strength_is_applied_once_and_the_aggregator_is_fed_one():
    agg = Recording()
    planner = _planner(aggregator=agg)
    one = planner.plan("x", PLAIN).steering.vectors
    three = planner.plan("x", replace(PLAIN, strength=3.0)).steering.vectors
    np.testing.assert_allclose(three, 3.0 * one, rtol=1e-6)
    assert [s for _, s in agg.calls] == [1.0, 1.0]


def test_sites_and_layers_are_selected_before_aggregation():
    agg = Recording()
    planner = _planner(aggregator=agg)
    plan = planner.plan("x", replace(PLAIN, sites=("mlp",), layers=(3,)))
    fed = agg.calls[-1][0]
    assert fed.shape == (3, 1, 1, 8)  # [K, S', L', E]: only mlp at layer 3 was aggregated
    ids = [r["id"] for r in plan.retrieved]
    want = planner.profile.signals[ids][:, 1, 1].astype(np.float32).mean(axis=0)
    np.testing.assert_allclose(plan.steering.vectors[0, 0], want, rtol=1e-5, atol=1e-6)
    assert plan.steering.sites == ("mlp",) and plan.steering.layers == (3,)


def test_strength_zero_steers_nothing_but_still_retrieves_for_rag():
    plan = _planner().plan("x", replace(PLAIN, strength=0.0, rag=2, k=1))
    assert plan.steering is None and len(plan.retrieved) == 2
    assert [r["weight"] for r in plan.retrieved][1] == 0.0  # RAG-only items weigh nothing


def test_residual_units_are_a_share_of_the_residual_norm():
    planner = _planner()
    p = planner.profile
    c = replace(PLAIN, strength=0.25, strength_unit="residual", item_norm=True)
    plan = planner.plan("x", c)
    ids = [r["id"] for r in plan.retrieved]
    sig = p.signals.astype(np.float32)
    typical = np.linalg.norm(sig, axis=-1).mean(axis=0)  # [S, L]
    unit = sig[ids] / np.linalg.norm(sig[ids], axis=-1, keepdims=True) * typical[None, :, :, None]
    want = 0.25 * unit.mean(0) * (p.residual_norms[None, :] / typical)[:, :, None]
    np.testing.assert_allclose(plan.steering.vectors, want, rtol=1e-4, atol=1e-6)


def test_openings_follow_the_mode_and_their_scale():
    p = make_profile(n=6)
    rng = np.random.default_rng(1)
    p = replace(p, opening=rng.normal(size=p.signals.shape).astype(np.float16), opening_tokens=3)
    planner = _planner(p)
    c = replace(PLAIN, opening_scale=0.5, opening_window=2, prompt_strength=0.25)
    st = planner.plan("x", c).steering
    ids = [r["id"] for r in planner.plan("x", c).retrieved]
    want = 0.5 * p.opening[ids].astype(np.float32).mean(axis=0)
    np.testing.assert_allclose(st.opening, want, rtol=1e-5, atol=1e-6)
    assert (st.opening_window, st.prompt_scale, st.preserve_norm) == (2, 0.25, False)
    assert planner.plan("x", replace(c, mode="cvec")).steering.opening is None
    assert planner.plan("x", replace(c, opening_scale=0.0)).steering.opening is None


def test_the_static_baseline_is_the_mean_of_every_item():
    planner = _planner()
    st = planner.static(replace(PLAIN, strength=2.0, layers=(1,)))
    want = 2.0 * planner.profile.signals[:, :, :1].astype(np.float32).mean(axis=0)
    np.testing.assert_allclose(st.vectors, want, rtol=1e-5, atol=1e-6)
    assert planner.static(replace(PLAIN, strength=0.0)) is None


def test_centring_subtracts_the_reference_from_every_item():
    planner = _planner()
    base = planner.plan("x", PLAIN).steering.vectors
    planner.center = np.full(planner.profile.signals.shape[1:], 0.5, np.float32)
    got = planner.plan("x", PLAIN).steering.vectors
    np.testing.assert_allclose(got, base - 0.5, rtol=1e-5, atol=1e-5)


def test_unknown_sites_and_layers_are_refused():
    planner = _planner()
    with pytest.raises(FintsEdgeError, match=r"no signals at layer\(s\) \[2\]; it has \[1, 3\]"):
        planner.plan("x", replace(PLAIN, layers=(2,)))
    p = replace(make_profile(), sites=("attn",), signals=make_profile().signals[:, :1])
    with pytest.raises(FintsEdgeError, match="profile has no mlp signals"):
        _planner(p).plan("x", replace(PLAIN, sites=("mlp",)))


def test_a_steering_value_checks_its_shape():
    with pytest.raises(FintsEdgeError, match="expected .sites, layers, n_embd. with 2 sites"):
        Steering(np.zeros((1, 2, 4), np.float32), ("attn", "mlp"), (1, 3))
    st = Steering(np.zeros((1, 1, 4), np.float32), ("attn",), (1,))
    assert not st.active


def test_the_planner_imports_without_llama_cpp_onnxruntime_or_torch():
    code = (
        "import sys\n"
        "for m in ('llama_cpp', 'onnxruntime', 'torch', 'transformers'): sys.modules[m] = None\n"
        "import fints_edge.plan, fints_edge.config\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
