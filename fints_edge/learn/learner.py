"""History items -> profile items with one model and one encoder: the contrast pairs
(``pairs``), their signals read through llama.cpp's eval callback (``extract``), the keys.

Each item costs one prompt pass, one generation (the model's own unsteered answer, the default
negative, unless the item gives ``rejected``) and the decodes of the contrast, on the same
quantized model the chat uses: the contrast reuses the KV cache of the prompt the negative's
generation computed. The command line is ``fints_edge.learn.cli``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fints_edge.encode import Encoder
from fints_edge.history import HistoryItem
from fints_edge.learn.extract import DEFAULT_ANSWER_TOKENS, DeviceExtractor, ItemSignal
from fints_edge.learn.pairs import DEFAULT_ROUGE_THRESHOLD, ContrastPair, build_pairs
from fints_edge.profile import Profile


@dataclass(frozen=True)
class Learned:
    pairs: list[ContrastPair]
    signals: np.ndarray  # float32 [N, S, L, n_embd]
    opening: np.ndarray  # float32 [N, S, L, n_embd], first answer positions only
    residual_norms: np.ndarray  # float32 [L], mean over the items
    keys: np.ndarray  # float32 [N, D]
    timestamps: np.ndarray  # float64 [N]; items without one get the time they were learned


class Learner:
    """Turns history items into profile items with one model and one encoder."""

    def __init__(
        self,
        extractor: DeviceExtractor,
        encoder: Encoder,
        *,
        rouge_threshold: float = DEFAULT_ROUGE_THRESHOLD,
        max_new_tokens: int = DEFAULT_ANSWER_TOKENS,
        seed: int = 0,
    ) -> None:
        self.extractor = extractor
        self.encoder = encoder
        self.rouge_threshold = rouge_threshold
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def negative(self, text: str, attempt: int) -> str:
        return self.extractor.own_answer(text, attempt, self.max_new_tokens, self.seed)

    def learn(self, items: Sequence[HistoryItem], *, progress: bool = True) -> Learned:
        got: list[ItemSignal] = []

        def contrast(p: ContrastPair) -> None:  # right after its negative: the prompt is cached
            got.append(self.extractor.signal(p.input, p.chosen, p.rejected))

        with self.extractor.reusing_prompts():
            pairs, report = build_pairs(
                items,
                self.negative,
                threshold=self.rouge_threshold,
                progress=progress,
                on_pair=contrast,
            )
        if progress:
            print(report.summary(), file=sys.stderr)
        signals = [g.signal for g in got]
        norms = [g.residual_norms for g in got]
        opening = [g.opening for g in got]
        now = time.time()
        stamps = [items[p.index].timestamp for p in pairs]
        return Learned(
            pairs=pairs,
            signals=np.stack(signals),
            opening=np.stack(opening),
            residual_norms=np.mean(norms, axis=0).astype(np.float32),
            keys=self.encoder.encode([p.input for p in pairs]),
            timestamps=np.asarray([now if np.isnan(t) else t for t in stamps], np.float64),
        )

    def new_profile(
        self, items: Sequence[HistoryItem], *, opening: bool = True, progress: bool = True
    ) -> Profile:
        """``opening``: also store the opening signals (the default steers with them; False
        halves the signal bytes)."""
        from fints_edge.llama.model import identity_from_llama

        got = self.learn(items, progress=progress)
        ex = self.extractor
        return Profile.from_learned(
            model=identity_from_llama(ex.llm),
            layers=ex.layers,
            sites=ex.sites,
            attn_reading=ex.attn_reading,
            prompt_format=ex.prompt_format,
            inputs=[p.input for p in got.pairs],
            outputs=[p.chosen for p in got.pairs],
            signals=got.signals,
            keys=got.keys,
            timestamps=got.timestamps,
            residual_norms=got.residual_norms,
            encoder_name=self.encoder.name,
            encoder_probe=self.encoder.probe(),
            opening=got.opening if opening else None,
            opening_tokens=ex.opening_tokens,
        )

    def extend(
        self, profile: Profile, items: Sequence[HistoryItem], *, progress: bool = True
    ) -> Profile:
        got = self.learn(items, progress=progress)
        return profile.with_items(
            got.signals,
            got.keys,
            [p.input for p in got.pairs],
            [p.chosen for p in got.pairs],
            got.timestamps,
            got.opening,
        )
