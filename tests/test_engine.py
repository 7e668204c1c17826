"""The Engine and the chat CLI on the tiny model: retrieval, aggregation, refusals."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from fints_edge.chat import main as chat_main
from fints_edge.engine import Engine, EngineConfig
from fints_edge.errors import FintsEdgeError, ProfileError
from fints_edge.llama.inject import applied
from fints_edge.profile import Profile

TOPICS = ["bridge", "rain", "library", "football", "election", "vaccine", "concert", "market"]


@pytest.fixture(scope="module")
def tiny_profile(tiny, tmp_path_factory, onnx_encoder_dir):
    from export.build import BuildOptions, build_profile

    d = tmp_path_factory.mktemp("profile")
    rows = [
        {
            "input": f"Write a headline about the {t}.",
            "output": f"{t} news, all lowercase!",
            "rejected": f"The {t.title()} Story",
        }
        for t in TOPICS
    ]
    (d / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = BuildOptions(layers=(1, 2), sites=("attn", "mlp"), negatives="given",
                        encoder_dir=onnx_encoder_dir, progress=False)  # fmt: skip
    build_profile(tiny.hf_dir, d / "h.jsonl", d / "me.npz", opts)
    return d / "me.npz"


@pytest.fixture(scope="module")
def engine(tiny, tiny_profile, onnx_encoder_dir, onnx_aggregator_path):
    # the plain method (the paper's absolute multiplier, no item norm, no fade, no openings):
    # the tests below recompute its math; the shaping knobs are switched on per test
    cfg = EngineConfig(k=3, strength=2.0, strength_unit="absolute", item_norm=False,
                       repeat_fade=1.0, block_repeats=0, opening_scale=0.0, temperature=0.1,
                       max_tokens=8, n_ctx=256, threads=1)  # fmt: skip
    with Engine(
        tiny.gguf_path,
        tiny_profile,
        cfg,
        encoder_dir=onnx_encoder_dir,
        aggregator_path=onnx_aggregator_path,
    ) as e:
        yield e


def test_plan_equals_numpy_recomputation(engine):
    text = "Write a headline about the rain tomorrow."
    plan = engine.plan(text)
    p = engine.profile
    q = engine.encoder.encode([text])[0]
    keys = p.keys.astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)  # float16 on disk, unit rows in use
    sims = keys @ q
    ids = np.argsort(-sims, kind="stable")[:3]
    assert [r["id"] for r in plan.retrieved] == ids.tolist()
    np.testing.assert_allclose([r["similarity"] for r in plan.retrieved], sims[ids], atol=1e-5)
    w = np.exp(sims[ids] / 0.1)
    w /= w.sum()
    np.testing.assert_allclose([r["weight"] for r in plan.retrieved], w, atol=1e-5)
    want = 2.0 * np.einsum("k,ksle->sle", w, p.signals[ids].astype(np.float32))
    np.testing.assert_allclose(plan.steering.vectors, want, atol=1e-5)
    assert plan.gate == 1.0


def test_steering_changes_the_answer_and_clears_after(engine):
    text = "Write a headline about the concert."
    base = engine.reply(text, steer=False)
    engine.configure(strength=40.0)
    try:
        steered = engine.reply(text)
    finally:
        engine.configure(strength=2.0)
    assert steered.steered and not base.steered
    assert steered.text != base.text
    assert engine.reply(text, steer=False).text == base.text  # nothing left behind
    assert base.prompt_tokens > 5 and set(base.timings_ms) >= {"first_token", "total_generate"}


def test_sites_are_selected_before_aggregation(engine):
    """Only the sites and layers steered are aggregated and carried: nothing is zeroed after."""
    text = "a headline about the market"
    both = engine.plan(text).steering
    engine.configure(sites=("mlp",), layers=(2,))
    try:
        one = engine.plan(text).steering
    finally:
        engine.configure(sites=None, layers=None)
    assert both.sites == ("attn", "mlp") and both.layers == (1, 2)
    assert one.sites == ("mlp",) and one.layers == (2,) and one.vectors.shape[:2] == (1, 1)
    np.testing.assert_allclose(one.vectors[0, 0], both.vectors[1, 1], rtol=1e-6, atol=1e-6)


def test_over_long_input_is_refused(engine):
    with pytest.raises(FintsEdgeError, match="shorten the input"):
        engine.reply("word " * 400)


def test_profile_for_another_model_is_refused(
    tiny, tiny_profile, tmp_path, onnx_encoder_dir, onnx_aggregator_path
):
    p = Profile.load(tiny_profile)
    other = replace(p, model=replace(p.model, tokenizer_sha256="0" * 64))
    other.save(tmp_path / "other.npz")
    with pytest.raises(ProfileError, match="built for another model.*tokenizer"):
        Engine(
            tiny.gguf_path,
            tmp_path / "other.npz",
            encoder_dir=onnx_encoder_dir,
            aggregator_path=onnx_aggregator_path,
        )


def test_profile_from_another_encoder_is_refused(
    tiny, tiny_profile, tmp_path, onnx_encoder_dir, onnx_aggregator_path
):
    p = Profile.load(tiny_profile)
    probe = np.roll(p.encoder_probe, 7)
    replace(p, encoder_probe=probe).save(tmp_path / "enc.npz")
    with pytest.raises(FintsEdgeError) as e:
        Engine(
            tiny.gguf_path,
            tmp_path / "enc.npz",
            encoder_dir=onnx_encoder_dir,
            aggregator_path=onnx_aggregator_path,
        )
    # the probe check itself refused it (same encoder name, same size, other embedding space)
    msg = str(e.value)
    want = re.escape(f"{tmp_path / 'enc.npz'}: encoder probe disagrees with {onnx_encoder_dir} ")
    assert re.match(want + r"\(cosine -?\d\.\d{4} < 0\.99\); rebuild the profile", msg), msg
    assert "\n" not in msg


def _chat(args, capsys):
    code = chat_main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def files(tiny, tiny_profile, onnx_encoder_dir, onnx_aggregator_path):
    """The chat's file flags for the tiny model and its profile."""
    return [
        *("--model", str(tiny.gguf_path), "--profile", str(tiny_profile)),
        *("--encoder", str(onnx_encoder_dir), "--aggregator", str(onnx_aggregator_path)),
    ]


