"""GGUF files for llama.cpp: HF model -> GGUF, GGUF -> Q4, and profile -> control vector.

HF -> GGUF: ``convert`` runs llama.cpp's own ``convert_hf_to_gguf.py`` (the reference), unpacked
once from the llama-cpp-python source distribution into the cache (``fetch-converter``). The
direct writer :func:`write_gguf` (the ``gguf`` package, no script) builds the tiny test models;
``tests/export/test_arch_parity.py`` checks it against the official converter per architecture
(same tensors, same hyper-parameters, same logits). Every file is written to a temp name next to
the target and renamed at the end.

Layout facts the direct writer relies on (each pinned by a parity test against torch):
- llama.cpp's LLAMA graph applies RoPE to adjacent pairs (x0, x1), (x2, x3), ...; HF Llama
  rotates halves (x_i with x_{i + d/2}). q_proj/k_proj rows are therefore interleaved per head.
  Qwen2 and Gemma3 use llama.cpp's NEOX rope (rotate-half), so their rows are kept as they are.
- Gemma's RMSNorm scales by (1 + weight): the GGUF stores weight + 1 (as llama.cpp's converter).
- Control vectors: tensor ``direction.N`` is added to the output of HF decoder layer N
  (llama.cpp buffer row N - 1); see ``fints_edge.layers``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fints_edge._atomic import atomic_path, write_failed
from fints_edge._cli import cli_main
from fints_edge._paths import cache_dir, default_gguf
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import cvec_row, hf_layer_of_row
from fints_edge.profile import Profile, tokenizer_fingerprint

OutType = Literal["f32", "f16"]
CvecSite = Literal["mlp", "both"]
QUANT_TYPES = (
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
)
_TOKENIZER_PREFIX = "tokenizer."
_TOKENIZER_KV_VERSION = 1


# -- atomic output ----------------------------------------------------------------------------------
@contextmanager
def _atomic_path(out: Path) -> Iterator[Path]:
    """A temp path next to ``out`` that replaces ``out`` (fsynced) only if the block succeeds.

    A write that fails on the disk (full, read-only) is one FintsEdgeError naming ``out``."""
    try:
        with atomic_path(out) as tmp:
            yield tmp
    except OSError as e:
        raise FintsEdgeError(write_failed(out, e)) from e


def _write(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# -- tokenizer keys, copied from a reference GGUF ----------------------------------------------------
def tokenizer_kv(source: Path) -> list[dict[str, Any]]:
    """The ``tokenizer.*`` key/values of a GGUF, cached as JSON (parsing the GGUF takes ~2 s)."""
    from export.models import gguf_sha256

    cached = cache_dir() / "tokenizer-kv" / f"{gguf_sha256(source)[:16]}.json"
    try:
        data = json.loads(cached.read_text())
        if data.get("version") == _TOKENIZER_KV_VERSION:
            return data["kv"]
    except (OSError, ValueError, AttributeError):
        pass  # missing or stale: read the GGUF once more
    import gguf

    reader = gguf.GGUFReader(source)
    kv = []
    for name, field in reader.fields.items():
        if name.startswith(_TOKENIZER_PREFIX):
            is_array = field.types[0] == gguf.GGUFValueType.ARRAY
            kv.append(
                {
                    "key": name,
                    "type": int(field.types[0]),
                    "sub_type": int(field.types[-1]) if is_array else None,
                    "value": field.contents(),
                }
            )
    if not any(k["key"] == "tokenizer.ggml.tokens" for k in kv):
        raise FintsEdgeError(f"{source}: GGUF has no tokenizer; pass --tokenizer-from a model GGUF")
    with _atomic_path(cached) as tmp:
        tmp.write_text(json.dumps({"version": _TOKENIZER_KV_VERSION, "kv": kv}))
    return kv


def _kv_tokens(kv: list[dict[str, Any]]) -> list[str]:
    return next(k["value"] for k in kv if k["key"] == "tokenizer.ggml.tokens")


# -- HF -> GGUF ----------------------------------------------------------------------------------------
def _interleave_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp adjacent-pair rows, per head (first axis = rows).

    Within a head of size d, HF pairs row i with row i + d/2 (same frequency i); llama.cpp's
    LLAMA rope pairs rows 2i and 2i + 1. So GGUF row 2i + a takes HF row a * d/2 + i.
    """
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _arch_of(config: Any, hf_dir: Path) -> Any:
    import gguf

    from fints_edge.llama.arch import gguf_arch_of_hf

    archs = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
             "gemma3": gguf.MODEL_ARCH.GEMMA3}  # fmt: skip
    arch = gguf_arch_of_hf(config.model_type, str(hf_dir))  # mistral -> llama, as llama.cpp
    rope_scaling = getattr(config, "rope_scaling", None)
    if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default":
        raise FintsEdgeError(
            f"{hf_dir}: rope scaling {rope_scaling} is not supported by this converter; "
            "use `python -m export.gguf convert --official`"
        )
    if getattr(config, "mlp_bias", False):
        raise FintsEdgeError(f"{hf_dir}: MLP biases are not supported by llama.cpp's llama graph")
    if config.model_type == "mistral" and getattr(config, "sliding_window", None):
        raise FintsEdgeError(
            f"{hf_dir}: a Mistral with a sliding window ({config.sliding_window}) runs as a "
            "llama GGUF without one; use a Mistral v0.2+ model (sliding_window null)"
        )
    if arch == "gemma3" and getattr(config, "final_logit_softcapping", None):
        raise FintsEdgeError(f"{hf_dir}: final logit soft-capping is not written by this converter")
    return archs[arch]


