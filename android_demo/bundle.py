"""``make android-bundle``: one folder (and zip) with everything the phone needs, nothing it doesn't.

    out/android-bundle/
      model/<name>.gguf          the quantized model
      encoder/, aggregator.onnx  exported once on a desktop by `python -m export.onnx`
      profiles/<user>.npz        one or more profiles (checked against the model here)
      wheels/fints_edge-*.whl    the project (pure Python; installed with --no-deps)
      requirements-runtime.txt   the runtime's dependencies, pinned, no torch
      install_runtime.sh, setup_termux.sh, setup_debian_proot.sh, run_server.sh, README.md
      SHA256SUMS                 `sha256sum -c SHA256SUMS` checks the copy on the phone

Run from the project's venv: ``python android_demo/bundle.py --profile demo=me.npz``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Sequence
from importlib.metadata import requires, version
from pathlib import Path

from fints_edge.zoo import sha256_of

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPTS = ("install_runtime.sh", "setup_termux.sh", "setup_debian_proot.sh")
# tokenizers declares huggingface-hub (downloads; its own tree includes a Rust wheel, hf-xet),
# which the runtime never imports: Tokenizer.from_file needs nothing of it.
NOT_NEEDED = {"huggingface-hub"}
BIG = {".gguf", ".onnx", ".npz", ".whl", ".zip"}  # stored, not deflated, in the zip


def runtime_requirements(extras: Sequence[str] = ("serve",)) -> list[str]:
    """fints-edge's runtime dependencies (and their own), pinned to the versions installed here,
    where the tests ran. Installed with --no-deps, so this list is the whole environment."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def wanted(req: Requirement, extra: str) -> bool:
        return req.marker is None or req.marker.evaluate({"extra": extra})

    stack = [
        req
        for req in map(Requirement, requires("fints-edge") or [])
        if req.marker is None or any(wanted(req, e) for e in extras)
    ]
    pinned: dict[str, str] = {}
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        if name in pinned or name in NOT_NEEDED:
            continue
        pinned[name] = version(req.name)
        stack += [r for r in map(Requirement, requires(req.name) or []) if wanted(r, "")]
    return [f"{name}=={pinned[name]}" for name in sorted(pinned)]


def build_wheel(out_dir: Path) -> Path:
    """The project as a wheel, built from a copy (the source tree is left untouched)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        with (ROOT / "pyproject.toml").open("rb") as f:
            include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
        # the installed packages only (the runtime): export/, evals/, bench/ stay behind
        for pkg in sorted({pattern.rstrip("*") for pattern in include}):
            shutil.copytree(
                ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "-w", str(out_dir), str(src)],
            check=True,
        )  # fmt: skip
    (wheel,) = out_dir.glob("fints_edge-*.whl")
    return wheel


def check_profiles(model: Path, profiles: dict[str, Path]) -> None:
    """Refuse, here and now, a profile the phone would refuse (built for another model)."""
    from fints_edge.llama.model import identity_from_llama, open_llama
    from fints_edge.profile import Profile

    llm = open_llama(model, n_ctx=64, n_threads=1, vocab_only=True)
    try:
        identity = identity_from_llama(llm)
    finally:
        llm.close()
    for path in profiles.values():
        Profile.load(path).check_model(identity, path)


def run_script(model_name: str, users: list[str], server_args: list[str]) -> str:
    adds = " ".join(f'--add-profile {u}="$here/profiles/{u}.npz"' for u in users)
    extra = " ".join(shlex.quote(a) for a in server_args)
    return f"""#!/usr/bin/env bash
# Start the fints-edge server on this phone (127.0.0.1:8000); extra flags go to the server,
# e.g. ./run_server.sh --port 8080. The first start prints the token once and a link that signs
# the web app in; `./run_server.sh --show-token` prints it again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -x "$here/venv/bin/python" ]; then PY="$here/venv/bin/python"; else PY="${{PYTHON:-python3}}"; fi
exec "$PY" -m fints_edge.serve --model "$here/model/{model_name}" \\
    --encoder "$here/encoder" --aggregator "$here/aggregator.onnx" \\
    {adds} --default-user {users[0]} {extra} "$@"
