"""The commits benchmark's wiring, without a model: authors, dev candidates, the paired
comparisons, the report section, and a commits-only run merging into earlier results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evals.calibrated import shipped
from evals.commits_bench import PAIRS, candidates, pick_users
from evals.report import commits_lines, write_outputs
from evals.scoring import summarize
from fints_edge.config import DEFAULTS


def test_quick_authors_are_taken_round_robin_over_repositories():
    users = pick_users(6)
    repos = {u.user.split("-author-")[0] for u in users}
    assert len(users) == 6 and len(repos) == 6  # one author of each repository
    u = users[0]
    assert len(u.history) >= 27 and len(u.dev) == 8 and len(u.test) == 12
    assert all(h["timestamp"] <= u.history[-1]["timestamp"] for h in u.history)
    assert len(pick_users(None)) == 53


def test_the_dev_candidates_include_the_chats_default():
    base = shipped(30)
    assert base.layers == (20,) and base.strength == DEFAULTS.strength and base.k == DEFAULTS.k
    assert base.engine_config()["opening_scale"] == DEFAULTS.opening_scale
    assert base in candidates(30)
    assert {s.prompt_strength for s in candidates(30)} == {0.0, 1.0}


def _pred(method, user, i, rouge):
    return {"method": method, "user": user, "input": f"in {i}", "rougeL": rouge, "rouge1": rouge,
            "style": 1.0, "benchmark": "commits"}  # fmt: skip


def test_only_the_declared_pairs_are_compared():
    preds = [_pred(m, "u", i, r + 0.01 * i) for i in range(10)
             for m, r in (("rag-1", 0.2), ("fints+rag-1", 0.3), ("zero-shot", 0.1),
                          ("fints-exact", 0.1))]  # fmt: skip
    t = summarize(preds, ["rag-1", "fints+rag-1", "fints-exact", "zero-shot"], ["rougeL"], 200,
                  0, primary=("rougeL",), pairs=PAIRS)  # fmt: skip
    assert set(k for k in t["fints+rag-1"] if "_vs_" in k) == {"rougeL_vs_rag-1"}
    assert abs(t["fints+rag-1"]["rougeL_vs_rag-1"]["diff"] - 0.1) < 1e-9
    assert set(k for k in t["fints-exact"] if "_vs_" in k) == {"rougeL_vs_zero-shot"}
    assert not [k for k in t["rag-1"] if "_vs_" in k]


def _bench():
    methods = {
        "rag-1": {"n": 2, "rougeL": 0.2},
        "fints+rag-1": {
            "n": 2,
            "rougeL": 0.25,
            "rougeL_vs_rag-1": {"diff": 0.05, "ci95": [-0.01, 0.1]},
        },
    }
    return {"users": 1, "items": {"history": 30, "dev": 8, "test": 12},
            "fluency_rule": {"calibrated_on": 24, "max_repetition": 0.1, "max_perplexity": 9.0,
                             "min_topic": 0.4},
            "dev": {"tried": [{"method": "fints+rag-1", "label": "L", "rougeL_fluent": 0.2,
                               "fluent": 0.9}],
                    "chosen_label": {"steer": "S", "rag": "R"}, "shipped_label": "D"},
            "setting": {"steer": "S", "rag": "R"}, "methods": methods,
            "examples": [{"user": "u", "gold": "net/http: fix | it", "zero-shot": "x",
                          "rag-1": "y", "fints+rag-1": "z", "fints-exact": None}]}  # fmt: skip


def test_the_report_section_shows_the_paired_comparison_and_examples():
    text = "\n".join(commits_lines(_bench()))
    assert "| fints+rag-1 | 2 |" in text and "rag-1 | +0.05 [-0.01, +0.10]" in text
    assert "net/http: fix / it" in text  # a table cell never breaks the table
    assert "steering alone **S**" in text and "on top of RAG **R**" in text


def test_a_commits_only_run_keeps_the_synthetic_results(tmp_path, monkeypatch):
    old = {"sweep": {"chosen_label": "x"}, "fluency_rule": {}, "benchmarks": {"personas": {}},
           "command": "python -m evals", "seconds": 1.0}  # fmt: skip
    results = {"format": "fints-edge-eval", "version": 2, "models": {"m.gguf": old}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    import evals.report as report

    pred_file = report.predictions_file(tmp_path, "m.gguf")
    pred_file.parent.mkdir()
    pred_file.write_text(json.dumps({"benchmark": "personas", "x": 1}) + "\n")
    calls = []
    monkeypatch.setattr(report, "render_all", lambda _out, r=None: calls.append(r))
    new = {"benchmarks": {"commits": _bench()}, "command": "python -m evals --skip personas",
           "seconds": 2.0, "threads": 2}  # fmt: skip
    write_outputs(tmp_path, "m.gguf", new, [{"benchmark": "commits", "y": 2}])
    entry = calls[0]["models"]["m.gguf"]
    assert set(entry["benchmarks"]) == {"personas", "commits"} and entry["sweep"]
    assert entry["runs"]["commits"]["command"].endswith("--skip personas")
    # the run is recorded with the machine it ran on; the synthetic run's (none here) stays
    machine = entry["runs"]["commits"]["machine"]
    assert machine["logical_cpus"] >= 1 and machine["threads"] == {"llama.cpp": 2}
    assert "machine" not in entry
    kept = [json.loads(x) for x in pred_file.read_text().splitlines()]
    assert [p["benchmark"] for p in kept] == ["personas", "commits"]


def test_a_results_file_with_only_the_real_data_benchmark_renders():
    from evals.report import render

    entry = {"model": {"sha256": "ab", "n_layer": 30}, "command": "python -m evals --skip x",
             "seconds": 60.0, "cache": {"reused": 0, "answers": 10},
             "benchmarks": {"commits": _bench()}}  # fmt: skip
    text = render({"models": {"m.gguf": entry}}, {})
    assert "## m.gguf" in text and "### commits: real commit subjects" in text
    assert "Setting chosen on dev" not in text  # no synthetic sweep ran
    assert "; on " not in text  # no machine recorded: none named
    entry["machine"] = {"cpu": "Example CPU 9000", "logical_cpus": 2, "llama_build_key": "k-1"}
    text = render({"models": {"m.gguf": entry}}, {})
    assert (
        "through the run cache; on Example CPU 9000, 2 logical CPUs, llama.cpp build `k-1`)" in text
    )
    entry["llama_build"] = "llama.cpp build (chosen from this CPU): GGML_AVX2; key k-1"
    text = render({"models": {"m.gguf": entry}}, {})
    assert "GGML_AVX2; key k-1; on Example CPU 9000, 2 logical CPUs)" in text  # the key once


def test_steering_alone_is_also_measured_across_the_steerability_strengths():
    from evals.commits_bench import STEERABILITY_STRENGTHS, steerability_settings

    extra = steerability_settings(30)
    assert {(s.strength, s.prompt_strength) for s in extra} == {
        (x, 1.0) for x in STEERABILITY_STRENGTHS
    }
    assert not set(extra) & set(candidates(30))  # not candidates: the dev choice is unchanged
    assert min(STEERABILITY_STRENGTHS) < min(s.strength for s in candidates(30))
    assert max(STEERABILITY_STRENGTHS) >= 1


def test_calibration_starts_from_the_models_product_default(monkeypatch):
    from types import SimpleNamespace

    from evals.calibrated import product_default
    from fints_edge import model_defaults
    from fints_edge.model_defaults import ModelRow
    from tests._factories import identity

    ev = SimpleNamespace(n_layer=4, identity=identity(4, 8))
    monkeypatch.setattr(model_defaults, "TABLE", ())
    assert product_default(ev) == shipped(4)
    row = ModelRow("t", "llama", 4, 8, {"strength": 0.125, "prompt_strength": 0.0})
    monkeypatch.setattr(model_defaults, "TABLE", (row,))
    got = product_default(ev)
    assert (got.strength, got.prompt_strength, got.opening_strength) == (0.125, 0.0, 0.125)
    assert got.layers == shipped(4).layers and got.k == shipped(4).k


def test_the_steerability_curve_and_plot_come_from_the_dev_split(tmp_path):
    from evals.report import plot_steerability, steerability, steerability_lines

    def tried(family, strength, prompt, rouge):
        return {"family": family, "method": "m", "label": "L", "rougeL_fluent": rouge,
                "fluent": 1 - strength / 2, "n": 48,
                "setting": {"strength": strength, "prompt_strength": prompt}}  # fmt: skip

    bench = _bench()
    bench["dev"]["tried"] = [
        tried("steer", 0.25, 1.0, 0.1),
        tried("steer", 0.0625, 1.0, 0.2),
        tried("steer", 0.0625, 0.0, 0.9),
        tried("rag", 0.0625, 1.0, 0.9),
    ]
    bench["dev"]["baselines"] = {"zero-shot": {"rougeL_fluent": 0.05, "fluent": 0.95, "n": 48}}
    entry = {"model": {"sha256": "ab", "n_layer": 30}, "command": "c", "seconds": 60.0,
             "cache": {"reused": 0, "answers": 10}, "benchmarks": {"commits": bench}}  # fmt: skip
    curve = steerability(entry)
    assert [(x, t["rougeL_fluent"]) for x, t in curve] == [(0.0, 0.05), (0.0625, 0.2), (0.25, 0.1)]
    results = {"models": {"m.gguf": entry, "no-commits.gguf": {"benchmarks": {}}}}
    plot_steerability(results, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    lines = "\n".join(steerability_lines(results))
    assert "| m.gguf | 48 | 0.050 / 0.95 | 0.200 / 0.97 | 0.100 / 0.88 |" in lines
    assert "no-commits" not in lines
    plot_steerability({"models": {}}, tmp_path / "s.png")  # nothing to show: no stale picture
    assert not (tmp_path / "s.png").exists()


def test_each_widening_technique_keeps_the_strength_it_is_compared_at():
    """keep-norm: the plain setting with norms kept; spread: the same total strength divided
    over the candidate layers. Neither is a candidate (the dev choice is unchanged)."""
    from evals.commits_bench import WIDENING_STRENGTHS, widening_settings
    from fints_edge.layers import candidate_layers

    assert {t for t, *_ in widening_settings(30)} == {"keep-norm", "spread"}  # no gate given
    got = widening_settings(30, gate=(0.6, 0.9))
    assert {(t, x) for t, x, _ in got} == {
        (t, x) for t in ("keep-norm", "spread", "gate") for x in WIDENING_STRENGTHS
    }
    for technique, x, s in got:
        if technique == "keep-norm":
            assert s.preserve_norm and s.strength == x and s.layers == shipped(30).layers
        elif technique == "gate":
            assert (s.sim_floor, s.sim_full) == (0.6, 0.9) and not s.preserve_norm
            assert s.strength == x and s.layers == shipped(30).layers
        else:
            assert s.layers == tuple(candidate_layers(30)) == (18, 20, 22)
            assert not s.preserve_norm and abs(s.strength * 3 - x) < 1e-12
            assert abs(s.opening_strength * 3 - x * DEFAULTS.opening_scale) < 1e-12
    assert not {s for *_, s in got} & set(candidates(30))


def test_the_novelty_gate_comes_from_the_histories_nearest_neighbours():
    """Nearest-other-item similarities: user a 1, 1, 0 (two copies and an orthogonal item),
    user b 0.6, 0.6; pooled, the 25th and 75th percentiles are 0.6 and 1."""
    from evals.commits_bench import history_gate

    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [0.6, 0.8]])
    assert history_gate([a, b, a[:1]]) == (0.6, 1.0)  # a one-item user has no neighbour
    with pytest.raises(ValueError, match="two or more history items"):
        history_gate([a[:1]])


def test_the_widening_table_sets_each_technique_beside_the_plain_curve():
    from evals.report import _curves, widening_lines

    def tried(family, x, rouge, **note):
        return {"family": family, "method": "m", "label": "L", "rougeL_fluent": rouge,
                "fluent": 0.5, "n": 48, **note,
                "setting": {"strength": x, "prompt_strength": 1.0}}  # fmt: skip

    bench = _bench()
    bench["dev"]["tried"] = [
        tried("steerability", 0.5, 0.1),
        tried("widening", 0.5, 0.3, technique="keep-norm", strength=0.5),
        tried("widening", 0.5, 0.2, technique="spread", strength=0.5),
        {
            **tried("widening", 0.5, 0.15, technique="gate", strength=0.5),
            "setting": {"strength": 0.5, "prompt_strength": 1.0, "sim_floor": 0.6, "sim_full": 0.9},
        },
    ]
    bench["dev"]["baselines"] = {"zero-shot": {"rougeL_fluent": 0.05, "fluent": 0.95, "n": 48}}
    results = {"models": {"m.gguf": {"benchmarks": {"commits": bench}}}}
    lines = widening_lines(results, _curves(results))
    rows = [x for x in lines if x.startswith("| m.gguf")]
    assert rows == ["| m.gguf | plain | 0.100 / 0.50 |", "| m.gguf | keep-norm | 0.300 / 0.50 |",
                    "| m.gguf | spread | 0.200 / 0.50 |",
                    "| m.gguf | gate | 0.150 / 0.50 |"]  # fmt: skip
    assert "0.6-0.9 for every model" in lines[0]
    assert widening_lines({"models": {}}, {}) == []
