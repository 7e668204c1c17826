"""The server on the tiny model: OpenAI wire format, per-user steering without cross-talk, the
bounded queue, cancellation, auth, and refusals that leave the disk untouched.

Most tests use starlette's TestClient; the openai client, concurrency, 503 and disconnect tests
run a real uvicorn server on a free 127.0.0.1 port in a thread (bounded loops, timeouts).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from fints_edge.config import REQUEST_KNOBS
from fints_edge.config import knobs as knob_table
from fints_edge.engine import EngineConfig
from fints_edge.errors import FintsEdgeError
from fints_edge.profile import Profile
from fints_edge.serve import Settings, create_app
from fints_edge.serve.auth import check_name, is_loopback, load_or_create_token

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOPICS = ["bridge", "rain", "library", "football", "election", "vaccine", "concert", "market"]
STYLES = {
    "alice": lambda t: f"{t} news, all lowercase!",
    "bob": lambda t: f"BREAKING: THE {t.upper()} STORY",
}
# Strong steering: on the random tiny model the two users' answers then differ visibly.
STEER = {"strength": 40.0}


def history_rows(user: str) -> list[dict[str, str]]:
    return [
        {
            "input": f"Write a headline about the {t}.",
            "output": STYLES[user](t),
            "rejected": f"The {t.title()} Story",
        }
        for t in TOPICS
    ]


@pytest.fixture(scope="session")
def user_profiles(tiny, onnx_encoder_dir, tmp_path_factory) -> Path:
    """alice.npz and bob.npz, built on the device (fints_edge.learn) at layers 1 and 2."""
    from fints_edge.learn import main as learn_main

    d = tmp_path_factory.mktemp("serve-profiles")
    for user in STYLES:
        h = d / f"{user}.jsonl"
        h.write_text("".join(json.dumps(r) + "\n" for r in history_rows(user)))
        rc = learn_main(
            ["--model", str(tiny.gguf_path), "--history", str(h), "--out", str(d / f"{user}.npz"),
             "--layers", "1", "2", "--encoder", str(onnx_encoder_dir), "--n-ctx", "256",
             "--threads", "1", "--quiet"]
        )  # fmt: skip
        assert rc == 0
        h.unlink()
    return d


@pytest.fixture(scope="module")
def make_settings(tiny, user_profiles, onnx_encoder_dir, onnx_aggregator_path, tmp_path_factory):
    """Settings over a fresh copy of the two profiles (each test may write to its copy)."""

    def make(**changes) -> Settings:
        profiles = tmp_path_factory.mktemp("data") / "profiles"
        profiles.mkdir(parents=True)
        for p in user_profiles.glob("*.npz"):
            shutil.copy(p, profiles / p.name)
        base = Settings(
            model=tiny.gguf_path,
            profiles_dir=profiles,
            encoder_dir=onnx_encoder_dir,
            aggregator_path=onnx_aggregator_path,
            token=TOKEN,
            engine=EngineConfig(max_tokens=8, n_ctx=512, threads=1),
            max_tokens_limit=64,
            default_user="alice",
        )
        knob_changes = {k: changes.pop(k) for k in list(changes) if k in knob_table()}
        return replace(base, engine=replace(base.engine, **knob_changes), **changes)

    return make


@contextmanager
def client_for(settings: Settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def client(make_settings):
    with client_for(make_settings()) as c:
        yield c


@pytest.fixture(scope="module")
def shared_client(make_settings):
    """For requests that must not write anything: one app (and model load) for all of them."""
    with client_for(make_settings(max_upload=200_000)) as c:
        yield c


def ask(text: str, user: str | None = "alice", **extra) -> dict:
    body = {"messages": [{"role": "user", "content": text}], "fints": dict(STEER)} | extra
    if user is not None:
        body["user"] = user
    return body


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def sse_events(lines) -> list:
    """Parse 'data: ...' lines up to [DONE] (the [DONE] itself is returned as the string)."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
            if data == "[DONE]":
                break
    return out


def streamed_text(events: list) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content", "")
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


# -- auth and plain facts -----------------------------------------------------------------------
def test_every_api_request_needs_the_token_but_the_app_shell_does_not(shared_client):
    client = shared_client
    for path in ("/health", "/v1/models", "/v1/profiles", "/v1/jobs"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in r.json()["error"]["message"]
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "wrong bearer token"
    r = client.post("/v1/chat/completions", json=ask("hi"))
    assert r.status_code == 401
    for path in ("/", "/app.js", "/style.css", "/manifest.webmanifest", "/sw.js"):
        assert client.get(path).status_code == 200, path
    assert "<title>fints-edge</title>" in client.get("/").text
    manifest = client.get("/manifest.webmanifest")
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    assert {i["sizes"] for i in manifest.json()["icons"]} >= {"192x192", "512x512"}
    assert "javascript" in client.get("/sw.js").headers["content-type"]
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]


