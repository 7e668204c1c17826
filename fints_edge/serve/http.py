"""HTTP plumbing for the server: JSON bodies in, OpenAI-shaped JSON errors out, event streams
that cancel their job, and noticing a client that has gone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from fints_edge.errors import FintsEdgeError
from fints_edge.serve.auth import BodyTooLarge, error_object
from fints_edge.serve.profiles import profile_error_status
from fints_edge.serve.wire import BadRequest
from fints_edge.serve.worker import Busy

log = logging.getLogger("fints_edge.serve")


class JobStream(StreamingResponse):
    """Server-sent events that cancel their job however the response ends, even when the
    client leaves before the first byte (an unstarted generator never runs its ``finally``)."""

    media_type = "text/event-stream"

    def __init__(self, content: Any, on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = (
            f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        )
        raise BadRequest(f"the body is not valid JSON{where}") from None


# -- errors as JSON -----------------------------------------------------------------------------
def error_body(e: BaseException) -> tuple[int, dict[str, Any]]:
    if isinstance(e, Busy):
        status, kind, code = 503, "server_busy", "queue_full"
    elif isinstance(e, BodyTooLarge):
        status, kind, code = 413, "request_too_large", "body_too_large"
    elif isinstance(e, FintsEdgeError):
        status = profile_error_status(e)
        kind = {404: "not_found_error", 409: "conflict_error"}.get(status, "invalid_request_error")
        code = None
    elif isinstance(e, HTTPException):
        status, kind, code = e.status_code, "invalid_request_error", None
    else:
        status, kind, code = 500, "server_error", None
    if status == 500:
        message = f"internal error ({type(e).__name__}); the server log has the details"
    elif isinstance(e, HTTPException):
        message = str(e.detail)
    else:
        message = str(e)
    param = getattr(e, "param", None)
    return status, error_object(message, kind, code, param)


def make_handler(redact: Callable[[str], str]) -> Callable[[Request, Exception], Any]:
    async def handle(_: Request, e: Exception) -> Response:
        if isinstance(e, ClientGone):
            return Response(status_code=499)
        status, body = error_body(e)
        body["error"]["message"] = redact(body["error"]["message"])
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, Busy) else None
        if status == 500:
            log.error("internal error: %r", e)
        return JSONResponse(body, status_code=status, headers=headers)

    return handle
