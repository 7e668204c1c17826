"""The doctor turns a crashing llama.cpp into one line with the fix, and says ok otherwise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fints_edge.llama.doctor import FAULT_ENV, build_problems, compiled_features

INFO_AMX = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
INFO_OK = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 0 | REPACK = 1 |"


def doctor(*args, env=None):
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fints_edge.llama.doctor", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def test_compiled_features_reads_system_info():
    assert compiled_features(INFO_AMX) == {"SSE3", "AVX", "AVX2", "AVX512", "AMX_INT8", "REPACK"}
    assert "AMX_INT8" not in compiled_features(INFO_OK)


def test_amx_build_is_a_problem_and_so_is_a_foreign_instruction_set():
    cpu = {"avx", "avx2", "avx512f", "amx_int8"}
    assert "AMX" in build_problems(INFO_AMX, cpu)[0]
    assert build_problems(INFO_OK, cpu) == []
    haswell = {"avx", "avx2", "fma", "f16c"}
    (problem,) = build_problems(INFO_OK, haswell)
    assert "AVX512" in problem and "lacks" in problem


def test_good_build_says_ok(tiny):
    out = doctor("--model", str(tiny.gguf_path), "--tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "system info: CPU" in out.stdout
    assert "ok:" in out.stdout and "decoded 4 tokens" in out.stdout


@pytest.mark.parametrize("fault, signame", [("segv", "SIGSEGV"), ("abort", "SIGABRT")])
def test_crashing_child_becomes_one_error_line_with_the_fix(tiny, fault, signame):
    out = doctor("--model", str(tiny.gguf_path), env={FAULT_ENV: fault})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert signame in lines[0] and "make clean-llama setup" in lines[0]
    assert "Traceback" not in out.stdout + out.stderr


def test_hanging_child_is_bounded(tiny):
    out = doctor("--model", str(tiny.gguf_path), "--timeout", "3", env={FAULT_ENV: "hang"})
    assert out.returncode == 1 and "within 3 s" in out.stderr


def test_bad_model_path_is_one_line(tmp_path):
    out = doctor("--model", str(tmp_path / "nope.gguf"))
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error: ") and "no such model file" in out.stderr
