"""The token loop on the tiny model: end-of-generation stops, token bytes, llama.cpp errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fints_edge.errors import FintsEdgeError
from fints_edge.generate import Generation, complete, token_piece
from fints_edge.llama.context import decode_error
from fints_edge.llama.inject import open_steerable, steered


@pytest.fixture(scope="module")
def exact(tiny):
    llm, injector = open_steerable(tiny.gguf_path, "exact", n_ctx=128, n_threads=1)
    yield llm, injector
    llm.close()


def _toward(tiny, token: int, norm: float = 200.0) -> np.ndarray:
    """float32 [1, 1, n_embd]: along ``token``'s tied embedding, so greedy picks ``token``."""
    from safetensors.numpy import load_file

    e = load_file(tiny.hf_dir / "model.safetensors")["model.embed_tokens.weight"][token]
    assert np.linalg.norm(e) > 0
    return (norm * e / np.linalg.norm(e))[None, None, :]


def _prompt(llm):
    return llm.tokenize(b"Once upon a time", add_bos=False)


@pytest.mark.parametrize("token", [0, 4])  # <|endoftext|>, <reponame>: EOG but not token_eos
def test_every_end_of_generation_token_stops_and_is_not_counted(tiny, exact, token):
    llm, injector = exact
    assert llm.token_eos() == 2  # (its tiny embedding is the zero padding row: not steerable)
    prompt = _prompt(llm)
    llm.reset()
    with steered(injector, _toward(tiny, token), ("mlp",), (tiny.n_layer - 1,)):
        gen = Generation(llm, prompt, 8, injector=injector)
        pieces = list(gen)
    assert (pieces, gen.tokens, gen.finish) == ([], [], "stop")
    assert llm.n_tokens == len(prompt) and gen.first_token_time is not None


def test_lone_lead_bytes_are_replaced_and_the_budget_holds(tiny, exact):
    llm, injector = exact
    prompt = _prompt(llm)
    llm.reset()
    with steered(injector, _toward(tiny, 173), ("mlp",), (tiny.n_layer - 1,)):  # byte 0xE2
        gen = Generation(llm, prompt, 5, injector=injector)
        pieces = list(gen)
    assert gen.tokens == [173] * 5 and gen.finish == "length"
    # each 0xE2 is known to be invalid only when the next byte arrives; the last at the end
    assert pieces == ["\ufffd"] * 5 and llm.n_tokens == len(prompt) + 4


def test_long_tokens_keep_their_text(exact):
    """llama-cpp-python's detokenize drops pieces over 32 bytes; SmolLM2 has 47 such tokens."""
    import llama_cpp

    llm, _ = exact
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert token_piece(vocab, 15069) == b"-" * 64 and llm.detokenize([15069]) == b""
    assert token_piece(vocab, 3299) == b"\n" + b" " * 32
    assert token_piece(vocab, 2) == b""  # control tokens are not text
    assert token_piece(vocab, 173) == b"\xe2"


class _Llm:
    def n_ctx(self) -> int:
        return 512


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ("llama_decode returned 1", r"context \(512 tokens\) is full: lower --max-tokens or --rag"),
        ("llama_decode returned 2", "aborted the computation; the request was dropped, retry"),
        ("llama_decode returned -1", r"failed to decode \(code -1\).*fints_edge.llama.doctor"),
        ("llama_decode returned -3", r"failed to decode \(code -3\).*fints_edge.llama.doctor"),
        ("something else", r"failed to decode \(something else\)"),
    ],
)
def test_decode_errors_say_what_happened_and_what_to_change(message, says):
    error = decode_error(RuntimeError(message), _Llm())
    assert isinstance(error, FintsEdgeError)
    assert re.search(says, str(error)), str(error)


def test_a_decode_failure_mid_answer_is_an_error(exact, monkeypatch):
    """Any non-zero llama_decode code after the prompt: a FintsEdgeError, the cause chained."""
    import llama_cpp.llama_cpp as lib

    llm, injector = exact
    real, calls = lib.llama_decode, []

    def failing(ctx, batch):
        calls.append(1)
        return -3 if len(calls) == 3 else real(ctx, batch)

    monkeypatch.setattr(lib, "llama_decode", failing)
    llm.reset()
    gen = Generation(llm, _prompt(llm), 8, injector=injector)
    with pytest.raises(FintsEdgeError, match=r"code -3") as e:
        list(gen)
    assert "llama_decode returned -3" in str(e.value.__cause__) and len(gen.tokens) == 2


