"""Cosine top-K over a user's history keys: an exact numpy scan, and hnswlib for huge histories.

What the exact scan costs is measured by `make bench`: the ``retrieve`` and ``index build``
columns of bench/README.md's per-request set-up table, at the profile sizes it runs
(``python -m bench.run --sizes``); no command here times the hnswlib graph (its build or its
queries). hnswlib misbehaves on tiny indexes (fewer than k results), and a per-user history is
rarely past a few thousand items, so the graph is only built past ``exact_below`` items (20k by
default). Similarities from both paths are recomputed from the stored keys: identical numbers
whichever path found the ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fints_edge._vectors import unit_rows
from fints_edge.errors import FintsEdgeError

EXACT_BELOW = 20_000  # build the hnswlib graph only when there are more items than this


class Index:
    """``ids, sims = Index(keys).top_k(query, 5)``; keys float32 [N, d], cosine similarity."""

    def __init__(
        self,
        keys: np.ndarray,
        *,
        exact_below: int = EXACT_BELOW,
        threads: int = 1,
        seed: int = 0,
        ef: int = 128,
        m: int = 32,
        ef_construction: int = 100,
    ) -> None:
        keys = np.asarray(keys)
        if keys.ndim != 2 or keys.shape[1] == 0:
            raise FintsEdgeError(f"index keys must be a [N, d] array, got shape {keys.shape}")
        self.dim = int(keys.shape[1])
        self.exact_below = exact_below
        # One thread by default: hnswlib's multi-threaded inserts make the graph order-dependent.
        self.threads = max(1, threads)
        self.seed, self.ef, self.m, self.ef_construction = seed, ef, m, ef_construction
        self._keys = np.empty((0, self.dim), np.float32)  # [N, d], L2-normalised
        self._graph: Any = None  # hnswlib.Index once len(self) > exact_below
        self.add(keys)

    def __len__(self) -> int:
        return int(self._keys.shape[0])

    @property
    def uses_graph(self) -> bool:
        return self._graph is not None

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Append items (keys [n, d]); returns their ids int64 [n] (N, N+1, ...)."""
        keys = np.asarray(keys, dtype=np.float32)
        if keys.ndim == 1:
            keys = keys[None, :]
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise FintsEdgeError(f"keys must be [n, {self.dim}], got shape {keys.shape}")
        if not np.isfinite(keys).all():
            raise FintsEdgeError("index keys contain NaN or infinity")
        start = len(self)
        ids = np.arange(start, start + keys.shape[0], dtype=np.int64)  # [n]
        self._keys = np.concatenate([self._keys, unit_rows(keys)])
        if self._graph is not None:
            self._graph_add(self._keys[start:], ids)
        elif len(self) > self.exact_below:
            self._build_graph()
        return ids

    def top_k(
        self, query: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar items: ids int64 [k'], sims float32 [k'], descending; k' = min(k, N).

        ``among``: bool [N], only these items may be returned (an exact scan; calibration holds
        an item and everything newer out of its own retrieval)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)  # [d]
        if q.shape[0] != self.dim:
            raise FintsEdgeError(f"query must have {self.dim} dims, got {q.shape[0]}")
        if k < 1:
            raise FintsEdgeError(f"k must be at least 1, got {k}")
        q = unit_rows(q)
        if among is not None:
            among = np.asarray(among, dtype=bool)
            if among.shape != (len(self),):
                raise FintsEdgeError(f"among must be a bool mask of {len(self)} items")
            cand = np.flatnonzero(among)  # [n]
            sims = self._keys[cand] @ q  # [n]
            if len(cand) > k:
                keep = np.argpartition(-sims, k - 1)[:k]
                cand, sims = cand[keep], sims[keep]
            return self._ranked(cand, q, sims)
        k = min(k, len(self))
        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if self._graph is not None and k < len(self):
            ids = self._graph_query(q, k)
            if ids is not None:
                return self._ranked(ids, q)
        return self._exact(q, k)

    # -- exact --------------------------------------------------------------------------------
    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = self._keys @ q  # [N]
        cand = np.arange(len(self)) if k == len(self) else np.argpartition(-sims, k - 1)[:k]
        return self._ranked(cand, q, sims[cand])

    def _ranked(
        self, ids: np.ndarray, q: np.ndarray, sims: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sort by similarity descending, ties by id, with similarities from the stored keys."""
        ids = np.asarray(ids, dtype=np.int64)  # [k]
        if sims is None:
            sims = self._keys[ids] @ q  # [k]
        order = np.lexsort((ids, -sims))
        return ids[order], sims[order].astype(np.float32)

    # -- hnswlib --------------------------------------------------------------------------------
    def _build_graph(self) -> None:
        import hnswlib

        graph = hnswlib.Index(space="cosine", dim=self.dim)
        graph.init_index(
            max_elements=max(2 * len(self), 1024),
            ef_construction=self.ef_construction,
            M=self.m,
            random_seed=self.seed,
        )
        graph.set_num_threads(self.threads)
        self._graph = graph
        self._graph_add(self._keys, np.arange(len(self), dtype=np.int64))

    def _graph_add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        graph = self._graph
        need = int(ids[-1]) + 1
        if need > graph.get_max_elements():
            graph.resize_index(max(need, 2 * graph.get_max_elements()))
        graph.add_items(keys, ids, num_threads=self.threads)

    def _graph_query(self, q: np.ndarray, k: int) -> np.ndarray | None:
        """Ids of the approximate top-k (hnswlib distance is 1 - cos), or None to scan instead."""
        self._graph.set_ef(max(self.ef, k))
        try:
            labels, _ = self._graph.knn_query(q[None, :], k=k, num_threads=1)  # [1, k] uint64
        except RuntimeError:  # hnswlib found fewer than k (tiny or odd graphs): scan exactly
            return None
        return labels[0].astype(np.int64)
