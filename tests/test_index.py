import numpy as np
import pytest

from fints_edge.errors import FintsEdgeError
from fints_edge.index import Index


def _unit(rng, n, d=384):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(keys, q, k):
    """Reference: cosine of every key, descending, ties by id."""
    sims = keys @ (q / np.linalg.norm(q))  # [N]
    order = np.lexsort((np.arange(len(keys)), -sims))[:k]
    return order.astype(np.int64), sims[order]


def test_exact_path_equals_brute_force():
    rng = np.random.default_rng(0)
    keys = _unit(rng, 50)
    index = Index(keys)
    assert not index.uses_graph and len(index) == 50
    for q in _unit(rng, 20):
        ids, sims = index.top_k(q, 5)
        want_ids, want_sims = _brute(keys, q, 5)
        assert ids.dtype == np.int64 and sims.dtype == np.float32
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(sims, want_sims, atol=1e-6)


def _clusters(rng, n_clusters, size, d=384, spread=0.3):
    """Unit keys in tight clusters (cosine ~0.95 inside, ~0 across): top-k is unambiguous."""
    centers = _unit(rng, n_clusters, d)
    noise = rng.normal(scale=spread / np.sqrt(d), size=(n_clusters, size, d))
    keys = (centers[:, None, :] + noise).reshape(-1, d)
    return (keys / np.linalg.norm(keys, axis=1, keepdims=True)).astype(np.float32), centers


def test_hnsw_path_equals_brute_force_on_separated_data():
    rng = np.random.default_rng(1)
    keys, centers = _clusters(rng, 400, 5)  # N = 2000
    index = Index(keys, exact_below=256)
    assert index.uses_graph
    queries = centers + rng.normal(scale=0.3 / np.sqrt(384), size=centers.shape)
    for q in queries:
        ids, sims = index.top_k(q, 5)
        want_ids, want_sims = _brute(keys, q, 5)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(sims, want_sims, atol=1e-6)
        assert np.all(np.diff(sims) <= 0)


def test_hnsw_recall_on_random_queries():
    rng = np.random.default_rng(2)
    keys = _unit(rng, 2000)  # isotropic 384-d data: the hardest case for a graph index
    index = Index(keys, exact_below=256)
    assert index.uses_graph
    recalls = []
    for q in _unit(rng, 100):
        ids, sims = index.top_k(q, 5)
        want_ids, _ = _brute(keys, q, 5)
        recalls.append(len(set(ids) & set(want_ids)) / 5)
        np.testing.assert_allclose(sims, keys[ids] @ (q / np.linalg.norm(q)), atol=1e-6)
    assert np.mean(recalls) >= 0.99


def test_k_larger_than_n_returns_everything_sorted():
    rng = np.random.default_rng(3)
    keys = _unit(rng, 4, d=8)
    ids, sims = Index(keys).top_k(keys[2], 10)
    want_ids, want_sims = _brute(keys, keys[2], 4)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(sims, want_sims, atol=1e-6)
    assert ids[0] == 2 and sims[0] == pytest.approx(1.0, abs=1e-6)


def test_unnormalised_keys_and_queries_give_cosine():
    rng = np.random.default_rng(4)
    keys = _unit(rng, 30, d=16)
    scaled = keys * rng.uniform(0.5, 5.0, size=(30, 1)).astype(np.float32)
    q = _unit(rng, 1, d=16)[0]
    a, b = Index(keys).top_k(q, 5), Index(scaled).top_k(7 * q, 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_add_appends_ids_and_crosses_into_the_graph():
    rng = np.random.default_rng(5)
    keys = _unit(rng, 600, d=32)
    index = Index(keys[:200], exact_below=256)
    assert not index.uses_graph
    np.testing.assert_array_equal(index.add(keys[200:250]), np.arange(200, 250))
    assert not index.uses_graph
    index.add(keys[250:300])  # 300 > 256: the graph is built now
    assert index.uses_graph
    index.add(keys[300:])  # appended to the existing graph
    assert len(index) == 600
    for i in (0, 299, 450, 599):
        ids, sims = index.top_k(keys[i], 3)
        want_ids, want_sims = _brute(keys, keys[i], 3)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(sims, want_sims, atol=1e-6)


def test_graph_grows_past_its_initial_capacity():
    rng = np.random.default_rng(6)
    keys = _unit(rng, 3000, d=16)
    index = Index(keys[:300], exact_below=10)
    index.add(keys[300:])  # initial capacity was 1024
    ids, _ = index.top_k(keys[2999], 1)
    assert ids.tolist() == [2999]


def test_same_keys_same_answers():
    rng = np.random.default_rng(7)
    keys = _unit(rng, 1000, d=64)
    a, b = Index(keys, seed=3, exact_below=256), Index(keys, seed=3, exact_below=256)
    for q in _unit(rng, 20, d=64):
        np.testing.assert_array_equal(a.top_k(q, 10)[0], b.top_k(q, 10)[0])


def test_bad_shapes_are_refused():
    index = Index(np.eye(4, dtype=np.float32))
    with pytest.raises(FintsEdgeError, match="4 dims"):
        index.top_k(np.ones(3), 1)
    with pytest.raises(FintsEdgeError, match="at least 1"):
        index.top_k(np.ones(4), 0)
    with pytest.raises(FintsEdgeError, match=r"\[n, 4\]"):
        index.add(np.ones((2, 3)))
    with pytest.raises(FintsEdgeError, match="NaN"):
        index.add(np.full((1, 4), np.nan))
    with pytest.raises(FintsEdgeError, match=r"\[N, d\]"):
        Index(np.ones(4))


@pytest.mark.parametrize("k", [299, 300, 1000])
def test_graph_with_k_near_n_still_returns_the_exact_order(k):
    rng = np.random.default_rng(8)
    keys = _unit(rng, 300, d=16)
    index = Index(keys, exact_below=10)
    q = _unit(rng, 1, d=16)[0]
    ids, sims = index.top_k(q, k)
    want_ids, want_sims = _brute(keys, q, min(k, 300))
    assert len(ids) == min(k, 300)
    assert len(set(ids.tolist())) == len(ids)
    np.testing.assert_allclose(sims, want_sims, atol=1e-6)
    assert np.mean(ids == want_ids) >= 0.99  # ids may differ only on exact ties


def test_among_limits_the_candidates_and_is_checked():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(50, 8)).astype(np.float32)
    index = Index(keys, exact_below=10)  # the graph is built: among must scan exactly anyway
    assert index.uses_graph
    q = keys[7]
    assert index.top_k(q, 1)[0].tolist() == [7]
    among = np.ones(50, bool)
    among[7] = False
    ids, sims = index.top_k(q, 5, among)
    assert 7 not in ids and len(ids) == 5 and np.all(np.diff(sims) <= 0)
    full_ids, _ = index.top_k(q, 6)
    assert ids.tolist() == [i for i in full_ids.tolist() if i != 7][:5]
    few = np.zeros(50, bool)
    few[[3, 4]] = True
    assert sorted(index.top_k(q, 5, few)[0].tolist()) == [3, 4]
    assert len(index.top_k(q, 5, np.zeros(50, bool))[0]) == 0
    with pytest.raises(FintsEdgeError, match="bool mask of 50 items"):
        index.top_k(q, 5, np.ones(49, bool))
