"""What the local server costs over the engine itself, and what it serves with several users.

Two figures for ``make bench`` (called from bench/run.py):

- overhead: the same non-streamed steered request (same model, profile, knobs, input, greedy,
  ``max_tokens`` tokens) timed through the HTTP server (uvicorn on 127.0.0.1, a real socket, the
  bearer token, one kept-alive client connection) and in-process on an ``Engine`` built by the
  server's own ``open_engine``; interleaved per repetition as in bench/run.py, medians.
- load: ``users`` concurrent clients, each its own profile name and connection, each sending
  ``requests_per_user`` requests one after the other (every request with a timeout) to one
  server: completed requests/s, generated tokens/s, p50/p95 latency. The server answers with one
  engine on one thread, so this is about sequential throughput plus the cost of switching
  profiles between users (``Engine.use_profile``), which is what it measures.

``python -m bench.serve`` runs only this part on the default model and demo profile.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import grown, headline, median
from bench.render import render_readme
from fints_edge.errors import FintsEdgeError

TIMEOUT_S = 120.0  # per request; a 16-token answer takes well under a second here
START_TIMEOUT_S = 60.0  # uvicorn start plus loading the model with the first user's profile


def user_profiles(profile_path: Path, folder: Path, users: int, items: int | None) -> list[str]:
    """``users`` copies of one profile as user0.npz, user1.npz, ... in ``folder``."""
    from fints_edge.profile import Profile

    names = [f"user{i}" for i in range(users)]
    src = folder / f"{names[0]}.npz"
    profile = Profile.load(profile_path)
    if items is not None and items > profile.n_items:
        grown(profile, items).save(src)
    else:
        shutil.copyfile(profile_path, src)
    for name in names[1:]:
        shutil.copyfile(src, folder / f"{name}.npz")
    return names


@contextmanager
def live_server(settings: Any) -> Iterator[str]:
    """uvicorn with ``create_app(settings)`` on 127.0.0.1, a port the OS picks; stopped on exit."""
    import uvicorn

    from fints_edge.serve import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise FintsEdgeError("bench: uvicorn did not start on 127.0.0.1 (see the log above)")
        port = server.servers[0].sockets[0].getsockname()[1]
        worker = app.state.api.worker
        while time.monotonic() < deadline:  # the default user's profile loads at start-up
            st = worker.status()
            if st["engine_loaded"] and not st["running"] + st["waiting"]:
                break
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _body(text: str, user: str, knobs: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": text}],
        "user": user,
        "max_tokens": max_tokens,
        "fints": {"steer": True} | knobs,
    }


def _post(client: Any, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    r = client.post(f"{url}/v1/chat/completions", json=body)
    data = r.json()
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise FintsEdgeError(f"bench: the server answered {r.status_code}: {data}")
    return dt, data


def overhead(
    url: str, token: str | None, engine: Any, text: str, user: str, knobs: dict[str, Any],
    max_tokens: int, reps: int,
) -> dict[str, Any]:  # fmt: skip
    """Interleaved: the request in-process, then through HTTP, ``reps`` times after a warm-up."""
    import httpx

    engine.configure(max_tokens=max_tokens, **knobs)  # what the server's chat job does
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = _body(text, user, knobs, max_tokens)
    runs: dict[str, list[float]] = {"engine": [], "server": []}
    with httpx.Client(headers=headers, timeout=TIMEOUT_S) as client:
        local = engine.reply(text, steer=True)  # warm-up, and the answers to compare
        _, remote = _post(client, url, body)
        for _ in range(reps):
            t0 = time.perf_counter()
            engine.reply(text, steer=True)
            runs["engine"].append(time.perf_counter() - t0)
            runs["server"].append(_post(client, url, body)[0])
    engine_ms = median(runs["engine"]) * 1e3
    server_ms = median(runs["server"]) * 1e3
    return {
        "engine_ms": engine_ms,
        "server_ms": server_ms,
        "overhead_ms": server_ms - engine_ms,
        "overhead_paired_ms": median(
            [(s - e) * 1e3 for s, e in zip(runs["server"], runs["engine"], strict=True)]
        ),
        "completion_tokens": int(remote["usage"]["completion_tokens"]),
        "same_answer": remote["choices"][0]["message"]["content"] == local.text,
    }


def load(
    url: str, token: str | None, users: list[str], texts: list[str], knobs: dict[str, Any],
    max_tokens: int, requests_per_user: int,
) -> dict[str, Any]:  # fmt: skip
    """``len(users)`` clients at once, each sending its requests one after the other."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = threading.Barrier(len(users))
    done: list[tuple[float, int]] = []  # (latency s, completion tokens), completed requests
    failed: list[str] = []
    lock = threading.Lock()

    def client(u: int) -> None:
        with httpx.Client(headers=headers, timeout=TIMEOUT_S) as c:
            start.wait(timeout=TIMEOUT_S)
            for j in range(requests_per_user):
                text = texts[(u * requests_per_user + j) % len(texts)]
                try:
                    dt, data = _post(c, url, _body(text, users[u], knobs, max_tokens))
                except (httpx.HTTPError, FintsEdgeError, ValueError) as e:
                    with lock:
                        failed.append(f"{users[u]}: {type(e).__name__}: {e}")
                    continue
                with lock:
                    done.append((dt, int(data["usage"]["completion_tokens"])))

    threads = [threading.Thread(target=client, args=(u,), daemon=True) for u in range(len(users))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:  # bounded: every request has its timeout
        t.join(timeout=TIMEOUT_S * (requests_per_user + 1))
    wall = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        failed.append("a client thread did not finish in time")
    lat_ms = np.array([d for d, _ in done]) * 1e3
    tokens = sum(n for _, n in done)
    return {
        "users": len(users),
        "requests_per_user": requests_per_user,
        "completed": len(done),
        "failed": len(failed),
        "errors": failed[:3],
        "wall_s": wall,
        "requests_per_s": len(done) / wall,
        "tokens_per_s": tokens / wall,
        "latency_p50_ms": float(np.percentile(lat_ms, 50)) if len(done) else float("nan"),
        "latency_p95_ms": float(np.percentile(lat_ms, 95)) if len(done) else float("nan"),
    }


def serve_bench(
    model: Path,
    profile_path: Path,
    texts: Sequence[str],
    *,
    reps: int,
    users: int = 4,
    requests_per_user: int = 3,
    max_tokens: int = 16,
    items: int | None = 1000,
    threads: int = 1,
    encoder_dir: Path | None = None,
    aggregator_path: Path | None = None,
    token: bool = True,
    **knobs: Any,
) -> dict[str, Any]:
    """Both measurements against one server. ``texts[0]`` is the overhead request; the load
    requests cycle through ``texts``. ``knobs`` (k, strength, rag) default to the server's."""
    from fints_edge._paths import default_aggregator_path, default_encoder_dir
    from fints_edge.config import REQUEST_KNOBS, EngineConfig
    from fints_edge.serve import Settings, open_engine

    if reps < 1 or users < 1 or requests_per_user < 1 or not texts:
        raise FintsEdgeError("bench: need reps, users, requests_per_user >= 1 and some texts")
    with tempfile.TemporaryDirectory(prefix="fints-bench-serve-") as d:
        profiles = Path(d) / "profiles"
        profiles.mkdir()
        names = user_profiles(profile_path, profiles, users, items)
        s = Settings(
            model=Path(model),
            profiles_dir=profiles,
            encoder_dir=encoder_dir or default_encoder_dir(),
            aggregator_path=aggregator_path or default_aggregator_path(),
            token=secrets.token_urlsafe(32) if token else None,
            engine=EngineConfig(max_tokens=max_tokens, threads=threads),
            default_user=names[0],
            max_waiting=max(4, users),  # every client's request may wait; none is refused
        )
        knobs = {n: getattr(s.engine, n) for n in REQUEST_KNOBS} | knobs
        with live_server(s) as url, open_engine(s, profiles / f"{names[0]}.npz") as engine:
            over = overhead(url, s.token, engine, texts[0], names[0], knobs, max_tokens, reps)
            under_load = load(
                url, s.token, names, list(texts), knobs, max_tokens, requests_per_user
            )
        n_items = engine.profile.n_items
    return {
        "mode": s.engine.mode,
        "threads": threads,
        "max_tokens": max_tokens,
        "reps": reps,
        "profile_items": n_items,
        "auth": token,
        **knobs,
        **over,
        **{f"load_{k}": v for k, v in under_load.items()},
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise FintsEdgeError(f"bench: no VmHWM for process {pid}")


def server_peak_rss_mb(profile_path: Path, text: str, items: int = 1000, threads: int = 1) -> float:
    """Peak RSS of a fresh ``python -m fints_edge.serve`` process (its own process, unlike the
    figures above) after it has answered one steered request with a ``items``-item profile."""
    import subprocess

    import httpx

    with tempfile.TemporaryDirectory(prefix="fints-bench-rss-") as d:
        profiles = Path(d) / "profiles"
        profiles.mkdir()
        (name,) = user_profiles(profile_path, profiles, 1, items)
        port = _free_port()
        cmd = [
            sys.executable, "-m", "fints_edge.serve", "--no-auth", "--port", str(port),
            "--data", d, "--default-user", name, "--threads", str(threads),
            "--log-level", "warning",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise FintsEdgeError(f"bench: the server exited at start: {err[-300:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise FintsEdgeError(f"bench: the server did not start in {START_TIMEOUT_S} s")
                time.sleep(0.1)
            with httpx.Client(timeout=TIMEOUT_S) as client:
                _post(client, url, _body(text, name, {}, 32))
            return _peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions (default: 7)")
    p.add_argument("--users", type=int, default=4, help="concurrent clients (default: 4)")
    p.add_argument("--requests", type=int, default=3, help="requests per client (default: 3)")
    p.add_argument(
        "--merge",
        type=Path,
        help="add the figures to this results.json and re-render the README beside it (and "
        "README.md's figures when it is bench/results.json)",
    )
    args = p.parse_args(argv)
    from export.demo import TASK, ensure_profile, snippets
    from fints_edge._paths import default_gguf

    texts = [TASK + s for s in snippets("test")]
    out = serve_bench(
        default_gguf(), ensure_profile(), texts, reps=args.reps, users=args.users,
        requests_per_user=args.requests,
    )  # fmt: skip
    print(json.dumps(out, indent=2))
    if args.merge:
        results = json.loads(args.merge.read_text()) | {"serve": out} | headline(out)
        args.merge.write_text(json.dumps(results, indent=2) + "\n")
        (args.merge.parent / "README.md").write_text(render_readme(results))
        from bench import figures

        if args.merge.resolve() == (figures.ROOT / figures.BENCH).resolve():
            figures.main([])  # README.md's figures quote this file
    return 0


if __name__ == "__main__":
    sys.exit(main())
