"""Per-user calibration (fints_edge.calibrate) on the tiny model: what it holds out, what it may
retrieve, what it picks, how it is stored and used."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fints_edge.calibrate import (
    Calibrator,
    Tried,
    beats,
    fluent,
    held_out,
    older_than,
    resolution,
    stored_changes,
    time_order,
)
from fints_edge.config import EngineConfig
from fints_edge.errors import FintsEdgeError
from fints_edge.profile import Profile, read_header

TOPICS = ["bridge", "rain", "library", "football", "election", "vaccine", "concert", "market",
          "harbour", "museum", "garden", "airport"]  # fmt: skip
STRONG = {"strength": 40.0, "max_tokens": 12, "n_ctx": 512, "threads": 1}


@pytest.fixture(scope="module")
def profile_path(tiny, onnx_encoder_dir, tmp_path_factory):
    """12 items a day apart, written newest LAST in time but shuffled in the file."""
    from fints_edge.learn import main as learn_main

    d = tmp_path_factory.mktemp("calibrate")
    order = [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6]  # file position -> day
    rows = [
        {"input": f"Write a headline about the {TOPICS[i]}.",
         "output": f"{TOPICS[i]} news, all lowercase!",
         "rejected": f"The {TOPICS[i].title()} Story",
         "timestamp": 1_700_000_000 + 86_400 * i}
        for i in order
    ]  # fmt: skip
    h = d / "h.jsonl"
    h.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "me.npz"
    rc = learn_main(
        ["--model", str(tiny.gguf_path), "--history", str(h), "--out", str(out), "--layers", "1",
         "2", "--encoder", str(onnx_encoder_dir), "--n-ctx", "256", "--threads", "1", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    return out


def engine_for(tiny, path, onnx_encoder_dir, onnx_aggregator_path, **changes):
    from fints_edge.engine import Engine

    return Engine(tiny.gguf_path, path, EngineConfig(**(STRONG | changes)),
                  encoder_dir=onnx_encoder_dir, aggregator_path=onnx_aggregator_path)  # fmt: skip


def test_the_newest_items_are_held_out_and_only_older_ones_retrievable(profile_path):
    p = Profile.load(profile_path)
    days = ((p.timestamps - p.timestamps.min()) / 86_400).round().astype(int)
    assert days[time_order(p)].tolist() == list(range(12))
    items = held_out(p)
    assert sorted(days[items].tolist()) == [8, 9, 10, 11]  # a fifth of 12, at least 4
    assert days[held_out(p, 6)].tolist() == [6, 7, 8, 9, 10, 11]
    for i in items:
        assert set(days[older_than(p, int(i))].tolist()) == set(range(days[i]))
    with pytest.raises(FintsEdgeError, match="needs 2 older ones"):
        held_out(p, 11)


def test_the_guard_refuses_empty_and_looping_answers():
    assert fluent("bridge news, all lowercase!")
    assert not fluent("") and not fluent("\n\n")
    assert not fluent("the new elective: the new elective: a new elective")  # a pair x3
    assert not fluent("rain rain rain rain rain rain rain rain")


def test_a_held_out_item_and_newer_ones_are_never_retrieved_for_it(
    tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path
):
    with engine_for(tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path, rag=1) as engine:
        p = engine.profile
        rank = np.empty(p.n_items, int)
        rank[time_order(p)] = np.arange(p.n_items)
        by_input = {str(t): i for i, t in enumerate(p.inputs)}
        seen: list[tuple[int, list[int]]] = []
        plan = engine.planner.plan

        def spy(text, config, among=None):
            got = plan(text, config, among)
            seen.append((by_input[text], [r["id"] for r in got.retrieved]))
            return got

        engine.planner.plan = spy  # type: ignore[method-assign]
        Calibrator(engine).run()
    assert len(seen) >= 8, seen  # several settings x 4 held-out items
    for item, ids in seen:
        assert ids and all(rank[j] < rank[item] for j in ids), (item, ids)


def tried(scores: list[float]) -> Tried:
    return Tried("t", {}, float(np.mean(scores)), 0.0, 1.0, list(scores))


def test_a_challenger_must_beat_the_best_beyond_the_noise_of_the_held_out_items():
    """Qwen-0.5B's commit authors: on 4-8 held-out items, "no steering" scored higher than the
    default by chance for 4 of 6 authors and lost on test. A lead that one item makes is noise;
    a lead on every item is not, whatever its size."""
    default = tried([0.30, 0.20, 0.40, 0.10, 0.25, 0.35])
    one_lucky_item = tried([0.28, 0.20, 0.40, 0.10, 0.25, 0.65])  # mean +0.047: one item
    assert one_lucky_item.score > default.score and not beats(one_lucky_item, default)
    steady = tried([0.33, 0.23, 0.43, 0.13, 0.28, 0.38])  # +0.03 on every item
    assert beats(steady, default) and not beats(default, steady)
    assert not beats(default, default)  # a tie keeps the incumbent


def test_the_resolution_is_the_median_standard_error_of_differences_from_the_default():
    default = [0.2, 0.4, 0.6, 0.8]
    shifted = [0.3, 0.5, 0.7, 0.9]  # +0.1 on every item: no noise, SE 0
    two_items = [0.2, 0.6, 0.6, 1.0]  # differences 0, .2, 0, .2: SD 0.11547, SE 0.05774
    one_item = [0.0, 0.4, 0.6, 0.8]  # differences -.2, 0, 0, 0: SD 0.1, SE 0.05
    assert resolution([default, shifted, two_items, one_item]) == pytest.approx(0.05)
    assert resolution([default, two_items]) == pytest.approx(0.2 / np.sqrt(3) / 2)
    assert np.isnan(resolution([default])) and np.isnan(resolution([[0.1], [0.3]]))
    # a setting that changed no item's score says nothing about the noise
    assert resolution([default, default, one_item]) == pytest.approx(0.05)
    assert np.isnan(resolution([default, default]))


@settings(deadline=None)  # pure numpy; a loaded CI machine once took > 200 ms for one example
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=8))
def test_no_two_settings_beat_each_other(pairs):
    a, b = tried([x for x, _ in pairs]), tried([y for _, y in pairs])
    assert not (beats(a, b) and beats(b, a))


def not_empty(answer: str) -> bool:
    return bool(answer.strip())


def test_a_user_whose_outputs_steering_writes_keeps_steering_and_a_zero_shot_user_does_not(
    tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path, tmp_path
):
    """The held-out outputs are replaced by what the engine writes steered (user 1) or
    unsteered (user 2), each answered with retrieval limited as calibration limits it. The
    random tiny model loops by construction ("satiety satiety ..."), so the loop guard is
    replaced here; the slow test below keeps it on the default model."""
    with engine_for(tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path) as engine:
        p = engine.profile
        items = held_out(p)
        steered, unsteered = {}, {}
        for i in items:
            text = str(p.inputs[i])
            plan = engine.planner.plan(text, engine.config, older_than(p, int(i)))
            steered[int(i)] = engine.reply(text, plan=plan).text
            unsteered[int(i)] = engine.reply(text, steer=False).text
    assert steered != unsteered
    picked = {}
    for name, answers in (("steered", steered), ("unsteered", unsteered)):
        outputs = p.outputs.copy()
        for i, a in answers.items():
            outputs[i] = a
        path = replace(p, outputs=outputs).save(tmp_path / f"{name}.npz")
        with engine_for(tiny, path, onnx_encoder_dir, onnx_aggregator_path) as engine:
            picked[name] = Calibrator(engine, guard=not_empty).run()
    assert picked["steered"].changes.get("strength", 40.0) > 0, picked["steered"].summary()
    assert picked["steered"].score > picked["steered"].unsteered_score
    assert picked["unsteered"].changes.get("strength") == 0.0, picked["unsteered"].summary()
    assert picked["unsteered"].score > picked["unsteered"].default_score
    # the summary says how finely these items tell settings apart
    for got in picked.values():
        noise = got.resolution
        assert noise > 0 and f"a difference under {noise:.2f} is within one standard" in (
            got.summary()
        )
        assert got.to_json()["resolution"] == noise
    # once "no steering" leads, steering on top of the retrieved example is still measured
    tried = [t.changes for t in picked["unsteered"].tried]
    assert any({"strength": 40.0, "rag": 1}.items() <= t.items() for t in tried), tried


def test_by_default_every_setting_is_measured_however_slow_the_machine(
    tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path, monkeypatch
):
    """The default has no time budget: on a machine where every setting seems to take 1000 s,
    calibration still measures the same settings as on a fast one (with 60 s, Qwen-1.5B's
    authors got 2-4 settings, SmolLM2's 9-11), within :func:`most_settings`, and its progress
    counts them. A budget the user gives stops it after the first setting past the budget."""
    import fints_edge.calibrate as calibrate

    def run(clock_step: float, **kw):
        lines: list[str] = []
        with engine_for(tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path) as engine:
            clock = iter(range(0, 10**9, int(clock_step) or 1))
            if clock_step:
                monkeypatch.setattr(calibrate.time, "perf_counter", lambda: float(next(clock)))
            got = Calibrator(engine, guard=not_empty, progress=lines.append, **kw).run()
            monkeypatch.undo()
        return got, lines

    fast, fast_lines = run(0)
    slow, slow_lines = run(1000)
    assert [t.changes for t in slow.tried] == [t.changes for t in fast.tried]
    assert not slow.budget_hit and slow.changes == fast.changes
    assert 6 <= len(slow.tried) <= calibrate.most_settings(2, starts_on_one=False), slow.summary()
    assert len(slow_lines) == len(slow.tried)
    assert slow_lines[-1].startswith(f"setting {len(slow.tried)} of at most ")
    capped, _ = run(1000, budget_s=60.0)
    assert capped.budget_hit and len(capped.tried) == 2, capped.summary()  # default, unsteered


def test_on_candidate_layers_every_setting_steers_one_of_them(
    tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path, tmp_path
):
    """A profile storing the candidate layers (2 and 3 of the tiny model's 4): the default
    candidate is the one nearest 2/3 of the depth alone, the layer stage tries each, and
    whatever wins names its layer, so the chat never steers both at full strength (the
    engine's "all stored layers"). Layers chosen otherwise (1 and 2) start from all of them."""
    from fints_edge.layers import candidate_layers, preferred_layer

    p = Profile.load(profile_path)
    path = replace(p, layers=np.array([2, 3], dtype=p.layers.dtype)).save(tmp_path / "c.npz")
    with engine_for(tiny, path, onnx_encoder_dir, onnx_aggregator_path) as engine:
        assert engine.config.layers is None and candidate_layers(4) == [2, 3]
        got = Calibrator(engine, guard=not_empty).run()
    start = (preferred_layer([2, 3], 4),)
    assert start == (3,)
    assert got.tried[0].changes == {"layers": start}  # the default, at one layer
    assert all(len(t.changes["layers"]) == 1 for t in got.tried), got.tried
    assert {t.changes["layers"] for t in got.tried} <= {(2,), (3,)}
    assert len(got.changes["layers"]) == 1, got.summary()
    with engine_for(tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path) as engine:
        other = Calibrator(engine, budget_s=1.0, guard=not_empty)
        assert other.measure(dict(other.fixed)).changes == {}  # both layers, as the chat


def test_a_setting_named_two_ways_is_measured_once(
    tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path, tmp_path
):
    """The evaluation (and a user's --layers) starts calibration with the layer already set;
    the layer stage then names that layer again. It is the same setting: measured once (it
    cost one setting in twelve per calibration), and the progress count stays within what
    :attr:`Calibrator.most` announced. The user writes what layer 3 steered writes, so the
    steered default stays the best and the layer stage runs."""
    from fints_edge.calibrate import setting_key

    p = Profile.load(profile_path)
    path = replace(p, layers=np.array([2, 3], dtype=p.layers.dtype)).save(tmp_path / "c.npz")
    with engine_for(tiny, path, onnx_encoder_dir, onnx_aggregator_path, layers=(3,)) as engine:
        outputs = p.outputs.copy()
        for i in held_out(p):
            text = str(p.inputs[i])
            plan = engine.planner.plan(text, engine.config, older_than(p, int(i)))
            outputs[i] = engine.reply(text, plan=plan).text
    path = replace(Profile.load(path), outputs=outputs).save(tmp_path / "steered.npz")
    lines: list[str] = []
    with engine_for(tiny, path, onnx_encoder_dir, onnx_aggregator_path, layers=(3,)) as engine:
        calibrator = Calibrator(engine, guard=not_empty, progress=lines.append)
        got = calibrator.run()
        keys = [setting_key(replace(engine.config, **t.changes)) for t in got.tried]
    assert any(t.changes.get("layers") == (2,) for t in got.tried), got.summary()  # layer stage
    assert len(set(keys)) == len(keys), [t.label for t in got.tried]
    assert len(lines) == len(got.tried) <= calibrator.most, lines


def with_both_sites(p: Profile) -> Profile:
    """``p`` on the candidate layers [2, 3], storing an MLP site whose signals point away from
    the attention site's (the tiny model writes something else when steered there)."""

    def both(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.concatenate([a, -a[:, :, ::-1]], axis=1)

    return replace(p, layers=np.array([2, 3], dtype=p.layers.dtype), sites=("attn", "mlp"),
                   signals=both(p.signals), opening=both(p.opening))  # fmt: skip


def test_on_a_profile_storing_both_sites_calibration_starts_on_the_default_and_can_choose_mlp(
    tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path, tmp_path
):
    """A profile built for calibration stores both sites and starts on the default site alone
    (attention). A user who writes what steering the MLP site alone writes gets that site:
    without a sites stage, calibration could not reach it (Qwen-0.5B's conditional personas:
    0.06 against 0.38 for the dev sweep's setting on both sites)."""
    import fints_edge.calibrate as calibrate

    path = with_both_sites(Profile.load(profile_path)).save(tmp_path / "both.npz")
    p = Profile.load(path)
    with engine_for(tiny, path, onnx_encoder_dir, onnx_aggregator_path, layers=(3,),
                    sites=("mlp",)) as engine:  # fmt: skip
        outputs = p.outputs.copy()
        for i in held_out(p):
            text = str(p.inputs[i])
            plan = engine.planner.plan(text, engine.config, older_than(p, int(i)))
            outputs[i] = engine.reply(text, plan=plan).text
    path = replace(p, outputs=outputs).save(tmp_path / "mlp-writer.npz")
    assert calibrate.provisional(Profile.load(path))["changes"] == {
        "layers": [3], "sites": ["attn"]}  # fmt: skip
    with engine_for(tiny, path, onnx_encoder_dir, onnx_aggregator_path) as engine:
        calibrator = Calibrator(engine, guard=not_empty)
        got = calibrator.run()
    assert calibrator.most == calibrate.most_settings(2, n_sites=2) == 13  # 2 layers here
    assert got.tried[0].changes == {"layers": (3,), "sites": ("attn",)}  # the default
    assert {("mlp",), ("attn", "mlp")} <= {t.changes.get("sites") for t in got.tried}
    assert got.changes["sites"] == ("mlp",), got.summary()
    assert "sites mlp" in got.label and got.to_json()["grid"] == calibrate.GRID
    assert stored_changes(got.to_json(), "me.npz")["sites"] == ("mlp",)


def test_learn_history_calibrate_builds_candidate_layers_and_never_leaves_all_of_them_steered(
    tiny, onnx_encoder_dir, onnx_aggregator_path, tmp_path, monkeypatch, capsys
):
    """--history --calibrate stores the candidate layers; until calibration has run (here it
    is interrupted) the profile says to steer the preferred one alone, and the chat does."""
    from fints_edge.calibrate import Calibrator as Real
    from fints_edge.chat import calibrated_base
    from fints_edge.layers import candidate_layers
    from fints_edge.learn import main as learn_main

    rows = [{"input": f"Write a headline about the {t}.", "output": f"{t} news, all lowercase!",
             "rejected": f"The {t.title()} Story", "timestamp": 1_700_000_000 + 86_400 * i}
            for i, t in enumerate(TOPICS)]  # fmt: skip
    h = tmp_path / "h.jsonl"
    h.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--model", str(tiny.gguf_path), "--history", str(h), "--encoder",
            str(onnx_encoder_dir), "--aggregator", str(onnx_aggregator_path), "--n-ctx", "256",
            "--threads", "1", "--quiet", "--calibrate", "--budget", "5"]  # fmt: skip

    def interrupted(_self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Real, "run", interrupted)
    assert learn_main([*args, "--out", str(tmp_path / "cut.npz")]) == 130
    cut = Profile.load(tmp_path / "cut.npz")
    assert cut.layers.tolist() == candidate_layers(4) == [2, 3]
    assert cut.sites == ("attn", "mlp")  # both, for calibration to choose among
    assert cut.calibration is not None and cut.calibration["provisional"]
    base, label = calibrated_base(str(tmp_path / "cut.npz"))
    cut_path = tmp_path / "cut.npz"
    assert base.layers == (3,) and base.sites == ("attn",)
    assert label.startswith(f"{cut_path}'s stored setting: layer 3 of the stored [2, 3], "
                            "sites attn of the stored attn+mlp")  # fmt: skip
    assert label.endswith(f"--calibrate {tmp_path / 'cut.npz'} chooses yours")
    monkeypatch.undo()
    capsys.readouterr()
    assert learn_main([*args, "--out", str(tmp_path / "me.npz")]) == 0
    assert "calibrated on 4 held-out items" in capsys.readouterr().out
    done = Profile.load(tmp_path / "me.npz")
    assert done.layers.tolist() == [2, 3] and not done.calibration.get("provisional")
    assert len(done.calibration["changes"]["layers"]) == 1
    assert calibrated_base(str(tmp_path / "me.npz"))[0].layers in ((2,), (3,))


def test_learn_calibrate_stores_it_and_the_chat_uses_it(
    tiny, profile_path, onnx_encoder_dir, onnx_aggregator_path, tmp_path, capsys, monkeypatch
):
    import shutil

    from fints_edge.chat import calibrated_base
    from fints_edge.learn import main as learn_main

    path = tmp_path / "me.npz"
    shutil.copy(profile_path, path)
    assert read_header(path).calibration is None
    assert calibrated_base(str(path))[1] == ""
    rc = learn_main(["--model", str(tiny.gguf_path), "--calibrate", str(path), "--encoder",
                     str(onnx_encoder_dir), "--aggregator", str(onnx_aggregator_path),
                     "--threads", "1", "--budget", "20"])  # fmt: skip
    assert rc == 0
    out, err = capsys.readouterr()
    assert "calibrated on 4 held-out items" in out and "answering 4 held-out items" in err
    stored = read_header(path).calibration
    assert stored is not None and stored["version"] == 1 and stored["held_out"] == 4
    changes = stored_changes(stored, str(path))
    base, label = calibrated_base(str(path))
    assert label == f"{path}'s calibrated setting: {stored['label']}"
    assert all(getattr(base, k) == v for k, v in changes.items())
    assert Profile.load(path).n_items == 12  # the rest of the profile is untouched
    from fints_edge.chat import main as chat_main

    common = ["--model", str(tiny.gguf_path), "--profile", str(path), "--encoder",
              str(onnx_encoder_dir), "--aggregator", str(onnx_aggregator_path), "--threads", "1",
              "--n-ctx", "512", "--max-tokens", "4", "--prompt", "Write a headline about the rain.",
              "--json"]  # fmt: skip
    assert chat_main(common) == 0
    out, err = capsys.readouterr()
    assert f"using {path}'s calibrated setting: {stored['label']}" in err
    assert json.loads(out)["setting"]["strength"] == base.strength
    assert chat_main([*common, "--strength", "0.5"]) == 0  # a flag overrides it
    assert json.loads(capsys.readouterr()[0])["setting"]["strength"] == 0.5
    monkeypatch.setattr("sys.stdin", io.StringIO("/why a headline about the rain\n"))
    assert chat_main(common[:-3]) == 0  # interactive: /why names the setting in use
    assert f"setting: {stored['label']}\n" in capsys.readouterr()[0]


def test_a_bad_stored_calibration_is_a_clear_error():
    with pytest.raises(FintsEdgeError, match="calibration version 9"):
        stored_changes({"version": 9, "changes": {}}, "me.npz")
    with pytest.raises(FintsEdgeError, match="unknown knobs"):
        stored_changes({"version": 1, "changes": {"mode": "cvec"}}, "me.npz")
    assert stored_changes(None, "me.npz") == {}
    assert stored_changes({"version": 1, "changes": {"layers": [2]}}, "x")["layers"] == (2,)


def test_calibrate_flags_are_checked_before_loading(capsys):
    from fints_edge.learn import main as learn_main

    for argv, needle in (
        (["--calibrate"], "--calibrate alone takes the profile"),
        (["--calibrate", "me.npz", "--budget", "0"], "--budget must be a positive"),
        (["--calibrate", "me.npz", "--held-out", "0"], "--held-out must be at least 1"),
        (["--calibrate", "me.npz", "--forget", "1"], "give exactly one of"),
    ):
        assert learn_main(argv) == 1
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


def test_a_stored_calibration_round_trips_and_older_files_load_without_one(profile_path, tmp_path):
    p = Profile.load(profile_path)
    assert p.calibration is None
    cal = {"version": 1, "changes": {"strength": 0.125}, "label": "x"}
    saved = replace(p, calibration=cal).save(tmp_path / "c.npz")
    assert Profile.load(saved).calibration == cal and read_header(saved).calibration == cal
    arrays = dict(np.load(saved, allow_pickle=False))
    arrays["format_version"] = np.array(2, dtype=np.int32)  # a version-2 reader's file
    assert Profile.from_arrays(arrays).calibration is None  # ignored before version 3
    arrays["format_version"] = np.array(3, dtype=np.int32)
    arrays["calibration"] = np.array("{not json")
    with pytest.raises(FintsEdgeError, match="calibration.*is not JSON"):
        Profile.from_arrays(arrays, source="me.npz")
    arrays["calibration"] = np.array("[1, 2]")
    with pytest.raises(FintsEdgeError, match="calibration.*JSON object"):
        Profile.from_arrays(arrays, source="me.npz")


@pytest.mark.slow
def test_on_the_default_model_calibration_keeps_its_best_and_a_zero_shot_user_is_unsteered(
    onnx_encoder_dir, onnx_aggregator_path, tmp_path
):
    """The demo user (export/data/demo_history.jsonl: the model's own headline, lowercased)
    learnt on the device, calibrated with the real loop guard; then the same profile with its
    held-out outputs replaced by the model's own unsteered answers. Measured: the demo user is
    calibrated to NO steering (score 0.82 unsteered vs 0.43 at the default): ROUGE-L is
    case-blind and its outputs are the unsteered words, so only the case habit speaks for
    steering, and steering costs words."""
    from export.demo import HISTORY
    from fints_edge._paths import default_gguf
    from fints_edge.engine import Engine
    from fints_edge.learn import main as learn_main

    path = tmp_path / "demo.npz"
    rc = learn_main(["--history", str(HISTORY), "--out", str(path), "--encoder",
                     str(onnx_encoder_dir), "--threads", "2", "--quiet"])  # fmt: skip
    assert rc == 0

    def calibrate(p):
        with Engine(default_gguf(), p, EngineConfig(threads=2), encoder_dir=onnx_encoder_dir,
                    aggregator_path=onnx_aggregator_path) as engine:  # fmt: skip
            return Calibrator(engine).run(), engine.profile

    lowercase, profile = calibrate(path)
    chosen = next(t for t in lowercase.tried if t.changes == lowercase.changes)
    # its best under the rule: at least the default, and no setting tried beats it
    assert lowercase.score == chosen.score >= lowercase.default_score
    assert not any(beats(t, chosen) for t in lowercase.tried), lowercase.summary()
    with Engine(default_gguf(), path, EngineConfig(threads=2, max_tokens=32),
                encoder_dir=onnx_encoder_dir, aggregator_path=onnx_aggregator_path) as engine:  # fmt: skip
        outputs = profile.outputs.copy()
        for i in held_out(profile):
            outputs[i] = engine.reply(str(profile.inputs[i]), steer=False).text
    own = replace(profile, outputs=outputs).save(tmp_path / "own.npz")
    zero_shot, _ = calibrate(own)
    assert zero_shot.changes.get("strength") == 0.0, zero_shot.summary()
