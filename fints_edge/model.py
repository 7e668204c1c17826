"""Opening a GGUF with llama.cpp, and the model identity a profile is checked against.

torch-free by design: llama_cpp is imported inside the functions that need it, so importing
this module costs nothing and works where llama-cpp-python is missing (tests, tooling).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fints_edge.errors import FintsEdgeError
from fints_edge.profile import ModelIdentity, tokenizer_fingerprint

GGUF_MAGIC = b"GGUF"
MAX_DEFAULT_THREADS = 4


def default_threads() -> int:
    """All cores up to 4: more rarely helps a small model and hurts a shared machine."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_THREADS))


def check_gguf(path: str | Path) -> Path:
    """Cheap checks before any C code runs: the file exists and starts with the GGUF magic."""
    path = Path(path)
    if not path.is_file():
        raise FintsEdgeError(f"{path}: no such model file; pass a .gguf model")
    with path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise FintsEdgeError(f"{path}: not a GGUF file (starts with {magic!r}); pass a .gguf model")
    return path


def open_llama(
    path: str | Path,
    *,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    seed: int = 0,
    llama_cls: type | None = None,
    **kw: Any,
) -> Any:
    """A ``llama_cpp.Llama`` (or ``llama_cls``) for a GGUF file, checked before any C code runs.

    Both ``n_threads`` and ``n_threads_batch`` are set: llama.cpp's batch default is every core,
    which collapses prompt speed on a busy machine.
    """
    path = check_gguf(path)
    if llama_cls is None:
        import llama_cpp

        llama_cls = llama_cpp.Llama
    threads = n_threads or default_threads()
    kw.setdefault("n_threads_batch", threads)
    kw.setdefault("verbose", False)
    try:
        return llama_cls(model_path=str(path), n_ctx=n_ctx, n_threads=threads, seed=seed, **kw)
    except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
        raise FintsEdgeError(
            f"{path}: llama.cpp could not load it ({e}); is it a complete GGUF?"
        ) from e


def vocab_tokens(llm: Any) -> list[str]:
    """The vocabulary's token texts in id order, as stored in the GGUF (e.g. 'Ġthe')."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    # Token texts are UTF-8 in every GGUF we support; surrogateescape keeps any odd byte
    # distinct instead of failing (tokenizer_fingerprint encodes with surrogatepass).
    return [
        (llama_cpp.llama_vocab_get_text(vocab, i) or b"").decode("utf-8", "surrogateescape")
        for i in range(n)
    ]


def n_layers(llm: Any) -> int:
    """Decoder layers of a loaded GGUF (``<arch>.block_count``), without hashing the vocabulary."""
    arch = llm.metadata.get("general.architecture")
    try:
        return int(llm.metadata[f"{arch}.block_count"])
    except KeyError:
        raise FintsEdgeError(f"{llm.model_path}: GGUF lacks {arch}.block_count") from None


def identity_from_llama(llm: Any) -> ModelIdentity:
    """The identity of a loaded GGUF; equals ``export.models.identity_from_hf`` on its HF twin."""
    meta = llm.metadata
    arch = meta.get("general.architecture")
    if not arch:
        raise FintsEdgeError(f"{llm.model_path}: GGUF has no general.architecture key")
    try:
        n_layer = int(meta[f"{arch}.block_count"])
        n_embd = int(meta[f"{arch}.embedding_length"])
    except KeyError as e:
        raise FintsEdgeError(f"{llm.model_path}: GGUF lacks metadata key {e}") from e
    tokens = vocab_tokens(llm)
    return ModelIdentity(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=len(tokens),
        tokenizer_sha256=tokenizer_fingerprint(tokens),
    )


def chat_prompt(llm: Any, messages: Sequence[dict[str, str]]) -> str:
    """The model's own chat template (from the GGUF) applied to ``messages``, ready to generate.

    Tokenize the result with ``special=True`` and ``add_bos=False``: the template already holds
    whatever special tokens the model expects.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise FintsEdgeError(f"{llm.model_path}: GGUF has no chat template; use a chat model")
    eos = _token_text(llm, llm.token_eos())
    bos = _token_text(llm, llm.token_bos())
    formatter = Jinja2ChatFormatter(
        template, eos_token=eos, bos_token=bos, add_generation_prompt=True
    )
    msgs: Any = list(messages)  # llama_cpp's TypedDicts; plain role/content dicts
    return formatter(messages=msgs).prompt


def _token_text(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return (llama_cpp.llama_vocab_get_text(vocab, token) or b"").decode("utf-8", "replace")
