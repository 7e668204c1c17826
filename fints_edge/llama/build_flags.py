"""llama.cpp build flags that follow the CPU, and the key a built wheel is cached under.

Why: llama-cpp-python compiles llama.cpp with `-march=native` by default. On Intel CPUs with AMX
that compiles in ggml's AMX matmul path, whose first decode segfaults (llama.cpp issue 20824).
Here every x86 instruction-set option is set explicitly from `/proc/cpuinfo`, AMX always off;
other machines (aarch64 phones, macOS) keep llama.cpp's own defaults. A user's `CMAKE_ARGS`
wins over all of it. pip's wheel cache keys on the version only, so the project caches the
built wheel under `cache_key()`: a machine with other flags never reuses it.

Stdlib only: the Makefile runs this file with the system Python before any venv exists
(`python3.11 fints_edge/llama/build_flags.py cmake-args|key|describe`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

# ggml CMake option -> the /proc/cpuinfo flags it compiles in (all must be present).
X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    # ggml's AVX512 option adds -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512f", "avx512vbmi"),
    "GGML_AVX512_VNNI": ("avx512f", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512f", "avx512_bf16"),
}
# Never compiled in, whatever the CPU has: the AMX matmul path crashes (see module docstring).
ALWAYS_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first `flags` (x86) or `Features` (ARM) line of a /proc/cpuinfo text, as a set."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def x86_cmake_args(flags: set[str]) -> str:
    """Every ggml x86 option set ON or OFF explicitly (ggml turns some on by default)."""
    args = ["-DGGML_NATIVE=OFF"]
    for option, needs in X86_OPTIONS.items():
        args.append(f"-D{option}={'ON' if all(f in flags for f in needs) else 'OFF'}")
    args += [f"-D{option}=OFF" for option in ALWAYS_OFF]
    return " ".join(args)


def cmake_args(
    env: dict[str, str] | None = None, cpuinfo: str | None = None, machine: str | None = None
) -> str:
    """CMAKE_ARGS for llama-cpp-python on this machine; a user's CMAKE_ARGS is used as given."""
    env = dict(os.environ) if env is None else env
    if env.get("CMAKE_ARGS", "").strip():
        return env["CMAKE_ARGS"].strip()
    machine = machine or platform.machine()
    if machine.lower() not in ("x86_64", "amd64", "i686", "i386"):
        return ""  # aarch64 (phones), etc.: llama.cpp's own defaults (NEON, dotprod where present)
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else ""
    flags = cpu_flags(cpuinfo)
    if not flags:
        return ""  # no /proc/cpuinfo (macOS, BSD): the defaults
    return x86_cmake_args(flags)


def cache_key(
    env: dict[str, str] | None = None, cpuinfo: str | None = None, machine: str | None = None
) -> str:
    """A folder name for the built wheel: machine + hash of the flags (+ CPU features when the
    build is native, i.e. the flags alone do not pin the instruction set)."""
    machine = machine or platform.machine()
    args = cmake_args(env, cpuinfo, machine)
    native_part = ""
    if "GGML_NATIVE=OFF" not in args:
        if cpuinfo is None:
            cpuinfo = CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else ""
        native_part = " ".join(sorted(cpu_flags(cpuinfo)))
    digest = hashlib.sha256(f"{args}\n{native_part}".encode()).hexdigest()[:12]
    return f"{machine.lower()}-{digest}"


def describe() -> str:
    """A human summary for `make setup` and the doctor."""
    args = cmake_args()
    enabled = [a[2:].split("=")[0] for a in args.split() if a.endswith("=ON")]
    source = (
        "CMAKE_ARGS from the environment"
        if os.environ.get("CMAKE_ARGS", "").strip()
        else ("chosen from this CPU" if args else "llama.cpp defaults for this machine")
    )
    return (
        f"llama.cpp build ({source}): {', '.join(enabled) or args or 'defaults'}; key {cache_key()}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"cmake-args": cmake_args, "key": cache_key, "describe": describe}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: build_flags.py {'|'.join(commands)}", file=sys.stderr)
        return 2
    print(commands[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
