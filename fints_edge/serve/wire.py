"""The OpenAI chat-completions wire format: checking a request, shaping answers and SSE chunks.

Answers are greedy (that is what makes steered and unsteered answers comparable), so sampling
parameters are accepted and ignored; parameters that would change the answer's shape in ways the
engine cannot honour (``n`` > 1, ``stop``, tools, logprobs) are refused rather than ignored, and
so is any key nobody here knows. The model answers the last user message; earlier turns are not
sent to it (the engine answers one input at a time, steered by what it retrieves).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fints_edge.calibrate import stored_changes
from fints_edge.config import (
    REQUEST_KNOBS,
    SETTING_KNOBS,
    EngineConfig,
    KnobError,
    parse_request_knobs,
)
from fints_edge.errors import FintsEdgeError
from fints_edge.model_defaults import model_changes

if TYPE_CHECKING:
    from fints_edge.engine import Reply
    from fints_edge.serve.worker import Job, Worker

# Standard keys this server honours or safely ignores (answers are greedy).
ACCEPTED = {"model", "messages", "stream", "stream_options", "user", "max_tokens",
            "max_completion_tokens", "fints", "temperature", "top_p", "seed",
            "presence_penalty", "frequency_penalty", "n", "stop", "logprobs"}  # fmt: skip
FINTS_KEYS = ("steer", *REQUEST_KNOBS)  # bounds and types: their declarations in fints_edge.config


class BadRequest(FintsEdgeError):
    """A request the server understood but will not run (HTTP 400); ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Knobs:
    steer: bool
    config: EngineConfig  # the server's defaults with the request's knobs over them
    given: frozenset[str] = frozenset()  # the knobs the request itself named
    operator: frozenset[str] = frozenset()  # the knobs the server's own flags named

    def changes(self, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``Engine.configure`` takes for one request on one user's profile: the server's
        defaults, the model's row and the profile's calibration (``stored``) over them but under
        the operator's flags, the request's own knobs over everything. Every knob a calibration
        may set is set each time, so one user's never reaches the next."""
        out = {n: getattr(self.config, n) for n in SETTING_KNOBS}
        mine = self.given | self.operator
        out |= {k: v for k, v in (stored or {}).items() if k not in mine}
        return out


@dataclass(frozen=True)
class ChatRequest:
    text: str
    user: str | None
    stream: bool
    include_usage: bool
    max_tokens: int
    knobs: Knobs


def parse_knobs(obj: object, defaults: Knobs, where: str = "fints") -> Knobs:
    """The ``fints`` extension object: steer, k, strength, rag; nothing else."""
    if obj is None:
        return defaults
    if not isinstance(obj, dict):
        raise BadRequest(f"'{where}' must be an object with keys {', '.join(FINTS_KEYS)}", where)
    unknown = sorted(set(obj) - set(FINTS_KEYS))
    if unknown:
        raise BadRequest(
            f"unknown key(s) {unknown} in '{where}'; allowed: {', '.join(FINTS_KEYS)}", where
        )
    steer = defaults.steer
    if "steer" in obj:
        if not isinstance(obj["steer"], bool):
            raise BadRequest(f"'{where}.steer' must be true or false", f"{where}.steer")
        steer = obj["steer"]
    try:
        config = parse_request_knobs(obj, defaults.config, where)
    except KnobError as e:
        raise BadRequest(str(e), e.param) from None
    return Knobs(steer, config, frozenset(obj) & set(REQUEST_KNOBS), defaults.operator)


def _int(v: object, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadRequest(f"'{name}' must be an integer in [{lo}, {hi}]", name)
    return v


def parse_chat(
    body: object, *, model_id: str, defaults: Knobs, max_tokens: int, max_tokens_limit: int,
    max_input_chars: int,
) -> ChatRequest:  # fmt: skip
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise BadRequest(
            f"unknown key(s) {unknown}; this server accepts {sorted(ACCEPTED)} "
            "(fints-edge's own knobs go in the 'fints' object)",
            unknown[0],
        )
    model = body.get("model")
    if model is not None and model not in (model_id, "default"):
        raise BadRequest(f"unknown model {model!r}; this server serves '{model_id}'", "model")
    if body.get("n", 1) != 1:
        raise BadRequest("'n' must be 1: one answer per request", "n")
    if body.get("stop") is not None:
        raise BadRequest("'stop' sequences are not supported; leave it out", "stop")
    if body.get("logprobs"):
        raise BadRequest("'logprobs' are not supported", "logprobs")
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise BadRequest(f"'{key}' must be a number", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise BadRequest("'stream_options' may only hold 'include_usage'", "stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("'user' must be a string (a profile name)", "user")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        limit = _int(limit, "max_tokens", 1, max_tokens_limit)
    text = last_user_text(body.get("messages"))
    if len(text) > max_input_chars:
        raise BadRequest(
            f"the message is {len(text)} characters; the limit is {max_input_chars}", "messages"
        )
    return ChatRequest(
        text=text,
        user=user,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        max_tokens=limit or max_tokens,
        knobs=parse_knobs(body.get("fints"), defaults),
    )


def last_user_text(messages: object) -> str:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message needs a 'role' and a 'content'", "messages")
    last = messages[-1]
    if last["role"] != "user":
        raise BadRequest("the last message must be the user's", "messages")
    content = last.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise BadRequest("only text content parts are supported", "messages")
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str) or not content.strip():
        raise BadRequest("the last message's content must be non-empty text", "messages")
    return content


# -- the job, run on the engine's thread ------------------------------------------------------------
def chat_job(path: Any, req: ChatRequest) -> Callable[[Worker, Job], Reply]:
    """Stream the answer as pieces whose concatenation is exactly ``Reply.text`` (stripped)."""

    def run(worker: Worker, job: Job) -> Reply:
        engine = worker.engine_for(path)
        engine.configure(**req.knobs.changes(stored_setting(engine)), max_tokens=req.max_tokens)
        gen = engine.stream(req.text, steer=req.knobs.steer)
        pending, started = "", False  # whitespace held back until more text follows it
        try:
            for item in gen:
                job.check()
                if not isinstance(item, str):
                    return item
                text = pending + item
                if not started:
                    text = text.lstrip()
                body = text.rstrip()
                pending = text[len(body) :]
                if body:
                    started = True
                    job.emit(body)
        finally:
            getattr(gen, "close", lambda: None)()  # a cancelled job stops here: steering cleared
        raise FintsEdgeError("the engine ended without a reply")

    return run


def stored_setting(engine: Any) -> dict[str, Any]:
    """The knob changes the engine's current profile asks for: its model's row
    (fints_edge.model_defaults) and its stored calibration (fints_edge.calibrate) over it."""
    profile = engine.profile
    return model_changes(profile.model) | stored_changes(
        profile.calibration, str(engine.profile_path)
    )


# -- answers ---------------------------------------------------------------------------------
def new_id() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())


def finish_reason(reply: Reply, max_tokens: int) -> str:
    """ "length" when the token budget ended the answer, "stop" when the model did."""
    if reply.finish is not None:
        return reply.finish
    return "length" if reply.completion_tokens >= max_tokens else "stop"


def usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def fints_info(reply: Reply, user: str) -> dict[str, Any]:
    info = reply.to_json()
    del info["text"], info["prompt_tokens"], info["completion_tokens"], info["setting"]
    return {"user": user, **reply.setting} | info  # the setting the answer was written under


def completion(
    cid: str, created: int, model: str, reply: Reply, req: ChatRequest, user: str
) -> dict[str, Any]:
    finish = finish_reason(reply, req.max_tokens)
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage(reply),
        "fints": fints_info(reply, user),
    }


def chunk(
    cid: str,
    created: int,
    model: str,
    delta: dict[str, str],
    finish: str | None = None,
    **extra: Any,
) -> bytes:
    choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    if extra.get("usage") is not None and not delta and finish is None:
        choices = []  # the usage-only chunk of stream_options.include_usage
    obj = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    } | {k: v for k, v in extra.items() if v is not None}
    return sse(obj)


def sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


DONE = b"data: [DONE]\n\n"