"""


def write_manifest(folder: Path) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{sha256_of(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    out = folder / "SHA256SUMS"
    out.write_text("".join(lines))
    return out


def build_bundle(
    out: Path,
    *,
    model: Path,
    encoder_dir: Path,
    aggregator: Path,
    profiles: dict[str, Path],
    server_args: Sequence[str] = (),
    make_zip: bool = False,
) -> Path:
    """Write the bundle folder ``out`` (replacing it); returns it. Checks every input first."""
    from fints_edge.errors import FintsEdgeError
    from fints_edge.llama.model import check_gguf
    from fints_edge.serve.auth import check_name

    check_gguf(model)
    if not (encoder_dir / "encoder.json").is_file():
        raise FintsEdgeError(f"{encoder_dir}: no ONNX encoder; run `python -m export.onnx`")
    if not aggregator.is_file():
        raise FintsEdgeError(f"{aggregator}: no aggregator; run `python -m export.onnx`")
    if not profiles:
        raise FintsEdgeError("give at least one --profile NAME=PATH")
    for name, path in profiles.items():
        check_name(name, "profile name")
        if not path.is_file():
            raise FintsEdgeError(f"{path}: no such profile (for '{name}')")
    check_profiles(model, profiles)

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "model").mkdir(parents=True)
    shutil.copy2(model, tmp / "model" / model.name)
    shutil.copytree(encoder_dir, tmp / "encoder")
    shutil.copy2(aggregator, tmp / "aggregator.onnx")
    (tmp / "profiles").mkdir()
    for name, path in profiles.items():
        shutil.copy2(path, tmp / "profiles" / f"{name}.npz")
    (tmp / "wheels").mkdir()
    build_wheel(tmp / "wheels")
    reqs = runtime_requirements()
    (tmp / "requirements-runtime.txt").write_text(
        "# fints-edge runtime (no torch), pinned to the versions tested; install with --no-deps\n"
        + "".join(r + "\n" for r in reqs)
    )
    for name in (*SCRIPTS, "README.md"):
        shutil.copy2(HERE / name, tmp / name)
    run = tmp / "run_server.sh"
    run.write_text(run_script(model.name, list(profiles), list(server_args)))
    for script in (*SCRIPTS, "run_server.sh"):
        (tmp / script).chmod(0o755)
    write_manifest(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if make_zip:
        write_zip(out, out.with_suffix(".zip"))
    return out


def write_zip(folder: Path, dest: Path) -> Path:
    """One file to copy to the phone; unzip keeps the scripts executable."""
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                kind = zipfile.ZIP_STORED if p.suffix in BIG else zipfile.ZIP_DEFLATED
                z.write(p, f"{folder.name}/{p.relative_to(folder).as_posix()}", compress_type=kind)
    os.replace(tmp, dest)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    from fints_edge._cli import cli_main
    from fints_edge._paths import default_aggregator_path, default_encoder_dir, default_gguf
    from fints_edge.errors import FintsEdgeError

    @cli_main("interrupted; the previous bundle is unchanged")
    def run(argv: Sequence[str] | None) -> int:
        p = argparse.ArgumentParser(prog="python android_demo/bundle.py", description=__doc__)
        p.add_argument("--out", type=Path, default=Path("out/android-bundle"))
        p.add_argument("--model", type=Path, help="GGUF (default: the embedded SmolLM2 Q4_1)")
        p.add_argument(
            "--encoder", type=Path, help="default: the one `python -m export.onnx` wrote"
        )
        p.add_argument("--aggregator", type=Path, help="default: the exported aggregator.onnx")
        p.add_argument("--profile", action="append", default=[], metavar="NAME=PATH")
        p.add_argument("--zip", action="store_true", help="also write OUT.zip")
        p.add_argument("server_args", nargs="*", help="flags for the server, after --")
        args = p.parse_args(argv)
        profiles = {}
        for spec in args.profile:
            name, sep, path = spec.partition("=")
            if not sep:
                raise FintsEdgeError(f"--profile {spec!r}: use NAME=PATH")
            profiles[name] = Path(path).expanduser()
        out = build_bundle(
            args.out,
            model=args.model or default_gguf(),
            encoder_dir=args.encoder or default_encoder_dir(),
            aggregator=args.aggregator or default_aggregator_path(),
            profiles=profiles,
            server_args=args.server_args,
            make_zip=args.zip,
        )
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(
            f"wrote {out} ({size / 1e6:.0f} MB){' and ' + str(out.with_suffix('.zip')) if args.zip else ''}"
        )
        print(f"check a copy with: cd {out.name} && sha256sum -c SHA256SUMS")
        return 0

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