def test_chat_json_one_shot(files, capsys):
    code, out, _ = _chat(
        [
            *files,
            "--prompt",
            "a headline about the vaccine",
            "--json",
            "--max-tokens",
            "5",
            "--threads",
            "1",
            "-k",
            "2",
        ],
        capsys,
    )
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"text", "retrieved", "timings_ms"} and len(data["retrieved"]) == 2
    assert data["retrieved"][0]["input"] == "Write a headline about the vaccine."


def test_chat_notes_a_profile_without_opening_signals(files, tiny_profile, tmp_path, capsys):
    """The default steers openings; a profile built without them says so once, then answers."""
    from dataclasses import replace

    from fints_edge.profile import Profile

    old = Profile.load(tiny_profile)
    assert old.opening is not None  # built with the default opening tokens: no note
    args = ["--prompt", "a headline", "--json", "--max-tokens", "2", "--threads", "1"]
    code, _, err = _chat([*files, *args], capsys)
    assert code == 0 and "no opening signals" not in err
    bare = tmp_path / "bare.npz"
    replace(old, opening=None, opening_tokens=0).save(bare)
    assert Profile.load(bare).opening is None
    flags = [f if f != str(tiny_profile) else str(bare) for f in files]
    code, out, err = _chat([*flags, *args], capsys)
    assert code == 0 and json.loads(out)["text"] is not None
    assert err.count("no opening signals") == 1 and "bare.npz" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--json"], "--json and --compare go with --prompt"),
        (["--prompt", "x", "--compare", "--no-steer"], "drop --no-steer"),
        (["--prompt", "x", "-k", "0"], "-k/--top-k must be an integer in [1, 64], got 0"),
        (["--prompt", "x", "--gate", "0.5:0.2"], "FULL > FLOOR"),
    ],
)
def test_chat_refuses_bad_flags_before_loading(tmp_path, capsys, extra, message):
    code, _, err = _chat(["--profile", str(tmp_path / "missing.npz"), *extra], capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("which", ["profile", "model"])
def test_chat_missing_files_are_one_line_errors(tiny, tiny_profile, tmp_path, capsys, which):
    model = tmp_path / "nope.gguf" if which == "model" else tiny.gguf_path
    profile = tmp_path / "nope.npz" if which == "profile" else tiny_profile
    code, _, err = _chat(
        ["--model", str(model), "--profile", str(profile), "--prompt", "x"], capsys
    )
    assert code == 1 and "nope" in err and len(err.strip().splitlines()) == 1


def test_chat_runs_without_torch(files):
    """The whole on-device path, in a process where torch/transformers/optimum cannot import."""
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'optimum'): sys.modules[m] = None\n"
        "from fints_edge.chat import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [
        *files,
        "--prompt",
        "a headline about the rain",
        "--json",
        "--max-tokens",
        "4",
        "--threads",
        "1",
    ]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["steered"] and data["retrieved"][0]["input"] == "Write a headline about the rain."


