"""Which graph tensor carries which Fints site, per model architecture: the one table.

Fints steers two sites of a decoder layer L (Pulse-and-Re-Pulse): ``attn`` = add v_attn to the
attention block's output, so the MLP runs on the steered residual; ``mlp`` = add v_mlp to the
MLP block's output. Signals are read at the same sites. Each architecture below was checked
against llama.cpp's graph code (``src/models/<arch>.cpp`` in llama-cpp-python 0.3.36) and HF's
decoder layer, and is pinned by ``pytest -k parity`` on a tiny random model of that arch.

llama.cpp names graph tensors ``<name>-<L>`` (L = hf_layer); the eval callback sees them. Per arch:

| arch (GGUF) | HF model_type | attn: inject / read output / read residual | mlp: inject / read |
|---|---|---|---|
| llama   | llama, mistral | ffn_inp / attn_out / ffn_inp       | l_out / ffn_out       |
| qwen2   | qwen2          | ffn_inp / ffn_inp - residual in / ffn_inp | l_out / ffn_out |
| gemma3  | gemma3_text    | sa_out / attn_post_norm / sa_out   | l_out / ffn_post_norm |

- ``ffn_inp-L`` (llama, qwen2) = residual + attention output, the MLP's input before its norm:
  adding there is adding to the attention output with the MLP re-run on it. ``l_out-L`` = the
  layer output = residual after the MLP: adding there is adding to the MLP output.
- qwen2's graph names no attention output (llama's ``attn_out`` cb is absent), so it is read as
  ``ffn_inp-L`` minus the residual entering layer L: ``l_out-(L-1)``, or for L = 0 the token
  embeddings ``embd`` (exact up to one f32 rounding of the sum).
- llama.cpp converts HF Mistral (MistralForCausalLM) to the ``llama`` graph; there is no
  separate ``mistral`` GGUF arch for it (``mistral3``/``mistral4`` are other models, not here).
- gemma3 norms each block's output before adding it to the residual (``post_attention_layernorm``,
  ``post_feedforward_layernorm``). Here the sites are the NORMED block outputs, i.e. exactly what
  each block adds to the residual stream: v_attn is added after the post-attention norm
  (``sa_out-L`` = residual + normed attention, then the MLP re-runs on it) and v_mlp after the
  post-FFN norm (``l_out-L``). In HF terms: a forward hook adding v to the output of
  ``post_attention_layernorm`` / ``post_feedforward_layernorm``; extraction reads the same two
  outputs. This is "add to the attention/MLP block output" with the post-norm counted as part of
  the block; adding before the post-norm instead would be rescaled away by that norm. Layer 0's
  residual input is the scaled embedding ``inp_scaled`` (x sqrt(n_embd), as HF's embed_scale).

``cvec`` mode (llama.cpp's built-in control vector, added at ``l_out-L``) runs on any arch whose
graph calls ``build_cvec`` at the layer end, as all three above do: exact for the MLP site, the
attention site approximated there (that layer's MLP never sees it). Archs not in the table are
refused for ``exact`` mode and on-device learning, and run in ``cvec`` mode with that stated
approximation (:func:`cvec_note`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fints_edge.errors import FintsEdgeError
from fints_edge.layers import AttnReading, Site


@dataclass(frozen=True)
class Reading:
    """An activation read from the graph: ``plus`` minus ``minus`` (tensor names, with layer)."""

    plus: str
    minus: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.plus,) if self.minus is None else (self.plus, self.minus)


@dataclass(frozen=True)
class ArchGraph:
    """One architecture's sites, in llama.cpp graph tensor names and HF module names."""

    arch: str  # GGUF general.architecture
    hf_model_types: tuple[str, ...]  # HF config.model_type values that convert to ``arch``
    inject: dict[Site, str]  # site -> tensor whose in-place add IS Pulse-and-Re-Pulse there
    attn_output: str | None  # tensor holding the attention block output; None = derive it
    attn_residual: str  # residual after attention (input of the MLP's pre-norm)
    mlp_output: str  # MLP block output
    embed: str  # residual stream entering layer 0 (no layer suffix)
    # HF modules of model.model.layers[L] (the torch twin of each site)
    hf_attn_output: str  # its forward output (first item) is the attention block output
    hf_mlp_output: str  # its forward output is the MLP block output
    hf_attn_residual: str  # its forward INPUT is the residual after attention
    layer_out: str = "l_out"  # layer output (residual after the MLP); cvec adds here

    def inject_tensor(self, site: Site, hf_layer: int) -> str:
        """Graph tensor of decoder layer ``hf_layer`` where ``site``'s vector is added."""
        try:
            return f"{self.inject[site]}-{hf_layer}"
        except KeyError:
            raise FintsEdgeError(f"unknown site {site!r}; use attn or mlp") from None

    def residual_in(self, hf_layer: int) -> str:
        """Tensor holding the residual stream that enters layer ``hf_layer``."""
        return self.embed if hf_layer == 0 else f"{self.layer_out}-{hf_layer - 1}"

    def reading(self, site: Site, hf_layer: int, attn_reading: AttnReading = "output") -> Reading:
        """How to read ``site`` of layer ``hf_layer`` from tapped graph tensors."""
        if site == "mlp":
            return Reading(f"{self.mlp_output}-{hf_layer}")
        if site != "attn":
            raise FintsEdgeError(f"unknown site {site!r}; use attn or mlp")
        if attn_reading == "residual":
            return Reading(f"{self.attn_residual}-{hf_layer}")
        if self.attn_output is not None:
            return Reading(f"{self.attn_output}-{hf_layer}")
        return Reading(f"{self.attn_residual}-{hf_layer}", self.residual_in(hf_layer))

    def layer_output(self, hf_layer: int) -> str:
        return f"{self.layer_out}-{hf_layer}"


