"""``python -m fints_edge.serve``: a local, OpenAI-compatible server and a web app, one per phone.

    POST /v1/chat/completions        streamed (SSE) or not; ``user`` picks the profile, and
                                     ``"fints": {"steer", "k", "strength", "rag"}`` sets the knobs
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

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fints_edge._cli import cli_main
from fints_edge._serve_auth import check_name, default_data_dir, is_loopback, load_or_create_token
from fints_edge.engine import EngineConfig
from fints_edge.errors import FintsEdgeError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from fints_edge.engine import Engine

_ENGINE = EngineConfig()  # the product defaults (the dev sweep's choice): one source of truth
WEB_DIR = Path(__file__).parent / "web"
log = logging.getLogger("fints_edge.serve")


@dataclass(frozen=True)
class Settings:
    """Everything the app needs; the CLI fills it from flags, tests build it directly."""

    model: Path
    profiles_dir: Path
    encoder_dir: Path
    aggregator_path: Path
    token: str | None  # None = no authentication (--no-auth)
    mode: str = _ENGINE.mode
    k: int = _ENGINE.k
    strength: float = _ENGINE.strength  # in the engine's default strength unit
    rag: int = _ENGINE.rag
    max_tokens: int = _ENGINE.max_tokens  # per request, when the request does not say
    max_tokens_limit: int = 512  # the most a request may ask for
    n_ctx: int = _ENGINE.n_ctx
    threads: int | None = None
    seed: int = _ENGINE.seed
    max_waiting: int = 4  # requests waiting behind the running one; more get 503
    max_body: int = 1 << 20  # bytes, JSON requests
    max_upload: int = 16 << 20  # bytes, history uploads
    max_input_chars: int = 8000
    default_user: str | None = None
    model_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.model_id:
            object.__setattr__(self, "model_id", Path(self.model).stem)


def open_engine(s: Settings, profile: Path) -> Engine:
    from fints_edge.engine import Engine

    config = EngineConfig(
        mode=s.mode,  # type: ignore[arg-type]
        k=s.k,
        strength=s.strength,
        rag=s.rag,
        max_tokens=s.max_tokens,
        n_ctx=s.n_ctx,
        threads=s.threads,
        seed=s.seed,
    )
    return Engine(
        s.model, profile, config, encoder_dir=s.encoder_dir, aggregator_path=s.aggregator_path
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

    from fints_edge._serve_api import Api
    from fints_edge._serve_auth import BearerAuth, BodyLimit, BodyTooLarge, SecurityHeaders
    from fints_edge._serve_http import ClientGone, make_handler
    from fints_edge._serve_profiles import Builder, ProfileStore
    from fints_edge._serve_worker import Busy, Worker

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

    def redact(message: str) -> str:  # no absolute server paths in answers
        return message.replace(str(s.profiles_dir) + "/", "profiles/")

    handler = make_handler(redact)
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


# -- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = Settings(Path("m"), Path("p"), Path("e"), Path("a"), None)
    p = argparse.ArgumentParser(
        prog="python -m fints_edge.serve",
        description="Local OpenAI-compatible server and web app with per-user Fints steering.",
        epilog="The first start makes a bearer token, saves it (mode 600) in the data folder and "
        "prints it once; --show-token prints it again.",
    )
    net = p.add_argument_group("network and access")
    net.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this device only)")
    net.add_argument("--port", type=int, default=8000, help="default: 8000")
    net.add_argument(
        "--no-auth",
        action="store_true",
        help="no token (local experiments only; refused with a non-loopback --host)",
    )
    net.add_argument("--show-token", action="store_true", help="print the token and exit")
    net.add_argument(
        "--data", type=Path, help=f"token and profiles (default: {default_data_dir()})"
    )
    files = p.add_argument_group("files")
    files.add_argument("--model", help="GGUF model (default: the embedded SmolLM2-135M Q4_1)")
    files.add_argument(
        "--profiles", type=Path, help="one NAME.npz per user (default: DATA/profiles)"
    )
    files.add_argument(
        "--add-profile",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="copy the profile PATH in as NAME at start unless NAME exists (repeatable)",
    )
    files.add_argument("--default-user", help="profile for requests without 'user'")
    files.add_argument("--encoder", type=Path, help="ONNX encoder folder (python -m export.onnx)")
    files.add_argument("--aggregator", type=Path, help="aggregator.onnx (python -m export.onnx)")
    steer = p.add_argument_group("steering defaults (a request's 'fints' object overrides them)")
    steer.add_argument("--mode", choices=["exact", "cvec"], default=d.mode)
    steer.add_argument("-k", "--top-k", dest="k", type=int, default=d.k, help=f"default: {d.k}")
    steer.add_argument("--strength", type=float, default=d.strength, help=f"default: {d.strength}")
    steer.add_argument("--rag", type=int, default=d.rag, help=f"default: {d.rag}")
    lim = p.add_argument_group("limits")
    lim.add_argument(
        "--max-tokens", type=int, default=d.max_tokens, help=f"default: {d.max_tokens}"
    )
    lim.add_argument(
        "--max-tokens-limit",
        type=int,
        default=d.max_tokens_limit,
        help=f"most a request may ask for (default: {d.max_tokens_limit})",
    )
    lim.add_argument(
        "--queue",
        type=int,
        default=d.max_waiting,
        help=f"requests that may wait behind the running one; more get 503 (default: {d.max_waiting})",
    )
    lim.add_argument("--max-body", type=int, default=d.max_body, help="bytes (default: 1 MiB)")
    lim.add_argument("--max-upload", type=int, default=d.max_upload, help="bytes (default: 16 MiB)")
    lim.add_argument("--n-ctx", type=int, default=d.n_ctx, help=f"default: {d.n_ctx}")
    lim.add_argument("--threads", type=int, help="CPU threads (default: all, up to 4)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Check every flag and file before anything heavy loads (the token is added by main)."""
    from fints_edge._paths import default_aggregator_path, default_encoder_dir, default_gguf
    from fints_edge.model import check_gguf

    if args.no_auth and not is_loopback(args.host):
        raise FintsEdgeError(
            f"--host {args.host} is reachable from other devices; that needs the token: "
            "drop --no-auth (or bind to 127.0.0.1)"
        )
    if args.k < 1 or args.rag < 0 or args.max_tokens < 1 or args.queue < 0 or args.n_ctx < 64:
        raise FintsEdgeError(
            "need -k >= 1, --rag >= 0, --max-tokens >= 1, --queue >= 0, --n-ctx >= 64"
        )
    if args.max_tokens > args.max_tokens_limit:
        raise FintsEdgeError("--max-tokens must not exceed --max-tokens-limit")
    if args.threads is not None and args.threads < 1:
        raise FintsEdgeError("--threads must be at least 1")
    if not 0 <= args.port <= 65535:
        raise FintsEdgeError(f"--port {args.port}: use 0-65535")
    data = args.data or default_data_dir()
    encoder = args.encoder or default_encoder_dir()
    aggregator = args.aggregator or default_aggregator_path()
    if not (encoder / "encoder.json").is_file():
        raise FintsEdgeError(
            f"{encoder}: no ONNX encoder; export it with `python -m export.onnx` (on a phone: "
            "copy the bundle's encoder/ folder and pass --encoder)"
        )
    if not aggregator.is_file():
        raise FintsEdgeError(f"{aggregator}: no aggregator; export it with `python -m export.onnx`")
    if args.default_user is not None:
        check_name(args.default_user, "--default-user")
    settings = Settings(
        model=check_gguf(args.model or default_gguf()),
        profiles_dir=args.profiles or data / "profiles",
        encoder_dir=encoder,
        aggregator_path=aggregator,
        token=None,
        mode=args.mode,
        k=args.k,
        strength=args.strength,
        rag=args.rag,
        max_tokens=args.max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        n_ctx=args.n_ctx,
        threads=args.threads,
        max_waiting=args.queue,
        max_body=args.max_body,
        max_upload=args.max_upload,
        default_user=args.default_user or _first_added(args.add_profile),
    )
    return settings