def test_health_and_models(shared_client):
    client = shared_client
    h = client.get("/health", headers=AUTH).json()
    assert h["status"] == "ok" and h["profiles"] == 2 and h["auth"] is True
    assert h["queue"]["max_waiting"] == 4 and h["default_user"] == "alice"
    d = EngineConfig()  # the server's steering defaults are the engine's
    assert h["defaults"] == {"k": d.k, "strength": d.strength, "rag": 0, "max_tokens": 8}
    models = client.get("/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["tiny-f32"]


def test_health_shows_what_an_uncalibrated_profile_gets_the_models_row_under_the_flags(
    make_settings, tiny, monkeypatch
):
    """The web app's placeholders come from /health: on a model with a row (Qwen-0.5B's
    strength 0.125) they showed the server's 0.25 that no profile of that model got."""
    from fints_edge import model_defaults
    from fints_edge.llama.model import model_shape
    from fints_edge.model_defaults import ModelRow

    arch, n_layer, n_embd = model_shape(tiny.gguf_path)
    assert (arch, n_layer) == ("llama", 4)
    row = ModelRow("tiny.gguf", arch, n_layer, n_embd, {"strength": 7.0, "k": 2}, "a test")
    monkeypatch.setattr(model_defaults, "TABLE", (row,))
    with client_for(make_settings()) as c:
        h = c.get("/health", headers=AUTH).json()
    assert (h["defaults"]["strength"], h["defaults"]["k"]) == (7.0, 2)
    assert h["model_defaults"].startswith("the defaults for tiny.gguf (strength 7, k 2")
    with client_for(make_settings(k=5, operator_knobs=frozenset({"k"}))) as c:
        h = c.get("/health", headers=AUTH).json()
    assert (h["defaults"]["strength"], h["defaults"]["k"]) == (7.0, 5)  # the operator's k


def test_token_is_made_once_private_and_refused_when_readable(tmp_path):
    token, fresh = load_or_create_token(tmp_path / "data")
    path = tmp_path / "data" / "token"
    assert fresh and len(token) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert load_or_create_token(tmp_path / "data") == (token, False)
    path.chmod(0o644)
    with pytest.raises(FintsEdgeError, match="chmod 600"):
        load_or_create_token(tmp_path / "data")


def test_names_and_hosts():
    for good in ("alice", "Bob_2", "a-b", "x" * 64):
        assert check_name(good) == good
    for bad in ("../x", "..", ".x", "a/b", "a\\b", "x.npz", "", " a", "x" * 65, None, 3, "é"):
        with pytest.raises(FintsEdgeError, match="not allowed"):
            check_name(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.org")


def test_cli_refuses_an_exposed_host_without_token_and_shows_the_token(tmp_path):
    run = [sys.executable, "-m", "fints_edge.serve", "--data", str(tmp_path / "d")]
    r = subprocess.run([*run, "--host", "0.0.0.0", "--no-auth"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: --host 0.0.0.0")
    assert "Traceback" not in r.stderr and not (tmp_path / "d").exists()
    bad = subprocess.run(
        [*run, "--model", str(tmp_path / "no.gguf")], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "no such model file" in bad.stderr
    assert not (tmp_path / "d" / "token").exists()  # a failed start makes no unseen token
    shown = subprocess.run([*run, "--show-token"], capture_output=True, text=True)
    assert shown.returncode == 0
    assert shown.stdout.strip() == (tmp_path / "d" / "token").read_text().strip()


# -- chat ---------------------------------------------------------------------------------------
def test_streamed_and_whole_answers_agree_and_carry_the_fints_facts(shared_client):
    client = shared_client
    text = "Write a headline about the rain."
    whole = client.post("/v1/chat/completions", json=ask(text), headers=AUTH).json()
    answer = whole["choices"][0]["message"]["content"]
    assert answer and whole["object"] == "chat.completion" and whole["model"] == "tiny-f32"
    assert whole["choices"][0]["finish_reason"] == "length"  # 8 tokens, no EOS on this model
    assert whole["usage"]["completion_tokens"] == 8 and whole["usage"]["prompt_tokens"] > 10
    info = whole["fints"]
    assert info["user"] == "alice" and info["steered"] and info["strength"] == 40.0
    assert info["retrieved"][0]["input"] == text and info["retrieved"][0]["similarity"] > 0.99
    body = ask(text, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed_text(events) == answer
    finals = [e for e in events[:-1] if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["fints"]["user"] == "alice"
    assert events[-2]["choices"] == [] and events[-2]["usage"] == whole["usage"]


def test_the_user_field_picks_the_profile_and_fints_sets_the_knobs(shared_client):
    client = shared_client
    text = "Write a headline about the market."
    a = content(client.post("/v1/chat/completions", json=ask(text, "alice"), headers=AUTH))
    b = content(client.post("/v1/chat/completions", json=ask(text, "bob"), headers=AUTH))
    assert a != b  # two users' steering
    plain = {"steer": False}
    a0 = content(
        client.post("/v1/chat/completions", json=ask(text, "alice", fints=plain), headers=AUTH)
    )
    b0 = content(
        client.post("/v1/chat/completions", json=ask(text, "bob", fints=plain), headers=AUTH)
    )
    assert a0 == b0 != a  # unsteered: the model's own answer, whoever asks
    default = content(client.post("/v1/chat/completions", json=ask(text, None), headers=AUTH))
    assert default == a  # default_user is alice
    weak = ask(text, "alice", fints={"strength": 0.0})
    assert content(client.post("/v1/chat/completions", json=weak, headers=AUTH)) == a0
    k1 = client.post(
        "/v1/chat/completions",
        json=ask(text, "alice", fints={"k": 1, "strength": 40}),
        headers=AUTH,
    )
    assert len(k1.json()["fints"]["retrieved"]) == 1


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (
            {"fints": {"steer": True, "temperature": 1}},
            400,
            "unknown key(s) ['temperature'] in 'fints'",
        ),
        ({"fints": {"k": 0}}, 400, "'fints.k' must be an integer in [1, 64]"),
        ({"fints": {"strength": "a lot"}}, 400, "'fints.strength' must be a number"),
        ({"fints": {"steer": "yes"}}, 400, "'fints.steer' must be true or false"),
        ({"fints": [1]}, 400, "'fints' must be an object"),
        ({"mystery": 1}, 400, "unknown key(s) ['mystery']"),
        ({"n": 2}, 400, "'n' must be 1"),
        ({"stop": ["\n"]}, 400, "'stop' sequences are not supported"),
        ({"max_tokens": 65}, 400, "'max_tokens' must be an integer in [1, 64]"),
        ({"model": "gpt-4o"}, 400, "unknown model 'gpt-4o'"),
        ({"messages": []}, 400, "'messages' must be a non-empty list"),
        (
            {"messages": [{"role": "assistant", "content": "x"}]},
            400,
            "the last message must be the user's",
        ),
        ({"messages": [{"role": "user", "content": "x" * 9000}]}, 400, "the limit is 8000"),
        ({"user": "carol"}, 404, "no profile named 'carol'"),
        ({"user": "../x"}, 400, "user '../x' is not allowed"),
    ],
)
def test_bad_chat_requests_are_refused_with_a_json_message(shared_client, body, status, needle):
    client = shared_client
    r = client.post("/v1/chat/completions", json=ask("Write a headline.") | body, headers=AUTH)
    assert r.status_code == status
    error = r.json()["error"]
    assert needle in error["message"] and "Traceback" not in r.text


def test_accepted_openai_params_and_text_parts(shared_client):
    client = shared_client
    text = "Write a headline about the bridge."
    base = content(client.post("/v1/chat/completions", json=ask(text), headers=AUTH))
    parts = [
        {"type": "text", "text": "Write a headline "},
        {"type": "text", "text": "about the bridge."},
    ]
    extra = {"temperature": 0.7, "top_p": 0.9, "seed": 3, "n": 1, "model": "tiny-f32",
             "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]}  # fmt: skip
    assert (
        content(client.post("/v1/chat/completions", json=ask(text) | extra, headers=AUTH)) == base
    )


# -- no cross-talk ------------------------------------------------------------------------------
REQUESTS = [  # (user, text, knobs): different users, inputs and knobs, interleaved
    ("alice", "Write a headline about the rain.", {"strength": 40.0}),
    ("bob", "Write a headline about the rain.", {"strength": 40.0}),
    ("alice", "Write a headline about the concert.", {"strength": 25.0, "k": 2}),
    ("bob", "Write a headline about the library.", {"strength": 40.0, "rag": 1}),
    ("bob", "Write a headline about the rain.", {"steer": False}),
    ("alice", "Write a headline about the rain.", {"strength": 40.0}),
]


def alone(settings: Settings, user: str) -> dict[tuple[str, str], str]:
    """Each of ``user``'s requests answered by an Engine of its own that never saw another user
    (no server code involved: the baseline cannot share a server bug)."""
    from fints_edge.engine import Engine

    s = settings
    config = s.engine
    out = {}
    with Engine(
        s.model, s.profiles_dir / f"{user}.npz", config,
        encoder_dir=s.encoder_dir, aggregator_path=s.aggregator_path,
    ) as engine:  # fmt: skip
        for u, text, knobs in REQUESTS:
            if u == user:
                d = {n: getattr(s.engine, n) for n in REQUEST_KNOBS} | knobs
                steer = d.pop("steer", True)
                engine.configure(**d)
                out[(text, json.dumps(knobs))] = engine.reply(text, steer=steer).text
    return out


@pytest.fixture(scope="module")
def alone_answers(make_settings):
    settings = make_settings()
    return {u: alone(settings, u) for u in STYLES}


def test_interleaved_requests_for_two_users_equal_each_alone(shared_client, alone_answers):
    client = shared_client
    for _ in range(2):
        for user, text, knobs in REQUESTS:
            r = client.post("/v1/chat/completions", json=ask(text, user, fints=knobs), headers=AUTH)
            assert content(r) == alone_answers[user][(text, json.dumps(knobs))], (user, text, knobs)
    assert (
        alone_answers["alice"][(REQUESTS[0][1], json.dumps(REQUESTS[0][2]))]
        != alone_answers["bob"][(REQUESTS[1][1], json.dumps(REQUESTS[1][2]))]
    )


# -- profiles -----------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden temp files included) with its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_calibrated_profile_is_answered_at_its_own_setting(make_settings):
    """alice's stored calibration says "no steering, one example"; the request's own knobs
    override it; bob (not calibrated) gets the server's defaults; listing and /why show it."""
    settings = make_settings(strength=40.0)
    path = settings.profiles_dir / "alice.npz"
    calibration = {"version": 1, "changes": {"strength": 0.0, "rag": 1, "layers": [2]},
                   "label": "no steering, rag 1", "score": 0.5, "unsteered_score": 0.5,
                   "default_score": 0.1, "held_out": 4}  # fmt: skip
    replace(Profile.load(path), calibration=calibration).save(path)
    text = "Write a headline about the rain."
    with client_for(settings) as c:

        def fints(user: str, **knobs) -> dict:
            body = {"messages": [{"role": "user", "content": text}], "user": user}
            if knobs:
                body["fints"] = knobs
            r = c.post("/v1/chat/completions", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
            return r.json()["fints"]

        own = fints("alice")
        assert (own["strength"], own["rag"], own["layers"], own["steered"]) == (0.0, 1, [2], False)
        asked = fints("alice", strength=40.0)
        assert (asked["strength"], asked["rag"], asked["steered"]) == (40.0, 1, True)
        other = fints("bob")  # alice's calibration does not reach the next user
        assert (other["strength"], other["rag"], other["layers"]) == (40.0, 0, None)
        assert other["steered"]
        listed = {p["name"]: p for p in c.get("/v1/profiles", headers=AUTH).json()["data"]}
        assert listed["alice"]["calibration"]["label"] == "no steering, rag 1"
        assert listed["bob"]["calibration"] is None
        why = c.post("/v1/profiles/alice/why", json={"input": text}, headers=AUTH).json()
        assert why["calibration"] == "no steering, rag 1"


def test_add_why_and_forget_an_item(client):
    folder = client.app.state.api.store.folder
    before = snapshot(folder)
    text = "Write a headline about the harbour."
    r = client.post(
        "/v1/profiles/alice/items",
        json={
            "input": text,
            "output": "harbour news, all lowercase!",
            "rejected": "The Harbour Story",
        },
        headers=AUTH,
    )
    assert r.status_code == 201 and r.json() == {"user": "alice", "id": 8, "items": 9}
    assert snapshot(folder)["alice.npz"] != before["alice.npz"]
    assert snapshot(folder)["bob.npz"] == before["bob.npz"]
    why = client.post(
        "/v1/profiles/alice/why", json={"input": text, "fints": {"k": 2}}, headers=AUTH
    )
    top = why.json()["retrieved"]
    assert len(top) == 2 and top[0]["id"] == 8 and top[0]["similarity"] > 0.99
    assert top[0]["output"] == "harbour news, all lowercase!" and abs(top[0]["weight"] - 0.5) < 1e-6
    details = client.get("/v1/profiles/alice", headers=AUTH).json()
    assert details["items"] == 9 and details["history"][8]["input"] == text
    # the chat sees the new item at once
    info = client.post("/v1/chat/completions", json=ask(text), headers=AUTH).json()["fints"]
    assert info["retrieved"][0]["id"] == 8
    good = client.post(
        "/v1/profiles/alice/items",
        json={"input": "Write about the moon.", "output": "moon news"},
        headers=AUTH,
    )
    assert good.status_code == 201 and good.json()["id"] == 9  # contrast: the model's own answer
    assert client.delete("/v1/profiles/alice/items/9", headers=AUTH).json()["items"] == 9
    gone = client.delete("/v1/profiles/alice/items/8", headers=AUTH)
    assert gone.status_code == 200 and gone.json() == {"user": "alice", "forgot": 8, "items": 8}
    why = client.post("/v1/profiles/alice/why", json={"input": text}, headers=AUTH).json()
    assert all(item["input"] != text for item in why["retrieved"])
    listed = client.get("/v1/profiles", headers=AUTH).json()["data"]
    assert [(p["name"], p["items"]) for p in listed] == [("alice", 8), ("bob", 8)]


def test_upload_builds_a_profile_as_a_job_with_progress(client):
    rows = history_rows("bob")[:4]
    rows.append({"input": "Write a headline about the zoo.", "output": "BREAKING: THE ZOO STORY"})
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = client.post(
        "/v1/profiles", data={"name": "carol", "layers": "1,2"},
        files={"history": ("mine.jsonl", data, "application/jsonl")}, headers=AUTH,
    )  # fmt: skip
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and job["total"] == 6  # 1 negative + 5
    deadline = time.monotonic() + 60
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
    assert job["state"] == "done", job
    # every row has a contrast (the zoo row's is the model's own answer): none may be lost, and
    # the file holds exactly the uploaded items, in order
    assert job["progress"] == 1.0 and (job["result"]["items"], job["result"]["dropped"]) == (5, 0)
    assert job["result"]["layers"] == [1, 2]
    built = Profile.load(client.app.state.api.store.folder / "carol.npz")
    assert built.inputs.tolist() == [r["input"] for r in rows]
    assert built.outputs.tolist() == [r["output"] for r in rows]
    listed = {p["name"]: p for p in client.get("/v1/profiles", headers=AUTH).json()["data"]}
    assert listed["carol"]["items"] == 5 and listed["carol"]["layers"] == [1, 2]
    again = client.post(
        "/v1/profiles", data={"name": "carol"}, files={"history": ("h.jsonl", data)}, headers=AUTH
    )
    assert again.status_code == 409 and "exists" in again.json()["error"]["message"]
    answer = client.post(
        "/v1/chat/completions", json=ask("Write a headline about the zoo.", "carol"), headers=AUTH
    )
    assert answer.json()["fints"]["retrieved"][0]["input"] == "Write a headline about the zoo."
    assert client.delete("/v1/profiles/carol", headers=AUTH).json() == {"deleted": "carol"}
    assert (
        client.post("/v1/chat/completions", json=ask("x", "carol"), headers=AUTH).status_code == 404
    )


def upload(client, name: str, rows: list[dict], **form) -> dict:
    """POST /v1/profiles and poll the job until it ends; returns the finished job."""
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = client.post(
        "/v1/profiles", data={"name": name, **form},
        files={"history": ("mine.jsonl", data, "application/jsonl")}, headers=AUTH,
    )  # fmt: skip
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    deadline = time.monotonic() + 120
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
    return job


def test_a_server_built_profile_stores_what_the_learn_cli_stores(
    client, tiny, onnx_encoder_dir, tmp_path
):
    """One recipe (fints_edge.learn.recipe): with no layers given, both build the default layer
    and the default sites, reading and layout, with opening signals."""
    from fints_edge.learn import Recipe
    from fints_edge.learn import main as learn_main

    rows = history_rows("alice")[:3]
    job = upload(client, "dora", rows)
    assert job["state"] == "done", job
    served = Profile.load(client.app.state.api.store.folder / "dora.npz")
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = learn_main(
        ["--model", str(tiny.gguf_path), "--history", str(tmp_path / "h.jsonl"),
         "--out", str(tmp_path / "cli.npz"), "--encoder", str(onnx_encoder_dir),
         "--n-ctx", "512", "--threads", "1", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    cli = Profile.load(tmp_path / "cli.npz")
    recipe = ("sites", "attn_reading", "prompt_format", "opening_tokens")
    assert {k: getattr(served, k) for k in recipe} == {k: getattr(cli, k) for k in recipe}
    assert served.layers.tolist() == cli.layers.tolist() == Recipe().layers_for(4)
    assert served.sites == Recipe().sites and job["result"]["sites"] == list(served.sites)
    assert served.signals.shape == cli.signals.shape and served.opening is not None
    assert served.inputs.tolist() == cli.inputs.tolist()


def test_a_build_with_calibration_stores_candidate_layers_and_the_setting_it_chose(
    make_settings,
):
    """calibrate=1: the job learns the candidate layers (as learn --calibrate does), reports its
    calibration phase and a bar that ends at 1, and the profile arrives calibrated to ONE of
    them; the work file never shows in the listing; too short a history is refused at once."""
    from fints_edge.calibrate import MOST_SETTINGS
    from fints_edge.layers import candidate_layers

    settings = make_settings()
    rows = [r | {"timestamp": 1_700_000_000 + 86_400 * i} for i, r in
            enumerate(history_rows("alice") + history_rows("bob")[:4])]  # fmt: skip
    with client_for(settings) as c:
        short = c.post("/v1/profiles", data={"name": "gus", "calibrate": "1"},
                       files={"history": ("h.jsonl", b'{"input": "a", "output": "b"}\n')},
                       headers=AUTH)  # fmt: skip
        assert short.status_code == 400 and "calibration holds out 4" in short.text, short.text
        bad = c.post("/v1/profiles", data={"name": "gus", "calibrate": "maybe"},
                     files={"history": ("h.jsonl", b'{"input": "a", "output": "b"}\n')},
                     headers=AUTH)  # fmt: skip
        assert bad.status_code == 400 and "'calibrate' must be 1 or 0" in bad.text
        phases: list[str] = []
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        r = c.post("/v1/profiles", data={"name": "gus", "calibrate": "1"},
                   files={"history": ("mine.jsonl", data)}, headers=AUTH)  # fmt: skip
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        # 12 items (negatives given), then one step per setting calibration may measure
        assert job["calibrate"] and job["total"] == 12 + MOST_SETTINGS
        deadline = time.monotonic() + 180
        listed_while_running = 0
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            phases.append(job["phase"])
            listed = [p["name"] for p in c.get("/v1/profiles", headers=AUTH).json()["data"]]
            assert not any(n.startswith(".") for n in listed), listed  # never the work file
            time.sleep(0.05)
            job = c.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
            if job["state"] == "running":  # it was running when listed: nothing shows yet
                assert "gus" not in listed
                listed_while_running += 1
        assert listed_while_running > 0
        assert job["state"] == "done", job
        assert job["progress"] == 1.0 and any(p.startswith("calibrating: ") for p in phases)
        result = job["result"]
        assert result["layers"] == candidate_layers(4) and len(result["layers"]) > 1
        assert result["calibration_error"] is None
        assert result["calibration"]["summary"].startswith("calibrated on 4 held-out items")
        stored = Profile.load(settings.profiles_dir / "gus.npz").calibration
        assert stored is not None and not stored.get("provisional")
        assert len(stored["changes"]["layers"]) == 1
        assert stored["changes"]["layers"][0] in result["layers"]
        assert all(len(t["changes"]["layers"]) == 1 for t in stored["tried"])
        listed = {p["name"]: p for p in c.get("/v1/profiles", headers=AUTH).json()["data"]}
        assert listed["gus"]["calibration"]["label"] == stored["label"]
        assert sorted(p.name for p in settings.profiles_dir.iterdir()) == [
            "alice.npz", "bob.npz", "gus.npz"]  # fmt: skip


def test_a_history_without_any_contrast_fails_its_job_with_the_reason(client):
    rows = [{"input": "Write a headline.", "output": "same text", "rejected": "same text"}]
    job = upload(client, "erin", rows)
    assert job["state"] == "failed"
    assert job["error"].startswith("none of the 1 history item(s) was usable"), job
    assert not (client.app.state.api.store.folder / "erin.npz").exists()


def test_another_error_while_learning_is_not_called_an_unusable_history(client, monkeypatch):
    from fints_edge.learn import Learner

    def broken(*_a, **_k):
        raise ValueError("a bug while learning")

    monkeypatch.setattr(Learner, "new_profile", broken)
    job = upload(client, "fay", history_rows("bob")[:2])
    assert (job["state"], job["error"]) == ("failed", "internal error (ValueError)"), job


GOOD_ROW = json.dumps({"input": "a", "output": "b"}) + "\n"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"),
    [
        ("post", "/v1/chat/completions", {"content": b"{not json"}, 400, "not valid JSON at line 1"),
        ("post", "/v1/chat/completions", {"content": b""}, 400, "the request body is empty"),
        ("post", "/v1/chat/completions", {"json": ask("hi", "nobody")}, 404, "no profile named 'nobody'"),
        ("post", "/v1/chat/completions", {"json": ask("hi", "../x")}, 400, "'../x' is not allowed"),
        ("post", "/v1/chat/completions", {"content": b"{" + b" " * 1_100_000 + b"}"}, 413, "larger than 1048576 bytes"),
        ("post", "/v1/profiles/..%2Fx/items", {"json": {"input": "a", "output": "b"}}, 405, "Method Not Allowed"),
        ("get", "/v1/profiles/..%2F..%2Ftoken", {}, 404, "Not Found"),
        ("post", "/v1/profiles/.x/items", {"json": {"input": "a", "output": "b"}}, 400, "'.x' is not allowed"),
        ("post", "/v1/profiles/alice/items", {"json": {"input": "a"}}, 400, "'output' must be non-empty text"),
        ("post", "/v1/profiles/alice/items", {"json": {"input": "a", "output": "b", "x": 1}}, 400, "unknown key(s) ['x']"),
        ("delete", "/v1/profiles/alice/items/99", {}, 404, "profile 'alice' has no item 99"),
        ("delete", "/v1/profiles/zed", {}, 404, "no profile named 'zed'"),
        ("post", "/v1/profiles/alice/why", {"json": {"input": ""}}, 400, "'input' must be non-empty text"),
        ("post", "/v1/profiles", {"data": {"name": "new"}, "files": {"history": ("h.jsonl", b'{"input": "a"}\n')}}, 400, "h.jsonl:1: missing 'output'"),
        ("post", "/v1/profiles", {"data": {"name": "new"}, "files": {"history": ("h.jsonl", b"not json\n")}}, 400, "h.jsonl:1: not valid JSON"),
        ("post", "/v1/profiles", {"data": {"name": "new"}, "files": {"history": ("h.jsonl", b"\xff\xfe\x00")}}, 400, "h.jsonl: not UTF-8 text"),
        ("post", "/v1/profiles", {"data": {"name": "new"}, "files": {"history": ("h.jsonl", b"\n\n")}}, 400, "h.jsonl: the history is empty"),
        ("post", "/v1/profiles", {"data": {"name": "new"}, "files": {"history": ("../../h.jsonl", b'{"input": "a", "output": "b", "pickle": 1}\n')}}, 400, "h.jsonl:1: unknown field(s) ['pickle']"),
        ("post", "/v1/profiles", {"data": {"name": "../x"}, "files": {"history": ("h.jsonl", GOOD_ROW.encode())}}, 400, "profile name '../x' is not allowed"),
        ("post", "/v1/profiles", {"data": {"name": "alice"}, "files": {"history": ("h.jsonl", GOOD_ROW.encode())}}, 409, "a profile named 'alice' exists"),
        ("post", "/v1/profiles", {"json": {"name": "x"}}, 400, "send multipart/form-data"),
        ("post", "/v1/profiles", {"data": {"name": "big"}, "files": {"history": ("h.jsonl", GOOD_ROW.encode() * 20000)}}, 413, "larger than"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_4xx_json_error_and_change_nothing_on_disk(
    shared_client, method, path, kwargs, status, needle
):
    c = shared_client
    data_dir = c.app.state.api.store.folder.parent
    before = snapshot(data_dir)
    assert set(before) == {"profiles/alice.npz", "profiles/bob.npz"}
    r = c.request(method.upper(), path, headers=AUTH, **kwargs)
    time.sleep(0.05)  # a background job, were one wrongly started, would show by now
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert "Traceback" not in r.text and str(data_dir) not in r.text
    assert c.get("/v1/jobs", headers=AUTH).json()["data"] == []
    assert snapshot(data_dir) == before
    assert not list(Path(tempfile.gettempdir()).glob("fints-upload-*"))  # the upload's copy


def test_a_body_without_content_length_is_cut_off_at_the_limit(shared_client):
    data_dir = shared_client.app.state.api.store.folder.parent
    before = snapshot(data_dir)
    chunks = (b" " * 100_000 for _ in range(20))  # chunked: the size is only known as it comes
    r = shared_client.post("/v1/chat/completions", content=chunks, headers=AUTH)
    assert r.status_code == 413 and "larger than 1048576 bytes" in r.json()["error"]["message"]
    assert snapshot(data_dir) == before


def test_a_corrupt_profile_on_disk_is_a_clear_error(client):
    folder = client.app.state.api.store.folder
    (folder / "bob.npz").write_bytes(b"PK\x03\x04 not really a zip")
    r = client.post("/v1/chat/completions", json=ask("hi", "bob"), headers=AUTH)
    assert (
        r.status_code == 422
        and "profiles/bob.npz: not a readable profile" in r.json()["error"]["message"]
    )
    listed = {p["name"]: p for p in client.get("/v1/profiles", headers=AUTH).json()["data"]}
    assert listed["bob"]["error"].startswith("profiles/bob.npz: not a readable profile (")
    assert str(folder) not in listed["bob"]["error"] and listed["alice"]["items"] == 8
    assert content(client.post("/v1/chat/completions", json=ask("hi", "alice"), headers=AUTH))


# -- a real server: the openai client, concurrency, 503, disconnects --------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(settings: Settings):
    import uvicorn

    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    worker = app.state.api.worker
    while worker.status()["running"] + worker.status()["waiting"] and time.monotonic() < deadline:
        time.sleep(0.02)  # the default user's profile is loaded at start-up (warm-up job)
    assert worker.status()["engine_loaded"]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_official_openai_client_streamed_and_not(make_settings):
    import openai

    with live_server(make_settings()) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=30)
        assert [m.id for m in client.models.list()] == ["tiny-f32"]
        messages = [{"role": "user", "content": "Write a headline about the football."}]
        whole = client.chat.completions.create(
            model="tiny-f32",
            messages=messages,
            user="bob",
            max_tokens=12,
            extra_body={"fints": STEER},
        )
        answer = whole.choices[0].message.content
        assert (
            answer
            and whole.usage.completion_tokens == 12
            and whole.choices[0].finish_reason == "length"
        )
        assert whole.model_extra["fints"]["user"] == "bob"
        stream = client.chat.completions.create(
            model="tiny-f32", messages=messages, user="bob", max_tokens=12, stream=True,
            stream_options={"include_usage": True}, extra_body={"fints": STEER},
        )  # fmt: skip
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
        assert chunks[-1].usage.completion_tokens == 12
        plain = client.chat.completions.create(
            model="tiny-f32",
            messages=messages,
            user="bob",
            max_tokens=12,
            extra_body={"fints": {"steer": False}},
        )
        assert plain.choices[0].message.content != answer
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.BadRequestError, match="unknown key"):
            client.chat.completions.create(
                model="tiny-f32", messages=messages, extra_body={"fints": {"steering": True}}
            )


def test_concurrent_requests_for_two_users_equal_each_alone(make_settings, alone_answers):
    with live_server(make_settings(max_waiting=len(REQUESTS) * 2)) as (url, _):

        def one(req):
            user, text, knobs = req
            with httpx.Client(timeout=60) as h:
                stream = user == "bob"  # one user streams, the other does not
                r = h.post(
                    f"{url}/v1/chat/completions",
                    json=ask(text, user, fints=knobs, stream=stream),
                    headers=AUTH,
                )
                return streamed_text(sse_events(r.text.splitlines())) if stream else content(r)

        with ThreadPoolExecutor(len(REQUESTS) * 2) as pool:
            got = list(pool.map(one, REQUESTS * 2))
    want = [alone_answers[u][(t, json.dumps(k))] for u, t, k in REQUESTS * 2]
    assert got == want


def _long(url: str, max_tokens: int):
    body = ask("Write a headline about the election.", "alice", max_tokens=max_tokens, stream=True)
    return httpx.Client(timeout=60), (f"{url}/v1/chat/completions", body)


def test_a_full_queue_answers_503_with_retry_after_and_the_server_stays_up(make_settings):
    settings = make_settings(max_waiting=1, max_tokens_limit=3000, n_ctx=4096)
    with live_server(settings) as (url, app):

        def one(_):
            with httpx.Client(timeout=60) as h:
                r = h.post(
                    f"{url}/v1/chat/completions",
                    json=ask("Write a headline.", "bob", max_tokens=1500),
                    headers=AUTH,
                )
                return r.status_code, r.headers.get("retry-after"), r.json()

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(6)))
        codes = sorted(code for code, _, _ in results)
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) == {200, 503}, codes
        for code, retry, body in results:
            if code == 503:
                assert int(retry) >= 1 and body["error"]["code"] == "queue_full"
                assert "busy" in body["error"]["message"]
        status = app.state.api.worker.status()
        assert status["refused_busy"] == codes.count(503) and status["done"] >= 2
        h = httpx.get(f"{url}/health", headers=AUTH).json()
        assert h["status"] == "ok" and h["queue"]["running"] == 0 and h["queue"]["waiting"] == 0
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json=ask("Write a headline.", "bob"),
            headers=AUTH,
            timeout=30,
        )
        assert content(r)


def test_a_client_that_disconnects_mid_stream_frees_the_slot(make_settings):
    settings = make_settings(max_waiting=0, max_tokens_limit=3000, n_ctx=4096)
    with live_server(settings) as (url, app):
        worker = app.state.api.worker
        with httpx.Client(timeout=60) as h:  # how long the whole answer takes
            t0 = time.monotonic()
            r = h.post(
                f"{url}/v1/chat/completions",
                json=ask("Write a headline.", max_tokens=3000),
                headers=AUTH,
            )
            full = time.monotonic() - t0
            assert r.json()["usage"]["completion_tokens"] == 3000
        with httpx.Client(timeout=60) as h:
            body = ask("Write a headline.", max_tokens=3000, stream=True)
            with h.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH) as r:
                lines = r.iter_lines()
                got = [next(lines) for _ in range(6)]  # the role chunk and a few pieces
                assert worker.status()["running"] == 1
                busy = httpx.post(f"{url}/v1/chat/completions", json=ask("x"), headers=AUTH)
                assert busy.status_code == 503  # the one slot is taken
                t_close = time.monotonic()
            # leaving the block closed the connection mid-answer
        assert any('"content": "' in line for line in got)
        deadline = t_close + full / 2
        while worker.status()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        freed = time.monotonic() - t_close
        assert worker.status()["running"] == 0 and freed < full / 2, (freed, full)
        assert worker.status()["cancelled"] == 1
        r = httpx.post(
            f"{url}/v1/chat/completions", json=ask("Write a headline."), headers=AUTH, timeout=30
        )
        assert content(r)  # the slot is free again


def test_a_client_that_disconnects_while_waiting_leaves_the_queue(make_settings):
    settings = make_settings(max_waiting=1, max_tokens_limit=3000, n_ctx=4096)
    with live_server(settings) as (url, app):
        worker = app.state.api.worker
        body = ask("Write a headline.", max_tokens=3000, stream=True)
        with (
            httpx.Client(timeout=60) as running,
            running.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH) as r,
        ):
            lines = r.iter_lines()  # kept referenced: a collected iterator closes the response
            next(lines)
            waiting = httpx.Client(timeout=0.3)
            with pytest.raises(httpx.ReadTimeout):  # queued behind the running answer; gives up
                waiting.post(f"{url}/v1/chat/completions", json=ask("x"), headers=AUTH)
            waiting.close()
            deadline = time.monotonic() + 5
            while worker.status()["waiting"] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert worker.status()["waiting"] == 0 and worker.status()["running"] == 1
            assert worker.status()["cancelled"] == 1


class _FakeEngine:
    def __init__(self) -> None:
        self.closed = 0
        self.in_use = False

    def close(self) -> None:
        assert not self.in_use, "the engine was freed while a job still used it"
        self.closed += 1


def _worker_running(engine: _FakeEngine, job_fn):
    """A Worker over ``engine`` whose thread runs ``job_fn`` (submitted from an event loop)."""
    import asyncio

    from fints_edge.serve.worker import Worker

    async def run() -> Worker:
        worker = Worker(lambda _: engine, max_waiting=2)
        worker.submit(job_fn)
        return worker

    return asyncio.run(run())


def test_close_never_frees_the_engine_under_a_job_that_still_runs(tmp_path, caplog):
    """A job that ignores its cancellation outlives close(): the engine stays loaded until that
    job ends, and its thread frees it then (once)."""
    engine = _FakeEngine()
    (tmp_path / "me.npz").write_bytes(b"x")
    started, release = threading.Event(), threading.Event()

    def stubborn(worker, _job):  # e.g. stuck in one long llama.cpp call: never checks
        e = worker.engine_for(tmp_path / "me.npz")
        e.in_use = True
        started.set()
        release.wait(10)
        e.in_use = False
        return "done"

    worker = _worker_running(engine, stubborn)
    assert started.wait(10)
    with caplog.at_level("WARNING", logger="fints_edge.serve"):
        worker.close(timeout=0.2)
        assert engine.closed == 0 and worker.status()["engine_loaded"]
        assert "the engine stays loaded" in caplog.text
        release.set()
        worker._thread.join(10)
    assert not worker._thread.is_alive()
    assert engine.closed == 1 and not worker.status()["engine_loaded"]
    assert "the engine is freed" in caplog.text
    worker.close(timeout=0.2)  # idempotent
    assert engine.closed == 1


def test_close_frees_the_engine_once_the_job_stops(tmp_path):
    engine = _FakeEngine()
    (tmp_path / "me.npz").write_bytes(b"x")
    started = threading.Event()

    def polite(worker, job):  # checks between steps, as generation does per token
        worker.engine_for(tmp_path / "me.npz")
        started.set()
        while True:
            job.check()
            time.sleep(0.01)

    worker = _worker_running(engine, polite)
    assert started.wait(10)
    worker.close(timeout=10)
    assert engine.closed == 1 and not worker._thread.is_alive()
    assert worker.counts["cancelled"] == 1


def test_the_cli_serves_and_prints_the_token_once(
    tiny, user_profiles, onnx_encoder_dir, onnx_aggregator_path, tmp_path
):
    port = free_port()
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "fints_edge.serve", "--model", str(tiny.gguf_path), "--data", str(data),
           "--add-profile", f"alice={user_profiles / 'alice.npz'}", "--encoder", str(onnx_encoder_dir),
           "--aggregator", str(onnx_aggregator_path), "--port", str(port), "--threads", "1",
           "--n-ctx", "256", "--max-tokens", "4", "--log-level", "warning"]  # fmt: skip
    outputs = []
    for _ in range(2):
        proc = subprocess.Popen(
            cmd,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        try:
            token = (data / "token").read_text().strip() if (data / "token").exists() else None
            deadline = time.monotonic() + 30
            ok = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    token = token or (data / "token").read_text().strip()
                    ok = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=ask("hi", None),
                                    headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
                    break
                except (httpx.TransportError, FileNotFoundError):
                    time.sleep(0.2)
            assert ok is not None and ok.json()["fints"]["user"] == "alice"
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        outputs.append(err)
    assert token in outputs[0] and f"#token={token}" in outputs[0]
    assert token not in outputs[1] and "--show-token" in outputs[1]
    assert "kept the existing profile 'alice'" in outputs[1]
    assert stat.S_IMODE((data / "token").stat().st_mode) == 0o600
