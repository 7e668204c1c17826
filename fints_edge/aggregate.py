"""Input-aware aggregation: the retrieved items' signals -> one steering vector per site and layer.

One typed seam (:class:`Aggregate`) with two implementations that tests swap freely:
:func:`numpy_aggregate` (the reference math) and :class:`OnnxAggregator` (the exported graph that
runs on device). The math, for K retrieved items with cosine similarities ``s``:

    w    = uniform                       if temperature <= 0 (the paper's default)
         = softmax(s / temperature)      otherwise
    w    = w * item_weights / sum(...)   extra priors such as recency; all ones = none
    gate = clip((max(s) - sim_floor) / (sim_full - sim_floor), 0, 1); 1 if sim_full <= sim_floor
    out  = strength * gate * sum_k w_k signals[k]

The gate goes beyond the paper: Fints' stated weak spot is an input unlike anything in the
history, where the nearest items' signals are noise; the gate fades steering out there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fints_edge.errors import FintsEdgeError

# The ONNX graph's contract, shared with export/onnx.py. Bump the version when the math changes so
# that a stale file is refused instead of silently computing the old thing.
AGGREGATOR_VERSION = "1"
AGGREGATOR_INPUTS = (
    "similarities",  # float32 [K]
    "signals",  # float32 [K, S, L, E]
    "temperature",  # float32 []
    "strength",  # float32 []
    "sim_floor",  # float32 []
    "sim_full",  # float32 []
    "item_weights",  # float32 [K]
)
AGGREGATOR_OUTPUTS = ("vectors", "weights", "gate")  # [S, L, E], [K], []
VERSION_KEY = "fints_edge.aggregator_version"

_EXPORT_HINT = "export it with `python -m export.onnx`"


@dataclass(frozen=True, eq=False)
class AggregateParams:
    """Per-request knobs; the defaults are the paper's plain mean with no gate."""

    temperature: float = 0.0  # <= 0: uniform weights; > 0: softmax(similarity / temperature)
    strength: float = 1.0  # multiplier on the aggregated vector
    sim_floor: float = 0.0  # novelty gate: no steering when the best similarity is <= this
    sim_full: float = 0.0  # ... full steering at >= this; sim_full <= sim_floor turns the gate off
    item_weights: np.ndarray | None = None  # float32 [K] prior weights (e.g. recency); None = ones

    def __post_init__(self) -> None:
        for name in ("temperature", "strength", "sim_floor", "sim_full"):
            if not np.isfinite(getattr(self, name)):
                raise FintsEdgeError(f"aggregation {name} must be a finite number")


@dataclass(frozen=True, eq=False)
class Aggregation:
    vectors: np.ndarray  # float32 [S, L, E], already scaled by strength and gate
    weights: np.ndarray  # float32 [K], final normalised weights (sum to 1)
    gate: float  # in [0, 1]


class Aggregate(Protocol):
    """The seam: anything that turns retrieved items into steering vectors."""

    def __call__(
        self, similarities: np.ndarray, signals: np.ndarray, params: AggregateParams
    ) -> Aggregation: ...


def aggregator_feeds(
    similarities: np.ndarray, signals: np.ndarray, params: AggregateParams
) -> dict[str, np.ndarray]:
    """Validate and cast one request's inputs to the graph's float32 arrays (signals may be f16)."""
    sims = np.ascontiguousarray(similarities, dtype=np.float32)  # [K]
    sig = np.ascontiguousarray(signals, dtype=np.float32)  # [K, S, L, E]
    if sims.ndim != 1 or sims.shape[0] == 0:
        raise FintsEdgeError(f"similarities must be a non-empty [K] array, got shape {sims.shape}")
    k = sims.shape[0]
    if sig.ndim != 4 or sig.shape[0] != k:
        raise FintsEdgeError(f"signals must be [K={k}, S, L, E], got shape {sig.shape}")
    if not np.isfinite(sims).all():
        raise FintsEdgeError("similarities contain NaN or infinity")
    if params.item_weights is None:
        iw = np.ones(k, np.float32)  # [K]
    else:
        iw = np.ascontiguousarray(params.item_weights, dtype=np.float32)  # [K]
        if iw.shape != (k,):
            raise FintsEdgeError(f"item_weights must have shape [{k}], got {iw.shape}")
        if not np.isfinite(iw).all() or (iw < 0).any() or iw.sum() <= 0:
            raise FintsEdgeError("item_weights must be finite, non-negative and not all zero")

    def scalar(x: float) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)  # []

    return {
        "similarities": sims,
        "signals": sig,
        "temperature": scalar(params.temperature),
        "strength": scalar(params.strength),
        "sim_floor": scalar(params.sim_floor),
        "sim_full": scalar(params.sim_full),
        "item_weights": iw,
    }


