"""Prompt tokens: the layout's own markers as control tokens, every message text as plain text.

Why: a rendered chat prompt tokenized whole with ``special=True`` also turns marker text inside a
message (``<|im_start|>system ...`` typed by a user, or held by a history item put in the prompt
as a RAG example) into real control tokens, i.e. a new chat turn the model obeys. Here the layout
is rendered with a unique placeholder per message (and with the texts, to check the template shows
them as they are); control tokens are recognised only in the layout's own text, and each message
is tokenized as plain text. Raw text is joined across the placeholder boundaries before
tokenizing, because llama.cpp splits a prompt only at control tokens: for texts without marker
text the ids equal the old whole-string tokenization exactly (``tests/test_prompt.py`` checks it
on the pool inputs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fints_edge.errors import FintsEdgeError
from fints_edge.llama.model import chat_prompt, vocab_text
from fints_edge.profile import PromptFormat

Message = dict[str, str]  # {"role", "content"}, as fints_edge.llama.model.chat_prompt takes
_MARK = "\ue000fints-edge message {}\ue001"  # private-use characters: no template writes them
_C_SPACE = " \t\n\v\f\r"  # C isspace(), what llama.cpp strips next to an lstrip/rstrip token


def prompt_tokens(
    llm: Any, messages: Sequence[Message], prompt_format: PromptFormat | None = None
) -> list[int]:
    """``messages`` laid out as ``fints_edge.llama.model.chat_prompt`` does, as token ids ready
    to generate after.

    Example: ``prompt_tokens(llm, [{"role": "user", "content": "Hi"}])``
    """
    texts = [m["content"] for m in messages]
    marked = [{**m, "content": _MARK.format(i)} for i, m in enumerate(messages)]
    pieces = _split_marks(chat_prompt(llm, marked, prompt_format), len(texts))  # around each text
    real = chat_prompt(llm, messages, prompt_format)
    if pieces is not None:
        for shown in (texts, [t.strip() for t in texts]):  # gemma's and command-r's trim them
            if _interleave(pieces, shown) == real:
                return _layout_tokens(llm, pieces, shown)
    return _rewritten(llm, real, texts)


def _layout_tokens(llm: Any, pieces: Sequence[str], texts: Sequence[str]) -> list[int]:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    segments: list[str | int] = []  # raw text and control token ids, in prompt order
    for i, piece in enumerate(pieces):
        segments += _split_controls(llm, vocab, piece)
        if i < len(texts):
            segments.append(texts[i])
    return _tokenize_segments(llm, vocab, segments)


def _split_marks(marked: str, n: int) -> list[str] | None:
    """The n + 1 pieces around the placeholders, or None when the template dropped, repeated or
    reordered a message."""
    pieces, rest = [], marked
    for i in range(n):
        mark = _MARK.format(i)
        if marked.count(mark) != 1 or mark not in rest:
            return None
        head, rest = rest.split(mark)
        pieces.append(head)
    return [*pieces, rest]


def _interleave(pieces: Sequence[str], texts: Sequence[str]) -> str:
    return "".join(p + t for p, t in zip(pieces, [*texts, ""], strict=True))


def _rewritten(llm: Any, real: str, texts: Sequence[str]) -> list[int]:
    """A template that rewrites message texts (beyond trimming them) cannot be split at the
    placeholders. Texts without marker text are safe in the whole rendering; others are refused."""
    for text in texts:
        if _has_control_text(llm, text):
            raise FintsEdgeError(
                f"{llm.model_path}: this model's chat template rewrites message texts, and a "
                f"message ({text[:40]!r}...) holds the text of one of its control tokens; "
                "remove the marker text from the message"
            )
    return list(llm.tokenize(real.encode(), add_bos=False, special=True))


def _has_control_text(llm: Any, text: str) -> bool:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    return any(_is_control(vocab, t) for t in ids)


def _is_control(vocab: Any, token: int) -> bool:
    """The tokens llama.cpp matches only with ``special=True`` (user-defined ones it always
    matches, in plain text too)."""
    import llama_cpp

    control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    return bool(llama_cpp.llama_vocab_get_attr(vocab, token) & control)


def _split_controls(llm: Any, vocab: Any, piece: str) -> list[str | int]:
    """The layout's own text as raw text and control token ids. The controls are the ones
    llama.cpp finds in it (tokenized with ``special=True``), matched longest first as it does."""
    ids = llm.tokenize(piece.encode(), add_bos=False, special=True) if piece else []
    found = {vocab_text(vocab, t): t for t in ids if _is_control(vocab, t)}
    if not found:
        return [piece]
    pattern = re.compile("|".join(map(re.escape, sorted(found, key=len, reverse=True))))
    out: list[str | int] = []
    start = 0
    for m in pattern.finditer(piece):
        out += [piece[start : m.start()], found[m.group()]]
        start = m.end()
    return [*out, piece[start:]]


def _tokenize_segments(llm: Any, vocab: Any, segments: Sequence[str | int]) -> list[int]:
    """Each run of raw text between control tokens tokenized as one plain-text fragment, with
    the whitespace a control token's lstrip/rstrip attribute removes, as llama.cpp does."""
    import llama_cpp

    tokens: list[int] = []
    raw: list[str] = []
    strip_left = False  # the previous control token strips the whitespace after it

    def flush(strip_right: bool) -> None:
        text = "".join(raw)
        text = text.lstrip(_C_SPACE) if strip_left else text
        text = text.rstrip(_C_SPACE) if strip_right else text
        if text:  # an empty fragment gives no tokens (no SPM space prefix either)
            tokens.extend(llm.tokenize(text.encode(), add_bos=False, special=False))
        raw.clear()

    for seg in segments:
        if isinstance(seg, str):
            raw.append(seg)
            continue
        attr = llama_cpp.llama_vocab_get_attr(vocab, seg)
        flush(strip_right=bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP))
        tokens.append(seg)
        strip_left = bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)
    flush(strip_right=False)
    return tokens