def _first_added(specs: list[str]) -> str | None:
    return specs[0].partition("=")[0] if specs else None


def add_profiles(s: Settings, specs: list[str]) -> list[str]:
    from fints_edge._serve_profiles import ProfileStore

    store, notes = ProfileStore(s.profiles_dir), []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise FintsEdgeError(f"--add-profile {spec!r}: use NAME=PATH")
        check_name(name, "--add-profile name")
        if store.import_profile(name, Path(path).expanduser()):
            notes.append(f"added profile '{name}' from {path}")
        else:
            notes.append(f"kept the existing profile '{name}' (delete it to add {path} again)")
    return notes


@cli_main("server stopped")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = args.data or default_data_dir()
    if args.show_token:
        if args.no_auth:
            raise FintsEdgeError("--show-token and --no-auth do not go together")
        print(load_or_create_token(data)[0])
        return 0
    settings = settings_from(args)
    notes = add_profiles(settings, args.add_profile)
    # The token comes last: a start that fails before this point never makes a token nobody saw.
    token, fresh = (None, False) if args.no_auth else load_or_create_token(data)
    settings = replace(settings, token=token)
    try:
        import uvicorn

        app = create_app(settings)
    except ImportError as e:
        raise FintsEdgeError(
            f"the server needs {e.name}: pip install 'fints-edge[serve]' "
            "(starlette, uvicorn, python-multipart)"
        ) from None
    names = app.state.api.store.names()
    url = f"http://{args.host}:{args.port}/"
    print(f"fints-edge server: {url}  model {settings.model_id}", file=sys.stderr)
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    print(
        f"  profiles in {settings.profiles_dir}: {', '.join(names) or 'none yet (upload a history in the app)'}",
        file=sys.stderr,
    )
    if settings.token is None:
        print("  auth OFF (--no-auth): any app on this device can use the server", file=sys.stderr)
    elif fresh:
        print(
            f"  a new bearer token was saved in {data / 'token'} (mode 600); it is shown only "
            f"this once:\n\n    {settings.token}\n\n  open {url}#token={settings.token} to sign "
            "the web app in (it keeps the token)",
            file=sys.stderr,
        )
    else:
        print(
            f"  bearer token in {data / 'token'} (`python -m fints_edge.serve --show-token`)",
            file=sys.stderr,
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main(None))
