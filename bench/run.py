"""``make bench``: what steering costs on the default model (Q4_1 GGUF), measured, not typed.

Variants are interleaved within every repetition so machine drift cancels; medians are reported.
Writes bench/results.json (with the machine: CPU model and the threads of every figure, from
evals/machine.py) and bench/README.md, rendered from the JSON by bench/render.py; `make bench`
then renders README.md's figures (bench/figures.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import grown, headline, median
from bench.render import render_readme
from bench.serve import serve_bench, server_peak_rss_mb
from bench.speed import N_GEN, format_speed_bench, speed
from evals.machine import machine_info

HERE = Path(__file__).parent
RSS_ITEMS = 1000  # the phone budget's profile size (peak RSS of the chat and of the server)
# Threads per figure (speed_tN and setup_*_tN name theirs), passed to each measurement below
# and recorded in results.json as machine.threads, beside the CPU.
THREADS = {"setup": 1, "setup_1000_t2": 2, "torch_decode_tps_t1": 1, "ttft": 1,
           "chat_peak_rss_mb": 1, "server_peak_rss_mb": 1, "model_load_ms": 1,
           "build_items_per_s_torch": 2, "learn": 2, "learn_commit": 1, "formats": 1,
           "calibrate": 2,
           "serve": 1}  # fmt: skip
COMMITS = HERE.parent / "evals" / "data" / "commits" / "commits.jsonl"  # real inputs, ~180 tokens
LONG_INPUT = (150, 220)  # prompt tokens of the items learn_commit_item_s times
CALIBRATION_ITEMS = 30


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- llama.cpp decode / prompt speed ---------------------------------------------------------------
def decode_bench(
    model: Path, plan_vectors: np.ndarray, sites, layers, prompt_text: str, threads: int, reps: int
) -> dict:
    from fints_edge.llama.inject import open_steerable

    plain, cvec = open_steerable(model, "cvec", n_ctx=512, n_threads=threads)
    cb_llm, exact = open_steerable(model, "exact", n_ctx=512, n_threads=threads)
    py_llm, py_exact = open_steerable(
        model, "exact", native_filter=False, n_ctx=512, n_threads=threads
    )
    prompt = plain.tokenize(prompt_text.encode(), add_bos=False, special=True)
    both = np.concatenate([plan_vectors.sum(axis=0, keepdims=True)] * 2)  # [2, L, n_embd]
    # "callback_idle": the exact-mode context with its callback installed but nothing to add;
    # "callback_pause": the steered tensors requested (llama.cpp stops the graph at each and
    # calls Python) but nothing added: what the request costs apart from the add itself.
    # "exact_python": the exact mode without the C filter (Python answers every node's question).
    # "exact_both": both sites steered at every layer of the plan (a both-site profile: two
    # graph stops per layer), what a hybrid mode (MLP site by control vector) would have saved.
    runs: dict[str, list[tuple[float, float]]] = {
        "unsteered": [],
        "cvec": [],
        "exact": [],
        "exact_python": [],
        "exact_both": [],
        "callback_idle": [],
        "callback_pause": [],
    }
    try:
        speed(plain, prompt), speed(cb_llm, prompt), speed(py_llm, prompt)  # warm-up
        for _ in range(reps):
            runs["unsteered"].append(speed(plain, prompt))
            cvec.set(plan_vectors, sites, layers)
            runs["cvec"].append(speed(plain, prompt))
            cvec.clear()
            runs["callback_idle"].append(speed(cb_llm, prompt))
            exact.set(plan_vectors, sites, layers)
            runs["exact"].append(speed(cb_llm, prompt))
            exact._add_main = lambda *_: None  # type: ignore[method-assign]
            runs["callback_pause"].append(speed(cb_llm, prompt))
            del exact._add_main  # the class's method again
            exact.clear()
            py_exact.set(plan_vectors, sites, layers)
            runs["exact_python"].append(speed(py_llm, prompt))
            py_exact.clear()
            exact.set(both, ("attn", "mlp"), layers)
            runs["exact_both"].append(speed(cb_llm, prompt))
            exact.clear()
    finally:
        plain.close()
        cb_llm.close()
        py_llm.close()
    out: dict[str, Any] = {"c_filter": bool(getattr(exact, "filtered", False))}
    for name, xs in runs.items():
        out[f"{name}_prompt_tps"] = median([x[0] for x in xs])
        out[f"{name}_decode_tps"] = median([x[1] for x in xs])
    out["prompt_tokens"] = len(prompt)
    return out


# -- per-request set-up -------------------------------------------------------------------------------
def setup_bench(
    n_items: int, encoder, aggregator, injector, queries: list[str], sites, layers, n_embd: int
) -> dict:
    from fints_edge.aggregate import AggregateParams
    from fints_edge.index import Index

    rng = np.random.default_rng(n_items)
    keys = rng.normal(size=(n_items, encoder.dim)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    signals = (
        rng.normal(size=(n_items, len(sites), len(layers), n_embd))
        .astype(np.float16)
        .astype(np.float32)
    )
    t0 = time.perf_counter()
    index = Index(keys)
    build_ms = (time.perf_counter() - t0) * 1e3
    params = AggregateParams(strength=4.0)
    stages: dict[str, list[float]] = {"encode": [], "retrieve": [], "aggregate": [], "apply": []}
    for q in queries * 2:
        t0 = time.perf_counter()
        query = encoder.encode([q])[0]
        t1 = time.perf_counter()
        ids, sims = index.top_k(query, 5)
        t2 = time.perf_counter()
        agg = aggregator(sims, signals[ids], params)
        t3 = time.perf_counter()
        injector.set(agg.vectors, sites, layers)
        t4 = time.perf_counter()
        injector.clear()
        for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[k].append(dt * 1e3)
    out = {f"{k}_ms": median(v) for k, v in stages.items()}
    out["total_ms"] = median([sum(x) for x in zip(*stages.values(), strict=True)])
    out["index_build_ms"] = build_ms
    out["index_uses_graph"] = index.uses_graph
    return out


def encoder_variants(queries: list[str]) -> dict:
    """Where the set-up time goes: the encoder forward pass, fp32 on 1 and 2 threads, fp32 on
    queries cut to 32 tokens, dynamically int8-quantized copies (per tensor, per channel, and per
    channel with the FFN output of layers 0-2 kept fp32) and a static model2vec encoder
    (distilled here, PCA 256), each with its min cosine to fp32 (the profile's encoder check
    needs >= 0.99; none for the static one, another space) and its top-5 retrieval overlap with
    fp32 over the persona pool (the neighbours that steering would aggregate): for these
    queries, and for each pool input among the other 329 (``pool_``)."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from evals.personas import load_pool
    from export.static_encoder import export_static_encoder
    from fints_edge._paths import default_encoder_dir
    from fints_edge.encode import MANIFEST, Encoder

    src = default_encoder_dir()
    pool = load_pool()
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        folders = {"fp32": src}
        # int8mix: per channel, but the FFN output MatMuls of layers 0-2 stay fp32
        ffn_out = [f"/encoder/layer.{i}/output/dense/MatMul" for i in range(3)]
        for name, per_channel, keep in (
            ("int8", False, []),
            ("int8pc", True, []),
            ("int8mix", True, ffn_out),
        ):
            folders[name] = Path(d) / name
            shutil.copytree(src, folders[name])
            quantize_dynamic(
                str(src / "model.onnx"),
                str(folders[name] / "model.onnx"),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                nodes_to_exclude=keep,
                extra_options={"DefaultTensorType": 1},  # float, for ops left unquantized
            )
        folders["fp32len32"] = Path(d) / "fp32len32"
        shutil.copytree(src, folders["fp32len32"])
        manifest = json.loads((src / MANIFEST).read_text())
        (folders["fp32len32"] / MANIFEST).write_text(json.dumps(manifest | {"max_length": 32}))
        variants = [("fp32_t1", "fp32", 1), ("fp32_t2", "fp32", 2), ("fp32len32_t1", "fp32len32", 1),
                    ("int8_t1", "int8", 1), ("int8pc_t1", "int8pc", 1), ("int8mix_t1", "int8mix", 1)]  # fmt: skip
        if importlib.util.find_spec("model2vec") is not None:  # the static-encoder extra
            folders["m2v"] = export_static_encoder(Path(d) / "m2v", pca_dims=256)
            variants.append(("m2v_t1", "m2v", 1))

        def top5(q: np.ndarray, p: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
            sims = q @ p.T  # [n, pool]
            if leave_one_out:
                np.fill_diagonal(sims, -np.inf)
            return np.argsort(-sims, axis=1)[:, :5]

        def overlap(top: np.ndarray, ref_top: np.ndarray) -> float:
            return float(
                np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top, ref_top, strict=True)])
            )

        ref_enc = Encoder(src, threads=1)
        ref, ref_pool = ref_enc.encode(queries), ref_enc.encode(pool)
        ref_top, ref_pool_top = top5(ref, ref_pool), top5(ref_pool, ref_pool, True)
        for name, kind, threads in variants:
            enc = Encoder(folders[kind], threads=threads)
            enc.encode(queries[:1])
            ms = [_timed(lambda q=q, e=enc: e.encode([q])) * 1e3 for q in queries * 3]
            got, got_pool = enc.encode(queries), enc.encode(pool)
            out[f"{name}_ms"] = median(ms)
            if enc.kind == "onnx":  # the static encoder embeds in a space of its own
                out[f"{name}_min_cosine_vs_fp32"] = float((got * ref).sum(1).min())
            out[f"{name}_top5_overlap"] = overlap(top5(got, got_pool), ref_top)
            out[f"{name}_pool_top5_overlap"] = overlap(top5(got_pool, got_pool, True), ref_pool_top)
        out["query_tokens_median"] = median(
            [len(ref_enc._tokenizer.encode(q).ids) for q in queries]
        )
    return out


