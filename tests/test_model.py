"""fints_edge.llama.model: opening GGUFs safely and the torch-free model identity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fints_edge.errors import FintsEdgeError
from fints_edge.llama.model import chat_prompt, default_threads, identity_from_llama, open_llama
from fints_edge.profile import tokenizer_fingerprint


@pytest.fixture(scope="module")
def llm(tiny):
    llm = open_llama(tiny.gguf_path, n_ctx=128, n_threads=1)
    yield llm
    llm.close()


def test_open_llama_refuses_missing_and_non_gguf(tmp_path):
    with pytest.raises(FintsEdgeError, match="nope.gguf: no such model file"):
        open_llama(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(FintsEdgeError, match="bad.gguf: not a GGUF file"):
        open_llama(bad)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(FintsEdgeError, match="cut.gguf: llama.cpp could not load it"):
        open_llama(truncated, n_threads=1)


def test_open_llama_sets_both_thread_counts(llm, tiny):
    assert llm.context_params.n_threads == 1
    assert llm.context_params.n_threads_batch == 1
    assert 1 <= default_threads() <= 4
    other = open_llama(tiny.gguf_path, n_ctx=64, vocab_only=True)
    try:
        assert (
            other.context_params.n_threads
            == other.context_params.n_threads_batch
            == default_threads()
        )
    finally:
        other.close()


def test_identity_from_llama(llm, tiny):
    ident = identity_from_llama(llm)
    vocab = json.loads((tiny.hf_dir / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)  # id order; SmolLM2's special tokens are in the BPE vocab
    assert (ident.arch, ident.n_layer, ident.n_embd, ident.n_vocab) == ("llama", 4, 64, len(tokens))
    assert ident.tokenizer_sha256 == tokenizer_fingerprint(tokens)


def test_chat_prompt_is_chatml(llm):
    text = chat_prompt(llm, [{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's template adds a default system turn


def test_runtime_needs_no_torch(tiny):
    """Opening a model and computing its identity must work with torch unimportable."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['transformers'] = None\n"
        "from fints_edge.llama.model import open_llama, identity_from_llama\n"
        f"llm = open_llama({str(tiny.gguf_path)!r}, n_ctx=64, n_threads=1, vocab_only=True)\n"
        "print(identity_from_llama(llm).tokenizer_sha256)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    llm = open_llama(tiny.gguf_path, n_ctx=64, n_threads=1, vocab_only=True)
    try:
        assert out.stdout.strip() == identity_from_llama(llm).tokenizer_sha256
    finally:
        llm.close()
