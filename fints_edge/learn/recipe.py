"""What a NEW profile stores: its layers, sites, attention reading, prompt layout and opening
signals, declared once.

``python -m fints_edge.learn --history`` (its flag defaults), the server's ``POST /v1/profiles``
and ``export.build`` (the torch half's defaults) all build from a :class:`Recipe`, so a profile
built by any of them from the same history reads the same activations. An existing profile is
extended with exactly the recipe it was built with (:func:`extractor_for`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from fints_edge.errors import FintsEdgeError
from fints_edge.layers import (
    ATTN_READINGS,
    DEFAULT_SITES,
    SITE_CHOICES,
    SITES,
    AttnReading,
    Site,
    candidate_layers,
    default_layer,
    parse_sites,
)
from fints_edge.learn.extract import DEFAULT_OPENING_TOKENS, DeviceExtractor
from fints_edge.profile import PROMPT_FORMATS, Profile, PromptFormat


@dataclass(frozen=True)
class Recipe:
    """A new profile's reading; the defaults are the `make eval` dev sweep's choices (docs/eval).

    Example: ``Recipe(layers=(1, 2))`` (everything else as the CLI's defaults)."""

    layers: tuple[int, ...] | None = None  # HF 0-based decoder indices; None = ~2/3 of the depth
    # () = the attention site alone, or both sites for calibration to choose among
    sites: tuple[Site, ...] = ()
    attn_reading: AttnReading = "output"  # the attention block's output (the paper's reading)
    prompt_format: PromptFormat = "chat"  # a GGUF without a chat template is read "plain"
    # Answer positions the opening signals average over; 0 = store none (half the signal bytes).
    opening_tokens: int = DEFAULT_OPENING_TOKENS
    # Without explicit layers (sites), store the candidate layers (both sites) calibration
    # chooses among (layers.candidate_layers: six signals per item, not one) instead of the
    # default alone.
    for_calibration: bool = False

    def __post_init__(self) -> None:
        layers = tuple(int(x) for x in self.layers) if self.layers else None  # [] = the default
        object.__setattr__(self, "layers", layers)
        if not self.sites:
            sites = SITES if self.for_calibration else parse_sites(DEFAULT_SITES)
        else:
            sites = tuple(self.sites)
        object.__setattr__(self, "sites", sites)
        if self.attn_reading not in ATTN_READINGS:
            raise FintsEdgeError(f"attn_reading {self.attn_reading!r}: use one of {ATTN_READINGS}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise FintsEdgeError(
                f"prompt_format {self.prompt_format!r}: use one of {PROMPT_FORMATS}"
            )
        if self.opening_tokens < 0:
            raise FintsEdgeError("opening_tokens must be >= 0 (0 = no opening signals)")

    @property
    def stores_opening(self) -> bool:
        return self.opening_tokens > 0

    def layers_for(self, n_layer: int) -> list[int]:
        """The decoder layers to read on a model of ``n_layer`` layers."""
        if self.layers:
            return list(self.layers)
        return candidate_layers(n_layer) if self.for_calibration else [default_layer(n_layer)]


def new_extractor(llm: Any, injector: Any, recipe: Recipe) -> DeviceExtractor:
    """The extractor that reads what a new profile built with ``recipe`` stores."""
    from fints_edge.llama.model import n_layers

    return DeviceExtractor(
        llm,
        injector,
        recipe.layers_for(n_layers(llm)),
        recipe.sites,
        recipe.attn_reading,
        recipe.prompt_format,
        recipe.opening_tokens or DEFAULT_OPENING_TOKENS,  # read even when not stored
    )


def extractor_for(llm: Any, injector: Any, profile: Profile) -> DeviceExtractor:
    """An extractor that reads exactly the profile's layers, sites and layout (to extend it)."""
    return DeviceExtractor(
        llm,
        injector,
        profile.layers.tolist(),
        profile.sites,
        profile.attn_reading,
        profile.prompt_format,
        profile.opening_tokens or DEFAULT_OPENING_TOKENS,
    )


def add_recipe_arguments(group: argparse._ActionsContainer) -> None:
    """The flags of a new profile's recipe, for ``python -m fints_edge.learn`` and
    ``python -m export.build`` alike; :func:`recipe_from_args` reads them back."""
    d = Recipe()
    group.add_argument(
        "--layers",
        type=int,
        nargs="+",
        help="HF 0-based decoder layers (default: ~2/3 of the depth; for fints_edge.learn "
        "--calibrate, it and a neighbour on each side, for calibration to choose from)",
    )
    group.add_argument(
        "--sites",
        choices=SITE_CHOICES,
        help=f"default: {DEFAULT_SITES}; for fints_edge.learn --calibrate, both, for "
        "calibration to choose from",
    )
    group.add_argument(
        "--attn-reading",
        choices=ATTN_READINGS,
        default=d.attn_reading,
        help="attention site: block output (paper) or residual after attention (authors' code)",
    )
    group.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default=d.prompt_format,
        help=f"lay input + answer out with the chat template or as plain text (default: "
        f"{d.prompt_format}; a model without a chat template is read plain)",
    )
    group.add_argument(
        "--opening-tokens",
        type=int,
        default=d.opening_tokens,
        help="also store opening signals averaged over this many first answer positions, for "
        f"--opening-scale in the chat (default: {d.opening_tokens}; 0 = none, half the size)",
    )


def recipe_from_args(args: argparse.Namespace, *, for_calibration: bool = False) -> Recipe:
    if args.opening_tokens < 0:
        raise FintsEdgeError("--opening-tokens must be >= 0 (0 = no opening signals)")
    return Recipe(
        for_calibration=for_calibration,
        layers=args.layers,
        sites=parse_sites(args.sites) if args.sites else (),
        attn_reading=args.attn_reading,
        prompt_format=args.prompt_format,
        opening_tokens=args.opening_tokens,
    )