# -- torch reference vs edge ---------------------------------------------------------------------------
def torch_decode_tps(
    plan_vectors, sites, layers, prompt_text: str, threads: int, reps: int
) -> float:
    import torch

    from export.extract import prompt_ids
    from export.models import load_hf
    from export.reference import steer, vectors_from_array
    from fints_edge._paths import default_gguf

    torch.set_num_threads(threads)
    model, tok = load_hf(default_gguf())
    ids = torch.tensor([prompt_ids(tok, prompt_text, "chat")])
    vectors = vectors_from_array(plan_vectors, sites, layers)
    speeds = []
    with torch.no_grad(), steer(model, vectors):
        for _ in range(reps):
            t = _timed(
                lambda: model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=N_GEN,
                    min_new_tokens=N_GEN,
                    do_sample=False,
                    pad_token_id=tok.eos_token_id,
                )
            )
            speeds.append(N_GEN / t)
    return median(speeds)


def ttft_bench(
    model: Path, profile_path: Path, queries: Sequence[str], reps: int, threads: int = 1
) -> dict:
    """Time to first token as a user sees it, steered (the chat's defaults: encode, retrieve,
    aggregate, then the steered prompt) and unsteered, the same prompts, interleaved: wall time
    from the request to the first text piece. ``ratio`` is the median of the paired ratios
    (steered / unsteered, the same prompt back to back), not the ratio of the two medians."""
    from fints_edge.engine import Engine, EngineConfig

    def first_piece_ms(engine: Engine, text: str, steer: bool) -> tuple[float, dict]:
        t0 = time.perf_counter()
        stream = engine.stream(text, steer=steer)
        next(stream)
        ms = (time.perf_counter() - t0) * 1e3
        *_, reply = stream  # finish (and clear the steering) before the next request
        return ms, reply.timings_ms

    steered, plain, plan_ms = [], [], []
    with Engine(model, profile_path, EngineConfig(threads=threads, max_tokens=4)) as engine:
        first_piece_ms(engine, queries[0], True)  # warm-up
        for _ in range(reps):
            for q in queries:
                plain.append(first_piece_ms(engine, q, False)[0])
                ms, timings = first_piece_ms(engine, q, True)
                steered.append(ms)
                plan_ms.append(timings["encode"] + timings["retrieve"] + timings["aggregate"])
    return {
        "steered_ms": median(steered),
        "unsteered_ms": median(plain),
        "plan_ms": median(plan_ms),
        "ratio": median([s / p for s, p in zip(steered, plain, strict=True)]),
        "prompts": len(queries),
        "pairs": len(steered),
    }