def _add_hparams(writer: Any, config: Any, outtype: OutType, name: str) -> None:
    import gguf

    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_rope_dimension_count(head_dim)
    gemma3 = config.model_type == "gemma3_text"
    if getattr(config, "head_dim", None) is not None:  # as llama.cpp's converter: when given
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if gemma3 and config.sliding_window:  # as llama.cpp's Gemma3Model.set_gguf_parameters
        writer.add_sliding_window(int(config.sliding_window))
        writer.add_rope_freq_base_swa(float(config.rope_local_base_freq))
    writer.add_vocab_size(config.vocab_size)
    ftype = gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(ftype))


def _gguf_tensors(model: Any, arch: Any, outtype: OutType) -> Iterator[tuple[str, np.ndarray]]:
    """(gguf name, array) for every weight, with llama's q/k rows interleaved."""
    import gguf

    config = model.config
    n_head = config.num_attention_heads
    n_head_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, t in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the same tensor as token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise FintsEdgeError(
                f"weight '{hf_name}' has no llama.cpp equivalent; unsupported model"
            )
        w = t.detach().to("cpu").float().numpy()  # [rows, cols] or [n]
        if arch == gguf.MODEL_ARCH.GEMMA3 and hf_name.endswith("norm.weight"):
            w = w + 1.0  # Gemma's RMSNorm scales by (1 + weight); llama.cpp's by weight
        if arch == gguf.MODEL_ARCH.LLAMA and ".self_attn.q_proj." in hf_name:
            w = _interleave_rope_rows(w, n_head)
        elif arch == gguf.MODEL_ARCH.LLAMA and ".self_attn.k_proj." in hf_name:
            w = _interleave_rope_rows(w, n_head_kv)
        # norms and biases stay f32 (they are tiny and precision-sensitive), as llama.cpp expects
        if outtype == "f16" and w.ndim == 2:
            w = w.astype(np.float16)
        yield name, np.ascontiguousarray(w)


