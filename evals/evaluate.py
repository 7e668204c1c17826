"""``python -m evals``: does the personalization work, is the text still fluent, what does it cost?

Benchmarks (synthetic users over the shipped input pool, answers checkable by rule):
- ``personas``: one style per user;
- ``personas-conditional``: a style per kind of input (evals/conditional.py), the case Fints'
  per-request retrieval is for;
- ``personas-shift`` (recency) and ``longlamp-mini`` (real abstracts, ROUGE only), smaller.
The fluency rule is calibrated on the dev split's zero-shot and RAG answers; the steering setting
is chosen on the dev split (evals/sweep.py, fluent adherence); every method then runs once on
the test split. Answers and profiles are cached per run (evals/cache.py): an interrupted run
resumes, a failed answer is recorded and counted. Results merge into ``OUT/results.json`` under
the model's file name, so runs on several models stand side by side; ``OUT/README.md`` and the
plots are regenerated from that file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from evals.cache import RunCache, run_key
from evals.calibrated import CALIBRATED_METHODS, CALIBRATED_PAIRS, calibrated_answers
from evals.conditional import DEFAULT_CONDITIONAL, make_conditional
from evals.datasets import LONGLAMP_MINI, UserTask, load_lamp, load_longlamp
from evals.fluency import vocabulary
from evals.personas import DEFAULT_STYLES, load_pool, make_dataset
from evals.run import Runner, Setting, UserData
from evals.scoring import BASELINES, Scoring, by_group, summarize
from evals.styles import Style, load_styles
from evals.sweep import Grid, sweep
from fints_edge._cli import cli_main
from fints_edge._paths import default_gguf
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import CANDIDATE_LAYER_FRACTIONS, SITES, layer_at
from fints_edge.llama import build_flags
from fints_edge.zoo import sha256_of

METHODS = ("zero-shot", "rag-1", "rag-2", "rag-3", "prefix-cached", "static", "random",
           "fints-exact", "fints-cvec", "fints+rag-1", "fints-torch-profile", "fints-torch")  # fmt: skip
STEERING = ("static", "random", "fints-exact", "fints-cvec", "fints+rag-1", "fints-torch-profile")
SHIFT_METHODS = ("zero-shot", "rag-1", "fints-exact", "fints-recency")
TEXT_METHODS = ("zero-shot", "rag-1", "fints-exact", "fints+rag-1")


@dataclass(frozen=True)
class Budget:
    """The size of a run: ``quick`` for ``make eval``, ``full`` for the whole grid."""

    users: int  # per benchmark
    history: int  # personas: history items per user
    tests: int  # personas: dev AND test items per user
    per_kind: int  # conditional: history items per kind (two kinds per user)
    tests_per_kind: int  # conditional: dev AND test items per kind
    shift_users: int
    grid: Grid
    torch_items: int  # test items per user for the slow torch reference
    max_tokens: int = 48


# the quick sweep's layers are the ones a profile built for calibration stores
QUICK = Budget(8, 8, 6, 12, 3, 4,
               Grid(CANDIDATE_LAYER_FRACTIONS, (2.0, 4.0, 8.0), (3, 8), (0.1,)), 2)  # fmt: skip
FULL = Budget(16, 16, 10, 16, 5, 8,
              Grid((0.47, 0.6, 0.67, 0.73, 0.8), (1.0, 2.0, 4.0, 6.0, 8.0), (1, 3, 5, 8, 16),
                   (0.05, 0.1, 0.2)), 4)  # fmt: skip


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def users_of(rows: Sequence[dict]) -> list[UserData]:
    by_user: dict[str, UserData] = {}
    for r in rows:
        u = by_user.setdefault(r["user"], UserData(r["user"], []))
        getattr(u, r["split"]).append(r)
    return [u for u in by_user.values() if u.history and u.dev and u.test]


class Evaluation:
    """One model, one run: answers (cached), scores, the sweep and the summaries."""

    def __init__(self, args: argparse.Namespace, plan: Budget, styles: list[Style],
                 model: Path) -> None:  # fmt: skip
        from fints_edge._paths import default_encoder_dir
        from fints_edge.encode import Encoder
        from fints_edge.llama.model import identity_from_llama, n_layers, open_llama

        self.args, self.plan, self.model = args, plan, model
        self.sha256 = sha256_of(model)
        spec_text = Path(args.styles).read_text(encoding="utf-8")
        cond_text = Path(args.conditional).read_text(encoding="utf-8")
        data = {k: v for k, v in asdict(plan).items() if k != "grid"}  # answers keyed by setting
        self.cache = RunCache(run_key(model=self.sha256, plan=data, styles=spec_text,
                                      conditional=cond_text, seed=args.seed, version=2))  # fmt: skip
        self.styles = {s.name: s for s in styles}
        self.encoder = Encoder(default_encoder_dir(), threads=args.threads)
        self.scoring = Scoring(self.styles, model, self.encoder, threads=args.threads,
                               ppl_file=self.cache.folder / "perplexity-casefold.jsonl")  # fmt: skip
        llm = open_llama(model, n_ctx=64, n_threads=args.threads)
        self.n_layer = n_layers(llm)
        self.identity = identity_from_llama(llm)  # names the model's row of model_defaults
        llm.close()
        self.layers = sorted({layer_at(f, self.n_layer) for f in plan.grid.layer_fracs})
        self.runner: Runner | None = None
        self.profiles: dict[str, Path] = {}
        self.failed_profiles: dict[str, str] = {}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        self.scoring.close()

    # -- profiles ---------------------------------------------------------------------------------
    def build_profiles(self, users: Sequence[UserData], tag: str, layers: Sequence[int],
                       rouge_threshold: float = 0.15) -> dict[str, Path]:  # fmt: skip
        """Device-built profiles (fints_edge.learn), cached; a user whose history yields no
        profile is reported and left out, never a crash."""
        from fints_edge.learn import Learner
        from fints_edge.learn.extract import DeviceExtractor
        from fints_edge.llama.inject import open_steerable

        paths: dict[str, Path] = {}
        todo = []
        for u in users:  # the words a user has written are words (the non-word signal)
            self.scoring.vocabulary[u.user] = vocabulary(
                (r["input"], r["output"]) for r in u.history
            )
            path = self.cache.profiles / f"{tag}-{u.user}.npz"
            if path.is_file():
                paths[u.user] = path
            else:
                todo.append((u, path))
        if todo:
            llm, injector = open_steerable(self.model, "exact", n_ctx=2048,
                                           n_threads=self.args.threads)  # fmt: skip
            try:
                ex = DeviceExtractor(llm, injector, layers, SITES, "output", "chat")
                learner = Learner(ex, self.encoder, rouge_threshold=rouge_threshold)
                for u, path in tqdm(todo, desc=f"profiles {tag}", unit="user"):
                    try:
                        profile = learner.new_profile(u.items(), opening=True, progress=False)
                        paths[u.user] = profile.save(path)
                    except FintsEdgeError as e:
                        self.failed_profiles[u.user] = str(e)
                        say(f"no profile for {u.user}: {e}")
            finally:
                llm.close()
        if not paths:
            raise FintsEdgeError(
                f"{tag}: no profile could be built for any of {len(users)} users on "
                f"{self.model.name} ({'; '.join(sorted(set(self.failed_profiles.values())))})"
            )
        self.profiles.update(paths)
        if self.runner is None:
            self.runner = Runner(self.model, next(iter(paths.values())),
                                 max_tokens=self.plan.max_tokens, threads=self.args.threads)  # fmt: skip
        return paths

    # -- answers ----------------------------------------------------------------------------------
    def answer(self, bench: str, users: Sequence[UserData], split: str, method: str,
               s: Setting, *, limit: int | None = None, desc: str = "",
               cache_as: str | None = None) -> list[dict]:  # fmt: skip
        """Answers of ``method`` (cached under ``cache_as`` when the same method runs with
        other profiles, e.g. torch-built ones)."""
        assert self.runner is not None
        out = []
        todo = [(u, r) for u in users if u.user in self.profiles
                for r in getattr(u, split)[:limit]]  # fmt: skip
        current: tuple[Path, bool] | None = None
        label = (
            "" if method in ("zero-shot", "rag-1", "rag-2", "rag-3", "prefix-cached") else s.label()
        )
        for n, (u, row) in enumerate(tqdm(todo, desc=desc or f"{bench} {split} {method}",
                                          unit="answer", leave=False)):  # fmt: skip
            key = self.cache.key(bench, split, cache_as or method, label, u.user, row["input"])
            got = self.cache.get(key)
            if got is None:
                if (self.profiles[u.user], s.center) != current:
                    current = (self.profiles[u.user], s.center)
                    center = self.reference(users, u.user) if s.center else None
                    self.runner.use(current[0], center)
                got = self.runner.answer(method, row["input"], s, seed=n)
                if method == "prefix-cached":
                    got["kv_bytes"] = self.runner.prefix_cost().get("kv_bytes")
                self.cache.put(key, got)
            out.append({"benchmark": bench, "user": u.user, "style": row.get("style"),
                        "kind": row.get("kind"), "method": method, "split": split,
                        "setting": label, "input": row["input"], "reference": row["output"],
                        **got})  # fmt: skip
        return out

    def reference(self, users: Sequence[UserData], user: str) -> np.ndarray:
        """float32 [S, L, E]: the mean of the OTHER users' mean signals in this benchmark, what
        a reference set shares (mean-centring keeps what is specific to ``user``)."""
        from fints_edge.profile import Profile

        means = [Profile.load(self.profiles[u.user]).signals.astype(np.float32).mean(axis=0)
                 for u in users if u.user != user and u.user in self.profiles]  # fmt: skip
        if not means:
            raise FintsEdgeError("mean-centring needs at least two users with profiles")
        return np.mean(means, axis=0).astype(np.float32)

    def unsteered(self, preds: Sequence[dict]) -> dict[tuple[str, str], str]:
        return {(p["user"], p["input"]): p["prediction"] for p in preds
                if p["method"] == "zero-shot"}  # fmt: skip

    # -- memory per user ----------------------------------------------------------------------------
    def memory(self, setting: Setting, users: Sequence[UserData],
               preds: Sequence[dict]) -> dict[str, float]:  # fmt: skip
        """Bytes a phone keeps per user: the profile at the chosen layers (steering), the
        history texts and keys (RAG), the KV state (prefix-cached)."""
        from fints_edge.profile import Profile

        steer, texts = [], []
        for u in users:
            if u.user not in self.profiles:
                continue
            p = Profile.load(self.profiles[u.user])
            keep = np.isin(p.layers, setting.layers)
            text_bytes = sum(len(str(t).encode()) for t in (*p.inputs, *p.outputs))
            texts.append(p.keys.nbytes + text_bytes)
            steer.append(p.signals[:, :, keep].nbytes + texts[-1])
        kv = [p["kv_bytes"] for p in preds if p["method"] == "prefix-cached" and p.get("kv_bytes")]
        out = {m: float(np.mean(steer)) for m in STEERING} | {"zero-shot": 0.0}
        out |= {m: float(np.mean(texts)) for m in ("rag-1", "rag-2", "rag-3")}
        out |= {m: float(np.mean(steer)) for m in ("fints+rag-1", *CALIBRATED_METHODS)}
        if kv:
            out["prefix-cached"] = float(np.mean(kv))
        return out


def persona_benchmarks(ev: Evaluation, benches: dict[str, list[UserData]],
                       results: dict[str, Any]) -> list[dict]:  # fmt: skip
    """The synthetic benchmarks: one dev sweep, the fluency rule on their baselines, every
    method on their test split (and each user's calibrated setting, evals/calibrated.py), then
    personas-shift and longlamp-mini at the chosen setting."""
    args, plan = ev.args, ev.plan
    for name, users in benches.items():
        say(f"{name}: {len(users)} users, {sum(len(u.history) for u in users)} history items")
        ev.build_profiles(users, name, ev.layers)
    neutral = Setting((ev.layers[0],), 0.0)

    say("dev: baselines, then the fluency rule")
    dev: list[dict] = []
    for name, users in benches.items():
        for method in BASELINES:
            dev += ev.answer(name, users, "dev", method, neutral)
    ev.scoring.score(dev, ev.unsteered(dev))
    rule = ev.scoring.calibrate(dev)
    ev.scoring.judge(dev)
    say(f"fluency rule: {rule}")

    n_dev = sum(len(u.dev) for users in benches.values() for u in users)

    def run_dev(s: Setting, stage: str) -> list[dict]:
        got: list[dict] = []
        for name, users in benches.items():
            got += ev.answer(name, users, "dev", "fints-exact", s, desc=f"dev {stage} {s.label()}")
        ev.scoring.score(got, ev.unsteered(dev))
        dev.extend(got)
        return got

    say("dev sweep (fints-exact, fluent adherence):")
    best, tried = sweep(run_dev, plan.grid, ev.n_layer, n_dev, default_k=3)
    for t in tried:
        say(f"  {t['stage']:<8} {t['label']:<40} fluent adherence {t['fluent_adherence']:.3f} "
            f"(adherence {t['adherence']:.3f}, fluent {t['fluent']:.3f})")  # fmt: skip
    say(f"chosen on dev: {best.label()}")

    say("test split, every method:")
    results.update(
        {
            "sweep": {
                "split": "dev",
                "n": n_dev,
                "tried": tried,
                "chosen": best.to_json(),
                "chosen_label": best.label(),
                "baselines": {
                    m: summarize(
                        [p for p in dev if p["method"] == m], [m], ev.scoring.metrics(True), 0, 0
                    )[m]
                    for m in BASELINES
                },
            },  # fmt: skip
            "fluency_rule": rule.to_json(),
        }
    )
    all_preds = list(dev)
    for name, users in benches.items():
        test: list[dict] = []
        for method in METHODS:
            if method.startswith("fints-torch") and ("torch" in args.skip or name != "personas"):
                continue
            if method == "fints-torch-profile":
                test += torch_profile_answers(ev, name, users, best)
                continue
            limit = plan.torch_items if method == "fints-torch" else None
            test += ev.answer(name, users, "test", method, best, limit=limit)
        got, calibration = calibrated_answers(ev, name, users)
        test += got
        ev.scoring.score(test, ev.unsteered(test))
        cold = [p["first_token_ms"] for p in test
                if p["method"] == "prefix-cached" and p.get("cold") and p.get("first_token_ms")]  # fmt: skip
        memory, every = ev.memory(best, users, test), (*METHODS, *CALIBRATED_METHODS)
        table = summarize(test, METHODS, ev.scoring.metrics(True), args.bootstrap, args.seed,
                          memory)  # fmt: skip
        table |= summarize(test, tuple(CALIBRATED_METHODS), ev.scoring.metrics(True),
                           args.bootstrap, args.seed, memory, pairs=CALIBRATED_PAIRS)  # fmt: skip
        if "prefix-cached" in table and cold:
            table["prefix-cached"]["cold_first_token_ms"] = float(np.median(cold))
        results["benchmarks"][name] = {
            "users": len([u for u in users if u.user in ev.profiles]),
            "split": "test",
            "setting": best.label(),
            "methods": table,
            "by_style": by_group(test, every, "style"),
            "by_kind": by_group(test, every, "kind") if name == "personas-conditional" else {},
            "calibration": calibration,
            "errors": [
                {"method": p["method"], "user": p["user"], "error": p["error"]}
                for p in test
                if p.get("error")
            ],  # fmt: skip
        }
        all_preds += test
    if "shift" not in args.skip:
        all_preds += shift_benchmark(ev, best, results)
    if "longlamp" not in args.skip:
        all_preds += longlamp_benchmark(ev, best, results)
    if args.lamp:
        all_preds += lamp_benchmark(ev, best, results)
    return all_preds


def run_benchmarks(ev: Evaluation) -> dict[str, Any]:
    args, plan = ev.args, ev.plan
    benches: dict[str, list[UserData]] = {}
    if "personas" not in args.skip:
        rows = make_dataset(load_pool(), list(ev.styles.values()), ev.model, users=plan.users,
                            history=plan.history, tests=plan.tests, seed=args.seed, shift=False,
                            threads=args.threads)  # fmt: skip
        benches["personas"] = users_of(rows)
    if "conditional" not in args.skip:
        rows = make_conditional(list(ev.styles.values()), ev.model, users=plan.users,
                                per_kind=plan.per_kind, tests_per_kind=plan.tests_per_kind,
                                seed=args.seed, spec=args.conditional,
                                threads=args.threads)  # fmt: skip
        benches["personas-conditional"] = users_of(rows)
    if not benches and "commits" in args.skip:
        raise FintsEdgeError("--skip left no benchmark to run")
    results: dict[str, Any] = {"benchmarks": {}, "minutes": {}}  # where a run's time goes
    all_preds: list[dict] = []
    if benches:
        t0 = time.perf_counter()
        all_preds += persona_benchmarks(ev, benches, results)
        synthetic = [b for b in results["benchmarks"] if b != "commits"]
        results["minutes"]["+".join(synthetic)] = round((time.perf_counter() - t0) / 60, 1)
    if "commits" not in args.skip:
        from evals.commits_bench import commits_benchmark

        t0 = time.perf_counter()
        all_preds += commits_benchmark(ev, results)
        results["minutes"]["commits"] = round((time.perf_counter() - t0) / 60, 1)
    results["failed_profiles"] = ev.failed_profiles
    results["cache"] = {"answers": len(ev.cache), "reused": ev.cache.reused}
    return results | {"predictions": all_preds}


def torch_profile_answers(ev: Evaluation, name: str, users: Sequence[UserData],
                          best: Setting) -> list[dict]:  # fmt: skip
    """fints-exact with profiles built offline by torch (export.build) from the same items."""
    from evals.run import write_history
    from export.build import BuildOptions, build_profile

    opts = BuildOptions(layers=tuple(best.layers), negatives="given", progress=False)
    device = dict(ev.profiles)
    try:
        for u in tqdm(users, desc="torch profiles", unit="user"):
            path = ev.cache.profiles / f"{name}-{u.user}-torch.npz"
            if not path.is_file():
                hist = write_history(u.items(), ev.cache.profiles / f"{name}-{u.user}.jsonl")
                build_profile(ev.model, hist, path, opts)
            ev.profiles[u.user] = path
        got = ev.answer(name, users, "test", "fints-exact", best, desc="fints-torch-profile",
                        cache_as="fints-torch-profile")  # fmt: skip
    finally:
        ev.profiles.update(device)
    for p in got:
        p["method"] = "fints-torch-profile"
    return got


def shift_benchmark(ev: Evaluation, best: Setting, results: dict) -> list[dict]:
    plan, args = ev.plan, ev.args
    rows = make_dataset(load_pool(), list(ev.styles.values()), ev.model, users=plan.shift_users,
                        history=plan.history, tests=plan.tests, seed=args.seed + 1, shift=True,
                        threads=args.threads)  # fmt: skip
    users = users_of(rows)
    ev.build_profiles(users, "shift", best.layers)
    recent = replace(best, half_life_days=max(1.0, plan.history / 4))  # timestamps a day apart
    preds: list[dict] = []
    for method in SHIFT_METHODS:
        preds += ev.answer("personas-shift", users, "test", method,
                           recent if method == "fints-recency" else best)  # fmt: skip
    ev.scoring.score(preds, ev.unsteered(preds))
    results["benchmarks"]["personas-shift"] = {
        "users": len(users), "split": "test", "setting": recent.label(),
        "methods": summarize(preds, SHIFT_METHODS, ev.scoring.metrics(True), args.bootstrap,
                             args.seed),
    }  # fmt: skip
    return preds


def longlamp_path(args: argparse.Namespace) -> Path:
    """The LongLaMP file to run: ``--longlamp``, else the shipped mini set. A missing file is an
    error (before any model loads), never a benchmark silently left out."""
    path = Path(args.longlamp) if args.longlamp else LONGLAMP_MINI
    if not path.is_file():
        shipped = "" if args.longlamp else " (the mini set shipped with the repository)"
        raise FintsEdgeError(
            f"{path}: no such LongLaMP file{shipped}; pass --longlamp FILE or --skip longlamp"
        )
    return path


def task_users(tasks: Sequence[UserTask]) -> list[UserData]:
    """Published per-user tasks (LaMP, LongLaMP) as the evaluation's users: profile -> history,
    the question -> one test row."""
    return [UserData(t.user, [{"input": h.input, "output": h.output,
                               "timestamp": None if math.isnan(h.timestamp) else h.timestamp}
                              for h in t.history], [],
                     [{"input": t.query, "output": t.target}]) for t in tasks]  # fmt: skip


def text_benchmark(ev: Evaluation, best: Setting, results: dict, name: str,
                   tasks: Sequence[UserTask], max_tokens: int,
                   rouge_threshold: float) -> list[dict]:  # fmt: skip
    """A published text benchmark (ROUGE only) at the setting the synthetic dev sweep chose."""
    users = task_users(tasks)
    ev.build_profiles(users, name, best.layers, rouge_threshold=rouge_threshold)
    assert ev.runner is not None
    old = ev.runner.exact.config.max_tokens
    ev.runner.exact.configure(max_tokens=max_tokens)
    try:
        preds: list[dict] = []
        for method in TEXT_METHODS:
            preds += ev.answer(name, users, "test", method, best)
    finally:
        ev.runner.exact.configure(max_tokens=old)
    ev.scoring.score(preds, ev.unsteered(preds))
    results["benchmarks"][name] = {
        "users": len(users), "split": "test", "setting": best.label(),
        "methods": summarize(preds, TEXT_METHODS, ev.scoring.metrics(False), ev.args.bootstrap,
                             ev.args.seed),
    }  # fmt: skip
    return preds


def longlamp_benchmark(ev: Evaluation, best: Setting, results: dict) -> list[dict]:
    tasks = load_longlamp(longlamp_path(ev.args))  # a missing or malformed file raises
    return text_benchmark(ev, best, results, "longlamp-mini", tasks, 160, 0.2)


def lamp_benchmark(ev: Evaluation, best: Setting, results: dict) -> list[dict]:
    """``--lamp QUESTIONS OUTPUTS``: the public LaMP-4 / LaMP-5 files, one user per question."""
    tasks = load_lamp(*ev.args.lamp)
    return text_benchmark(ev, best, results, "lamp", tasks, 48, 0.15)


def resolve_model(given: Path | None) -> Path:
    """A GGUF path, or the name of an optional model (``python -m fints_edge.zoo list``)."""
    if given is None:
        return default_gguf()
    if not given.exists() and "/" not in str(given):
        from fints_edge import zoo

        try:
            zoo.get(str(given))
        except FintsEdgeError:
            return given  # check_gguf says the file is missing
        return zoo.path(str(given))
    return given


def portable_args(argv: Sequence[str]) -> str:
    """The command line without this machine's paths: files inside the working folder stay
    relative, any other absolute path becomes its file name."""
    cwd = Path.cwd()
    out = []
    for a in argv:
        if os.path.isabs(a):
            path = Path(a)
            a = str(path.relative_to(cwd)) if path.is_relative_to(cwd) else path.name
        out.append(a)
    return " ".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals", description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the whole grid (hours), not the quick run")
    p.add_argument("--model", type=Path,
                   help="GGUF, or an optional model's name such as qwen0.5b (`make models-extra`); "
                   "default: the embedded SmolLM2 Q4_1")  # fmt: skip
    p.add_argument("--styles", type=Path, default=DEFAULT_STYLES, help="style spec JSON")
    p.add_argument("--conditional", type=Path, default=DEFAULT_CONDITIONAL,
                   help="kind -> style map per conditional user (default: the bundled one)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, help="users per benchmark (quick 8, full 16)")
    p.add_argument("--history", type=int, help="personas history items per user (quick 8)")
    p.add_argument("--tests", type=int, help="personas dev AND test items per user (quick 6)")
    p.add_argument("--per-kind", type=int, help="conditional history items per kind (quick 12)")
    p.add_argument(
        "--tests-per-kind", type=int, help="conditional dev AND test items per kind (quick 3)"
    )
    p.add_argument("--longlamp", type=Path, help="LongLaMP JSON (default: the shipped mini set, "
                   f"evals/data/{LONGLAMP_MINI.parent.name}/{LONGLAMP_MINI.name})")  # fmt: skip
    p.add_argument("--lamp", nargs=2, type=Path, metavar=("QUESTIONS", "OUTPUTS"),
                   help="also run a public LaMP-4 or LaMP-5 split (its questions and outputs "
                   "JSON files, as published) at the setting the synthetic dev sweep chose")  # fmt: skip
    p.add_argument("--skip", nargs="+", default=[],
                   choices=["personas", "conditional", "shift", "longlamp", "commits", "torch"],
                   help="leave parts out")  # fmt: skip
    p.add_argument("--commit-users", type=int,
                   help="commits: authors, round-robin over the repositories (quick 6; --full: "
                   "all 53)")  # fmt: skip
    p.add_argument("--threads", type=int, help="llama.cpp/encoder threads (default: up to 4)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("docs/eval"))
    return p


@cli_main("interrupted; finished answers are cached and the next run resumes from them")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = FULL if args.full else QUICK
    plan = replace(plan, users=args.users or plan.users, history=args.history or plan.history,
                   tests=args.tests or plan.tests, per_kind=args.per_kind or plan.per_kind,
        tests_per_kind=args.tests_per_kind or plan.tests_per_kind)  # fmt: skip
    if min(plan.users, plan.history, plan.tests, plan.per_kind, plan.tests_per_kind) < 1:
        raise FintsEdgeError(
            "--users, --history, --tests, --per-kind and --tests-per-kind must be at least 1"
        )
    styles = load_styles(args.styles)  # a bad spec fails before any model loads
    if "longlamp" not in args.skip:
        load_longlamp(longlamp_path(args))  # so does a missing or malformed LongLaMP file
    if args.lamp:
        if "personas" in args.skip and "conditional" in args.skip:
            raise FintsEdgeError("--lamp runs at the synthetic dev sweep's setting: drop "
                                 "--skip personas conditional (one of them is enough)")  # fmt: skip
        load_lamp(*args.lamp)  # and bad LaMP files
    from fints_edge.llama.model import check_gguf

    model = check_gguf(resolve_model(args.model))
    command = "python -m evals " + portable_args(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    ev = Evaluation(args, plan, styles, model)
    try:
        got = run_benchmarks(ev)
    finally:
        ev.close()
    preds = got.pop("predictions")
    entry = got | {
        "model": {"file": model.name, "sha256": ev.sha256, "n_layer": ev.n_layer},
        "plan": asdict(plan) | {"styles": Path(args.styles).name,
                                "conditional": Path(args.conditional).name, "seed": args.seed},
        "command": command.strip(),
        "seconds": time.perf_counter() - t0,
        # greedy answers can differ between builds: Qwen-0.5B's commits run on an AVX2 host
        # changed a quarter of the zero-shot answers of a run on another host
        "llama_build": build_flags.describe(),
        "threads": args.threads,  # evals.report records the machine with them
    }  # fmt: skip
    from evals.report import write_outputs

    write_outputs(args.out, model.name, entry, preds)
    say(f"wrote {args.out}/results.json, README.md ({entry['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