def chat_peak_rss_mb(profile: Path, prompt: str, threads: int = 1) -> float:
    """Peak RSS of a fresh `python -m fints_edge.chat --prompt ... --json` process."""
    code = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "fints_edge.chat",
        "--profile",
        str(profile),
        "--prompt",
        prompt,
        "--json",
        "--max-tokens",
        "32",
        "--threads",
        str(threads),
    ]
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip()) / 1024  # ru_maxrss is KiB on Linux


def profile_size(profile) -> dict:
    """Bytes per item of a 1,000-item profile made of the demo's real items (texts included)."""
    from fints_edge.index import Index
    from fints_edge.profile import Profile

    p = grown(profile, 1000)
    with tempfile.TemporaryDirectory() as d:
        path = p.save(Path(d) / "p.npz")
        size = path.stat().st_size
        load_ms = median([_timed(lambda: Index(Profile.load(path).keys)) * 1e3 for _ in range(5)])
    per_item = size / p.n_items
    return {
        "profile_bytes_per_item": per_item,
        "profile_bytes_per_item_per_layer": per_item / p.layers.size,
        "profile_layers": int(p.layers.size),
        "profile_load_ms_1k": load_ms,  # Profile.load (all checks) + the retrieval index
    }


def model_load_ms(model: Path, threads: int = 1) -> float:
    """Opening the Q4 GGUF with the eval callback (what the chat does), median of 3."""
    from fints_edge.llama.inject import open_steerable

    def once() -> None:
        llm, _ = open_steerable(model, "exact", n_ctx=2048, n_threads=threads)
        llm.close()

    once()  # the file in the page cache, as on a phone's second start
    return median([_timed(once) * 1e3 for _ in range(3)])