def write_gguf(
    hf_dir: Path,
    out_path: Path,
    outtype: OutType = "f32",
    tokenizer_from: Path | None = None,
) -> Path:
    """Convert an HF Llama/Mistral/Qwen2/Gemma3 folder to a llama.cpp GGUF (f32 or f16), directly.

    Used for the tiny test models; ``tests/export/test_arch_parity.py`` checks it against
    llama.cpp's own converter (:func:`convert_official`), the reference for real models.

    The tokenizer keys are copied from ``tokenizer_from`` (default: the embedded SmolLM2 GGUF),
    after checking that its vocabulary is exactly the HF tokenizer's.
    """
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if outtype not in ("f32", "f16"):
        raise FintsEdgeError(f"--outtype {outtype}: choose f32 or f16 (then quantize)")
    if not (hf_dir / "config.json").is_file():
        raise FintsEdgeError(f"{hf_dir}: not an HF model folder (no config.json)")
    config = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    arch = _arch_of(config, hf_dir)
    source = Path(tokenizer_from) if tokenizer_from is not None else default_gguf()
    if not source.is_file():
        raise FintsEdgeError(f"{source}: no such GGUF to copy the tokenizer from")
    kv = tokenizer_kv(source)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    hf_tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    gguf_tokens = _kv_tokens(kv)
    if tokenizer_fingerprint(hf_tokens) != tokenizer_fingerprint(gguf_tokens):
        raise FintsEdgeError(
            f"{hf_dir}: its tokenizer ({len(hf_tokens)} tokens) differs from the one in {source} "
            f"({len(gguf_tokens)} tokens); pass --tokenizer-from a GGUF of this model family"
        )
    if config.vocab_size != len(gguf_tokens):
        raise FintsEdgeError(
            f"{hf_dir}: vocab_size {config.vocab_size} but the tokenizer has {len(gguf_tokens)} "
            "tokens; llama.cpp needs them equal"
        )
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)

    with _atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        _add_hparams(writer, config, outtype, hf_dir.name)
        for item in kv:
            vtype = gguf.GGUFValueType(item["type"])
            sub = gguf.GGUFValueType(item["sub_type"]) if item["sub_type"] is not None else None
            writer.add_key_value(item["key"], item["value"], vtype, sub_type=sub)
        for name, w in _gguf_tensors(model, arch, outtype):
            writer.add_tensor(name, w)
        _write(writer)
    return out_path


# -- HF -> GGUF with llama.cpp's own converter ---------------------------------------------------------
Converter = Literal["official", "direct"]
_CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
# What convert_hf_to_gguf.py needs from the sdist's vendor/llama.cpp/: itself, its per-arch
# modules and its own gguf-py (it puts that first on sys.path). Nothing else is unpacked.
_CONVERTER_PARTS = (_CONVERTER_SCRIPT, "conversion/", "gguf-py/")


def _llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise FintsEdgeError("llama-cpp-python is not installed; run `make setup`") from None


def converter_dir(llama_cpp_version: str | None = None) -> Path:
    """Where llama.cpp's converter for the installed llama-cpp-python version is unpacked
    (a cache folder, never the repository: llama.cpp's code is not part of this project)."""
    return cache_dir() / "llama.cpp" / f"convert-{llama_cpp_version or _llama_cpp_version()}"


def fetch_converter(sdist: Path | None = None, llama_cpp_version: str | None = None) -> Path:
    """Unpack ``convert_hf_to_gguf.py`` (+ ``conversion/``, ``gguf-py/``) from the
    llama-cpp-python source distribution of the installed version, once.

    ``sdist``: a ``llama_cpp_python-X.tar.gz`` already on disk (offline machines); without it,
    ``pip download --no-deps --no-binary :all: llama-cpp-python==X`` fetches it from PyPI.
    """
    import subprocess
    import tarfile
    import tempfile

    from fints_edge._atomic import atomic_dir

    version = llama_cpp_version or _llama_cpp_version()
    dest = converter_dir(version)
    if (dest / _CONVERTER_SCRIPT).is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix="fints-edge-sdist-") as d:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", ":all:", f"llama-cpp-python=={version}", "-d", d]  # fmt: skip
            print(f"fetching llama.cpp's converter: {' '.join(cmd[2:])}", file=sys.stderr)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise FintsEdgeError(
                    f"could not download the llama-cpp-python {version} source ({why}); "
                    "download it elsewhere and pass it: "
                    "`python -m export.gguf fetch-converter --sdist FILE.tar.gz`"
                )
            found = sorted(Path(d).glob("llama_cpp_python-*.tar.gz"))
            if not found:
                raise FintsEdgeError(f"pip download left no llama_cpp_python sdist in {d}")
            sdist = found[0]
        sdist = Path(sdist)
        if not sdist.is_file():
            raise FintsEdgeError(f"{sdist}: no such source distribution")
        try:
            with tarfile.open(sdist) as tar, atomic_dir(dest) as tmp:
                members = []
                for m in tar.getmembers():
                    _, sep, rest = m.name.partition("/vendor/llama.cpp/")
                    if sep and rest.startswith(_CONVERTER_PARTS) and (m.isfile() or m.isdir()):
                        m.name = rest
                        members.append(m)
                if not any(m.name == _CONVERTER_SCRIPT for m in members):
                    raise FintsEdgeError(
                        f"{sdist}: no vendor/llama.cpp/{_CONVERTER_SCRIPT}; pass the "
                        f"llama-cpp-python {version} source distribution"
                    )
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise FintsEdgeError(f"{sdist}: could not unpack it ({e})") from e
    return dest


