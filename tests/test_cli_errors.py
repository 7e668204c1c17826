"""Every command line tool, given a bad file or flag, exits 1 with one `error:` line naming the
file or the flag, no traceback, within seconds: what a user sees, so each case is a subprocess.

Inputs: truncated, pickled, bomb-sized and foreign (built for another model) profiles; missing
paths and folders; non-UTF-8 and empty histories, a line without `output`, a 2 MB line and a
20,000-word input; non-finite numbers. The tools: the chat (one-shot), learn (--history,
--add, --forget), export.build, export.gguf cvec, the doctor and the evaluation (`python -m
evals`). The default suite runs a representative subset (~15 cases); the whole matrix is
``slow``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_SECONDS = 30.0  # per case; a refusal takes ~0.3-5 s (interpreter start and imports)
LONG_WORDS = 20_000  # a "far too long" input: ~20k tokens, 10x the default context


# == the bad inputs ================================================================================
@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny, onnx_encoder_dir, onnx_aggregator_path) -> dict[str, str]:
    """Every path a case can name, and the cache folder (ONNX encoder + aggregator) the tools
    find through FINTS_EDGE_CACHE, as `python -m export.onnx` would have left it."""
    from export.build import BuildOptions, build_profile

    d = tmp_path_factory.mktemp("cli-errors")
    cache = d / "cache"
    shutil.copytree(onnx_encoder_dir, cache / "encoder")
    shutil.copyfile(onnx_aggregator_path, cache / "aggregator.onnx")
    history = _history(d / "history.jsonl")
    good = d / "me.npz"
    opts = BuildOptions(layers=(1, 2), sites=("attn", "mlp"), negatives="given",
                        encoder_dir=cache / "encoder", progress=False)  # fmt: skip
    build_profile(tiny.hf_dir, history, good, opts)

    data = good.read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(good) as z:
        members = {name: z.read(name) for name in z.namelist()}
    payload = np.empty(2, dtype=object)  # what np.load(allow_pickle=True) would unpickle
    payload[:] = [os.system, "echo pwned"]
    _zip(d / "pickled.npz", {**members, "signals.npy": _npy(payload)})
    # 256 MiB of zeros deflate to ~260 KB: a zip bomb by inflation
    bomb = {**members, "keys.npy": _npy(np.zeros(256 << 20, np.uint8))}
    _zip(d / "bomb.npz", bomb, zipfile.ZIP_DEFLATED)

    (d / "folder.npz").mkdir()
    (d / "latin1.jsonl").write_bytes('{"input": "café", "output": "ok"}\n'.encode("latin-1"))
    (d / "empty.jsonl").write_bytes(b"")
    (d / "no-output.jsonl").write_text('{"input": "a headline please"}\n')
    line = json.dumps({"input": "a", "output": "x" * (2 << 20)})  # over the 1 MiB line limit
    (d / "huge-line.jsonl").write_text(line + "\n")
    words = " ".join(["word"] * LONG_WORDS)
    long = {"input": words, "output": "short", "rejected": "other"}
    (d / "long-input.jsonl").write_text(json.dumps(long) + "\n")
    (d / "truncated.gguf").write_bytes(tiny.gguf_path.read_bytes()[:100_000])
    (d / "latin1.json").write_bytes('{"styles": "café"}'.encode("latin-1"))
    (d / "empty.json").write_bytes(b"")
    return {
        "cache": str(cache),
        "model": str(tiny.gguf_path),
        "hf": str(tiny.hf_dir),
        "profile": str(good),
        "history": str(history),
        "truncated": str(d / "truncated.npz"),
        "pickled": str(d / "pickled.npz"),
        "bomb": str(d / "bomb.npz"),
        "missing_npz": str(d / "missing.npz"),
        "folder_npz": str(d / "folder.npz"),
        "latin1": str(d / "latin1.jsonl"),
        "empty": str(d / "empty.jsonl"),
        "no_output": str(d / "no-output.jsonl"),
        "huge_line": str(d / "huge-line.jsonl"),
        "long_input": str(d / "long-input.jsonl"),
        "missing_jsonl": str(d / "missing.jsonl"),
        "folder": str(d),
        "missing_gguf": str(d / "missing.gguf"),
        "truncated_gguf": str(d / "truncated.gguf"),
        "latin1_json": str(d / "latin1.json"),
        "empty_json": str(d / "empty.json"),
        "missing_json": str(d / "missing.json"),
        "long_prompt": words,
        "out": str(d / "out"),  # nothing may be written here: every case fails
    }


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, files) -> str:
    """A profile built the same way for another tiny model (3 layers, not 4)."""
    from export.build import BuildOptions, build_profile
    from export.tiny import make_tiny_model

    d = tmp_path_factory.mktemp("foreign")
    other = make_tiny_model(d, n_layer=3)
    opts = BuildOptions(
        layers=(1, 2),
        negatives="given",
        encoder_dir=Path(files["cache"]) / "encoder",
        progress=False,
    )
    build_profile(other.hf_dir, files["history"], d / "foreign.npz", opts)
    return str(d / "foreign.npz")


def _history(path: Path) -> Path:
    rows = [
        {
            "input": f"Write a headline about the {t}.",
            "output": f"{t} news!",
            "rejected": f"The {t.title()} Story",
        }
        for t in ("rain", "bridge", "market")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)


# == the matrix ====================================================================================
CLIS = {  # the tool as a user types it (tiny model, 1 thread)
    "chat": ["-m", "fints_edge.chat", "--model", "{model}", "--threads", "1", "--max-tokens", "4"],
    "learn --history": [
        "-m",
        "fints_edge.learn",
        "--model",
        "{model}",
        "--threads",
        "1",
        "--quiet",
        "--out",
        "{out}/new.npz",
    ],
    "learn --add": ["-m", "fints_edge.learn", "--model", "{model}", "--threads", "1", "--quiet"],
    "learn --forget": ["-m", "fints_edge.learn", "--forget", "0"],
    "export.build": ["-m", "export.build", "--model", "{hf}", "--quiet"],
    "export.gguf cvec": ["-m", "export.gguf", "cvec", "--out", "{out}/user.gguf"],
    "doctor": ["-m", "fints_edge.llama.doctor", "--timeout", "60"],
    "evals": ["-m", "evals", "--threads", "1", "--out", "{out}/eval"],
}
PROFILES = {  # input -> path
    "truncated profile": "{truncated}",
    "pickled profile": "{pickled}",
    "bomb-sized profile": "{bomb}",
    "foreign profile": "{foreign}",
    "missing profile": "{missing_npz}",
    "profile path is a folder": "{folder_npz}",
}
HISTORIES = {
    "non-UTF-8 history": "{latin1}",
    "empty history": "{empty}",
    "line without output": "{no_output}",
    "2 MB history line": "{huge_line}",
    "20,000-word input": "{long_input}",
    "missing history": "{missing_jsonl}",
    "history path is a folder": "{folder}",
}
MODELS = {
    "missing model": "{missing_gguf}",
    "model path is a folder": "{folder}",
    "truncated model GGUF": "{truncated_gguf}",
}


@dataclass(frozen=True)
class Case:
    cli: str
    input: str
    args: tuple[str, ...]
    names: str  # the path or flag the error line must contain
    slow: bool = True
    known: str = ""  # a failure not fixable in this change: the strict xfail's reason

    @property
    def id(self) -> str:
        return f"{self.cli}: {self.input}"


# The default suite's representative subset: one of each kind of input, every tool.
FAST = {
    ("chat", "truncated profile"),
    ("chat", "foreign profile"),
    ("chat", "NaN --strength"),
    ("chat", "20,000-word input"),
    ("learn --history", "non-UTF-8 history"),
    ("learn --history", "model path is a folder"),
    ("learn --add", "line without output"),
    ("learn --add", "pickled profile"),
    ("learn --forget", "bomb-sized profile"),
    ("export.build", "empty history"),
    ("export.gguf cvec", "missing profile"),
    ("export.gguf cvec", "NaN --strength"),
    ("doctor", "model path is a folder"),
    ("doctor", "NaN --timeout"),
    ("evals", "non-UTF-8 --styles"),
    ("evals", "missing model"),
}
KNOWN: dict[tuple[str, str], str] = {}  # (tool, case) -> reason for a strict xfail


def _cases() -> list[Case]:
    out: list[tuple[str, str, list[str], str]] = []
    for what, path in PROFILES.items():
        out.append(("chat", what, ["--profile", path, "--prompt", "hi"], path))
        out.append(("learn --add", what, ["--profile", path, "--add", "{history}"], path))
        if what != "foreign profile":  # neither needs a model: nothing to be foreign to
            out.append(("learn --forget", what, ["--profile", path], path))
            out.append(("export.gguf cvec", what, ["--profile", path], path))
    too_long = "--n-ctx"  # the device's context is the limit, and the fix
    for what, path in HISTORIES.items():
        named = too_long if what == "20,000-word input" else path
        out.append(("learn --history", what, ["--history", path], named))
        out.append(("learn --add", what, ["--profile", "{profile}", "--add", path], named))
        out.append(("export.build", what, ["--history", path, "--out", "{out}/b.npz"], path))
    for what, path in MODELS.items():
        out.append(
            ("chat", what, ["--model", path, "--profile", "{profile}", "--prompt", "hi"], path)
        )
        out.append(("learn --history", what, ["--model", path, "--history", "{history}"], path))
        out.append(("doctor", what, ["--model", path], path))
        out.append(("evals", what, ["--model", path], path))
        if what != "truncated model GGUF":  # export.build reads HF folders; a GGUF is dequantized
            out.append(
                (
                    "export.build",
                    what,
                    ["--model", path, "--history", "{history}", "--out", "{out}/b.npz"],
                    path,
                )
            )
    flags = [
        (
            "chat",
            "NaN --strength",
            ["--profile", "{profile}", "--prompt", "hi", "--strength", "nan"],
            "--strength",
        ),
        (
            "chat",
            "NaN --temperature",
            ["--profile", "{profile}", "--prompt", "hi", "--temperature", "nan"],
            "--temperature",
        ),
        (
            "chat",
            "--opening-scale in cvec mode",
            [
                "--profile",
                "{profile}",
                "--prompt",
                "hi",
                "--mode",
                "cvec",
                "--opening-scale",
                "1",
            ],
            "--mode exact",
        ),
        (
            "chat",
            "infinite --gate",
            ["--profile", "{profile}", "--prompt", "hi", "--gate", "0.2:inf"],
            "--gate",
        ),
        (
            "chat",
            "20,000-word input",
            ["--profile", "{profile}", "--prompt", "{long_prompt}"],
            too_long,
        ),
        (
            "learn --history",
            "NaN --rouge-threshold",
            ["--history", "{history}", "--rouge-threshold", "nan"],
            "--rouge-threshold",
        ),
        (
            "learn --history",
            "--out is a folder",
            ["--history", "{history}", "--out", "{folder_npz}"],
            "--out",
        ),
        (
            "export.build",
            "NaN --rouge-threshold",
            ["--history", "{history}", "--out", "{out}/b.npz", "--rouge-threshold", "nan"],
            "--rouge-threshold",
        ),
        (
            "export.build",
            "--out is a folder",
            ["--history", "{history}", "--out", "{folder_npz}"],
            "--out",
        ),
        (
            "export.gguf cvec",
            "NaN --strength",
            ["--profile", "{profile}", "--strength", "nan"],
            "--strength",
        ),
        ("doctor", "NaN --timeout", ["--timeout", "nan"], "--timeout"),
        ("evals", "non-UTF-8 --styles", ["--styles", "{latin1_json}"], "{latin1_json}"),
        ("evals", "empty --styles", ["--styles", "{empty_json}"], "{empty_json}"),
        ("evals", "missing --styles", ["--styles", "{missing_json}"], "{missing_json}"),
        ("evals", "--styles is a folder", ["--styles", "{folder}"], "{folder}"),
    ]
    out += flags
    return [
        Case(cli, what, tuple(args), names, (cli, what) not in FAST, KNOWN.get((cli, what), ""))
        for cli, what, args, names in out
    ]


CASES = _cases()


def _params(slow: bool) -> list:
    return [
        pytest.param(
            c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.known)] if c.known else []
        )
        for c in CASES
        if c.slow == slow
    ]


def run_cli(argv: list[str], cache: str, timeout: float = MAX_SECONDS):
    """(exit code, stdout, stderr, seconds) of `python <argv>` as a user would run it."""
    env = os.environ | {
        "FINTS_EDGE_CACHE": cache,
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout:.0f} s: {' '.join(argv)[:300]}")
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0


def _check(case: Case, paths: dict[str, str], record_property) -> None:
    argv = [a.format(**paths) for a in (*CLIS[case.cli], *case.args)]
    names = case.names.format(**paths)
    action = case.cli.partition(" ")[2]
    record_property("group", " ".join(["python -m", CLIS[case.cli][1], action]).strip())
    record_property("tried", case.input)
    code, out, err, seconds = run_cli(argv, paths["cache"])
    record_property("seconds", round(seconds, 2))
    assert "Traceback" not in out + err, err[-2000:]
    lines = err.strip().splitlines()
    assert code == 1, f"exit code {code}; stderr: {err[-1000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-1000:]
    assert names in lines[0], f"the error does not name {names[:80]!r}: {lines[0]}"
    assert seconds < MAX_SECONDS


@pytest.mark.parametrize("case", _params(slow=False))
def test_cli_refuses_bad_input_with_one_error_line(case, files, foreign, record_property):
    """Each tool refuses a bad file or flag: exit 1, one `error:` line naming it, no traceback."""
    _check(case, files | {"foreign": foreign}, record_property)


@pytest.mark.slow
@pytest.mark.parametrize("case", _params(slow=True))
def test_cli_refuses_bad_input_with_one_error_line_slow(case, files, foreign, record_property):
    """The rest of the matrix: every tool with every input that applies to it."""
    _check(case, files | {"foreign": foreign}, record_property)


def test_the_same_commands_succeed_on_good_input(files, record_property):
    """The control: with the good profile the same command lines exit 0 (so a refusal above is
    about the bad input, not a broken set-up)."""
    record_property("tried", "chat one-shot and export.gguf cvec on the good profile")
    record_property("cases", 2)
    chat = [a.format(**files) for a in CLIS["chat"]]
    code, out, err, _ = run_cli(
        [*chat, "--profile", files["profile"], "--prompt", "hi"], files["cache"]
    )
    assert code == 0 and out.strip() and "error" not in err, err[-1000:]
    cvec = [a.format(**files) for a in CLIS["export.gguf cvec"]]
    code, out, err, _ = run_cli([*cvec, "--profile", files["profile"]], files["cache"])
    assert code == 0 and out.strip().endswith("user.gguf"), err[-1000:]
    assert (Path(files["out"]) / "user.gguf").stat().st_size > 0


def test_the_matrix_covers_every_tool_and_input():
    """Every tool meets every input that applies to it, and the default subset has each tool."""
    seen = {(c.cli, c.input) for c in CASES}
    assert len(seen) == len(CASES)  # no duplicate ids
    for kind in (PROFILES, HISTORIES, MODELS):
        for what in kind:
            assert sum(c.input == what for c in CASES) >= 2, what
    assert {c.cli for c in CASES if not c.slow} == set(CLIS)
    assert FAST <= seen
