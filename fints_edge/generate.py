"""The token loop: a hard token budget, a stop at end-of-generation, UTF-8 text as it completes.

Why not ``Llama.create_completion``: llama-cpp-python 0.3.36 skips its ``max_tokens`` check while
the text ends in what looks like an unfinished multi-byte character, so a model that keeps
emitting lone UTF-8 lead bytes (strong steering does) generates until the context is full and
``llama_decode`` fails. It also drops the text of tokens longer than 32 bytes. Here the budget is
counted per token, bytes go through an incremental UTF-8 decoder (invalid bytes become U+FFFD),
and every llama.cpp failure comes out as a :class:`FintsEdgeError` that says what to change.
"""

from __future__ import annotations

import codecs
import ctypes
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from fints_edge.errors import FintsEdgeError
from fints_edge.llama.context import CONTEXT_FIX, decode_error, free_sampler
from fints_edge.llama.inject import Injector

Finish = Literal["length", "stop"]


def token_piece(vocab: Any, token: int, buf: ctypes.Array[ctypes.c_char] | None = None) -> bytes:
    """The bytes of one token as generated text (control tokens give b"").

    llama_token_to_piece returns minus the size it needs when the buffer is too small; the
    SmolLM2 vocabulary has 47 tokens over 32 bytes (runs of spaces or dashes, up to 64).
    """
    import llama_cpp

    buf = buf if buf is not None else ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n]


class Generation:
    """At most ``max_tokens`` tokens after ``prompt``, greedy unless ``temperature`` > 0.

    Iterate once for the text pieces, each yielded as soon as its characters are complete.
    Afterwards ``tokens`` holds the generated ids (an end-of-generation token is not counted),
    ``finish`` says why it stopped and ``first_token_time`` when the first token was sampled
    (``time.perf_counter``). Sampling is llama-cpp-python's, with create_completion's defaults,
    so a seed gives the same answer as there. The context must hold the prompt; the caller resets
    it first. Failures inside the eval callback (``injector``) are raised after the decode.
    """

    def __init__(
        self,
        llm: Any,
        prompt: Sequence[int],
        max_tokens: int,
        *,
        seed: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.95,
        injector: Injector | None = None,
        fix: str = CONTEXT_FIX,
        on_token: Callable[[Sequence[int]], None] | None = None,
        logits_processor: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        if max_tokens < 1 or not prompt:
            raise FintsEdgeError("generation needs a non-empty prompt and max_tokens >= 1")
        self.llm = llm
        self.prompt = list(prompt)
        self.max_tokens = max_tokens
        self.seed = seed
        self.temperature = temperature
        self.top_p = top_p
        self.injector = injector
        self.fix = fix
        self.on_token = on_token  # sees the tokens so far before the next decode (fade)
        self.logits_processor = logits_processor  # (input ids, logits) -> logits (repeat block)
        self.tokens: list[int] = []
        self.finish: Finish | None = None
        self.first_token_time: float | None = None

    def __iter__(self) -> Iterator[str]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        buf = ctypes.create_string_buffer(64)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.llm.set_seed(self.seed)  # as create_completion(seed=...) does
        processors = None
        if self.logits_processor is not None:
            processors = llama_cpp.LogitsProcessorList([self.logits_processor])
        sampled = self.llm.generate(
            self.prompt,
            temp=self.temperature,
            top_p=self.top_p,
            repeat_penalty=1.0,
            logits_processor=processors,
        )
        try:
            while len(self.tokens) < self.max_tokens:
                token = self._next(sampled)
                if self.first_token_time is None:
                    self.first_token_time = time.perf_counter()
                if token is None or llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.finish = "stop"
                    break
                self.tokens.append(token)
                if self.on_token is not None:
                    self.on_token(self.tokens)
                piece = decoder.decode(token_piece(vocab, token, buf))
                if piece:
                    yield piece
            else:
                self.finish = "length"
        finally:
            sampled.close()  # the last token is never decoded: nothing samples after it
            free_sampler(self.llm)
        tail = decoder.decode(b"", final=True)  # an unfinished character at the end: U+FFFD
        if tail:
            yield tail

    def _next(self, sampled: Iterator[int]) -> int | None:
        """The next sampled token; the decode that produced its logits has returned."""
        try:
            token = next(sampled, None)
        except RuntimeError as e:
            self._raise_callback_error()  # the likelier cause when there is one
            raise decode_error(e, self.llm, self.fix) from e
        self._raise_callback_error()
        return token

    def _raise_callback_error(self) -> None:
        if self.injector is not None:
            self.injector.raise_error()


def complete(
    llm: Any,
    prompt: Sequence[int],
    max_tokens: int,
    *,
    seed: int = 0,
    temperature: float = 0.0,
    top_p: float = 0.95,
    injector: Injector | None = None,
    fix: str = CONTEXT_FIX,
) -> str:
    """The whole answer after ``prompt``, stripped: ``create_completion``'s text for a token
    prompt, with a budget that holds. As there, the budget is cut to the room the context has
    left, and a prompt that fills the context is refused. The context is reset first."""
    # llama.cpp may round the context up (to 256 at least); llama-cpp-python keeps as many token
    # slots as were asked for
    n_ctx = min(llm.n_ctx(), len(llm.input_ids))
    room = n_ctx - len(prompt)
    if room < 1:
        raise FintsEdgeError(
            f"the prompt is {len(prompt)} tokens but the context holds {n_ctx}: {fix}"
        )
    llm.reset()
    gen = Generation(
        llm,
        prompt,
        min(max_tokens, room),
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        injector=injector,
        fix=fix,
    )
    return "".join(gen).strip()
