"""An interrupted evaluation resumes from the answers it already has."""

from __future__ import annotations

from evals.cache import RunCache, run_key


def test_answers_survive_a_restart_and_a_torn_last_line(tmp_path):
    key = run_key(model="abc", seed=1)
    assert key == run_key(seed=1, model="abc") and key != run_key(model="abc", seed=2)
    cache = RunCache(key, root=tmp_path)
    k1, k2 = (
        RunCache.key("b", "dev", "rag-1", "", "u1", "x"),
        RunCache.key("b", "dev", "m", "", "u1", "y"),
    )
    cache.put(k1, {"prediction": "one"})
    cache.put(k2, {"prediction": "two", "error": "llama.cpp failed"})
    with (tmp_path / key / "answers.jsonl").open("a") as f:
        f.write('{"key": "torn')  # a crash in the middle of a write
    again = RunCache(key, root=tmp_path)
    assert len(again) == 2 and again.get(k1) == {"prediction": "one"}
    assert again.get(k2)["error"] == "llama.cpp failed" and again.reused == 2
    assert again.get("missing") is None
