"""The llama.cpp build follows the CPU: AMX never, no instruction the CPU lacks, a wheel key per
flag set. CPU texts below are trimmed /proc/cpuinfo lines of real machine kinds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fints_edge.llama import build_flags

SAPPHIRE_RAPIDS = (
    "flags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2 avx512f avx512dq avx512cd avx512bw avx512vl "
    "avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8\n"
)
HASWELL = "flags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2\n"
OLD_ATOM = "flags\t\t: fpu sse sse2 ssse3\n"
PIXEL = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"


def options(args: str) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args.split())


def test_amx_cpu_gets_every_avx512_flag_and_no_amx():
    opts = options(build_flags.cmake_args({}, SAPPHIRE_RAPIDS, "x86_64"))
    assert opts["GGML_NATIVE"] == "OFF"  # -march=native is what compiled the AMX path in
    assert {k: opts[k] for k in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")} == {
        "GGML_AMX_TILE": "OFF",
        "GGML_AMX_INT8": "OFF",
        "GGML_AMX_BF16": "OFF",
    }
    on = {k for k, v in opts.items() if v == "ON"}
    assert on == set(build_flags.X86_OPTIONS)


def test_cpu_without_avx512_gets_none_of_it():
    opts = options(build_flags.cmake_args({}, HASWELL, "x86_64"))
    assert [k for k, v in opts.items() if v == "ON"] == [
        "GGML_SSE42",
        "GGML_AVX",
        "GGML_AVX2",
        "GGML_FMA",
        "GGML_F16C",
        "GGML_BMI2",
    ]


def test_options_ggml_enables_by_default_are_turned_off_explicitly():
    # With GGML_NATIVE=OFF ggml defaults SSE42/AVX/AVX2/BMI2/FMA/F16C to ON: a CPU without them
    # would get SIGILL unless each is written out as OFF.
    opts = options(build_flags.cmake_args({}, OLD_ATOM, "x86_64"))
    for name in ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C"):
        assert opts[name] == "OFF"


def test_avx512_needs_all_five_subsets():
    partial = "flags : avx avx2 avx512f avx512cd avx512vl avx512dq\n"  # no avx512bw
    assert options(build_flags.cmake_args({}, partial, "x86_64"))["GGML_AVX512"] == "OFF"


def test_arm_keeps_llama_cpp_defaults_and_user_args_win():
    assert build_flags.cmake_args({}, PIXEL, "aarch64") == ""
    user = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON"
    assert build_flags.cmake_args({"CMAKE_ARGS": user}, SAPPHIRE_RAPIDS, "x86_64") == user


def test_wheel_key_differs_per_flag_set_and_is_stable():
    key = build_flags.cache_key
    assert key({}, SAPPHIRE_RAPIDS, "x86_64") == key({}, SAPPHIRE_RAPIDS, "x86_64")
    keys = {
        key({}, SAPPHIRE_RAPIDS, "x86_64"),
        key({}, HASWELL, "x86_64"),
        key({"CMAKE_ARGS": "-DGGML_AVX2=ON"}, HASWELL, "x86_64"),
        key({}, PIXEL, "aarch64"),
        # native ARM builds: another CPU's features give another key
        key({}, "Features : fp asimd\n", "aarch64"),
    }
    assert len(keys) == 5


def test_runs_with_the_system_python_before_any_install():
    here = Path(build_flags.__file__)
    out = subprocess.run(
        [sys.executable, "-S", str(here), "key"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == build_flags.cache_key({})


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="Linux only")
def test_installed_llama_cpp_has_no_amx_and_matches_this_cpu():
    """The library in this venv: AMX off, nothing compiled in that the CPU cannot run."""
    import platform

    import llama_cpp

    from fints_edge.llama.doctor import build_problems, compiled_features

    info = llama_cpp.llama_print_system_info().decode()
    assert "AMX_INT8 = 1" not in info
    cpu = build_flags.cpu_flags(Path("/proc/cpuinfo").read_text())
    if platform.machine() == "x86_64":
        assert build_problems(info, cpu) == []
        assert "AVX2" in compiled_features(info) or "avx2" not in cpu  # not a generic build