def convert_official(hf_dir: Path, out_path: Path, outtype: OutType = "f32") -> Path:
    """HF folder -> GGUF with llama.cpp's own ``convert_hf_to_gguf.py`` (the reference for every
    architecture; run in a child process with its own gguf-py). The converter must have been
    fetched (:func:`fetch_converter`); a clear error says how otherwise."""
    import os
    import subprocess

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if not (hf_dir / "config.json").is_file():
        raise FintsEdgeError(f"{hf_dir}: not an HF model folder (no config.json)")
    if outtype not in ("f32", "f16"):
        raise FintsEdgeError(f"--outtype {outtype}: choose f32 or f16 (then quantize)")
    script = converter_dir() / _CONVERTER_SCRIPT
    if not script.is_file():
        raise FintsEdgeError(
            f"llama.cpp's converter is not here yet ({script}); run "
            "`python -m export.gguf fetch-converter` once (pip downloads the llama-cpp-python "
            "source), or pass --converter direct for llama/qwen2/gemma3 with a known tokenizer"
        )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("NO_LOCAL_GGUF", None)  # the converter's own gguf-py, not the installed one
    with _atomic_path(out_path) as tmp:
        cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(tmp),
               "--outtype", outtype]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
            raise FintsEdgeError(
                f"{hf_dir}: llama.cpp's converter failed ({lines[-1] if lines else 'no output'}); "
                f"run it by hand to see everything: {' '.join(cmd[1:])}"
            )
    return out_path


# -- quantization ------------------------------------------------------------------------------------
def gguf_file_type(path: Path) -> int:
    """``general.file_type`` (0 = f32, 1 = f16, 15 = Q4_K_M, ...), reading the vocabulary only."""
    from fints_edge.llama.model import open_llama

    llm = open_llama(path, n_ctx=64, n_threads=1, vocab_only=True)
    try:
        return int(llm.metadata.get("general.file_type", -1))
    finally:
        llm.close()


