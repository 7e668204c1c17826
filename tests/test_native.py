"""The C eval filter (fints_edge.llama.native): built from its source, same logits as the Python filter,
and llama.cpp's per-node questions no longer reach Python."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from export.tiny import EXACT_KV
from fints_edge.llama import native
from fints_edge.llama.inject import applied, open_steerable, steered
from fints_edge.plan import Steering
from tests._parity import llama_run, random_vectors

pytestmark = pytest.mark.skipif(
    not shutil.which("cc") and not shutil.which("gcc"), reason="no C compiler"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The filter compiled into a private cache folder; the module's cache is restored after."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FINTS_EDGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.delenv(native.DISABLE_ENV, raising=False)
    native.load.cache_clear()
    path = native.build()
    yield path
    mp.undo()
    native.load.cache_clear()


@pytest.fixture(scope="module")
def pair(tiny, built):  # noqa: ARG001 (the filter must be built first)
    """The tiny model in exact mode twice: behind the C filter, and with the Python filter."""
    opened = {
        name: open_steerable(
            tiny.gguf_path,
            "exact",
            native_filter=flag,
            n_ctx=128,
            n_threads=1,
            logits_all=True,
            **EXACT_KV,
        )
        for name, flag in (("c", True), ("python", False))
    }
    assert opened["c"][1].filtered and not opened["python"][1].filtered
    yield opened
    for llm, _ in opened.values():
        llm.close()


def test_build_is_cached_and_keyed_by_source(built):
    assert built.is_file() and built == native.library_path()
    mtime = built.stat().st_mtime_ns
    assert native.build() == built and built.stat().st_mtime_ns == mtime  # no second compile
    assert native.load() is not None
    assert native.status().startswith("exact-mode C filter: built")


@pytest.mark.usefixtures("built")
def test_no_compiler_is_a_clear_error_or_a_note(tmp_path, monkeypatch, capsys):
    """Without a compiler setup goes on (--optional prints a note); plain build names the fix."""
    from fints_edge.errors import FintsEdgeError

    monkeypatch.setenv("FINTS_EDGE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(FintsEdgeError, match="no C compiler .*install a C compiler"):
        native.build()
    assert native.main(["build", "--optional"]) == 0
    assert capsys.readouterr().out.startswith("note: no C compiler")
    assert native.main(["build"]) == 1
    assert capsys.readouterr().err.startswith("error: no C compiler")
    assert not list(tmp_path.rglob("*.so"))


def test_a_missing_python_compiler_falls_back_to_cc(monkeypatch):
    """Python's recorded compiler may not exist here (e.g. a cross-built Python on Termux)."""
    import sysconfig

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(sysconfig, "get_config_var", lambda _name: "no-such-cc -pthread")
    got = native._compiler()
    assert got[0] in ("cc", "gcc", "clang") and shutil.which(got[0])


def test_disable_env_turns_the_filter_off(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    native.load.cache_clear()
    try:
        assert native.load() is None
        assert "off" in native.status()
    finally:
        monkeypatch.delenv(native.DISABLE_ENV)
        native.load.cache_clear()


def test_too_many_names_fall_back_to_asking_python():
    f = native.Filter()
    f.set_names([b"ffn_inp-1", b"l_out-3"])
    assert f.n_names == 2 and f.names[1].value == b"l_out-3"
    f.set_names([f"l_out-{i}".encode() for i in range(native.MAX_NAMES + 1)])
    assert f.n_names == -1
    f.set_names([b"x" * native.NAME_LEN])  # would not fit with its terminating zero
    assert f.n_names == -1


def _run(injector, llm, v, sites, layers, prompt, prompt_scale=None, keep_norm=False):
    steering = Steering(v, sites, layers, prompt_scale=prompt_scale or 1.0, preserve_norm=keep_norm)
    injector.rewind()
    with applied(injector, steering, prompt):
        return llama_run(llm, prompt)


@pytest.mark.parametrize(
    ("sites", "layers", "prompt_scale", "keep_norm"),
    [
        (("attn",), (2,), None, False),
        (("attn", "mlp"), (1, 3), None, False),
        (("attn", "mlp"), (1, 3), 0.25, False),  # the position cursor is asked for too
        (("attn",), (1,), None, True),
    ],
)
def test_c_filter_gives_the_python_filters_logits(
    tiny, pair, sites, layers, prompt_scale, keep_norm
):
    v = random_vectors(tiny, sites, layers, seed=5)
    results = {}
    for name, (llm, injector) in pair.items():
        prompt = llm.tokenize(b"The quick brown fox jumps over the lazy dog.", add_bos=False)
        _, base = llama_run(llm, prompt)
        results[name] = _run(injector, llm, v, sites, layers, prompt, prompt_scale, keep_norm)
        assert np.abs(results[name][1] - base).max() > 0.1, "steering must move the logits"
    assert results["c"][0] == results["python"][0]
    np.testing.assert_array_equal(results["c"][1], results["python"][1])


def test_taps_read_the_same_rows_through_the_c_filter(tiny, pair):
    got = {}
    for name, (llm, injector) in pair.items():
        prompt = llm.tokenize(b"Hello there, general.", add_bos=False)
        llm.reset()
        with injector.tapping(["ffn_inp-1", "l_out-2"]) as taps:
            llm.eval(prompt)
        got[name] = taps
    for key in ("ffn_inp-1", "l_out-2"):
        assert len(got["c"][key]) == 1 and got["c"][key][0].shape[1] == tiny.n_embd
        np.testing.assert_array_equal(got["c"][key][0], got["python"][key][0])


def test_python_is_called_only_for_the_steered_tensors(tiny, pair):
    """The point of the filter: per token, Python hears about the steered tensor, not every node."""
    counts = {}
    for name, (llm, injector) in pair.items():
        calls = []
        real = injector._on_tensor_unsafe
        injector._on_tensor_unsafe = lambda t, ask, real=real, calls=calls: (
            calls.append(ask) or real(t, ask)
        )
        try:
            prompt = llm.tokenize(b"One two three.", add_bos=False)
            with steered(injector, random_vectors(tiny, ("attn",), (1,)), ("attn",), (1,)):
                llm.reset()
                llm.eval(prompt)
                calls.clear()
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        finally:
            del injector._on_tensor_unsafe
        counts[name] = (len(calls), calls.count(True))
    assert counts["c"] == (1, 0), counts  # one call: the steered tensor, computed
    assert counts["python"][1] > 20 * counts["c"][0], counts  # every node asked in Python


def test_the_opening_window_stops_costing_once_it_is_behind(tiny, pair):
    """Opening vectors need the position cursor (a graph stop at layer 0) only until their
    window has passed; then Python hears about the steered tensor alone, as without them."""
    llm, injector = pair["c"]
    sites, layers = ("attn",), (1,)
    v = random_vectors(tiny, sites, layers)
    prompt = llm.tokenize(b"One two three.", add_bos=False)
    calls: list[bool] = []
    real = injector._on_tensor_unsafe
    injector._on_tensor_unsafe = lambda t, ask: calls.append(ask) or real(t, ask)
    per_token = []
    try:
        # the opening at the last prompt position and the next
        with applied(injector, Steering(v, sites, layers, opening=v, opening_window=2), prompt):
            llm.reset()
            injector.rewind()
            llm.eval(prompt)
            for _ in range(4):
                calls.clear()
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
                per_token.append(len(calls))
    finally:
        del injector._on_tensor_unsafe
    # cursor + tensor in the window (position P) and at the first step past it (P + 1, where
    # the cursor sees the window behind and drops it), then the steered tensor alone
    assert per_token == [2, 2, 1, 1], per_token
