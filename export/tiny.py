"""A tiny random decoder (Llama, Qwen2, Mistral or Gemma 3) with the real SmolLM2 tokenizer, as an
HF folder and an f32 GGUF.

No package ships a tiny checkpoint; this one builds in seconds and makes exact torch-vs-llama.cpp
parity tests possible (same weights, same tokenizer, f32 on both sides).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from export.gguf import write_gguf
from export.models import dequantized_hf

# Files that make up the HF tokenizer, copied from the dequantized default model (no re-parsing).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
# Weight scale: HF's default 0.02 gives nearly flat logits at hidden size 64 (std 0.16; a wrong
# layer or sign would hardly show). 0.05 gives logit std ~0.4 while llama.cpp, even with its
# default f16 KV cache, stays within 1e-3 of torch (~7e-4; ~3e-3 at 0.1).
INIT_STD = 0.05
NORM_JITTER = 0.1  # norm weights 1 +- this, so a swapped attn/ffn norm would show
# llama.cpp's KV cache is f16 by default, the one lossy step for an f32 GGUF: with an f32 cache
# the tiny model matches torch to ~1e-6. Pass these to open_llama / Llama for exact parity.
EXACT_KV = {"type_k": 0, "type_v": 0}  # GGML_TYPE_F32


TinyArch = Literal["llama", "qwen2", "mistral", "gemma3"]
TINY_ARCHS: tuple[TinyArch, ...] = ("llama", "qwen2", "mistral", "gemma3")
# gemma3: a window shorter than the test prompts, so sliding-window attention is exercised;
# with 6 layers llama.cpp's default pattern (every 6th layer global) gives layer 5 full attention.
GEMMA3_SLIDING_WINDOW = 8


@dataclass(frozen=True)
class TinyModel:
    hf_dir: Path
    gguf_path: Path  # f32, SmolLM2 tokenizer keys
    n_layer: int
    n_embd: int
    arch: str = "llama"  # GGUF general.architecture (a tiny mistral is a llama GGUF)


def _restore_byte_level(path: Path) -> None:
    """Give the tokenizer.json SmolLM2's own byte-level settings back.

    transformers' GGUF loader writes SmolLM2's byte-level BPE with ``byte_fallback`` and an
    SPM-style decoder; llama.cpp's converter then takes it for a Llama-2 sentencepiece vocab and
    writes a GGUF llama.cpp cannot load. Encoding is unchanged (the byte-level pre-tokenizer
    never falls back), and decoding is plain byte-level again.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model"]["byte_fallback"] = False
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                       "use_regex": True}  # fmt: skip
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _config(arch: TinyArch, n_layer: int) -> object:
    """A random config of ``arch`` at the tiny sizes; arch-specific knobs set so that llama.cpp
    computes the same function (see each branch)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=INIT_STD,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if arch == "gemma3":
        return Gemma3TextConfig(
            **common,
            head_dim=16,
            query_pre_attn_scalar=16,  # llama.cpp scales by 1/sqrt(head_dim) (all but 27B)
            sliding_window=GEMMA3_SLIDING_WINDOW,
            rope_theta=1_000_000.0,  # global layers
            rope_local_base_freq=10_000.0,  # sliding layers: llama.cpp's default freq_base_swa
            rms_norm_eps=1e-6,
            attn_implementation="eager",
        )
    if arch == "mistral":  # Mistral v0.2+ (no sliding window): llama.cpp runs it as llama
        return MistralConfig(**common, sliding_window=None, rms_norm_eps=1e-5, rope_theta=10000.0)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(**common, rms_norm_eps=1e-5, rope_theta=10000.0)


def make_tiny_model(
    out_dir: Path, n_layer: int = 4, seed: int = 0, arch: TinyArch = "llama"
) -> TinyModel:
    """Write ``out_dir/hf`` (random config, tied embeddings) and ``out_dir/tiny-f32.gguf``.

    ``arch="qwen2"`` gives the same sizes with Qwen2's q/k/v biases (random, not zero);
    ``"mistral"`` a MistralForCausalLM (a llama GGUF); ``"gemma3"`` a Gemma3ForCausalLM with
    q/k norms, post-attention and post-FFN norms and an 8-token sliding window.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from fints_edge.llama.arch import gguf_arch_of_hf

    if arch not in TINY_ARCHS:
        raise ValueError(f"arch {arch!r}: choose one of {TINY_ARCHS}")
    out_dir = Path(out_dir)
    hf_dir = out_dir / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    source = dequantized_hf()  # cached after the first run; holds the SmolLM2 tokenizer
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, hf_dir / name)
    _restore_byte_level(hf_dir / "tokenizer.json")

    config: Any = _config(arch, n_layer)
    # Gemma's RMSNorm scales by (1 + weight): jitter the weight around 0 there, around 1 elsewhere
    norm_center = 0.0 if arch == "gemma3" else 1.0
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(norm_center + NORM_JITTER * torch.randn_like(p))
                elif name.endswith(".bias"):  # zero-initialised: a dropped bias would not show
                    p.copy_(INIT_STD * torch.randn_like(p))
    model.save_pretrained(hf_dir)
    gguf_path = write_gguf(hf_dir, out_dir / "tiny-f32.gguf", "f32")
    return TinyModel(
        hf_dir=hf_dir,
        gguf_path=gguf_path,
        n_layer=n_layer,
        n_embd=config.hidden_size,
        arch=gguf_arch_of_hf(config.model_type),
    )
