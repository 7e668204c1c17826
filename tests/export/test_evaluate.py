import numpy as np
import pytest

from export.evaluate import METHODS, EvalOptions, paired_bootstrap, render, score, summarize
from export.styles import parse_styles

STYLES = {
    s.name: s
    for s in parse_styles({"styles": [{"name": "quiet", "rules": [{"rule": "lowercase"}]}]})
}


def test_paired_bootstrap_interval_covers_the_mean_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    mean, lo, hi = paired_bootstrap(a, b, 2000, seed=1)
    assert mean == pytest.approx((a - b).mean())
    assert lo < mean < hi and lo > 0.5 and hi < 1.5
    assert (mean, lo, hi) == paired_bootstrap(a, b, 2000, seed=1)
    assert paired_bootstrap(a, a, 500, seed=0) == (0.0, 0.0, 0.0)


def _prediction(method, i, text):
    return {
        "user": "u000",
        "style": "quiet",
        "method": method,
        "input": f"in {i}",
        "reference": "a calm answer",
        "prediction": text,
        "prompt_tokens": 10,
        "first_token_ms": 5.0,
    }


def test_score_and_summary_on_known_predictions():
    preds = []
    for i in range(4):
        for m in METHODS:
            preds.append(
                _prediction(m, i, "a calm answer" if m.startswith("fints") else "A Calm Answer")
            )
    score(preds, STYLES)
    assert all(p["rougeL"] == 1.0 for p in preds)  # ROUGE ignores case
    table = summarize(preds, EvalOptions(bootstrap=200))
    assert table["zero-shot"]["adherence"] == 0.0 and table["fints-exact"]["adherence"] == 1.0
    assert table["fints-exact"]["adherence_vs_zero-shot"] == {"diff": 1.0, "ci95": [1.0, 1.0]}
    assert "adherence_vs_zero-shot" not in table["zero-shot"] and table["rag"]["n"] == 4
    text = render(
        {"command": "x", "datasets": {"d": {"users": 1, "split": "test", "methods": table}}}
    )
    assert "| fints-exact | 1.000 | 1.000 | 1.000 | +1.000 [+1.000, +1.000]" in text
