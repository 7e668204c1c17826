import numpy as np
import pytest

from fints_edge.aggregate import (
    Aggregate,
    AggregateParams,
    OnnxAggregator,
    numpy_aggregate,
)
from fints_edge.errors import FintsEdgeError


def _batch(k=5, s=2, layers=1, e=576, seed=0):
    rng = np.random.default_rng(seed)
    sims = rng.uniform(0.1, 0.9, size=k).astype(np.float32)  # [K]
    signals = rng.normal(scale=3.0, size=(k, s, layers, e)).astype(np.float32)  # [K, S, L, E]
    return sims, signals


@pytest.fixture(scope="module")
def onnx_agg(onnx_aggregator_path):
    return OnnxAggregator(onnx_aggregator_path)


# -- the reference math -------------------------------------------------------------------------
def test_default_is_the_plain_mean():
    sims, sig = _batch()
    out = numpy_aggregate(sims, sig, AggregateParams())
    np.testing.assert_allclose(out.vectors, sig.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.weights, np.full(5, 0.2), rtol=1e-6)
    assert out.gate == 1.0 and out.vectors.dtype == np.float32 and out.vectors.shape == (2, 1, 576)


def test_softmax_weights_follow_similarity():
    sims = np.array([0.9, 0.5, 0.1], np.float32)
    _, sig = _batch(k=3)
    out = numpy_aggregate(sims, sig, AggregateParams(temperature=0.1))
    e = np.exp(np.array([9.0, 5.0, 1.0]))
    np.testing.assert_allclose(out.weights, e / e.sum(), rtol=1e-5)
    np.testing.assert_allclose(out.vectors, np.tensordot(out.weights, sig, 1), rtol=1e-5, atol=1e-5)


