"""The evaluation: scores, intervals, verdicts, and one whole run on the tiny model with a style
spec the project does not ship (held-out specs must work)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export.eval_report import render, verdict
from export.evaluate import main as evaluate_main
from export.evaluate import summarize
from export.metrics import TextScorer, paired_bootstrap


def test_paired_bootstrap_interval_covers_the_mean_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    mean, lo, hi = paired_bootstrap(a, b, 2000, seed=1)
    assert mean == pytest.approx((a - b).mean())
    assert lo < mean < hi and lo > 0.5 and hi < 1.5
    assert (mean, lo, hi) == paired_bootstrap(a, b, 2000, seed=1)
    assert paired_bootstrap(a, a, 500, seed=0) == (0.0, 0.0, 0.0)


def test_text_scorer_rouge_matches_hand_computation():
    s = TextScorer(meteor=False)
    got = s("the cat sat", "the cat sat on the mat")
    # ROUGE-1: 3 overlapping unigrams; P = 3/3, R = 3/6 -> F1 = 2/3. ROUGE-L is the same here.
    assert got == {"rouge1": pytest.approx(2 / 3), "rougeL": pytest.approx(2 / 3)}
    assert s.metrics == ("rouge1", "rougeL")


def _pred(method: str, i: int, adherence: float) -> dict:
    return {"method": method, "user": "u0", "input": f"x{i}", "adherence": adherence,
            "prompt_tokens": 10 if method != "rag" else 300, "first_token_ms": 5.0}  # fmt: skip


def test_summary_and_verdicts_on_known_predictions():
    preds = [_pred("zero-shot", i, 0.0) for i in range(6)]
    preds += [_pred("rag", i, float(i % 2)) for i in range(6)]
    preds += [_pred("fints-exact", i, 1.0) for i in range(6)]
    table = summarize(preds, ["zero-shot", "rag", "fints-exact"], ["adherence"], 500, 0)
    f = table["fints-exact"]
    assert f["n"] == 6 and f["adherence"] == 1.0
    assert f["adherence_vs_zero-shot"] == {"diff": 1.0, "ci95": [1.0, 1.0]}
    assert f["adherence_vs_rag"]["diff"] == pytest.approx(0.5)
    assert "adherence_vs_zero-shot" not in table["zero-shot"]
    assert verdict(f, "adherence", "zero-shot").startswith("beats zero-shot on adherence by +1.000")
    assert verdict(table["zero-shot"], "adherence", "rag").startswith("loses to rag")
    assert table["rag"]["prompt_tokens"] == 300.0


@pytest.fixture
def eval_cache(tmp_path, monkeypatch, onnx_encoder_dir, onnx_aggregator_path):
    """A cache folder holding the session's ONNX encoder and aggregator (what export.onnx writes)."""
    cache = tmp_path / "cache"
    shutil.copytree(onnx_encoder_dir, cache / "encoder")
    shutil.copyfile(onnx_aggregator_path, cache / "aggregator.onnx")
    monkeypatch.setenv("FINTS_EDGE_CACHE", str(cache))
    return cache


@pytest.mark.usefixtures("eval_cache")
def test_a_whole_run_on_the_tiny_model_with_an_unseen_spec(tiny, tmp_path):
    spec = tmp_path / "held_out.json"
    spec.write_text(json.dumps({"styles": [
        {"name": "pirate", "rules": [{"rule": "suffix", "text": "arr"}]},
        {"name": "calm", "rules": [{"rule": "lowercase"}, {"rule": "terse", "max_words": 6}]},
    ]}))  # fmt: skip
    out = tmp_path / "eval"
    rc = evaluate_main(
        ["--model", str(tiny.gguf_path), "--styles", str(spec), "--users", "2", "--history", "2",
         "--tests", "1", "--skip", "shift", "longlamp", "torch", "--bootstrap", "100",
         "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    personas = r["datasets"]["personas"]
    assert personas["users"] == 2 and personas["split"] == "test"
    methods = personas["methods"]
    assert set(methods) == {"zero-shot", "rag", "static", "random", "fints-cvec", "fints-exact",
                            "fints+rag", "fints-opening", "fints-opening+rag"}  # fmt: skip
    for name, e in methods.items():
        assert e["n"] == 2, name
        assert 0.0 <= e["adherence"] <= 1.0 and 0.0 <= e["rougeL"] <= 1.0
        if name != "zero-shot":
            lo, hi = e["adherence_vs_zero-shot"]["ci95"]
            assert lo <= e["adherence_vs_zero-shot"]["diff"] <= hi
    assert set(personas["by_style"]) <= {"pirate", "calm"}
    assert set(personas["style_groups"]) == {"token-level"}  # neither style has a prefix rule
    assert r["sweep"]["chosen_opening_label"].endswith(("opening x4", "opening x8", "opening x16"))
    # the chosen setting was scored on dev, and no tried setting beat it by more than one answer
    tried = [t for t in r["sweep"]["tried"] if t["stage"] != "opening"]
    (chosen,) = [t for t in tried if t["setting"] == r["sweep"]["chosen"]][:1]
    assert chosen["adherence"] >= max(t["adherence"] for t in tried) - 1 / chosen["n"] - 1e-9
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    test_preds = [p for p in preds if p["split"] == "test" and p["method"] == "fints-exact"]
    assert np.mean([p["adherence"] for p in test_preds]) == methods["fints-exact"]["adherence"]
    readme = (out / "README.md").read_text()
    assert readme == render(r, preds)  # generated from results.json (and predictions), never typed
    e = methods["fints-exact"]
    assert f"| fints-exact | 2 | {e['rouge1']:.3f} | {e['rougeL']:.3f} |" in readme
    assert (out / "sweeps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_spec_is_refused_before_any_model_loads(tmp_path, capsys):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"styles": [{"name": "x", "rules": [{"rule": "shout"}]}]}))
    assert evaluate_main(["--styles", str(spec), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and "Traceback" not in err


def test_sweep_ties_are_one_answer_wide_and_cannot_drift():
    from export.evaluate import better

    n, top = 48, 9 / 48
    assert better((10 / 48 + 0.01, 0.1), (9 / 48, 0.9), n, top)  # clearly more adherent
    assert better((8 / 48, 0.5), (9 / 48, 0.4), n, top)  # a tie: more content kept wins
    assert not better((8 / 48, 0.3), (9 / 48, 0.4), n, top)
    assert not better((7 / 48, 0.9), (8 / 48, 0.5), n, top)  # two answers below the best seen
