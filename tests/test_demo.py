"""The demo user's style on the real default model (slow: builds the demo profile once)."""

from __future__ import annotations

import numpy as np
import pytest

from export.demo import TASK, ensure_profile, lowercase_share, snippets
from fints_edge._paths import default_gguf


def test_lowercase_share_measure():
    assert lowercase_share("all lower here") == 1.0
    assert lowercase_share("ABC def") == 0.5
    assert lowercase_share("123 !!") == 0.0


def test_splits_are_disjoint_and_cover_every_topic():
    hist, test = snippets("history"), snippets("test")
    assert len(hist) == 36 and len(test) == 12 and not set(hist) & set(test)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "cvec"])
def test_steering_moves_answers_toward_the_demo_users_style(mode):
    from fints_edge.engine import Engine, EngineConfig

    profile = ensure_profile()
    config = EngineConfig(mode=mode, max_tokens=24, threads=2)  # the product defaults
    with Engine(default_gguf(), profile, config) as engine:
        base, steered = [], []
        for snippet in snippets("test"):
            plan = engine.plan(TASK + snippet)
            base.append(lowercase_share(engine.reply(TASK + snippet, steer=False, plan=plan).text))
            steered.append(lowercase_share(engine.reply(TASK + snippet, plan=plan).text))
    print(
        f"{mode}: lowercase share unsteered {np.mean(base):.2f} -> steered {np.mean(steered):.2f}"
    )
    assert np.mean(steered) > np.mean(base) + 0.08
    assert sum(s > 0.99 for s in steered) >= sum(s > 0.99 for s in base) + 5
