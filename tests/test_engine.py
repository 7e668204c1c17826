"""The Engine and the chat CLI on the tiny model: retrieval, aggregation, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from fints_edge.chat import main as chat_main
from fints_edge.engine import Engine, EngineConfig
from fints_edge.errors import FintsEdgeError, ProfileError
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
    opts = BuildOptions(
        layers=(1, 2), negatives="given", encoder_dir=onnx_encoder_dir, progress=False
    )
    build_profile(tiny.hf_dir, d / "h.jsonl", d / "me.npz", opts)
    return d / "me.npz"


@pytest.fixture(scope="module")
def engine(tiny, tiny_profile, onnx_encoder_dir, onnx_aggregator_path):
    cfg = EngineConfig(k=3, strength=2.0, temperature=0.1, max_tokens=8, n_ctx=256, threads=1)
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
    np.testing.assert_allclose(plan.vectors, want, atol=1e-5)
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


def test_site_selection_zeroes_the_other_site(engine):
    engine.configure(sites=("mlp",))
    try:
        v = engine.plan("a headline about the market").vectors
    finally:
        engine.configure(sites=None)
    assert not v[0].any() and v[1].any()  # sites are ("attn", "mlp")


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
    with pytest.raises(FintsEdgeError, match="enc.npz"):
        Engine(
            tiny.gguf_path,
            tmp_path / "enc.npz",
            encoder_dir=onnx_encoder_dir,
            aggregator_path=onnx_aggregator_path,
        )


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


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--json"], "--json and --compare go with --prompt"),
        (["--prompt", "x", "--compare", "--no-steer"], "drop --no-steer"),
        (["--prompt", "x", "-k", "0"], "-k >= 1"),
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
