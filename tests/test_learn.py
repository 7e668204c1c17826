"""On-device learning on the tiny model: parity with the torch extraction, the learn CLI, the
Engine's learn/forget, chat feedback, recency, and a kill in the middle of a profile write."""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fints_edge.engine import Engine, EngineConfig
from fints_edge.errors import FintsEdgeError
from fints_edge.learn import main as learn_main
from fints_edge.plan import recency_weights
from fints_edge.profile import Profile

PAIRS = [
    (
        "Write a headline about the river festival.",
        "river festival opens with lanterns",
        "The River Festival Returns!",
    ),
    ("Explain rain in one line.", "rain is just water falling, friend", "Rain Forms From Clouds."),
    ("Name a good pet.", "a cat, obviously", "Dogs Are Loyal Companions."),
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def hf_tiny(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny.hf_dir)


@pytest.fixture(scope="module")
def exact_llm(tiny):
    from export.tiny import EXACT_KV
    from fints_edge.llama.inject import open_steerable

    llm, injector = open_steerable(tiny.gguf_path, "exact", n_ctx=256, n_threads=1, **EXACT_KV)
    yield llm, injector
    llm.close()


@pytest.mark.parametrize("reading", ["output", "residual"])
@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_device_signals_match_torch_extraction(hf_tiny, exact_llm, reading, prompt_format):
    """Layers 1 and 3 (the LAST layer, where llama.cpp prunes rows unless asked) and both sites."""
    from export.extract import extract_signals, prompt_ids
    from fints_edge.learn.extract import DeviceExtractor

    model, tok = hf_tiny
    ref = extract_signals(
        model, tok, PAIRS, [1, 3], attn_reading=reading, prompt_format=prompt_format, progress=False
    )
    llm, injector = exact_llm
    ex = DeviceExtractor(llm, injector, [1, 3], ("attn", "mlp"), reading, prompt_format)
    got = []
    for text, chosen, rejected in PAIRS:
        assert ex.prompt_tokens(text) == prompt_ids(tok, text, prompt_format)
        got.append(ex.signal(text, chosen, rejected))
    signals = np.stack([g.signal for g in got])  # [N, S, L, E]
    assert signals.shape == ref.signals.shape == (3, 2, 2, 64)
    cos = _cosines(signals, ref.signals)  # per item, site and layer
    assert cos.min() >= 0.999, cos
    np.testing.assert_allclose(signals, ref.signals, atol=1e-4)
    np.testing.assert_allclose(
        np.mean([g.residual_norms for g in got], axis=0), ref.residual_norms, rtol=1e-4
    )
    opening = np.stack([g.opening for g in got])  # the first 3 answer positions only
    assert _cosines(opening, ref.opening).min() >= 0.999
    np.testing.assert_allclose(opening, ref.opening, atol=1e-4)
    assert np.abs(opening - signals).max() > 1e-3  # a different average than the whole answer


def test_extraction_leaves_the_context_clean(exact_llm):
    """A generation after extraction equals one before it: no KV or steering left behind."""
    from fints_edge.learn.extract import DeviceExtractor

    llm, injector = exact_llm
    ex = DeviceExtractor(llm, injector, [2])
    before = ex.own_answer("Say something about trains.", max_tokens=8)
    ex.signal(*PAIRS[0])
    assert ex.own_answer("Say something about trains.", max_tokens=8) == before
    assert not injector.active


class _NoKeys:
    """The learner's encoder, where the keys do not matter."""

    def encode(self, texts):
        return np.zeros((len(texts), 4), np.float32)


def _counting_decodes(llm, monkeypatch) -> list[int]:
    """Every llama_decode's token count, from here on."""
    counts: list[int] = []
    decode = llm._ctx.decode

    def counted(batch):
        counts.append(batch.n_tokens())
        return decode(batch)

    monkeypatch.setattr(llm._ctx, "decode", counted)
    return counts


def test_learning_computes_each_prompt_once_with_the_same_signals(exact_llm, monkeypatch):
    """The learner keeps an item's prompt in the KV cache for its negative and its contrast: one
    prompt pass fewer per generated negative than calls from a clean context, with the very same
    negatives and signals; a steered generation left in the context before learning is not
    reused."""
    from fints_edge.history import HistoryItem
    from fints_edge.learn.extract import DeviceExtractor
    from fints_edge.learn.learner import Learner

    llm, injector = exact_llm
    ex = DeviceExtractor(llm, injector, [1, 3], ("attn", "mlp"))
    items = [HistoryItem(text, chosen) for text, chosen, _ in PAIRS]
    items.append(HistoryItem(*PAIRS[0]))  # a given negative: the contrast alone
    learner = Learner(ex, _NoKeys(), max_new_tokens=8)

    clean = _counting_decodes(llm, monkeypatch)
    want = learner.negative  # each call from a clean context (outside reusing_prompts)
    negatives = [want(i.input, 0) for i in items[:3]] + [PAIRS[0][2]]
    ref = [ex.signal(i.input, i.output, n) for i, n in zip(items, negatives, strict=True)]
    plain = sum(clean)

    injector.set(np.ones((2, 2, 64), np.float32), ("attn", "mlp"), [1, 3])
    try:  # a steered answer to the first prompt, left in the cache
        ex.llm.create_completion(ex.prompt_tokens(items[0].input), max_tokens=4)
    finally:
        injector.clear()
    clean.clear()
    got = learner.learn(items, progress=False)
    prompts = [len(ex.prompt_tokens(i.input)) for i in items]
    assert sum(clean) == plain - sum(prompts[:3]), (sum(clean), plain, prompts)
    assert [p.rejected for p in got.pairs] == negatives
    signals = np.stack([r.signal for r in ref])
    assert np.abs(signals).max() > 1e-2
    np.testing.assert_array_equal(got.signals, signals)  # the same computation, bit for bit
    np.testing.assert_array_equal(got.opening, np.stack([r.opening for r in ref]))
    assert llm.n_tokens == 0  # nothing left cached for the next user of the context


def test_extractor_refuses_bad_layers_and_steering(exact_llm):
    from fints_edge.learn.extract import DeviceExtractor

    llm, injector = exact_llm
    with pytest.raises(FintsEdgeError, match=r"0\.\.3"):
        DeviceExtractor(llm, injector, [4])
    ex = DeviceExtractor(llm, injector, [1])
    injector.set(np.ones((2, 1, 64), np.float32), ("attn", "mlp"), [1])
    try:
        with pytest.raises(FintsEdgeError, match="clear steering"):
            ex.signal(*PAIRS[0])
    finally:
        injector.clear()


def test_an_answer_without_tokens_is_named_by_its_input_and_role(exact_llm):
    from fints_edge.learn.extract import DeviceExtractor

    ex = DeviceExtractor(*exact_llm, [1])
    text = "Write a headline about the river festival."
    for chosen, rejected, which in [
        ("", "The Story", "output"),
        ("the story", "", "rejected text"),
    ]:
        with pytest.raises(FintsEdgeError) as e:
            ex.signal(text, chosen, rejected)
        assert str(e.value).startswith(f"the {which} for input {text[:40]!r} is empty"), e.value
        assert "drop the item" in str(e.value)


# -- the CLI ---------------------------------------------------------------------------------------
def _write_history(path: Path, rows: list[tuple[str, str, str | None]]) -> Path:
    lines = []
    for text, out, rej in rows:
        obj = {"input": text, "output": out}
        if rej is not None:
            obj["rejected"] = rej
        lines.append(json.dumps(obj) + "\n")
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def device_profile(tiny, onnx_encoder_dir, tmp_path_factory):
    """A profile built on the device from given negatives, layers 1 and 3."""
    d = tmp_path_factory.mktemp("learn")
    history = _write_history(d / "h.jsonl", PAIRS)
    rc = learn_main(
        ["--model", str(tiny.gguf_path), "--history", str(history), "--out", str(d / "me.npz"),
         "--layers", "1", "3", "--encoder", str(onnx_encoder_dir), "--n-ctx", "256",
         "--threads", "1", "--opening-tokens", "3", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    return d / "me.npz"


def test_device_built_profile_matches_the_torch_built_one(tiny, device_profile, onnx_encoder_dir):
    from export.build import BuildOptions, build_profile

    torch_path = device_profile.with_name("torch.npz")
    opts = BuildOptions(
        layers=(1, 3),
        negatives="given",
        encoder_dir=onnx_encoder_dir,
        opening_tokens=3,
        progress=False,
    )
    ref = build_profile(tiny.hf_dir, device_profile.with_name("h.jsonl"), torch_path, opts)
    dev = Profile.load(device_profile)
    assert dev.model == ref.model
    assert dev.layers.tolist() == [1, 3] and dev.sites == ref.sites
    assert dev.inputs.tolist() == ref.inputs.tolist()
    assert dev.outputs.tolist() == ref.outputs.tolist()
    # The default f16 KV cache of an ordinary context costs a little precision; still >= 0.999.
    assert _cosines(dev.signals, ref.signals).min() >= 0.999
    np.testing.assert_allclose(dev.keys.astype(np.float32), ref.keys.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(dev.residual_norms, ref.residual_norms, rtol=1e-2)
    assert dev.opening is not None and ref.opening is not None and dev.opening_tokens == 3
    assert _cosines(dev.opening, ref.opening).min() >= 0.999
    assert np.all(np.isfinite(dev.timestamps))  # learned items are stamped


def test_add_appends_items_and_keeps_the_old_ones(tiny, device_profile, onnx_encoder_dir, tmp_path):
    profile = tmp_path / "me.npz"
    profile.write_bytes(device_profile.read_bytes())
    before = Profile.load(profile)
    more = _write_history(
        tmp_path / "more.jsonl",
        [("Write a headline about the harbour.", "harbour wakes up early", None)],
    )  # no rejected: the model's own answer is generated on the device
    rc = learn_main(
        ["--model", str(tiny.gguf_path), "--profile", str(profile), "--add", str(more),
         "--encoder", str(onnx_encoder_dir), "--n-ctx", "256", "--threads", "1", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    after = Profile.load(profile)
    assert after.n_items == before.n_items + 1
    np.testing.assert_array_equal(after.signals[: before.n_items], before.signals)
    assert after.inputs[-1] == "Write a headline about the harbour."
    assert np.abs(after.signals[-1].astype(np.float32)).max() > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    assert learn_main(["--profile", str(profile), "--forget", "0"]) == 0
    forgot = Profile.load(profile)
    assert forgot.inputs.tolist() == after.inputs.tolist()[1:]


def test_learn_cli_refuses_bad_calls_with_one_line(tiny, device_profile, tmp_path, capsys):
    cases = [
        (["--add", "x.jsonl"], "needs --profile"),
        (["--history", "x.jsonl"], "needs --out"),
        (["--history", "x.jsonl", "--out", "me.txt"], "must end in .npz"),
        (["--profile", "p.npz"], "exactly one of"),
        (["--profile", str(device_profile), "--forget", "99"], "no history item 99"),
        (["--model", str(tiny.gguf_path), "--profile", str(device_profile), "--add",
          str(tmp_path / "missing.jsonl")], "no such history file"),
    ]  # fmt: skip
    for argv, needle in cases:
        assert learn_main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err, err


def test_add_refuses_a_profile_of_another_model(tmp_path, onnx_encoder_dir, device_profile):
    from export.tiny import make_tiny_model

    other = make_tiny_model(tmp_path / "other", n_layer=3)
    more = _write_history(tmp_path / "m.jsonl", [PAIRS[0]])
    before = device_profile.read_bytes()
    rc = learn_main(
        ["--model", str(other.gguf_path), "--profile", str(device_profile), "--add", str(more),
         "--encoder", str(onnx_encoder_dir), "--n-ctx", "256", "--threads", "1", "--quiet"]
    )  # fmt: skip
    assert rc == 1
    assert device_profile.read_bytes() == before


# -- the Engine and the chat ----------------------------------------------------------------------
@pytest.fixture
def engine_on_copy(tiny, device_profile, onnx_encoder_dir, onnx_aggregator_path, tmp_path):
    def make(mode: str) -> Engine:
        path = tmp_path / f"{mode}.npz"
        path.write_bytes(device_profile.read_bytes())
        cfg = EngineConfig(mode=mode, k=2, max_tokens=6, n_ctx=256, threads=1)  # type: ignore[arg-type]
        return Engine(
            tiny.gguf_path,
            path,
            cfg,
            encoder_dir=onnx_encoder_dir,
            aggregator_path=onnx_aggregator_path,
        )

    return make


@pytest.mark.parametrize("mode", ["exact", "cvec"])
def test_engine_learns_and_forgets_at_once(engine_on_copy, mode):
    with engine_on_copy(mode) as engine:
        n = engine.profile.n_items
        text = "Write a headline about the new tram line."
        before = engine.reply(text).text
        item = engine.learn(text, "tram line opens, finally", "The New Tram Line Opens")
        assert item == n
        on_disk = Profile.load(engine.profile_path)
        assert on_disk.n_items == n + 1 and on_disk.inputs[-1] == text
        assert len(engine.index) == n + 1
        assert engine.plan(text).retrieved[0]["id"] == item  # retrievable right away
        engine.forget(item)
        assert Profile.load(engine.profile_path).n_items == n
        # the profile is what it was: so is the steered answer
        assert engine.reply(text).text == before


def test_chat_feedback_commands_update_the_profile(engine_on_copy, monkeypatch, capsys):
    from fints_edge.chat import _interactive

    lines = iter(["Write a headline about kites.", "/good", "/want kites everywhere, yay",
                  "/forget", "/quit"])  # fmt: skip
    monkeypatch.setattr(builtins, "input", lambda _prompt="": next(lines))
    with engine_on_copy("exact") as engine:
        n = engine.profile.n_items
        assert _interactive(engine, steer=True) == 0
        out = capsys.readouterr().out
        assert f"learned item #{n} " in out and f"learned item #{n + 1} " in out
        assert f"forgot item #{n + 1}" in out
        final = Profile.load(engine.profile_path)
        assert final.n_items == n + 1 and final.outputs[-1] != "kites everywhere, yay"


def test_forget_by_id_keeps_the_remembered_item_pointing_at_the_right_one(
    engine_on_copy, monkeypatch, capsys
):
    from fints_edge.chat import _interactive

    with engine_on_copy("exact") as engine:
        n = engine.profile.n_items
        lines = iter(["Write a headline about kites.", "/want kites one", "/want kites two",
                      f"/forget {n}", "/forget", "/forget", "/quit"])  # fmt: skip
        monkeypatch.setattr(builtins, "input", lambda _prompt="": next(lines))
        assert _interactive(engine, steer=True) == 0
        out = capsys.readouterr().out
        # "kites two" was #n+1, became #n when #n went: the bare /forget must drop it, not #n+1
        assert f"forgot item #{n}; " in out and out.count(f"forgot item #{n}; ") == 2
        assert "usage: /forget ID" in out  # nothing left to forget by default
        assert Profile.load(engine.profile_path).n_items == n


def test_chat_survives_bad_commands_and_failed_requests(engine_on_copy, monkeypatch, capsys):
    from fints_edge.chat import _interactive

    long_input = "word " * 400  # more tokens than n_ctx 256 leaves: the request fails, not the chat
    lines = iter(["/strength nan", "/strength x", "/k 0", "/forget abc", "/steer maybe",
                  long_input, "Write a headline about kites.", "/quit"])  # fmt: skip
    monkeypatch.setattr(builtins, "input", lambda _prompt="": next(lines))
    with engine_on_copy("exact") as engine:
        strength = engine.config.strength
        assert _interactive(engine, steer=True) == 0
        assert engine.config.strength == strength
    out = capsys.readouterr().out
    assert "/strength needs a finite number" in out and "usage: /strength N" in out
    assert "/k needs a finite whole number >= 1" in out
    assert "usage: /forget N (a whole number" in out and "usage: /steer on|off" in out
    assert "the prompt is" in out  # the over-long input: one error line, then the chat goes on
    assert out.rstrip().count("bot> ") == 2


def test_a_case_style_item_added_without_rejected_is_kept(
    tiny, device_profile, onnx_encoder_dir, tmp_path
):
    """The model's own answer is the contrast; ROUGE-L (case-blind) once dropped every item of a
    case-style user. The tiny model answers in lowercase, so this user writes in uppercase (the
    lowercase direction is tested in tests/test_pairs.py)."""
    from fints_edge.learn import extractor_for
    from fints_edge.learn.extract import DEFAULT_ANSWER_TOKENS
    from fints_edge.llama.inject import open_steerable

    profile = tmp_path / "me.npz"
    profile.write_bytes(device_profile.read_bytes())
    before = Profile.load(profile)
    llm, injector = open_steerable(tiny.gguf_path, "exact", n_ctx=256, n_threads=1)
    ex = extractor_for(llm, injector, before)
    texts = [f"Write a headline about item {i}." for i in range(6)]
    answers = {t: ex.own_answer(t, 0, DEFAULT_ANSWER_TOKENS, 0) for t in texts}
    text = next(t for t in texts if answers[t] != answers[t].upper())
    expected = ex.signal(text, answers[text].upper(), answers[text]).signal  # greedy contrast
    llm.close()
    more = _write_history(tmp_path / "more.jsonl", [(text, answers[text].upper(), None)])
    rc = learn_main(
        ["--model", str(tiny.gguf_path), "--profile", str(profile), "--add", str(more),
         "--encoder", str(onnx_encoder_dir), "--n-ctx", "256", "--threads", "1", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    after = Profile.load(profile)
    assert after.n_items == before.n_items + 1
    assert after.outputs[-1] == answers[text].upper()
    # the contrast is the model's greedy answer itself, not a sampled retry that "looked" different
    got = after.signals[-1].astype(np.float32)
    assert _cosines(got[None], expected[None]).min() > 0.999


def test_recency_weights_halve_per_half_life():
    day = 86400.0
    ts = np.array([0.0, 10 * day, 20 * day, np.nan])
    w = recency_weights(ts, np.array([0, 1, 2, 3]), half_life_days=10)
    np.testing.assert_allclose(w, [0.25, 0.5, 1.0, 1.0])
    assert recency_weights(ts, np.array([0, 1]), half_life_days=0) is None
    assert recency_weights(np.full(2, np.nan), np.array([0]), half_life_days=5) is None


# -- crash safety ------------------------------------------------------------------------------------
def test_a_kill_during_a_profile_write_leaves_the_old_profile(tmp_path):
    """SIGKILL a process while it writes a large profile over an existing one."""
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from _factories import profile
        p = profile(n=3, n_embd=8)
        p.save(sys.argv[1])
        print("old saved", flush=True)
        big = p.with_items(np.ones((60000, 2, 2, 8)), np.ones((60000, 6)),
                           ["x"] * 60000, ["y"] * 60000)
        while True:
            big.save(sys.argv[1])
            print("new saved", flush=True)
        """
    )
    target = tmp_path / "me.npz"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "old saved"
    old = target.read_bytes()
    deadline = time.monotonic() + 30
    while not any(p.suffix == ".tmp" for p in tmp_path.iterdir()):  # a write is under way
        assert time.monotonic() < deadline, "the writer never started its temp file"
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    loaded = Profile.load(target)  # whole, never a torn file
    assert target.read_bytes() == old or loaded.n_items == 60003
    assert loaded.n_items in (3, 60003)


@pytest.mark.slow
def test_device_signals_track_torch_on_the_default_model():
    """Q4_1 on llama.cpp vs the dequantized fp32 model in torch, same demo items (bench reports
    the full figures: ~0.997 attention, ~0.999 MLP median cosine)."""
    from export.demo import HISTORY, ensure_profile
    from fints_edge._paths import default_gguf
    from fints_edge.history import read_history
    from fints_edge.learn.extract import DeviceExtractor
    from fints_edge.llama.inject import open_steerable

    ref = Profile.load(ensure_profile())
    items = read_history(HISTORY)[:6]
    llm, injector = open_steerable(default_gguf(), "exact", n_ctx=1024, n_threads=2)
    try:
        ex = DeviceExtractor(llm, injector, ref.layers.tolist(), ref.sites, ref.attn_reading)
        got = np.stack([ex.signal(i.input, i.output, i.rejected or "").signal for i in items])
    finally:
        llm.close()
    cos = _cosines(got, ref.signals[:6])
    assert np.median(cos) >= 0.99 and cos.min() >= 0.95, cos


def test_engine_steers_openings_from_the_profile(engine_on_copy):
    """A device-built profile carries opening signals; the engine aggregates them like the others
    (same items, same weights, the same units: item norm and residual units measured on the
    opening signals' own typical norms, at strength x opening_scale) and injects them only where
    the answer starts."""
    from fints_edge.scaling import item_normalised, relative_factor, typical_norms

    with engine_on_copy("exact") as engine:
        text = "Write a headline about the harbour."
        engine.configure(opening_scale=0.0)
        plain = engine.plan(text)
        assert plain.steering.opening is None
        engine.configure(strength=2.0, opening_scale=1.5, opening_window=2,
                         strength_unit="absolute", item_norm=False)  # fmt: skip
        plan = engine.plan(text)
        ids = [r["id"] for r in plan.retrieved]
        w = np.array([r["weight"] for r in plan.retrieved])
        first = engine.profile.opening[ids].astype(np.float32)
        want = 3.0 * np.einsum("k,ksle->sle", w, first)
        np.testing.assert_allclose(plan.steering.opening, want, rtol=1e-4, atol=1e-4)
        engine.configure(strength_unit="residual", item_norm=True)  # the defaults
        typical = typical_norms(engine.profile.opening)
        factor = relative_factor(engine.profile.residual_norms, typical)[:, :, None]
        want = 3.0 * factor * np.einsum("k,ksle->sle", w, item_normalised(first, typical))
        got = engine.plan(text).steering.opening
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert np.abs(got - plan.steering.opening).max() > 0.1  # the units do change the vectors
        plan = engine.plan(text)
        calls = engine.injector.calls
        engine.reply(text, plan=plan)
        # 2 layers x 2 sites of ordinary adds per decode, plus the opening adds in the window
        assert engine.injector.calls > calls and not engine.injector.active
    with engine_on_copy("cvec") as engine:  # no positions: cvec steers without openings
        engine.configure(opening_scale=1.0)
        assert engine.plan("Write a headline about the harbour.").steering.opening is None
        assert engine.static_steering().opening is None


def test_static_baseline_opening_is_the_mean_of_all_opening_signals(engine_on_copy):
    """The static baseline gets openings too (the same shaping as a request's, every item at
    weight 1/N), so comparing Fints to it compares retrieval, not the openings."""
    from fints_edge.scaling import item_normalised, relative_factor, typical_norms

    with engine_on_copy("exact") as engine:
        engine.configure(strength=2.0, opening_scale=1.5)
        p = engine.profile
        typical = typical_norms(p.opening)
        factor = relative_factor(p.residual_norms, typical)[:, :, None]
        want = 3.0 * factor * item_normalised(p.opening, typical).mean(axis=0)
        np.testing.assert_allclose(engine.static_steering().opening, want, rtol=1e-4, atol=1e-5)
        engine.configure(opening_scale=0.0)
        assert engine.static_steering().opening is None
