"""The planner: one request's input -> one :class:`Steering` value, in plain numpy.

It needs the profile, the encoder, the index and an aggregator, never llama.cpp, so it is tested
on its own (``tests/test_plan.py`` blocks llama_cpp from import). The order, for a request:

    encode -> index.top_k -> select the sites and layers the config steers (before aggregating)
    -> centre / item-normalise -> aggregate (weights, gate) -> x strength x unit factor (once)

Strength is applied here and nowhere else: the aggregator is fed strength 1, and the injector
adds what it is given (its scale is the per-token repeat fade, not the strength).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from fints_edge.aggregate import Aggregate, AggregateParams
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import Site
from fints_edge.scaling import item_normalised, relative_factor, typical_norms

if TYPE_CHECKING:
    from fints_edge.config import EngineConfig
    from fints_edge.encode import Encoder
    from fints_edge.index import Index
    from fints_edge.profile import Profile


@dataclass(frozen=True, eq=False)
class Steering:
    """Everything one request injects, set and cleared as one value (``Injector.apply``).

    Arrays are in the layout of ``sites`` x ``layers`` (HF 0-based decoder indices): only what
    the request steers, so nothing is zeroed after it was computed.
    """

    vectors: np.ndarray  # float32 [S, L, n_embd], final: strength, gate and units applied
    sites: tuple[Site, ...]
    layers: tuple[int, ...]
    # float32 [S, L, n_embd] added at the last prompt position and the first answer positions
    # (exact mode only); None = no opening steering
    opening: np.ndarray | None = None
    opening_window: int = 3  # positions from the last prompt token that get ``opening``
    prompt_scale: float = 1.0  # share of ``vectors`` on the prompt but its last token
    preserve_norm: bool = False  # rescale each steered hidden state to its unsteered norm

    def __post_init__(self) -> None:
        expect = (len(self.sites), len(self.layers))
        for name in ("vectors", "opening"):
            v = getattr(self, name)
            if v is not None and (v.ndim != 3 or v.shape[:2] != expect):
                raise FintsEdgeError(
                    f"steering {name} have shape {v.shape}, expected [sites, layers, n_embd] "
                    f"with {expect[0]} sites and {expect[1]} layers"
                )

    @property
    def active(self) -> bool:
        """False when nothing would be added (strength 0, a closed gate): steering is skipped."""
        return bool(self.vectors.any() or (self.opening is not None and self.opening.any()))


class Retrieved(TypedDict):
    id: int
    similarity: float
    weight: float
    input: str
    output: str


@dataclass
class Plan:
    """What steering a request gets, and why."""

    steering: Steering | None  # None: the config steers nothing (strength 0)
    retrieved: list[Retrieved]
    gate: float
    timings_ms: dict[str, float] = field(default_factory=dict)


class Planner:
    """``Planner(profile, encoder, index, aggregator).plan(text, config)``."""

    def __init__(
        self, profile: Profile, encoder: Encoder, index: Index, aggregator: Aggregate
    ) -> None:
        self.profile = profile
        self.encoder = encoder
        self.index = index
        self.aggregator = aggregator
        # float32 [S, L, n_embd] in the profile's layout, subtracted from every item signal
        # before aggregation: what a reference set of other users shares; None = off
        self.center: np.ndarray | None = None
        self._typical: dict[str, np.ndarray] = {}  # "signals" / "opening" -> [S, L] norms

    def use(self, profile: Profile, index: Index) -> None:
        """Another profile version (learning) or user; cached norms follow it."""
        if profile is not self.profile:
            self._typical = {}
        self.profile, self.index = profile, index

    # -- one request --------------------------------------------------------------------------
    def plan(self, text: str, config: EngineConfig, among: np.ndarray | None = None) -> Plan:
        """Encode the input, retrieve the top-K history items and aggregate their signals;
        ``among`` (bool [N]): the items that may be retrieved (default: all)."""
        c = config
        t0 = time.perf_counter()
        query = self.encoder.encode([text])[0]  # [D]
        t1 = time.perf_counter()
        # RAG may want more examples than steering aggregates: retrieve for both, steer with top-K.
        found, found_sims = self.index.top_k(query, max(c.k, c.rag), among)
        ids, sims = found[: c.k], found_sims[: c.k]  # [K'], [K']
        t2 = time.perf_counter()
        params = AggregateParams(
            temperature=c.temperature,
            strength=1.0,  # applied once, below
            sim_floor=c.sim_floor,
            sim_full=c.sim_full,
            item_weights=recency_weights(self.profile.timestamps, ids, c.half_life_days),
        )
        si, li = self.selection(c)
        agg = self.aggregator(sims, self._shaped(self.profile.signals[ids], si, li, c), params)
        steering = None
        if c.strength:
            opening = None
            if self.steers_openings(c):
                first = self._opening_shaped(self.profile.opening[ids], si, li, c)  # type: ignore[index]
                opening = self._scaled(
                    self.aggregator(sims, first, params).vectors, si, li, c, "opening"
                )
            steering = self._steering(self._scaled(agg.vectors, si, li, c), opening, si, li, c)
        t3 = time.perf_counter()
        weights = np.pad(agg.weights, (0, len(found) - len(ids)))  # RAG-only items weigh 0
        retrieved: list[Retrieved] = [
            {
                "id": int(i),
                "similarity": float(s),
                "weight": float(w),
                "input": str(self.profile.inputs[i]),
                "output": str(self.profile.outputs[i]),
            }
            for i, s, w in zip(found, found_sims, weights, strict=True)
        ]
        timings = {
            "encode": (t1 - t0) * 1e3,
            "retrieve": (t2 - t1) * 1e3,
            "aggregate": (t3 - t2) * 1e3,
        }
        return Plan(steering, retrieved, float(agg.gate), timings)

    def static(self, config: EngineConfig) -> Steering | None:
        """The static (CAA-style) baseline: the mean of ALL the user's signals (and opening
        signals), shaped, scaled and selected like a request's; None at strength 0."""
        c = config
        if not c.strength:
            return None
        si, li = self.selection(c)
        mean = self._shaped(self.profile.signals, si, li, c).astype(np.float32).mean(axis=0)
        opening = None
        if self.steers_openings(c):
            first = self._opening_shaped(self.profile.opening, si, li, c)  # type: ignore[arg-type]
            opening = self._scaled(first.astype(np.float32).mean(axis=0), si, li, c, "opening")
        return self._steering(self._scaled(mean, si, li, c), opening, si, li, c)

    # -- shaping ------------------------------------------------------------------------------
    def selection(self, c: EngineConfig) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the profile's sites and layers the config steers, refused if it names
        ones the profile lacks."""
        p = self.profile
        unknown = set(c.sites or ()) - set(p.sites)
        if unknown:
            raise FintsEdgeError(f"profile has no {', '.join(sorted(unknown))} signals")
        missing = set(c.layers or ()) - set(p.layers.tolist())
        if missing:
            raise FintsEdgeError(
                f"profile has no signals at layer(s) {sorted(missing)}; it has {p.layers.tolist()}"
            )
        si = np.array([i for i, s in enumerate(p.sites) if c.sites is None or s in c.sites])
        li = np.array([j for j, x in enumerate(p.layers) if c.layers is None or int(x) in c.layers])
        return si, li

    def steers_openings(self, c: EngineConfig) -> bool:
        return bool(c.opening_scale) and c.mode == "exact" and self.profile.opening is not None

    def _shaped(
        self, signals: np.ndarray, si: np.ndarray, li: np.ndarray, c: EngineConfig
    ) -> np.ndarray:
        """Item signals [K, S, L, E] -> the selected [K, S', L', E] as aggregation takes them:
        centred on ``center`` if set, each at the profile's typical norm with ``item_norm``;
        untouched (float16) otherwise."""
        signals = signals[:, si][:, :, li]
        if self.center is not None:
            signals = signals.astype(np.float32) - self.center[si][:, li]
        if c.item_norm:
            signals = item_normalised(signals, self._typical_norms("signals")[si][:, li])
        return signals

    def _opening_shaped(
        self, opening: np.ndarray, si: np.ndarray, li: np.ndarray, c: EngineConfig
    ) -> np.ndarray:
        """Opening signals in the units of the main ones: their own typical norms play the part
        the signals' play (item norm, residual units); no centring."""
        opening = opening[:, si][:, :, li]
        if c.item_norm:
            opening = item_normalised(opening, self._typical_norms("opening")[si][:, li])
        return opening

    def _scaled(
        self,
        vectors: np.ndarray,
        si: np.ndarray,
        li: np.ndarray,
        c: EngineConfig,
        which: str = "signals",
    ) -> np.ndarray:
        """The one place strength is applied: [S', L', E] x strength (x opening_scale for the
        opening), x residual norm / typical norm in "residual" units."""
        strength = c.strength * (c.opening_scale if which == "opening" else 1.0)
        factor = np.full((len(si), len(li)), strength, np.float32)  # [S', L']
        if c.strength_unit == "residual":
            typical = self._typical_norms(which)[si][:, li]
            residual = self.profile.residual_norms[li]
            factor = factor * relative_factor(residual, typical)
        return (np.asarray(vectors, np.float32) * factor[:, :, None]).astype(np.float32)

    def _steering(
        self,
        vectors: np.ndarray,
        opening: np.ndarray | None,
        si: np.ndarray,
        li: np.ndarray,
        c: EngineConfig,
    ) -> Steering:
        p = self.profile
        return Steering(
            vectors=vectors,
            sites=tuple(p.sites[i] for i in si),
            layers=tuple(int(p.layers[j]) for j in li),
            opening=opening,
            opening_window=c.opening_window,
            prompt_scale=c.prompt_strength,
            preserve_norm=c.preserve_norm,
        )

    def _typical_norms(self, which: str) -> np.ndarray:
        """[S, L] for the profile's ``signals`` or ``opening``, computed once per profile."""
        if which not in self._typical:
            self._typical[which] = typical_norms(getattr(self.profile, which))
        return self._typical[which]


def recency_weights(
    timestamps: np.ndarray, ids: np.ndarray, half_life_days: float
) -> np.ndarray | None:
    """Prior weights 0.5 ** (age / half-life) for the retrieved items, age measured from the
    profile's newest item (not the clock: a profile left alone keeps steering the same way).
    Items without a timestamp count as new. None when recency is off. Only the ratios matter
    (the aggregator normalises), so the youngest retrieved item weighs 1: a short half-life
    cannot underflow every weight to 0."""
    if half_life_days <= 0:
        return None
    known = timestamps[np.isfinite(timestamps)]
    if known.size == 0:
        return None
    age_days = (known.max() - timestamps[ids]) / 86400.0
    age_days = np.where(np.isfinite(age_days), np.maximum(age_days, 0.0), 0.0)  # [K]
    halvings = age_days / half_life_days
    return (0.5 ** (halvings - halvings.min())).astype(np.float32)
