"""A self-contained tiny HF decoder + byte tokenizer for the extract/reference tests.

Byte-level with no merges: one token per UTF-8 byte, so tokenize(a + b) == tokenize(a) +
tokenize(b) and a test can count answer tokens without calling the code under test.
"""

from __future__ import annotations

from typing import Any

import torch

N_LAYER, N_EMBD, VOCAB = 4, 64, 512
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for bytes
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    # name the model's remaining ids, so any generated token decodes to visible text
    tok.add_tokens([f"<x{i}>" for i in range(tok.get_vocab_size(), VOCAB)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_decoder(arch: str = "llama", seed: int = 0) -> Any:
    """Random Llama or Qwen2 (q/k/v biases) with visible weights: std 0.05, norms 1 +- 0.1."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](
        vocab_size=VOCAB,
        hidden_size=N_EMBD,
        intermediate_size=128,
        num_hidden_layers=N_LAYER,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        initializer_range=0.05,
        eos_token_id=258,
        pad_token_id=256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif name.endswith(".bias"):
                    p.copy_(0.05 * torch.randn_like(p))
    return model.eval()


def no_hooks_left(model: Any) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