def test_rag_examples_do_not_depend_on_the_steering_k(engine):
    """--k 1 --rag 3: steer with the nearest item, show three examples."""
    engine.configure(k=1, rag=3)
    try:
        plan = engine.plan("Write a headline about the rain tomorrow.")
        assert len(plan.retrieved) == 3
        assert [r["weight"] for r in plan.retrieved] == pytest.approx([1.0, 0.0, 0.0])
        msgs = engine.messages("x", plan)
        assert len(msgs) == 7 and msgs[1]["content"] == plan.retrieved[0]["output"]
        engine.configure(k=3, rag=0)
        assert len(engine.plan("Write a headline about the rain tomorrow.").retrieved) == 3
    finally:
        engine.configure(k=3, rag=0)


# -- the token loop, llama.cpp failures and the eval callback -------------------------------------
GREEDY_PROMPTS = [
    "Write a headline about the concert.",
    "Écris un titre sur la pluie 🌧️",
    "What is the capital of France?",
    "数学は楽しい",
]


def _prompt(engine, text, plan):
    return engine.prompt_ids(engine.messages(text, plan))


@pytest.mark.parametrize("strength", [2.0, 40.0])
def test_answers_equal_llama_cpp_greedy_completion(engine, strength):
    """The engine's own token loop gives create_completion's greedy text for ordinary answers
    (24 prompt/steering cases, before and after the switch), and counts every token."""
    engine.configure(strength=strength, max_tokens=24)
    try:
        for text in GREEDY_PROMPTS:
            plan = engine.plan(text)
            for steer in (False, True):
                *pieces, got = engine.stream(text, steer=steer, plan=plan)
                prompt = _prompt(engine, text, plan)
                engine.reset_context()
                with applied(engine.injector, plan.steering if steer else None, prompt):
                    want = engine.llm.create_completion(
                        prompt, max_tokens=24, temperature=0.0, seed=0
                    )
                assert got.text == want["choices"][0]["text"].strip() and got.text
                assert "".join(pieces).strip() == got.text
                assert got.completion_tokens == want["usage"]["completion_tokens"] == 24
                assert "\ufffd" not in got.text
    finally:
        engine.configure(strength=2.0, max_tokens=8)


LEAD_BYTE_TOKEN = 173  # SmolLM2's byte-level token for the lone byte 0xE2 (a 3-byte lead)