def test_item_weights_multiply_and_renormalise():
    sims, sig = _batch(k=4)
    out = numpy_aggregate(sims, sig, AggregateParams(item_weights=np.array([1, 0, 0, 3.0])))
    np.testing.assert_allclose(out.weights, [0.25, 0, 0, 0.75], rtol=1e-6)
    np.testing.assert_allclose(out.vectors, 0.25 * sig[0] + 0.75 * sig[3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("best", "gate"), [(0.1, 0.0), (0.2, 0.0), (0.35, 0.5), (0.5, 1.0), (0.9, 1.0)]
)
def test_novelty_gate_ramps_between_floor_and_full(best, gate):
    sims = np.array([best, 0.0], np.float32)
    _, sig = _batch(k=2)
    p = AggregateParams(strength=2.0, sim_floor=0.2, sim_full=0.5)
    out = numpy_aggregate(sims, sig, p)
    assert out.gate == pytest.approx(gate, abs=1e-6)
    np.testing.assert_allclose(out.vectors, 2.0 * gate * sig.mean(0), rtol=1e-5, atol=1e-6)


def test_k1_weight1_is_the_signal_times_strength_and_strength0_is_zero():
    sims, sig = _batch(k=1)
    out = numpy_aggregate(sims, sig, AggregateParams(strength=3.0, temperature=0.1))
    np.testing.assert_array_equal(out.weights, [1.0])
    np.testing.assert_allclose(out.vectors, 3.0 * sig[0], rtol=1e-6)
    sims, sig = _batch()
    assert not numpy_aggregate(sims, sig, AggregateParams(strength=0.0)).vectors.any()


def test_float16_signals_are_cast():
    sims, sig = _batch()
    out = numpy_aggregate(sims, sig.astype(np.float16), AggregateParams())
    assert out.vectors.dtype == np.float32
    np.testing.assert_allclose(
        out.vectors, sig.astype(np.float16).astype(np.float32).mean(0), atol=1e-5
    )


@pytest.mark.parametrize(
    ("sims", "sig_shape", "params", "match"),
    [
        (np.zeros(0), (0, 1, 1, 4), AggregateParams(), "non-empty"),
        (np.zeros(3), (2, 1, 1, 4), AggregateParams(), "signals must be"),
        (np.array([np.nan]), (1, 1, 1, 4), AggregateParams(), "NaN"),
        (np.zeros(2), (2, 1, 1, 4), AggregateParams(item_weights=np.zeros(2)), "not all zero"),
        (np.zeros(2), (2, 1, 1, 4), AggregateParams(item_weights=np.ones(3)), "shape"),
    ],
)
def test_bad_inputs_are_refused(sims, sig_shape, params, match):
    with pytest.raises(FintsEdgeError, match=match):
        numpy_aggregate(sims, np.zeros(sig_shape, np.float32), params)


def test_non_finite_params_are_refused():
    with pytest.raises(FintsEdgeError, match="temperature"):
        AggregateParams(temperature=float("nan"))


# -- ONNX == numpy ---------------------------------------------------------------------------------
_CASES = {
    "uniform": AggregateParams(strength=4.0),
    "softmax": AggregateParams(temperature=0.1, strength=2.0),
    "softmax_sharp": AggregateParams(temperature=0.001),
    "gate_partial": AggregateParams(sim_floor=0.3, sim_full=0.95),
    "gate_closed": AggregateParams(sim_floor=0.95, sim_full=0.99),
    "gate_off_equal": AggregateParams(sim_floor=0.5, sim_full=0.5),
    "gate_off_inverted": AggregateParams(sim_floor=0.9, sim_full=0.1),
    "item_weights": AggregateParams(temperature=0.2, item_weights=np.array([1, 2, 0, 0.5, 1.0])),
    "strength0": AggregateParams(strength=0.0, temperature=0.1),
    "negative_strength": AggregateParams(strength=-1.5),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_onnx_matches_numpy_parity(onnx_agg, case):
    sims, sig = _batch()
    params = _CASES[case]
    ref, got = numpy_aggregate(sims, sig, params), onnx_agg(sims, sig, params)
    assert got.vectors.shape == (2, 1, 576) and got.vectors.dtype == np.float32
    np.testing.assert_allclose(got.vectors, ref.vectors, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.weights, ref.weights, rtol=1e-5, atol=1e-7)
    assert got.gate == pytest.approx(ref.gate, abs=1e-6)


@pytest.mark.parametrize(("k", "s", "layers", "e"), [(1, 1, 1, 1), (3, 1, 4, 17), (7, 2, 30, 64)])
def test_onnx_dynamic_shapes_parity(onnx_agg, k, s, layers, e):
    sims, sig = _batch(k, s, layers, e, seed=k)
    params = AggregateParams(temperature=0.1, strength=1.7, sim_floor=0.0, sim_full=0.5)
    ref, got = numpy_aggregate(sims, sig, params), onnx_agg(sims, sig, params)
    assert got.vectors.shape == (s, layers, e)
    np.testing.assert_allclose(got.vectors, ref.vectors, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.weights, ref.weights, rtol=1e-5, atol=1e-7)


def test_onnx_k1_and_strength0_identities_parity(onnx_agg):
    sims, sig = _batch(k=1)
    out = onnx_agg(sims, sig.astype(np.float16), AggregateParams(strength=3.0, temperature=0.1))
    np.testing.assert_array_equal(out.weights, [1.0])
    np.testing.assert_allclose(
        out.vectors, 3.0 * sig[0].astype(np.float16).astype(np.float32), rtol=1e-6
    )
    sims, sig = _batch()
    assert not onnx_agg(sims, sig, AggregateParams(strength=0.0)).vectors.any()


def test_implementations_share_one_seam(onnx_agg):
    impls: list[Aggregate] = [numpy_aggregate, onnx_agg]
    sims, sig = _batch(k=2, e=8)
    outs = [f(sims, sig, AggregateParams()) for f in impls]
    np.testing.assert_allclose(outs[0].vectors, outs[1].vectors, atol=1e-6)


# -- files ------------------------------------------------------------------------------------------
def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FintsEdgeError, match=r"nope\.onnx.*python -m export\.onnx"):
        OnnxAggregator(tmp_path / "nope.onnx")


def test_corrupt_file_is_refused(tmp_path):
    bad = tmp_path / "aggregator.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(FintsEdgeError, match=r"aggregator\.onnx.*--force"):
        OnnxAggregator(bad)
