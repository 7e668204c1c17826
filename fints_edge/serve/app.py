"""``python -m fints_edge.serve``: a local, OpenAI-compatible server and a web app, one per phone.

    POST /v1/chat/completions        streamed (SSE) or not; ``user`` picks the profile, and
                                     ``"fints": {"steer", "k", "strength", "rag"}`` sets the knobs
                                     (``fints_edge.config.REQUEST_KNOBS``)
    GET  /v1/models, GET /health
    GET  /v1/profiles                POST /v1/profiles (multipart: name, history JSONL) -> a job
    GET  /v1/profiles/NAME           DELETE /v1/profiles/NAME
    POST /v1/profiles/NAME/items     {"input", "output", "rejected"?}: "for this input I wanted this"
    DELETE /v1/profiles/NAME/items/ID    POST /v1/profiles/NAME/why {"input"}
    GET  /v1/jobs, /v1/jobs/ID       DELETE /v1/jobs/ID (cancel)
    GET  /                           the chat app (installable: manifest + service worker)

Bound to 127.0.0.1, and every API request needs the bearer token made at first start (on a
phone any app can reach loopback). Starlette on uvicorn: pure Python, so it installs on a phone.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fints_edge.errors import FintsEdgeError
from fints_edge.serve.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from fints_edge.engine import Engine

WEB_DIR = Path(__file__).parent.parent / "web"
log = logging.getLogger("fints_edge.serve")


def open_engine(s: Settings, profile: Path) -> Engine:
    from fints_edge.engine import Engine

    return Engine(
        s.model, profile, s.engine, encoder_dir=s.encoder_dir, aggregator_path=s.aggregator_path
    )


def create_app(s: Settings) -> Starlette:
    """The ASGI app. Its engine thread starts on the first request (or at start-up, to warm the
    default user's profile) and is closed at shutdown."""
    import mimetypes

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from fints_edge.serve.auth import BearerAuth, BodyLimit, BodyTooLarge, SecurityHeaders
    from fints_edge.serve.http import ClientGone, make_handler
    from fints_edge.serve.profiles import Builder, ProfileStore
    from fints_edge.serve.routes import Api
    from fints_edge.serve.worker import Busy, Worker

    mimetypes.add_type("application/manifest+json", ".webmanifest")
    mimetypes.add_type("text/javascript", ".js")
    store = ProfileStore(s.profiles_dir)
    worker = Worker(partial(open_engine, s), s.max_waiting)
    builder = Builder(store, s)
    api = Api(s, worker, builder)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> Any:
        import asyncio

        user = api.default_user()
        if user is not None:
            worker.submit(partial(_warm, store.path(user)))
        yield
        await asyncio.to_thread(worker.close)
        await asyncio.to_thread(builder.close)

    handler = make_handler(s.redact)
    public = frozenset(
        {"/"} | {"/" + p.relative_to(WEB_DIR).as_posix() for p in WEB_DIR.rglob("*") if p.is_file()}
    )
    app = Starlette(
        routes=[*api.routes(), Mount("/", StaticFiles(directory=WEB_DIR, html=True))],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(BearerAuth, token=s.token, public=public),
            Middleware(BodyLimit, default=s.max_body, per_path={"/v1/profiles": s.max_upload}),
        ],
        exception_handlers={
            e: handler
            for e in (Exception, HTTPException, FintsEdgeError, Busy, BodyTooLarge, ClientGone)
        },
        lifespan=lifespan,
    )
    app.state.api = api
    return app


def _warm(path: Path, worker: Any, _: Any) -> None:
    """Load the model with the default profile before the first request needs it."""
    try:
        worker.engine_for(path)
    except FintsEdgeError as e:
        log.warning("could not load the default profile: %s", e)