def _forcing_plan(tiny, engine, text, token):
    """A plan whose MLP-site vector at the profile's last layer points along ``token``'s (tied)
    embedding, strong enough that greedy decoding picks ``token`` every time."""
    from safetensors.numpy import load_file

    e = load_file(tiny.hf_dir / "model.safetensors")["model.embed_tokens.weight"][token]  # [n_embd]
    plan = engine.plan(text)
    st = plan.steering
    vectors = np.zeros_like(st.vectors)  # [S, L, n_embd]
    vectors[st.sites.index("mlp"), -1] = 200.0 * e / np.linalg.norm(e)
    plan.steering = replace(st, vectors=vectors)
    return plan


def test_token_budget_holds_when_steering_emits_bytes_that_never_form_a_character(tiny, engine):
    """The real failure: strong steering made the model repeat a UTF-8 lead byte, and
    create_completion ignored max_tokens until llama_decode found the context full."""
    assert engine.llm.detokenize([LEAD_BYTE_TOKEN]) == b"\xe2"
    text = "Write a headline about the rain."
    plan = _forcing_plan(tiny, engine, text, LEAD_BYTE_TOKEN)
    *pieces, reply = engine.stream(text, plan=plan)
    n_prompt = reply.prompt_tokens
    assert reply.completion_tokens == engine.config.max_tokens == 8
    # every generated token went through the context except the last (sampled, never decoded)
    assert engine.llm.n_tokens == n_prompt + 8 - 1 < engine.config.n_ctx
    assert engine.llm.input_ids[n_prompt : n_prompt + 7].tolist() == [LEAD_BYTE_TOKEN] * 7
    assert reply.text == "\ufffd" * 8 and "".join(pieces) == reply.text
    assert engine.reply(text, steer=False).completion_tokens == 8  # and the engine goes on


def test_a_full_context_is_an_error_that_says_what_to_change_and_the_engine_recovers(
    tiny, tiny_profile, engine, onnx_encoder_dir, onnx_aggregator_path, monkeypatch
):
    text = "Write a headline about the market."
    want_plain, want_steered = engine.reply(text, steer=False), engine.reply(text)
    with Engine(
        tiny.gguf_path,
        tiny_profile,
        engine.config,
        encoder_dir=onnx_encoder_dir,
        aggregator_path=onnx_aggregator_path,
    ) as fresh:
        # a prompt that leaves room for 2 of the 8 tokens: llama_decode really fails (code 1)
        filler = fresh.llm.tokenize(b" word" * 300, add_bos=False)[: fresh.config.n_ctx - 2]
        monkeypatch.setattr(fresh, "prompt_ids", lambda _messages: filler)
        with pytest.raises(FintsEdgeError, match=r"context \(256 tokens\) is full: lower") as e:
            fresh.reply(text)
        assert "llama_decode returned 1" in str(e.value.__cause__)
        assert not fresh.injector.active and fresh.llm.n_tokens == 0
        monkeypatch.undo()
        assert fresh.reply(text, steer=False).text == want_plain.text
        got = fresh.reply(text)
        assert (got.text, got.completion_tokens) == (want_steered.text, 8)


def test_a_failure_inside_the_eval_callback_reaches_the_caller(engine, monkeypatch):
    """A Python exception in the ctypes callback cannot cross C: ctypes used to print it and
    llama.cpp went on with a half-computed graph. It must come out of the request instead."""
    text = "Write a headline about the football."
    before = engine.reply(text)
    wrong = {b"l_out-1": np.ones(3, np.float32)}  # not [n_embd]: the in-place add fails
    monkeypatch.setattr(engine.injector, "_by_tensor", lambda *_a: dict(wrong))
    with pytest.raises(FintsEdgeError, match="graph tensor l_out-1 .ValueError") as e:
        engine.reply(text)
    assert isinstance(e.value.__cause__, ValueError)
    assert not engine.injector.active
    monkeypatch.undo()
    assert engine.reply(text).text == before.text