def numpy_aggregate(
    similarities: np.ndarray, signals: np.ndarray, params: AggregateParams
) -> Aggregation:
    """The reference math (see the module docstring); float32 throughout."""
    f = aggregator_feeds(similarities, signals, params)
    sims, t = f["similarities"], float(f["temperature"])  # [K], []
    if t > 0:
        z = sims / np.float32(t)
        e = np.exp(z - z.max())  # [K], stable softmax
        w = e / e.sum()
    else:
        w = np.full_like(sims, 1.0 / sims.shape[0])
    w = w * f["item_weights"]
    w = (w / w.sum()).astype(np.float32)  # [K]
    lo, hi = float(f["sim_floor"]), float(f["sim_full"])
    gate = 1.0 if hi <= lo else float(np.clip((sims.max() - lo) / (hi - lo), 0.0, 1.0))
    mixed = np.tensordot(w, f["signals"], axes=(0, 0))  # [S, L, E]
    vectors = (np.float32(float(f["strength"]) * gate) * mixed).astype(np.float32)
    return Aggregation(vectors=vectors, weights=w, gate=gate)


class OnnxAggregator:
    """The exported aggregation graph in an onnxruntime session; same call as numpy_aggregate."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FintsEdgeError(f"{self.path}: aggregator not found; {_EXPORT_HINT}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 1  # tiny graph: more threads only add overhead
        opts.inter_op_num_threads = 1
        fix = "re-export it with `python -m export.onnx --force`"
        try:
            self._session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
            # names and metadata of a damaged file can be invalid UTF-8: all inside this try
            inputs = {i.name for i in self._session.get_inputs()}
            outputs = {o.name for o in self._session.get_outputs()}
            version = self._session.get_modelmeta().custom_metadata_map.get(VERSION_KEY)
        except Exception as e:  # onnxruntime raises bare Exception subclasses for bad files
            raise FintsEdgeError(f"{self.path}: not a readable ONNX aggregator ({e}); {fix}") from e
        if (
            inputs != set(AGGREGATOR_INPUTS)
            or outputs != set(AGGREGATOR_OUTPUTS)
            or version != AGGREGATOR_VERSION
        ):
            raise FintsEdgeError(
                f"{self.path}: aggregator from another version (v{version}, want "
                f"v{AGGREGATOR_VERSION}); {fix}"
            )
        self._self_check(fix)

    def _self_check(self, fix: str) -> None:
        """One small request against the reference math: a file whose constants were damaged
        (a flipped bit still parses) is refused instead of steering with the wrong numbers."""
        rng = np.random.default_rng(0)
        sims = np.array([0.9, 0.5, 0.7], np.float32)  # [K]
        signals = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)  # [K, S, L, E]
        for params in (
            AggregateParams(),
            AggregateParams(0.1, 2.0, 0.2, 0.8, np.array([1.0, 0.5, 2.0], np.float32)),
        ):
            want = numpy_aggregate(sims, signals, params)
            try:
                got = self(sims, signals, params)
                ok = (
                    got.vectors.shape == want.vectors.shape
                    and np.allclose(got.vectors, want.vectors, rtol=1e-4, atol=1e-5)
                    and np.allclose(got.weights, want.weights, rtol=1e-4, atol=1e-6)
                    and abs(got.gate - want.gate) < 1e-5
                )
            except Exception as e:  # a damaged graph can fail at run time instead
                raise FintsEdgeError(
                    f"{self.path}: the aggregator fails to run ({e}); {fix}"
                ) from e
            if not ok:
                raise FintsEdgeError(
                    f"{self.path}: the aggregator computes something other than the reference "
                    f"math (a damaged or edited file); {fix}"
                )

    def __call__(
        self, similarities: np.ndarray, signals: np.ndarray, params: AggregateParams
    ) -> Aggregation:
        feeds: dict[str, Any] = aggregator_feeds(similarities, signals, params)
        vectors, weights, gate = self._session.run(list(AGGREGATOR_OUTPUTS), feeds)
        return Aggregation(vectors=vectors, weights=weights, gate=float(gate))