def build_throughput(threads: int) -> float:
    """Signal extraction items/s with torch (HF fp32) on the demo history."""
    import torch

    from export.demo import HISTORY
    from export.extract import extract_signals
    from export.models import load_hf
    from fints_edge._paths import default_gguf
    from fints_edge.history import read_history

    torch.set_num_threads(threads)
    model, tok = load_hf(default_gguf())
    items = read_history(HISTORY)
    pairs = [(i.input, i.output, i.rejected or "") for i in items]
    t = _timed(lambda: extract_signals(model, tok, pairs, [22], progress=False))
    return len(pairs) / t


def learn_bench(model: Path, torch_profile, threads: int, n_add: int = 5) -> dict:
    """On-device learning with the Q4 model: seconds to add one item whose negative must be
    generated (``learn_item_s``), build items/s with given negatives, and the cosine of
    device-built signals to the torch fp32 ones for the same demo items."""
    from export.demo import HISTORY
    from fints_edge._paths import default_encoder_dir
    from fints_edge.encode import Encoder
    from fints_edge.history import HistoryItem, read_history
    from fints_edge.learn import Learner, extractor_for
    from fints_edge.llama.inject import open_steerable

    items = read_history(HISTORY)
    llm, injector = open_steerable(model, "exact", n_ctx=1024, n_threads=threads)
    try:
        learner = Learner(
            extractor_for(llm, injector, torch_profile), Encoder(default_encoder_dir())
        )
        t0 = time.perf_counter()
        built = learner.learn(items, progress=False)
        build_s = time.perf_counter() - t0
        # No negative given, so the model generates one. The demo user's outputs are lowercased
        # model answers that the ROUGE-L filter would reject; another item's output keeps the
        # timing honest (a generation, the filter, two answer decodes) without that.
        fresh = [
            HistoryItem(a.input, b.output) for a, b in zip(items[:n_add], items[1:], strict=False)
        ]
        add_s = [_timed(lambda it=it: learner.learn([it], progress=False)) for it in fresh]
    finally:
        llm.close()
    dev = built.signals.astype(np.float64)
    ref = torch_profile.signals.astype(np.float64)
    cos = (dev * ref).sum(-1) / np.linalg.norm(dev, axis=-1) / np.linalg.norm(ref, axis=-1)
    out = {
        "learn_item_s": median(add_s),
        "build_items_per_s_device": len(items) / build_s,
        "threads": threads,
    }
    for i, site in enumerate(torch_profile.sites):
        out[f"device_vs_torch_cosine_{site}_median"] = float(np.median(cos[:, i]))
        out[f"device_vs_torch_cosine_{site}_min"] = float(cos[:, i].min())
    return out