def test_a_failure_inside_the_eval_callback_reaches_the_extractor(engine, monkeypatch):
    from fints_edge.learn.extract import DeviceExtractor

    extractor = DeviceExtractor(engine.llm, engine.injector, [1, 2])
    item = ("Write a headline about the bridge.", "bridge news!", "The Bridge Story")
    before = extractor.signal(*item)

    def broken(*_args):
        raise ValueError("cannot read this tensor")

    monkeypatch.setattr(engine.injector, "_rows", broken)
    with pytest.raises(FintsEdgeError, match="cannot read this tensor") as e:
        extractor.signal(*item)
    assert isinstance(e.value.__cause__, ValueError) and not engine.injector._taps
    monkeypatch.undo()
    np.testing.assert_array_equal(extractor.signal(*item).signal, before.signal)


def test_a_short_half_life_never_underflows_every_weight():
    """0.5 ** (100 days / 1e-6 days) is 0 in any float: the aggregator then had no weights."""
    from fints_edge.plan import recency_weights

    day = 86400.0
    ts = np.array([0.0, 100 * day, 200 * day])
    w = recency_weights(ts, np.array([0, 1]), half_life_days=1e-6)  # the newest not retrieved
    assert w.tolist() == [0.0, 1.0]
    w = recency_weights(ts, np.array([0, 1]), half_life_days=100)
    np.testing.assert_allclose(w, [0.5, 1.0])  # same ratio as 0.25 : 0.5 from the newest


@pytest.mark.parametrize(
    ("knob", "label"),
    [("strength", "--strength"), ("temperature", "--temperature"), ("sim_full", "sim_full"),
     ("opening_scale", "--opening-scale")],
)  # fmt: skip
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_knobs_are_refused_when_set(engine, knob, label, value):
    before = engine.config
    with pytest.raises(FintsEdgeError, match=f"^{label} must be a finite number, got {value}$"):
        engine.configure(**{knob: value})
    assert engine.config == before


def test_text_that_utf8_cannot_carry_is_refused(engine):
    """JSON can carry a lone surrogate ("\\ud800"); the tokenizers raised a TypeError on it."""
    for call in (engine.plan, engine.reply, lambda t: engine.reply(t, steer=False)):
        with pytest.raises(
            FintsEdgeError, match="not valid Unicode .a lone surrogate at character 3"
        ):
            call("abc\ud800def")
    with pytest.raises(FintsEdgeError, match="the answer is not valid Unicode"):
        engine.learn("a headline", "x\udfff")
    with pytest.raises(FintsEdgeError, match="the input must be text, got bytes"):
        engine.reply(b"bytes")


def test_sites_and_layers_the_profile_lacks_are_refused_when_set(engine):
    before = engine.config
    with pytest.raises(FintsEdgeError, match=r"no signals at layer\(s\) \[7\]; it has \[1, 2\]"):
        engine.configure(layers=(7,))
    assert engine.config == before and engine.reply("a headline about the rain").text


def test_item_norm_and_residual_unit_follow_their_formulas(engine):
    """item_norm: every retrieved signal at the profile's typical norm before the mean;
    residual unit: x residual_norms / typical norm, so strength is a share of the residual."""
    text = "Write a headline about the rain tomorrow."
    base = engine.plan(text)
    p = engine.profile
    ids = [r["id"] for r in base.retrieved]
    w = np.array([r["weight"] for r in base.retrieved], np.float32)
    sig = p.signals.astype(np.float32)
    typ = np.linalg.norm(sig, axis=-1).mean(axis=0)  # [S, L]
    engine.configure(item_norm=True, strength_unit="residual", strength=0.25)
    try:
        plan = engine.plan(text)
        static = engine.static_steering().vectors
    finally:
        engine.configure(item_norm=False, strength_unit="absolute", strength=2.0)
    unit = sig[ids] / np.linalg.norm(sig[ids], axis=-1, keepdims=True) * typ[None, :, :, None]
    mixed = np.einsum("k,ksle->sle", w, unit)
    want = 0.25 * mixed * (p.residual_norms[None, :] / typ)[:, :, None]
    np.testing.assert_allclose(plan.steering.vectors, want, rtol=1e-4, atol=1e-5)
    # a typical item pushes by a quarter of the residual's norm
    one = sig / np.linalg.norm(sig, axis=-1, keepdims=True) * typ[None, :, :, None]
    want_static = 0.25 * one.mean(0) * (p.residual_norms[None, :] / typ)[:, :, None]
    np.testing.assert_allclose(static, want_static, rtol=1e-4, atol=1e-5)