_PRE_NORM: dict[Site, str] = {"attn": "ffn_inp", "mlp": "l_out"}

ARCHS: dict[str, ArchGraph] = {
    g.arch: g
    for g in (
        ArchGraph(
            arch="llama",
            hf_model_types=("llama", "mistral"),
            inject=dict(_PRE_NORM),
            attn_output="attn_out",
            attn_residual="ffn_inp",
            mlp_output="ffn_out",
            embed="embd",
            hf_attn_output="self_attn",
            hf_mlp_output="mlp",
            hf_attn_residual="post_attention_layernorm",
        ),
        ArchGraph(
            arch="qwen2",
            hf_model_types=("qwen2",),
            inject=dict(_PRE_NORM),
            attn_output=None,  # not named in llama.cpp's qwen2 graph: ffn_inp - residual in
            attn_residual="ffn_inp",
            mlp_output="ffn_out",
            embed="embd",
            hf_attn_output="self_attn",
            hf_mlp_output="mlp",
            hf_attn_residual="post_attention_layernorm",
        ),
        ArchGraph(
            arch="gemma3",
            hf_model_types=("gemma3_text",),
            inject={"attn": "sa_out", "mlp": "l_out"},
            attn_output="attn_post_norm",
            attn_residual="sa_out",
            mlp_output="ffn_post_norm",
            embed="inp_scaled",
            hf_attn_output="post_attention_layernorm",
            hf_mlp_output="post_feedforward_layernorm",
            hf_attn_residual="pre_feedforward_layernorm",
        ),
    )
}
SUPPORTED = tuple(ARCHS)


def graph_of(arch: str, where: str = "the model") -> ArchGraph:
    """The table entry of a GGUF arch, or one clear line naming the choices."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise FintsEdgeError(
            f"{where}: architecture '{arch}' is not in fints_edge.llama.arch's table "
            f"({', '.join(SUPPORTED)}), which exact injection and on-device learning need; "
            "the chat runs it with --mode cvec (attention site approximated at the layer output)"
        ) from None


def gguf_arch_of_hf(model_type: str, where: str = "the model") -> str:
    """GGUF arch an HF ``config.model_type`` converts to (``mistral`` -> ``llama``)."""
    for g in ARCHS.values():
        if model_type in g.hf_model_types:
            return g.arch
    known = ", ".join(t for g in ARCHS.values() for t in g.hf_model_types)
    raise FintsEdgeError(
        f"{where}: architecture '{model_type}' is not supported (HF model_type); use one of {known}"
    )


def graph_of_hf(model_type: str, where: str = "the model") -> ArchGraph:
    return ARCHS[gguf_arch_of_hf(model_type, where)]


def cvec_note(arch: str) -> str | None:
    """The approximation ``cvec`` mode makes on an arch outside the table (None if in it)."""
    if arch in ARCHS:
        return None
    return (
        f"architecture '{arch}' is not in fints_edge.llama.arch's table: cvec mode adds every site's "
        "vector to each layer's output through llama.cpp's control vector (exact for the MLP "
        "site only if the layer ends with residual + MLP output; the attention site is "
        "approximated; unchecked against torch for this arch)"
    )
