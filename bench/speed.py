"""llama.cpp's prompt and decode speed: of the shipped file, and of its weights in other formats.

Why the formats: learning an item costs a prompt pass plus its negative's generation, and on
the default model's Q4_1 file the prompt runs at about half the speed of Q4_0 or F16 here
(``learn_commit_item_s`` misses its 1 s). Measuring the same weights in each format, on the
machine at hand, says how much of that is the file format and how much no format removes.
The other formats are derived from the shipped file in a temporary directory with llama.cpp's
own quantizer (F16 and Q8_0 round the Q4_1 weights; Q4_0 quantizes them a second time, so its
quality is not the shipped model's) and deleted after: nothing here is used by the runtime.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import median
from fints_edge.learn.extract import DEFAULT_ANSWER_TOKENS as NEGATIVE_TOKENS

N_GEN = 128  # greedy tokens each speed measurement decodes
FORMATS = ("Q4_0", "Q8_0", "F16")  # besides the shipped file's own


def speed(llm: Any, prompt: Sequence[int], n_gen: int = N_GEN) -> tuple[float, float]:
    """(prompt tok/s, decode tok/s): the prompt in one batch, then ``n_gen`` greedy tokens one
    by one."""
    llm.reset()
    t = time.perf_counter()
    llm.eval(list(prompt))
    t_prompt = time.perf_counter() - t
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return len(prompt) / t_prompt, n_gen / (time.perf_counter() - t0)


def derive(model: Path, fmt: str, out: Path, threads: int) -> Path:
    """``model``'s weights written as ``fmt`` (one of :data:`FORMATS`) to ``out``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{fmt}")
    params.allow_requantize = True
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(model).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not write {model.name} as {fmt}")
    return out


def format_speed_bench(
    model: Path, shipped: str, prompt_text: str, prompt_tokens: int, reps: int, threads: int = 1
) -> dict[str, Any]:
    """Prompt and decode tok/s of ``model`` (format ``shipped``) and of its weights in each of
    :data:`FORMATS`, on ``threads`` threads, with a ``prompt_tokens``-token prompt cut from
    ``prompt_text`` (the median learned commit item's length); formats interleaved within each
    repetition. ``floor_s`` per format: that prompt plus a 48-token negative, the part of
    learning one item that no change to the extraction removes."""
    import llama_cpp

    with tempfile.TemporaryDirectory() as d:
        files = {shipped: model} | {
            f: derive(model, f, Path(d) / f"{f}.gguf", threads) for f in FORMATS
        }
        megabytes = {f: p.stat().st_size / 1e6 for f, p in files.items()}
        llms = {
            f: llama_cpp.Llama(
                str(p), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False
            )
            for f, p in files.items()
        }
        try:
            any_llm = next(iter(llms.values()))
            ids = any_llm.tokenize(prompt_text.encode(), add_bos=False, special=False)
            while len(ids) < prompt_tokens:  # a short text is repeated to the length
                ids = ids + ids
            prompt = ids[:prompt_tokens]
            runs: dict[str, list[tuple[float, float]]] = {f: [] for f in llms}
            for llm in llms.values():
                speed(llm, prompt, n_gen=8)  # warm-up
            for _ in range(reps):
                for f, llm in llms.items():
                    runs[f].append(speed(llm, prompt))
        finally:
            for llm in llms.values():
                llm.close()
    out: dict[str, Any] = {
        "shipped": shipped,
        "prompt_tokens": prompt_tokens,
        "threads": threads,
        "reps": reps,
    }
    for f, xs in runs.items():
        p_tps, d_tps = median([x[0] for x in xs]), median([x[1] for x in xs])
        out[f] = {
            "prompt_tps": p_tps,
            "decode_tps": d_tps,
            "floor_s": prompt_tokens / p_tps + NEGATIVE_TOKENS / d_tps,
            "megabytes": megabytes[f],
        }
    return out