def test_ctrl_c_inside_the_eval_callback_stays_a_keyboard_interrupt(tiny, exact, monkeypatch):
    llm, injector = exact

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(injector, "_rows", interrupted)
    llm.reset()
    with steered(injector, _toward(tiny, 173), ("mlp",), (1,)):
        with pytest.raises(KeyboardInterrupt):
            list(Generation(llm, _prompt(llm), 4, injector=injector))
    assert injector._error is None  # raised once, not again at the next decode


def test_each_generation_frees_its_sampler_at_once(exact):
    """llama-cpp-python keeps every sampler chain (~0.5 MB: a candidate per vocabulary entry) in
    a reference cycle until the cyclic GC runs; with the GC held off, 250 answers kept 141 MB."""
    import gc

    from tests.test_soak import _rss_mb

    llm, injector = exact
    prompt = _prompt(llm)
    gc.collect()
    gc.disable()
    try:
        for i in range(300):
            llm.reset()
            list(Generation(llm, prompt, 2, injector=injector))
            if i == 49:
                start = _rss_mb()
        growth = _rss_mb() - start
    finally:
        gc.enable()
    assert growth < 10, f"RSS grew {growth:.1f} MB over 250 answers"


# -- complete(): create_completion's replacement for whole answers --------------------------------
def _chat(llm, text: str) -> list[int]:
    from fints_edge.prompt import prompt_tokens

    return prompt_tokens(llm, [{"role": "user", "content": text}])


def _completion(llm, prompt, max_tokens: int, **sampling) -> str:
    llm.reset()
    return llm.create_completion(prompt, max_tokens=max_tokens, **sampling)["choices"][0]["text"]


def test_complete_gives_create_completions_text_greedy_and_sampled(exact):
    from fints_edge.learn.pairs import RETRY_SAMPLING

    llm, injector = exact
    for text in ("Write a headline about the concert.", "What is the capital of France?"):
        prompt = _chat(llm, text)
        greedy = complete(llm, prompt, 16, injector=injector)
        assert greedy == _completion(llm, prompt, 16, temperature=0.0).strip() and greedy
        sampled = complete(llm, prompt, 16, seed=3, **RETRY_SAMPLING)
        # create_completion drops bytes that form no character; complete shows U+FFFD for them
        want = _completion(llm, prompt, 16, seed=3, **RETRY_SAMPLING).strip()
        assert sampled.replace("\ufffd", "") == want and sampled != greedy


def test_the_models_own_answer_is_create_completions(exact):
    """The negative DeviceExtractor generates: greedy first, then sampled with seed + attempt."""
    from fints_edge.learn.extract import DeviceExtractor
    from fints_edge.learn.pairs import RETRY_SAMPLING

    llm, injector = exact
    ex = DeviceExtractor(llm, injector, [1])
    text = "Say something about trains."
    first, retry = ex.own_answer(text, 0, 16, seed=5), ex.own_answer(text, 1, 16, seed=5)
    assert llm.n_tokens == 0  # the context is left clean for the next extraction
    prompt = ex.prompt_tokens(text)
    assert first == _completion(llm, prompt, 16, temperature=0.0, seed=5).strip()
    want = _completion(llm, prompt, 16, seed=6, **RETRY_SAMPLING).strip()
    assert retry.replace("\ufffd", "") == want and retry != first


def test_complete_cuts_the_budget_to_the_room_left_and_refuses_a_full_prompt(exact):
    """As create_completion does: a prompt 8 tokens short of the context leaves 8 to generate."""
    llm, _ = exact
    n_ctx = 128  # as asked (llama.cpp rounds its own context up to 256; the token slots stay 128)
    words = llm.tokenize(b" word" * n_ctx, add_bos=False)
    prompt = words[: n_ctx - 8]
    llm.reset()
    gen = Generation(llm, prompt, 8)
    pieces = list(gen)
    assert gen.finish == "length"  # the model goes on: only the cut keeps it inside the context
    assert complete(llm, prompt, 48) == "".join(pieces).strip()
    with pytest.raises(FintsEdgeError, match="prompt is 128 tokens but the context holds 128"):
        complete(llm, words[:n_ctx], 4)


@pytest.mark.slow
def test_the_embedded_models_answers_equal_create_completions():
    """The persona base answers and the demo history were made with create_completion on the
    rendered string; plain-text prompt tokens + complete give the same answers."""
    from evals.personas import load_pool
    from fints_edge._paths import default_gguf
    from fints_edge.llama.model import chat_prompt, open_llama

    llm = open_llama(default_gguf(), n_ctx=1024, n_threads=1)
    try:
        for text in load_pool()[::55]:  # 6 inputs across the pool files
            rendered = chat_prompt(llm, [{"role": "user", "content": text}])
            want = _completion(llm, rendered, 48, temperature=0.0).strip()
            assert complete(llm, _chat(llm, text), 48) == want, text
    finally:
        llm.close()
