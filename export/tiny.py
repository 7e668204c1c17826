"""A tiny random Llama with the real SmolLM2 tokenizer, as an HF folder and an f32 GGUF.

No package ships a tiny checkpoint; this one builds in seconds and makes exact torch-vs-llama.cpp
parity tests possible (same weights, same tokenizer, f32 on both sides).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


@dataclass(frozen=True)
class TinyModel:
    hf_dir: Path
    gguf_path: Path  # f32, SmolLM2 tokenizer keys
    n_layer: int
    n_embd: int


def make_tiny_model(
    out_dir: Path, n_layer: int = 4, seed: int = 0, arch: Literal["llama", "qwen2"] = "llama"
) -> TinyModel:
    """Write ``out_dir/hf`` (random config, tied embeddings) and ``out_dir/tiny-f32.gguf``.

    ``arch="qwen2"`` gives the same sizes with Qwen2's q/k/v biases (random, not zero).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out_dir = Path(out_dir)
    hf_dir = out_dir / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    source = dequantized_hf()  # cached after the first run; holds the SmolLM2 tokenizer
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, hf_dir / name)

    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = config_cls(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        initializer_range=INIT_STD,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1 + NORM_JITTER * torch.randn_like(p))
                elif name.endswith(".bias"):  # zero-initialised: a dropped bias would not show
                    p.copy_(INIT_STD * torch.randn_like(p))
    model.save_pretrained(hf_dir)
    gguf_path = write_gguf(hf_dir, out_dir / "tiny-f32.gguf", "f32")
    return TinyModel(hf_dir=hf_dir, gguf_path=gguf_path, n_layer=n_layer, n_embd=config.hidden_size)
