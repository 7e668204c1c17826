"""The machine a results file was measured on, recorded beside the figures.

Why: a speed figure without its CPU cannot be compared or checked, and greedy answers can differ
between builds; the README's figures (bench/figures.py) name the machine beside each table, for
`make bench` (bench/results.json) and every evaluation run (docs/eval/results.json).
``machine_info`` reads the CPU model from /proc/cpuinfo (Linux; ``platform.processor()``
elsewhere), the CPU counts, the OS and the llama.cpp build flag key; files written before it
existed say nothing, and the renderer then says "CPU not recorded" (with the llama.cpp build,
when the run recorded that) rather than guess. Stdlib only.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The first ``model name`` (x86) or ``Hardware``/``Processor`` (ARM) of /proc/cpuinfo, else
    ``platform.processor()``; None when neither names it."""
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        for line in cpuinfo.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return " ".join(value.split())
    return platform.processor() or None


def _llama_build_key() -> str | None:
    try:
        from fints_edge.llama.build_flags import cache_key
    except ImportError:
        return None
    return cache_key()


def machine_info(threads: dict[str, int] | None = None) -> dict[str, Any]:
    """What results.json records as ``machine``; ``threads``: the thread count per figure."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "arch": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "llama_build_key": _llama_build_key(),
        "threads": dict(threads or {}),
    }


def machine_text(m: dict | None, source: str) -> str:
    """The machine a results file records (:func:`machine_info`), or that it records none."""
    if not m or not m.get("cpu"):
        return f"CPU not recorded in `{source}`"
    parts = [str(m["cpu"])]
    logical, usable = m.get("logical_cpus"), m.get("usable_cpus")
    if logical:
        cpus = f"{logical} logical CPUs"
        parts.append(cpus + (f" ({usable} usable)" if usable and usable != logical else ""))
    if m.get("system") or m.get("arch"):
        parts.append(" ".join(str(m[k]) for k in ("system", "arch") if m.get(k)))
    if m.get("llama_build_key"):
        parts.append(f"llama.cpp build `{m['llama_build_key']}`")
    return ", ".join(parts)