def quantize(src: Path, dst: Path, ftype: str = "Q4_K_M", n_threads: int = 2) -> Path:
    """Quantize an f32/f16 GGUF with llama.cpp (``llama_model_quantize``)."""
    import llama_cpp

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FintsEdgeError(f"{src}: no such GGUF file")
    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}", None)
    if ftype.upper() not in QUANT_TYPES or code is None:
        raise FintsEdgeError(f"--type {ftype}: choose one of {', '.join(QUANT_TYPES)}")
    have = gguf_file_type(src)
    if have not in (llama_cpp.LLAMA_FTYPE_ALL_F32, llama_cpp.LLAMA_FTYPE_MOSTLY_F16):
        raise FintsEdgeError(
            f"{src}: file type {have} is already quantized; quantize from an f32/f16 GGUF "
            "(`python -m export.gguf convert --outtype f16`)"
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = code
    params.nthread = n_threads
    with _atomic_path(dst) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise FintsEdgeError(f"{src}: llama.cpp quantization to {ftype} failed (code {rc})")
    return dst


# -- control vectors ---------------------------------------------------------------------------------
def write_control_vector(vectors: np.ndarray, out_path: Path, model_hint: str) -> Path:
    """llama.cpp control-vector GGUF from ``vectors`` float32 [n_layer, n_embd] (row = hf_layer).

    Row 0 must be zero: llama.cpp cannot steer the output of layer 0.
    """
    import gguf

    v = np.asarray(vectors, dtype=np.float32)  # [n_layer, n_embd]
    if v.ndim != 2 or v.shape[0] < 2:
        raise FintsEdgeError(f"control vector must be [n_layer >= 2, n_embd], got shape {v.shape}")
    if np.any(v[0]):
        raise FintsEdgeError(
            "row 0 (output of decoder layer 0) is nonzero; llama.cpp cannot steer it"
        )
    if not np.isfinite(v).all():
        raise FintsEdgeError("control vector contains NaN or infinity")
    arch = "controlvector"
    with _atomic_path(Path(out_path)) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        # add_string silently drops an empty string; the key is part of the layout
        writer.add_key_value(f"{arch}.model_hint", model_hint, gguf.GGUFValueType.STRING)
        writer.add_uint32(f"{arch}.layer_count", v.shape[0] - 1)
        for row in range(v.shape[0] - 1):
            layer = hf_layer_of_row(row)
            writer.add_tensor(f"direction.{cvec_row(layer) + 1}", np.ascontiguousarray(v[layer]))
        _write(writer)
    return Path(out_path)


def profile_to_control_vector(
    profile: Profile, out_path: Path, site: CvecSite = "mlp", strength: float = 1.0
) -> Path:
    """The raw mean of ALL signals (``Profile.raw_mean_signal``, the CAA-style user vector in
    the signals' own units) times ``strength``, as a control vector. Not the engine's static
    baseline (``Planner.static``), which item-normalises and uses residual units by default.

    A control vector adds at the layer output, which is exact for the MLP site. With
    ``site="both"`` the attention-site vector is added there too, an approximation: the real
    attention site would pass through that layer's MLP first.
    """
    if site not in ("mlp", "both"):
        raise FintsEdgeError(f"--site {site}: choose mlp or both")
    user = profile.raw_mean_signal()  # [S, L, n_embd]
    sites = ("mlp",) if site == "mlp" else profile.sites
    idx = [profile.site_index(s) for s in sites]  # raises if the profile lacks a site
    vectors = np.zeros((profile.model.n_layer, profile.n_embd), np.float32)  # [n_layer, n_embd]
    for j, layer in enumerate(profile.layers.tolist()):
        if layer < 1:
            raise FintsEdgeError("the profile steers layer 0, which a control vector cannot reach")
        vectors[layer] += strength * user[idx, j].sum(axis=0)
    return write_control_vector(vectors, out_path, profile.model.arch)


# -- command line --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.gguf", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="HF Llama/Mistral/Qwen2/Gemma3 folder -> GGUF (f32, f16)")
    c.add_argument("--hf", type=Path, required=True, help="HF model folder")
    c.add_argument("--out", type=Path, required=True, help="output .gguf")
    c.add_argument("--outtype", choices=("f32", "f16"), default="f32", help="default: f32")
    c.add_argument(
        "--converter",
        choices=("official", "direct"),
        default="official",
        help="official: llama.cpp's convert_hf_to_gguf.py (default; `fetch-converter` once); "
        "direct: this project's writer (tests; tokenizer keys copied from --tokenizer-from)",
    )
    c.add_argument(
        "--tokenizer-from",
        type=Path,
        default=None,
        help="direct only: GGUF with the same tokenizer (default: SmolLM2)",
    )
    f = sub.add_parser("fetch-converter", help="unpack llama.cpp's converter from its sdist, once")
    f.add_argument("--sdist", type=Path, default=None,
                   help="a llama_cpp_python-X.tar.gz on disk (default: pip download it)")  # fmt: skip
    q = sub.add_parser("quantize", help="f32/f16 GGUF -> quantized GGUF")
    q.add_argument("src", type=Path)
    q.add_argument("dst", type=Path)
    q.add_argument("--type", default="Q4_K_M", choices=QUANT_TYPES, help="default: Q4_K_M")
    q.add_argument("--threads", type=int, default=2, help="default: 2")
    v = sub.add_parser("cvec", help="profile -> llama.cpp control vector (user-level baseline)")
    v.add_argument("--profile", type=Path, required=True, help="profile .npz")
    v.add_argument("--out", type=Path, required=True, help="output control-vector .gguf")
    v.add_argument("--site", choices=("mlp", "both"), default="mlp", help="default: mlp")
    v.add_argument("--strength", type=float, default=1.0, help="multiplier (default: 1)")
    return p


@cli_main("interrupted; no output file was changed")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "cvec" and not np.isfinite(args.strength):
        raise FintsEdgeError(f"--strength must be a finite number, got {args.strength}")
    commands: dict[str, Callable[[], Path]] = {
        "convert": lambda: (
            convert_official(args.hf, args.out, args.outtype)
            if args.converter == "official"
            else write_gguf(args.hf, args.out, args.outtype, args.tokenizer_from)
        ),
        "fetch-converter": lambda: fetch_converter(args.sdist),
        "quantize": lambda: quantize(args.src, args.dst, args.type, args.threads),
        "cvec": lambda: profile_to_control_vector(
            Profile.load(args.profile), args.out, args.site, args.strength
        ),
    }
    print(commands[args.cmd]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
