"""`python -m fints_edge.llama.doctor`: does this machine's llama.cpp build decode? Says "ok" or the fix.

Why a child process: a llama.cpp build compiled for the wrong CPU does not raise, it kills the
process (SIGSEGV in ggml's AMX path, SIGILL for an instruction the CPU lacks). The child loads the
model and decodes a few tokens; the parent only reads what it printed and how it ended, so a
crash becomes one line naming the fix instead of a dead terminal. `make setup` runs it.

For tests, ``FINTS_EDGE_DOCTOR_FAULT=segv|abort|hang`` makes the child fail that way before it
loads the model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from fints_edge._cli import cli_main, fail
from fints_edge.errors import FintsEdgeError
from fints_edge.llama import build_flags, native

FAULT_ENV = "FINTS_EDGE_DOCTOR_FAULT"
CHILD_FLAG = "--child"
PROMPT = "The capital of France is"
REBUILD_HINT = (
    "rebuild llama.cpp for this CPU with `make clean-llama setup` (flags chosen by "
    "fints_edge/llama/build_flags.py, AMX off; override with CMAKE_ARGS, see README 'Set-up')"
)
# llama_print_system_info() name -> /proc/cpuinfo flag the compiled code needs.
SYSTEM_INFO_NEEDS = {
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}


def compiled_features(system_info: str) -> set[str]:
    """Features a llama.cpp build reports as compiled in ("AVX2 = 1 | ..." -> {"AVX2", ...})."""
    found = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if sep and name and value.strip() == "1":
            found.add(name)
    return found


def build_problems(system_info: str, cpu_flags: set[str]) -> list[str]:
    """What is wrong with a build for this CPU, before anything runs (empty list: nothing)."""
    features = compiled_features(system_info)
    problems = []
    if "AMX_INT8" in features:
        problems.append(
            "this llama.cpp build has ggml's AMX path compiled in (AMX_INT8 = 1), which crashes "
            "in the first decode (llama.cpp issue 20824)"
        )
    if cpu_flags:  # x86 Linux: compare with what the CPU can run
        missing = sorted(
            f for f, need in SYSTEM_INFO_NEEDS.items() if f in features and need not in cpu_flags
        )
        if missing:
            problems.append(
                f"this llama.cpp build uses {', '.join(missing)}, which this CPU lacks "
                "(a wheel built on another machine?)"
            )
    return problems


def _child(model: str, n_tokens: int) -> int:
    """Runs in the subprocess: print the system info, then load and decode; one JSON per line."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    print(json.dumps({"system_info": info}), flush=True)
    fault = os.environ.get(FAULT_ENV, "")
    if fault == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "abort":
        os.abort()
    elif fault == "hang":
        time.sleep(3600)
    from fints_edge.llama.model import open_llama

    llm = open_llama(model, n_ctx=256, n_threads=1)
    t0 = time.perf_counter()
    out = llm.create_completion(PROMPT, max_tokens=n_tokens, temperature=0.0)
    ms = (time.perf_counter() - t0) * 1000
    usage = out["usage"]
    print(
        json.dumps(
            {"tokens": usage["completion_tokens"], "ms": ms, "text": out["choices"][0]["text"]}
        ),
        flush=True,
    )
    return 0


def run_child(model: Path, n_tokens: int, timeout: float) -> tuple[dict, str]:
    """Run the decode check in a subprocess: (what it printed, merged), or raise the one-liner."""
    cmd = [sys.executable, "-m", "fints_edge.llama.doctor", CHILD_FLAG, str(model), str(n_tokens)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FintsEdgeError(
            f"the llama.cpp decode check on {model} did not finish within {timeout:.0f} s; "
            f"if the machine is not just busy, {REBUILD_HINT}"
        ) from None
    seen: dict = {}
    for line in proc.stdout.splitlines():
        try:
            seen.update(json.loads(line))
        except ValueError:
            continue
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        stage = "decoding" if "system_info" in seen else "loading llama.cpp"
        raise FintsEdgeError(
            f"llama.cpp crashed ({sig}) while {stage} {model.name}; {REBUILD_HINT}"
        )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise FintsEdgeError(f"the decode check on {model} failed: {last.removeprefix('error: ')}")
    if "tokens" not in seen:
        raise FintsEdgeError(f"the decode check on {model} printed no result; {REBUILD_HINT}")
    return seen, proc.stderr


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fints_edge.llama.doctor",
        description="Check that llama.cpp, as built on this machine, loads a model and decodes.",
    )
    p.add_argument("--model", type=Path, help="a .gguf (default: the embedded SmolLM2)")
    p.add_argument("--tokens", type=int, default=8, help="tokens to decode (default 8)")
    p.add_argument("--timeout", type=float, default=300, help="seconds (default 300)")
    return p


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [CHILD_FLAG]:
        return _child(argv[1], int(argv[2]))
    args = build_parser().parse_args(argv)
    if args.tokens < 1 or not 0 < args.timeout < math.inf:
        raise FintsEdgeError("--tokens must be >= 1 and --timeout a finite number of seconds > 0")
    from fints_edge._paths import default_gguf
    from fints_edge.llama.model import check_gguf

    model = check_gguf(args.model or default_gguf())
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise FintsEdgeError("llama-cpp-python is not installed; run `make setup`") from None
    cpuinfo = build_flags.CPUINFO
    cpu = build_flags.cpu_flags(cpuinfo.read_text(errors="replace")) if cpuinfo.is_file() else set()
    print(f"python {platform.python_version()} on {platform.machine()}, llama-cpp-python {version}")
    print(f"expected {build_flags.describe()}")
    seen, _ = run_child(model, args.tokens, args.timeout)
    info = seen.get("system_info", "")
    print(f"system info: {info}")
    problems = build_problems(info, cpu if platform.machine() in ("x86_64", "AMD64") else set())
    if problems:
        return fail(f"{'; '.join(problems)}; {REBUILD_HINT}")
    rate = seen["tokens"] / max(seen["ms"] / 1000, 1e-9)
    print(native.status())
    print(
        f"ok: {model.name} decoded {seen['tokens']} tokens in {seen['ms']:.0f} ms "
        f"({rate:.0f} tok/s, 1 thread): {PROMPT!r} ->{seen['text']!r}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