def test_answer_only_steering_and_fade_change_the_answer_and_leave_nothing_behind(engine):
    text = "Write a headline about the concert."
    base = engine.reply(text, steer=False)
    engine.configure(strength=40.0)
    try:
        full = engine.reply(text)
        engine.configure(prompt_strength=0.0)
        answer_only = engine.reply(text)
        engine.configure(prompt_strength=1.0, preserve_norm=True)
        kept = engine.reply(text)
    finally:
        engine.configure(strength=2.0, prompt_strength=1.0, preserve_norm=False)
    assert len({full.text, answer_only.text, kept.text, base.text}) >= 3
    assert not engine.injector._preserve_norm and not engine.injector.active
    assert engine.reply(text, steer=False).text == base.text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strength_unit": "percent"}, "--strength-unit 'percent': choose one of absolute"),
        ({"repeat_fade": 1.5}, r"--repeat-fade must be a number in \[0, 1\], got 1.5"),
        ({"prompt_strength": -1.0}, "--prompt-strength must be a number >= 0, got -1.0"),
        ({"block_repeats": 1}, "block_repeats 1: an n-gram size of 2 or more"),
        ({"opening_window": 0}, "opening_window must be an integer >= 1, got 0"),
    ],
)
def test_bad_shaping_knobs_are_refused(engine, changes, message):
    with pytest.raises(FintsEdgeError, match=message):
        engine.configure(**changes)


def test_mean_centring_subtracts_the_reference_from_every_item(engine):
    text = "Write a headline about the rain tomorrow."
    base = engine.plan(text).steering.vectors
    p = engine.profile
    center = np.random.default_rng(0).normal(size=p.signals.shape[1:]).astype(np.float32)
    engine.planner.center = center
    try:
        got = engine.plan(text).steering.vectors
        static = engine.static_steering().vectors
    finally:
        engine.planner.center = None
    # weights sum to 1, so the aggregate moves by exactly strength x center
    np.testing.assert_allclose(got, base - 2.0 * center, rtol=1e-4, atol=1e-4)
    want_static = 2.0 * (p.signals.astype(np.float32).mean(0) - center)
    np.testing.assert_allclose(static, want_static, rtol=1e-4, atol=1e-4)


def test_repeat_block_keeps_a_steered_answer_free_of_repeated_bigrams(engine):
    """Strong steering on the random tiny model loops; with block_repeats=2 no token bigram of
    the answer appears twice (the llama.cpp sampler applied our logits processor)."""
    from fints_edge.generate import Generation

    text = "Write a headline about the concert."
    seen: dict[str, list[int]] = {}
    real_init = Generation.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        seen["tokens"] = self.tokens  # the same list the loop fills

    engine.configure(strength=40.0, max_tokens=40, repeat_fade=1.0)
    try:
        Generation.__init__ = spy  # type: ignore[method-assign]
        engine.reply(text)
        free = list(seen["tokens"])
        engine.configure(block_repeats=2)
        engine.reply(text)
        blocked = list(seen["tokens"])
    finally:
        Generation.__init__ = real_init  # type: ignore[method-assign]
        engine.configure(strength=2.0, max_tokens=8, block_repeats=0)

    def bigrams(t):
        return list(zip(t, t[1:], strict=False))

    assert len(bigrams(free)) - len(set(bigrams(free))) > 0, "the test needs a looping answer"
    assert len(blocked) > 5 and len(bigrams(blocked)) == len(set(bigrams(blocked)))