def _commit_history() -> list[dict]:
    """The commits benchmark's history rows (every author's), as shipped."""
    rows = [json.loads(line) for line in COMMITS.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == "history"]


def _author_history(n: int) -> tuple[str, list]:
    """The first author (by name) of the commits benchmark with ``n`` history items, and their
    newest ``n`` history items, oldest first."""
    from fints_edge.history import HistoryItem

    by_user: dict[str, list[dict]] = {}
    for r in _commit_history():
        by_user.setdefault(r["user"], []).append(r)
    user = min(u for u, got in by_user.items() if len(got) >= n)
    got = sorted(by_user[user], key=lambda r: r["date"])[-n:]
    return user, [HistoryItem(r["input"], r["output"], timestamp=float(r["date"])) for r in got]


@contextmanager
def _device_learner(model: Path, threads: int, for_calibration: bool = False) -> Iterator[Any]:
    """A Learner for new profiles (the CLI's recipe; ``learn --calibrate``'s candidate layers
    with ``for_calibration``) on an exact-mode context, closed after."""
    from fints_edge._paths import default_encoder_dir
    from fints_edge.encode import Encoder
    from fints_edge.learn import Learner, Recipe, new_extractor
    from fints_edge.llama.inject import open_steerable

    llm, injector = open_steerable(model, "exact", n_ctx=1024, n_threads=threads)
    try:
        recipe = Recipe(for_calibration=for_calibration)
        yield Learner(new_extractor(llm, injector, recipe), Encoder(default_encoder_dir()))
    finally:
        llm.close()


def learn_commit_bench(model: Path, threads: int, n_items: int = 7) -> dict:
    """On-device learning of real commit items whose prompts are ~180 tokens (one at a time, the
    negative generated): seconds per item, the figure issue 24 bounds (1 s on 1 thread)."""
    from fints_edge.history import HistoryItem

    items = [HistoryItem(r["input"], r["output"]) for r in _commit_history()]
    with _device_learner(model, threads) as learner:
        lengths = [len(learner.extractor.prompt_tokens(i.input)) for i in items]
        lo, hi = LONG_INPUT
        chosen = [j for j, n in enumerate(lengths) if lo <= n <= hi][:n_items]
        if not chosen:  # the data changed: time the longest items instead
            chosen = [int(j) for j in np.argsort(lengths)[-n_items:]]
        learner.learn([items[chosen[0]]], progress=False)  # warm
        item_s = [_timed(lambda j=j: learner.learn([items[j]], progress=False)) for j in chosen]
    return {
        "learn_commit_item_s": median(item_s),
        "items": len(chosen),
        "prompt_tokens_median": median([float(lengths[j]) for j in chosen]),
        "threads": threads,
    }


