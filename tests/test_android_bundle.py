"""The phone bundle, as far as this machine can take it: build it (tiny model), unzip it into an
empty folder, check its SHA256SUMS, install the runtime into a fresh Python 3.11 venv exactly as
setup_debian_proot.sh does (no torch; the llama-cpp-python wheel this machine already built is
reused, so nothing compiles), start run_server.sh and get a steered answer over HTTP.

What it cannot show: Termux's own packages, Android's libc, an ARM build of llama.cpp.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from test_serve import STYLES, user_profiles  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SERVER_ARGS = ["--strength", "40", "--max-tokens", "8", "--threads", "1", "--n-ctx", "512"]


def load_bundle_module():
    spec = importlib.util.spec_from_file_location(
        "android_bundle", ROOT / "android_demo" / "bundle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def llama_wheel_dir() -> Path:
    """Where `make setup` cached this machine's llama-cpp-python wheel (Makefile: WHEELS)."""
    from fints_edge._paths import cache_dir
    from fints_edge.llama.build_flags import cache_key

    pin = next(
        line.split('"')[1]
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if '"llama-cpp-python==' in line
    )
    return cache_dir() / "wheels" / f"{pin.replace('==', '-')}-{cache_key()}"


def unzip(archive: Path, dest: Path) -> Path:
    """Like `unzip`: file modes come back (the scripts stay executable)."""
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            path = Path(z.extract(info, dest))
            mode = info.external_attr >> 16
            if mode:
                path.chmod(mode & 0o777)
    (top,) = dest.iterdir()
    return top


def test_runtime_requirements_have_no_torch_and_pin_everything():
    reqs = load_bundle_module().runtime_requirements()
    names = {r.split("==")[0] for r in reqs}
    assert all("==" in r for r in reqs)
    assert {"llama-cpp-python", "onnxruntime", "numpy", "tokenizers", "hnswlib", "starlette",
            "uvicorn", "python-multipart", "rouge-score"} <= names  # fmt: skip
    assert not names & {"torch", "transformers", "optimum-onnx", "huggingface-hub", "accelerate"}


@pytest.mark.slow
def test_the_bundle_installs_without_torch_and_serves_a_steered_answer(
    tiny, request, onnx_encoder_dir, onnx_aggregator_path, tmp_path
):
    profiles = request.getfixturevalue("user_profiles")  # from test_serve
    wheels = llama_wheel_dir()
    if not list(wheels.glob("llama_cpp_python-*.whl")):
        pytest.skip(f"no llama-cpp-python wheel cached in {wheels}: run `make setup` first")
    if shutil.which("python3.11") is None or shutil.which("sha256sum") is None:
        pytest.skip("needs python3.11 and sha256sum on PATH")
    bundle = load_bundle_module()
    out = bundle.build_bundle(
        tmp_path / "build" / "android-bundle",
        model=tiny.gguf_path,
        encoder_dir=onnx_encoder_dir,
        aggregator=onnx_aggregator_path,
        profiles={"alice": profiles / "alice.npz", "bob": profiles / "bob.npz"},
        server_args=SERVER_ARGS,
        make_zip=True,
    )
    phone = tmp_path / "phone"
    phone.mkdir()
    here = unzip(out.with_suffix(".zip"), phone)
    assert sorted(p.name for p in here.iterdir()) == sorted(
        ["README.md", "SHA256SUMS", "aggregator.onnx", "encoder", "install_runtime.sh", "model",
         "profiles", "requirements-runtime.txt", "run_server.sh", "setup_debian_proot.sh",
         "setup_termux.sh", "wheels"]
    )  # fmt: skip
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=here)
    assert check.returncode == 0
    listed = {
        line.split("  ", 1)[1].strip() for line in (here / "SHA256SUMS").read_text().splitlines()
    }
    on_disk = {p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file()}
    assert listed == on_disk - {"SHA256SUMS"}

    # a fresh venv, set up by the bundle's own script (apt skipped: the packages are here)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(ROOT / ".venv"))
    )
    env |= {
        "FINTS_NO_APT": "1",
        "PYTHON": "python3.11",
        "PIP_FIND_LINKS": f"{os.environ.get('PIP_FIND_LINKS', '')} {wheels}".strip(),
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
    }
    setup = subprocess.run(
        ["bash", "setup_debian_proot.sh"], cwd=here, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    assert "fints-edge runtime OK" in setup.stdout
    assert "Building wheel" not in setup.stdout + setup.stderr  # nothing compiled
    py = here / "venv" / "bin" / "python"
    installed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, env=env
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "fints-edge" in names and not names & {"torch", "transformers", "huggingface-hub"}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["./run_server.sh", "--port", str(port), "--log-level", "warning"], cwd=here, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        token_file = tmp_path / "xdg" / "fints-edge" / "server" / "token"
        deadline = time.monotonic() + 60
        answers = {}
        while time.monotonic() < deadline and server.poll() is None and len(answers) < 3:
            try:
                headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
                for user, steer in (("alice", True), ("bob", True), ("bob", False)):
                    body = {
                        "messages": [
                            {"role": "user", "content": "Write a headline about the rain."}
                        ],
                        "user": user,
                        "fints": {"steer": steer},
                    }
                    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                                   headers=headers, timeout=30)  # fmt: skip
                    answers[(user, steer)] = r.json()
            except (httpx.TransportError, FileNotFoundError):
                time.sleep(0.3)
        assert len(answers) == 3, server.stderr.read() if server.poll() is not None else "timeout"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    texts = {k: a["choices"][0]["message"]["content"] for k, a in answers.items()}
    assert (
        answers[("bob", True)]["fints"]["steered"] and answers[("bob", True)]["fints"]["retrieved"]
    )
    assert answers[("bob", True)]["fints"]["retrieved"][0]["output"] == STYLES["bob"]("rain")
    assert len({texts[("alice", True)], texts[("bob", True)], texts[("bob", False)]}) == 3
    assert "a new bearer token was saved" in err  # printed once, by the bundled server
