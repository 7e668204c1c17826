"""HF (torch) views of the models the device runs: a GGUF dequantized once to fp32, cached.

Extraction runs in torch, generation in llama.cpp. Dequantizing the shipped GGUF gives both the
same weights, so torch-vs-device parity tests compare like with like. The fp32 folder is cached
under ``cache_dir()/hf/<sha256[:16] of the GGUF>`` and written to a temp folder that is renamed
at the end, so an interrupted run never leaves half a model behind.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from fints_edge._atomic import atomic_dir, write_text
from fints_edge._paths import cache_dir, default_gguf
from fints_edge.errors import FintsEdgeError
from fints_edge.llama.arch import SUPPORTED, gguf_arch_of_hf
from fints_edge.profile import ModelIdentity, tokenizer_fingerprint

SUPPORTED_ARCHS = SUPPORTED  # GGUF archs of fints_edge.llama.arch's table (HF mistral -> llama)
_SHA_INDEX = "gguf-sha256.json"  # {"path|size|mtime_ns": sha256}: hashing 100 MB once is enough
_CACHE_MARKER = "fints_edge_source.json"  # written last: its presence marks a complete folder
_CACHE_VERSION = 2  # bump when the folder's content changes (2: BOS as in the GGUF)


# -- the GGUF's content hash, remembered per (path, size, mtime) --------------------------------
def gguf_sha256(path: Path) -> str:
    """sha256 of a file, cached in a small JSON sidecar keyed by path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache_dir() / _SHA_INDEX
    index = _read_index(index_path)
    if key in index:
        return index[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    index[key] = h.hexdigest()
    _write_json_atomic(index_path, index)
    return index[key]


def _read_index(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or corrupt: it is only a cache, rebuild it
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: dict[str, str]) -> None:
    write_text(path, json.dumps(data, indent=0))


# -- GGUF -> HF fp32 folder ------------------------------------------------------------------------
def gguf_scalars(path: Path) -> dict[str, Any]:
    """The scalar metadata of a GGUF file (str, int, float, bool), read without the weights."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError, IndexError, KeyError, OverflowError) as e:  # damaged: all seen
        raise FintsEdgeError(f"{path}: not a readable GGUF file ({e})") from e
    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if len(field.types) != 1 or not field.data:
            continue  # arrays (vocabulary, merges) are not needed here
        value = field.parts[field.data[0]]
        if field.types[0] == gguf.GGUFValueType.STRING:
            out[name] = bytes(value).decode("utf-8", "replace")
        else:
            out[name] = value.tolist()[0]
    return out


def gguf_arch(path: Path) -> str:
    """``general.architecture`` of a GGUF file."""
    arch = gguf_scalars(path).get("general.architecture")
    if not arch:
        raise FintsEdgeError(f"{path}: GGUF has no general.architecture key; re-export the model")
    return str(arch)


def dequantized_hf(gguf_path: Path | None = None) -> Path:
    """An HF fp32 folder holding the GGUF's weights and tokenizer; built once, then cached."""
    src = Path(gguf_path) if gguf_path is not None else default_gguf()
    if not src.is_file():
        raise FintsEdgeError(f"{src}: no such GGUF file")
    sha = gguf_sha256(src)
    out = cache_dir() / "hf" / sha[:16]
    if _cache_is_current(out):
        return out
    meta = gguf_scalars(src)
    _check_arch(str(meta.get("general.architecture", "unknown")), src)
    _check_vocab(src)  # seconds, before the minute the weights take

    print(f"dequantizing {src.name} to fp32 in {out} (once, ~30 s)", file=sys.stderr)
    # Built in a temp folder and swapped in whole (an older cache format is replaced).
    try:
        with atomic_dir(out) as tmp:
            _save_fp32(src, meta, sha, tmp)
    except OSError:
        if not _cache_is_current(out):  # lost a race to another process: fine
            raise
    return out


def _save_fp32(src: Path, meta: dict[str, Any], sha: str, tmp: Path) -> None:
    """The GGUF's weights and tokenizer as an HF fp32 folder in ``tmp``, the marker last."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"gguf_file": src.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(src.parent, dtype=torch.float32, **kw)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, **kw)
    _match_bos(tokenizer, meta, src)
    # The loaded model still carries the GGUF quantizer and its config entry; drop both so
    # save_pretrained writes a plain fp32 folder (notes/llama-cpp.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    marker = {"version": _CACHE_VERSION, "gguf": str(src), "sha256": sha}
    (tmp / _CACHE_MARKER).write_text(json.dumps(marker, indent=1))


def _cache_is_current(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("version") == _CACHE_VERSION


def _match_bos(tokenizer: Any, meta: dict[str, Any], src: Path) -> None:
    """Make the HF tokenizer add BOS exactly when llama.cpp does.

    transformers' GGUF loader builds a LlamaTokenizerFast that prepends BOS (for SmolLM2 that is
    <|im_start|>) although the GGUF says ``tokenizer.ggml.add_bos_token = false``; extraction
    would then see a token the device never feeds the model.
    """
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = add_bos  # the fast Llama tokenizer rebuilds its post-processor
    ids = tokenizer("a")["input_ids"]
    starts_with_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    if starts_with_bos != add_bos:
        raise FintsEdgeError(
            f"{src}: could not make the HF tokenizer {'add' if add_bos else 'skip'} BOS as the "
            "GGUF does; convert this model with its original HF tokenizer instead"
        )


def _check_vocab(src: Path) -> None:
    """The HF tokenizer transformers built from the GGUF must have the GGUF's exact vocabulary.

    transformers 4.57's GGUF loader does not for gemma3 (262,143 of 262,144 tokens, runs of spaces
    spelled differently, other splits): torch signals would then be read on other tokens than the
    device feeds, and the profile refused by the engine. Fail here, before the weights are saved.
    """
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name, local_files_only=True)
    field = gguf.GGUFReader(src).fields.get("tokenizer.ggml.tokens")
    want = field.contents() if field is not None else []
    got = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if tokenizer_fingerprint(got) != tokenizer_fingerprint(want):
        raise FintsEdgeError(
            f"{src}: transformers rebuilds this GGUF's tokenizer differently ({len(got)} vs "
            f"{len(want)} tokens or other spellings), so torch and llama.cpp would not see the same "
            "tokens; learn the profile on the device (`python -m fints_edge.learn`), or pass the "
            "original HF model folder"
        )


def _check_arch(arch: str, path: Path) -> None:
    """``arch`` is a GGUF arch (``general.architecture``) of fints_edge.llama.arch's table."""
    if arch not in SUPPORTED_ARCHS:
        raise FintsEdgeError(
            f"{path}: architecture '{arch}' is not supported; use a "
            f"{', '.join(SUPPORTED_ARCHS)} model"
        )


# -- loading ----------------------------------------------------------------------------------------
def load_hf(model: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode, fp32, from an HF folder or a .gguf file (dequantized)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        path = dequantized_hf(path)
    elif not path.exists():
        raise FintsEdgeError(f"{path}: no such model; pass an HF folder or a .gguf file")
    elif not (path.is_dir() and (path / "config.json").is_file()):
        raise FintsEdgeError(f"{path}: not an HF model folder (no config.json) nor a .gguf file")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    gguf_arch_of_hf(config.model_type, str(path))  # one clear line for other model types
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    hf.eval()
    return hf, tokenizer


def identity_from_hf(model: Any, tokenizer: Any) -> ModelIdentity:
    """The identity a profile records; equals ``fints_edge.llama.model.identity_from_llama`` on the GGUF."""
    config = model.config
    n_vocab = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n_vocab)))
    return ModelIdentity(
        arch=gguf_arch_of_hf(str(config.model_type)),  # as the GGUF names it: mistral -> llama
        n_layer=int(config.num_hidden_layers),
        n_embd=int(config.hidden_size),
        n_vocab=n_vocab,
        tokenizer_sha256=tokenizer_fingerprint(tokens),
    )
