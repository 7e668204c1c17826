"""Sites and layer numbering: the one place where HF and llama.cpp indices meet.

Conventions used across the project:
- ``hf_layer``: 0-based index of a decoder layer, as in ``model.model.layers[hf_layer]``.
- ``cvec_row``: row of llama.cpp's control-vector buffer ``[n_layer, n_embd]``. Row k is added
  to the OUTPUT of decoder layer k + 1, so the output of layer 0 cannot be steered that way.
- GGUF control-vector files name their tensors ``direction.N`` with N = cvec_row + 1 = hf_layer.
"""

from collections.abc import Sequence
from typing import Literal, get_args

from fints_edge.errors import FintsEdgeError

Site = Literal["attn", "mlp"]
SITES: tuple[Site, ...] = get_args(Site)
SITE_CHOICES = ("attn", "mlp", "both")  # what the CLIs accept for --sites
# Sites a new profile stores: the `make eval` dev sweep kept the attention site alone on
# SmolLM2-135M (docs/eval); "both" builds profiles twice the size for --sites experiments.
DEFAULT_SITES = "attn"

# How the attention-site activation is read during extraction:
# "output"   = the attention block's output (o_proj), the paper's description;
# "residual" = residual stream after attention (input + attention output), the authors' code.
AttnReading = Literal["output", "residual"]
ATTN_READINGS: tuple[AttnReading, ...] = get_args(AttnReading)


def cvec_row(hf_layer: int) -> int:
    """Control-vector row that adds to the output of decoder layer ``hf_layer``."""
    if hf_layer < 1:
        raise FintsEdgeError(
            f"decoder layer {hf_layer}: llama.cpp control vectors cannot steer the output of "
            "layer 0; use --mode exact, or build the profile at a layer >= 1"
        )
    return hf_layer - 1


def hf_layer_of_row(row: int) -> int:
    """Inverse of :func:`cvec_row`."""
    if row < 0:
        raise FintsEdgeError(f"control-vector row {row} is negative")
    return row + 1


def parse_sites(choice: str) -> tuple[Site, ...]:
    """``--sites attn|mlp|both`` as the sites to read or steer."""
    if choice == "both":
        return SITES
    if choice not in SITES:
        raise FintsEdgeError(f"--sites {choice!r}: choose one of {', '.join(SITE_CHOICES)}")
    return (choice,)  # type: ignore[return-value]


def check_layers(layers: Sequence[int], n_layer: int) -> list[int]:
    """Layers as sorted, distinct decoder indices in range, or one clear error (both halves)."""
    out = [int(x) for x in layers]
    if not out or out != sorted(set(out)) or out[0] < 0 or out[-1] >= n_layer:
        raise FintsEdgeError(
            f"layers {list(layers)}: need sorted, distinct decoder indices in 0..{n_layer - 1}"
        )
    return out


DEFAULT_LAYER_FRACTION = 0.67  # `make eval` dev sweep (docs/eval): 20 of 30 on SmolLM2-135M


def layer_at(fraction: float, n_layer: int) -> int:
    """The decoder layer at ``fraction`` of the depth (never layer 0: a control vector cannot
    steer its output)."""
    return max(1, min(n_layer - 1, round(fraction * n_layer)))


def default_layer(n_layer: int) -> int:
    """Default steering layer: ~2/3 of the depth. The dev sweep of `make eval` tried 18, 20, 22
    and 24 of SmolLM2-135M's 30 layers and kept 20; Fints used 23 of 32, the first probe 22."""
    return layer_at(DEFAULT_LAYER_FRACTION, n_layer)


# The layers a profile stores when it is built for calibration (``python -m fints_edge.learn
# --history H --calibrate``, the server's build with calibration): the default and a neighbour
# on each side, the fractions the `make eval` quick sweep tries (18, 20, 22 of SmolLM2's 30;
# 14, 16, 18 of Qwen-0.5B's 24). Calibration picks one of them per user.
CANDIDATE_LAYER_FRACTIONS = (0.6, DEFAULT_LAYER_FRACTION, 0.73)


def candidate_layers(n_layer: int) -> list[int]:
    """The distinct layers at :data:`CANDIDATE_LAYER_FRACTIONS` of the depth, ascending."""
    return sorted({layer_at(f, n_layer) for f in CANDIDATE_LAYER_FRACTIONS})


def preferred_layer(stored: Sequence[int], n_layer: int) -> int:
    """Of a profile's stored layers, the one steered alone when no setting names a layer: the
    one nearest the default depth (the lower on a tie)."""
    if not len(stored):
        raise FintsEdgeError("the profile stores no layers")
    target = default_layer(n_layer)
    return min((int(x) for x in stored), key=lambda x: (abs(x - target), x))
