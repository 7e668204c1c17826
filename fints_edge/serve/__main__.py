"""``python -m fints_edge.serve``: the command line; flags become :class:`Settings`, checked
before anything heavy loads."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fints_edge._cli import cli_main
from fints_edge.config import (
    GENERATION_FLAGS,
    REQUEST_KNOBS,
    STEERING_FLAGS,
    add_gate_and_sites,
    add_knob_arguments,
    config_from_args,
    flag_values,
)
from fints_edge.errors import FintsEdgeError
from fints_edge.serve.app import create_app
from fints_edge.serve.auth import check_name, default_data_dir, is_loopback, load_or_create_token
from fints_edge.serve.settings import Settings


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
    steer = p.add_argument_group(
        f"steering defaults (a request's 'fints' object overrides {', '.join(REQUEST_KNOBS)})"
    )
    add_knob_arguments(steer, (*STEERING_FLAGS, "rag"))
    add_gate_and_sites(steer)
    lim = p.add_argument_group("limits")
    add_knob_arguments(lim, GENERATION_FLAGS[1:])
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
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Check every flag and file before anything heavy loads (the token is added by main)."""
    from fints_edge._paths import default_aggregator_path, default_encoder_dir, default_gguf
    from fints_edge.llama.model import check_gguf

    if args.no_auth and not is_loopback(args.host):
        raise FintsEdgeError(
            f"--host {args.host} is reachable from other devices; that needs the token: "
            "drop --no-auth (or bind to 127.0.0.1)"
        )
    engine = config_from_args(args)
    if args.queue < 0:
        raise FintsEdgeError("--queue must be >= 0")
    if engine.max_tokens > args.max_tokens_limit:
        raise FintsEdgeError("--max-tokens must not exceed --max-tokens-limit")
    if not 0 <= args.port <= 65535:
        raise FintsEdgeError(f"--port {args.port}: use 0-65535")
    model = check_gguf(args.model or default_gguf())  # in the order of the command line
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
        model=model,
        profiles_dir=args.profiles or data / "profiles",
        encoder_dir=encoder,
        aggregator_path=aggregator,
        token=None,
        engine=engine,
        max_tokens_limit=args.max_tokens_limit,
        max_waiting=args.queue,
        max_body=args.max_body,
        max_upload=args.max_upload,
        default_user=args.default_user or _first_added(args.add_profile),
        operator_knobs=frozenset(flag_values(args)),
    )
    return settings


def _first_added(specs: list[str]) -> str | None:
    return specs[0].partition("=")[0] if specs else None


def add_profiles(s: Settings, specs: list[str]) -> list[str]:
    from fints_edge.serve.profiles import ProfileStore

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
