"""Steering that backs off when the answer starts to loop: a per-token fade and a repeat block,
no second model.

Strong steering pushes a small model into repetition ("israel israel israel"). The cheapest
signal of that is in the tokens themselves: when the newest token closes an n-gram of tokens the
answer already produced, the steering is multiplied by ``factor`` (from the next token on), and
again at every further repeat. Fluent answers rarely repeat a 4-token sequence in 48-128 tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fints_edge.errors import FintsEdgeError
from fints_edge.llama.inject import Injector

REPEAT_NGRAM = 4  # tokens; about three words of English
# At most this share of repeated word 3-grams is never called a loop (the fluency rule's floor,
# evals/fluency.py; the demo reports answers above it).
REPETITION_FLOOR = 0.1
PHRASE_FLOOR = 2.0  # a word pair may occur twice ("X wins ... X's coach"); three times is a loop
# Pairs of these alone ("of the", "in a") are grammar, not a repeated phrase.
FUNCTION_WORDS = frozenset(
    "a an and are as at be been but by for from had has have he her his i if in into is it its "
    "of on or our she so than that the their them then there these they this to was we were "
    "what when which who will with would you your".split()
)
_WORD = re.compile(r"\w+")


def repetition(text: str) -> float:
    """Share of word 3-grams (case-folded) that already occurred earlier in the text; 0 for
    texts of fewer than 4 words. 'a b c a b c a b c' -> 4 of 7 = 0.57."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = list(zip(words, words[1:], words[2:], strict=False))
    if len(grams) < 2:
        return 0.0
    seen: set[tuple[str, str, str]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def phrase_count(text: str) -> int:
    """How often the most repeated word pair (case-folded) occurs, counting only pairs with a
    word outside FUNCTION_WORDS; 0 for texts under 2 words."""
    words = [w.lower() for w in _WORD.findall(text)]
    pairs = Counter(
        g for g in zip(words, words[1:], strict=False)
        if not (g[0] in FUNCTION_WORDS and g[1] in FUNCTION_WORDS)
    )  # fmt: skip
    return max(pairs.values(), default=0)


class RepeatFade:
    """``Generation(..., on_token=RepeatFade(injector, 0.5))``; ``scale`` is the current factor."""

    def __init__(self, injector: Injector, factor: float, n: int = REPEAT_NGRAM) -> None:
        if not 0.0 <= factor <= 1.0 or n < 1:
            raise FintsEdgeError(f"repeat fade {factor} must be in [0, 1] (1 = off), n-gram >= 1")
        self.injector = injector
        self.factor = factor
        self.n = n
        self.scale = 1.0
        self.repeats = 0
        self._seen: set[tuple[int, ...]] = set()

    def __call__(self, tokens: Sequence[int]) -> None:
        """Called with the answer's tokens so far, after each new token."""
        if len(tokens) < self.n:
            return
        gram = tuple(tokens[-self.n :])
        if gram in self._seen:
            self.repeats += 1
            self.scale *= self.factor
            self.injector.set_scale(self.scale)
        else:
            self._seen.add(gram)


class RepeatBlock:
    """A logits processor: the answer may not repeat a token ``n``-gram it already wrote.

    The fade lowers the steering once a loop has started, but a small model keeps copying a
    phrase it has written once ("the new elective course: the new elective course: ...") even
    unsteered. This bans, at each step, every token that would close an n-gram already in the
    answer (tokens after ``prompt_len``), like the common no-repeat-n-gram decoding constraint.
    Plugged into llama-cpp-python's sampler as ``logits_processor``."""

    def __init__(self, n: int, prompt_len: int) -> None:
        if n < 2:
            raise FintsEdgeError(f"a repeat block needs n-grams of 2 tokens or more, got {n}")
        self.n = n
        self.prompt_len = prompt_len
        self.blocked = 0  # steps where at least one token was banned (tests read it)

    def banned(self, answer: Sequence[int]) -> set[int]:
        """Tokens that would repeat an n-gram of ``answer`` if they came next."""
        k = self.n - 1
        if len(answer) < k:
            return set()
        tail = tuple(answer[len(answer) - k :])
        return {
            int(answer[i + k]) for i in range(len(answer) - k) if tuple(answer[i : i + k]) == tail
        }

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        ban = self.banned([int(t) for t in input_ids[self.prompt_len :]])
        if ban:
            scores[list(ban)] = -float("inf")
            self.blocked += 1
        return scores
