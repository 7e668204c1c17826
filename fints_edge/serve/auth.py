"""The server's guard: a bearer token on every API request, loopback-only without one, safe names.

Why a token even on 127.0.0.1: on a phone every installed app can connect to loopback, and the
profiles hold the user's own writing. The token is made once (``secrets``), kept in the server's
data folder with owner-only permissions (0600, refused if looser, as ssh refuses a readable key)
and shown to the user once; the web app keeps it in its localStorage.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fints_edge.errors import FintsEdgeError

TOKEN_FILE = "token"
# A user/profile name is also a file name: letters, digits, '-' and '_' only, so '../x',
# 'a/b', '.hidden' or 'x.npz' can never leave (or confuse) the profiles folder.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_name(name: object, what: str = "profile name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FintsEdgeError(
            f"{what} {name!r} is not allowed: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and 'localhost'; anything else (0.0.0.0, a LAN address) is exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def default_data_dir() -> Path:
    """Token and profiles: user data, not cache (XDG_DATA_HOME, else ~/.local/share)."""
    root = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(root) / "fints-edge" / "server"


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def load_or_create_token(data_dir: Path) -> tuple[str, bool]:
    """The server's token and whether it was just created (the caller prints new ones once)."""
    path = ensure_private_dir(data_dir) / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path), False
    token = secrets.token_urlsafe(32)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return token, True


def _read_token(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise FintsEdgeError(
            f"{path}: the token file is readable by others (mode {mode:o}); "
            f"run `chmod 600 {path}` (or delete it to make a new token)"
        )
    token = path.read_text().strip()
    if len(token) < 16:
        raise FintsEdgeError(f"{path}: the token is missing or too short; delete the file")
    return token


def error_object(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape, which its clients parse: {"error": {message, type, param, code}}
    (the one place it is written; ``fints_edge.serve.http.error_body`` maps exceptions to it)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def json_error(message: str, kind: str, code: str | None = None) -> bytes:
    return json.dumps(error_object(message, kind, code)).encode()


async def send_json_error(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Pure ASGI middleware: every HTTP request except the app's static shell needs the token.

    The static files (the page, its script and icons) hold no user data and must load before
    the user has typed the token in.
    """

    def __init__(self, app: ASGIApp, token: str | None, public: frozenset[str]) -> None:
        self.app, self.public = app, public
        self._want = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._want is None or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        got = dict(scope["headers"]).get(b"authorization", b"")
        if secrets.compare_digest(got, self._want):
            await self.app(scope, receive, send)
            return
        message = (
            "wrong bearer token"
            if got
            else "missing bearer token: send 'Authorization: Bearer "
            "<token>' (the token was printed at the server's first start; "
            "`python -m fints_edge.serve --show-token` prints it again)"
        )
        await send_json_error(
            send,
            401,
            json_error(message, "authentication_error", "invalid_api_key"),
            [(b"www-authenticate", b"Bearer")],
        )


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class BodyLimit:
    """Refuse bodies over a limit: by Content-Length at once, else while they stream in."""

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, int]) -> None:
        self.app, self.default, self.per_path = app, default, per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            msg = str(BodyTooLarge(limit)) if length.isdigit() else "bad Content-Length header"
            status = 413 if length.isdigit() else 400
            kind = "request_too_large" if status == 413 else "invalid_request_error"
            await send_json_error(send, status, json_error(msg, kind))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


class SecurityHeaders:
    """Same-origin only: no framing, no sniffing, no referrer, scripts only from this server."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.HEADERS}
            await send(message)

        await self.app(scope, receive, with_headers)