def calibrate_bench(model: Path, threads: int) -> dict:
    """A profile learned from one author's newest 30 commit items as ``learn --calibrate``
    learns it (the candidate layers), then calibrated as it calibrates (every setting by
    default): seconds to learn it and to calibrate it (issue 24: <= 90 s on 2 cores)."""
    from fints_edge.calibrate import Calibrator
    from fints_edge.config import EngineConfig
    from fints_edge.engine import Engine

    user, items = _author_history(CALIBRATION_ITEMS)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "author.npz"
        with _device_learner(model, threads, for_calibration=True) as learner:
            t0 = time.perf_counter()
            learner.new_profile(items, progress=False).save(path)
            learn_s = time.perf_counter() - t0
        with Engine(model, path, EngineConfig(threads=threads, n_ctx=1024)) as engine:
            calibrator = Calibrator(engine)
            t0 = time.perf_counter()
            got = calibrator.run()
            calibrate_s = time.perf_counter() - t0
    return {
        "calibrate_s": calibrate_s,
        "learn_s": learn_s,
        "history_items": len(items),
        "held_out": got.held_out,
        "settings_tried": len(got.tried),
        "budget_hit": got.budget_hit,
        "chosen": got.label,
        "user": user,
        "threads": threads,
    }


# -- driver ---------------------------------------------------------------------------------------------
def run(reps: int, sizes: Sequence[int]) -> dict:
    from export.demo import TASK, ensure_profile, snippets
    from fints_edge._paths import default_aggregator_path, default_encoder_dir, default_gguf
    from fints_edge.aggregate import OnnxAggregator
    from fints_edge.encode import Encoder
    from fints_edge.engine import Engine, EngineConfig
    from fints_edge.llama.inject import open_steerable
    from fints_edge.profile import Profile

    model = default_gguf()
    profile_path = ensure_profile()
    profile = Profile.load(profile_path)
    prompt_text = TASK + snippets("test")[0]
    with Engine(model, profile_path, EngineConfig(threads=1)) as engine:
        plan = engine.plan(prompt_text)
        prompt_rendered = engine.prompt_ids(engine.messages(prompt_text, None))
        prompt_str = engine.llm.detokenize(prompt_rendered, special=True).decode()
    assert plan.steering is not None  # the default config steers
    vectors, sites, layers = plan.steering.vectors, plan.steering.sites, list(plan.steering.layers)
    results: dict = {"model": model.name, "n_gen": N_GEN, "reps": reps}
    results["machine"] = machine_info(THREADS)

    for threads in (1, 2):
        print(f"decode/prompt speed, {threads} thread(s)...", file=sys.stderr)
        results[f"speed_t{threads}"] = decode_bench(
            model, vectors, sites, layers, prompt_str, threads, reps
        )

    print("per-request set-up...", file=sys.stderr)
    t = THREADS["setup"]
    encoder = Encoder(default_encoder_dir(), threads=t)
    aggregator = OnnxAggregator(default_aggregator_path(), threads=t)
    llm, injector = open_steerable(model, "cvec", n_ctx=256, n_threads=t)
    queries = [TASK + s for s in snippets("test")]
    for n in sizes:
        results[f"setup_{n}"] = setup_bench(
            n, encoder, aggregator, injector, queries, sites, layers, profile.n_embd
        )
    encoder2 = Encoder(default_encoder_dir(), threads=THREADS["setup_1000_t2"])
    results["setup_1000_t2"] = setup_bench(
        1000, encoder2, aggregator, injector, queries, sites, layers, profile.n_embd
    )
    llm.close()
    results["encoder"] = encoder_variants(queries)

    print("torch reference decode...", file=sys.stderr)
    results["torch_decode_tps_t1"] = torch_decode_tps(
        vectors, sites, layers, prompt_text, THREADS["torch_decode_tps_t1"], max(2, reps // 2)
    )
    print("time to first token, steered vs unsteered...", file=sys.stderr)
    results["ttft"] = ttft_bench(
        model, profile_path, queries[:6], max(3, reps // 2), threads=THREADS["ttft"]
    )
    results["ttft_ratio"] = results["ttft"]["ratio"]
    # the encoder in use is the fp32 one: its neighbours are the reference's by construction
    results["retrieval_top5_overlap"] = results["encoder"]["fp32_t1_pool_top5_overlap"]
    print("chat and server peak RSS, profile size, build throughput...", file=sys.stderr)
    results["rss_profile_items"] = RSS_ITEMS
    with tempfile.TemporaryDirectory() as d:  # the phone budget's 1,000-item profile
        big = grown(profile, RSS_ITEMS).save(Path(d) / "p1k.npz")
        results["chat_peak_rss_mb"] = chat_peak_rss_mb(
            big, prompt_text, threads=THREADS["chat_peak_rss_mb"]
        )
    results["server_peak_rss_mb"] = server_peak_rss_mb(
        profile_path, prompt_text, items=RSS_ITEMS, threads=THREADS["server_peak_rss_mb"]
    )
    results.update(profile_size(profile))
    results["model_load_ms"] = model_load_ms(model, threads=THREADS["model_load_ms"])
    results["build_items_per_s_torch"] = build_throughput(THREADS["build_items_per_s_torch"])
    print("on-device learning...", file=sys.stderr)
    results["learn"] = learn_bench(model, profile, threads=THREADS["learn"])
    results["learn_item_s"] = results["learn"]["learn_item_s"]
    results["build_items_per_s_device"] = results["learn"]["build_items_per_s_device"]
    print("on-device learning of ~180-token commit items, then calibration...", file=sys.stderr)
    results["learn_commit"] = learn_commit_bench(model, threads=THREADS["learn_commit"])
    results["learn_commit_item_s"] = results["learn_commit"]["learn_commit_item_s"]
    print("the same weights in other formats: prompt and decode speed...", file=sys.stderr)
    results["formats"] = format_speed_bench(
        model,
        shipped=model.stem.rsplit(".", 1)[-1] if "." in model.stem else "shipped",
        prompt_text=_commit_history()[0]["input"],
        prompt_tokens=round(results["learn_commit"]["prompt_tokens_median"]),
        reps=max(3, reps // 2),
        threads=THREADS["formats"],
    )
    results["calibrate"] = calibrate_bench(model, threads=THREADS["calibrate"])
    results["calibrate_s_30"] = results["calibrate"]["calibrate_s"]
    print("local server: overhead over the engine, 4 users at once...", file=sys.stderr)
    results["serve"] = serve_bench(
        model, profile_path, queries, reps=reps, threads=THREADS["serve"]
    )
    results.update(headline(results["serve"]))

    s1 = results["speed_t1"]
    results["cvec_decode_ratio"] = s1["cvec_decode_tps"] / s1["unsteered_decode_tps"]
    results["exact_decode_ratio"] = s1["exact_decode_tps"] / s1["unsteered_decode_tps"]
    results["setup_ms_1k"] = results.get("setup_1000", {}).get("total_ms")
    results["setup_ms_10k"] = results.get("setup_10000", {}).get("total_ms")
    results["setup_ms_1k_t2"] = results["setup_1000_t2"]["total_ms"]
    results["edge_vs_torch_decode_speedup"] = (
        s1["exact_decode_tps"] / results["torch_decode_tps_t1"]
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite bench/README.md from the existing results.json, measure nothing",
    )
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions (default: 7)")
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[100, 1000, 10000], help="profile sizes for set-up"
    )
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    args = p.parse_args(argv)
    if args.render_only:
        results = json.loads(args.out.read_text())
        (args.out.parent / "README.md").write_text(render_readme(results))
        return 0
    t0 = time.perf_counter()
    results = run(args.reps, args.sizes)
    results["bench_seconds"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    (args.out.parent / "README.md").write_text(render_readme(results))
    print(render_readme(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
