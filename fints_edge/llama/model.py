"""Opening a GGUF with llama.cpp, and the model identity a profile is checked against.

torch-free by design: llama_cpp is imported inside the functions that need it, so importing
this module costs nothing and works where llama-cpp-python is missing (tests, tooling).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fints_edge.errors import FintsEdgeError
from fints_edge.profile import ModelIdentity, PromptFormat, tokenizer_fingerprint

GGUF_MAGIC = b"GGUF"
MAX_DEFAULT_THREADS = 4


def default_threads() -> int:
    """All cores up to 4: more rarely helps a small model and hurts a shared machine."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_THREADS))


def check_gguf(path: str | Path) -> Path:
    """Cheap checks before any C code runs: the file exists and starts with the GGUF magic."""
    path = Path(path)
    if not path.is_file():
        raise FintsEdgeError(
            f"{path}: no such model file; pass a .gguf model "
            "(optional models: `python -m fints_edge.zoo list`)"
        )
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


@functools.lru_cache(maxsize=8)
def model_shape(path: str | Path) -> tuple[str, int, int]:
    """(architecture, layers, width) from a GGUF's metadata, without loading its weights
    (a vocab-only load, ~0.2 s): what a per-model default row is matched on."""
    import ctypes

    import llama_cpp

    path = check_gguf(path)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise FintsEdgeError(f"{path}: llama.cpp could not read it; is it a complete GGUF?")
    try:
        buf = ctypes.create_string_buffer(256)

        def meta(key: str) -> str:
            if llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf)) < 0:
                raise FintsEdgeError(f"{path}: GGUF lacks metadata key {key!r}")
            return buf.value.decode()

        arch = meta("general.architecture")
        return arch, int(meta(f"{arch}.block_count")), int(meta(f"{arch}.embedding_length"))
    finally:
        llama_cpp.llama_model_free(model)


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


def has_chat_template(llm: Any) -> bool:
    """Whether the GGUF carries a chat template (chat-tuned models do; base models do not)."""
    return bool(llm.metadata.get("tokenizer.chat_template"))


def chat_prompt(
    llm: Any, messages: Sequence[dict[str, str]], prompt_format: PromptFormat | None = None
) -> str:
    """``messages`` laid out for the model, ready to generate the next assistant turn.

    ``chat``: the model's own chat template (from the GGUF). ``plain``: :func:`plain_prompt`.
    ``None`` (default): the template when the GGUF has one, else plain: a base model such as
    gemma-3-270m ships no template and is prompted with plain text, as it was trained.
    Tokenize the result with ``special=True`` and ``add_bos=False``: it already holds whatever
    special tokens the model expects (BOS included).
    """
    if prompt_format is None:
        prompt_format = "chat" if has_chat_template(llm) else "plain"
    if prompt_format == "plain":
        return plain_prompt(llm, messages)
    if prompt_format != "chat":
        raise FintsEdgeError(f"prompt format {prompt_format!r}: use chat or plain")
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise FintsEdgeError(
            f"{llm.model_path}: GGUF has no chat template (a base model?); use the plain "
            "prompt format (a profile built with --prompt-format plain)"
        )
    eos, bos = token_text(llm, llm.token_eos()), token_text(llm, llm.token_bos())
    msgs: Any = list(messages)  # llama_cpp's TypedDicts; plain role/content dicts
    return str(chat_formatter(template, eos, bos)(messages=msgs).prompt)


@functools.lru_cache(maxsize=8)
def chat_formatter(template: str, eos: str, bos: str) -> Any:
    """The compiled chat template: compiling costs far more than rendering, and
    ``fints_edge.prompt.prompt_tokens`` renders twice per prompt."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=True)


def plain_prompt(llm: Any, messages: Sequence[dict[str, str]]) -> str:
    """The plain layout, for base models: BOS if the model adds one, then each turn's text;
    a user turn ends with a newline (the answer follows it, as during extraction), an assistant
    or system turn with a blank line. One user message gives BOS + input + newline, exactly the
    ``plain`` layout ``fints_edge.learn.extract`` and ``export.extract`` learn signals with."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    bos = token_text(llm, llm.token_bos()) if llama_cpp.llama_vocab_get_add_bos(vocab) else ""
    parts = [m["content"] + ("\n" if m["role"] == "user" else "\n\n") for m in messages]
    return bos + "".join(parts)


def token_text(llm: Any, token: int) -> str:
    """A token's text as stored in the vocabulary ("" for no token, e.g. a missing BOS)."""
    if token < 0:
        return ""
    import llama_cpp

    return vocab_text(llama_cpp.llama_model_get_vocab(llm.model), token)


def vocab_text(vocab: Any, token: int) -> str:
    import llama_cpp

    return (llama_cpp.llama_vocab_get_text(vocab, token) or b"").decode("utf-8", "replace")
