"""The HTTP routes: OpenAI-compatible chat, profiles (list, build, add, forget, why) and jobs.

Anything that touches the model goes through the :class:`Worker` (one engine, one thread, a
bounded queue); every error leaves as JSON in OpenAI's ``{"error": {...}}`` shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fints_edge.config import REQUEST_KNOBS
from fints_edge.errors import FintsEdgeError
from fints_edge.model_defaults import describe, under_flags
from fints_edge.serve import wire as oai
from fints_edge.serve.auth import check_name
from fints_edge.serve.http import ClientGone, JobStream, error_body, read_json, wait_disconnect
from fints_edge.serve.profiles import Builder, NotFound
from fints_edge.serve.settings import Settings
from fints_edge.serve.worker import Cancelled, Event, Job, Worker

log = logging.getLogger("fints_edge.serve")


def served_shape(model: Path) -> tuple[str, int, int] | None:
    """The served GGUF's (arch, layers, width), for its per-model defaults; None (the server's
    own defaults shown) when its metadata cannot be read, which the first request reports."""
    from fints_edge.llama.model import model_shape

    try:
        return model_shape(model)
    except (FintsEdgeError, ImportError, OSError):
        return None


class Api:
    """State shared by the routes: settings, the profiles folder, the worker, the builder."""

    def __init__(self, settings: Settings, worker: Worker, builder: Builder) -> None:
        self.s = settings
        self.store = builder.store
        self.worker = worker
        self.builder = builder

    @functools.cached_property
    def shape(self) -> tuple[str, int, int] | None:
        """Read on the first /health, not at start-up: only that route needs it."""
        return served_shape(self.s.model)

    @property
    def defaults(self) -> oai.Knobs:
        return oai.Knobs(steer=True, config=self.s.engine, operator=self.s.operator_knobs)

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/profiles", self.list_profiles),
            Route("/v1/profiles", self.create_profile, methods=["POST"]),
            Route("/v1/profiles/{name}", self.profile),
            Route("/v1/profiles/{name}", self.delete_profile, methods=["DELETE"]),
            Route("/v1/profiles/{name}/items", self.add_item, methods=["POST"]),
            Route("/v1/profiles/{name}/items/{item:int}", self.forget, methods=["DELETE"]),
            Route("/v1/profiles/{name}/why", self.why, methods=["POST"]),
            Route("/v1/jobs", self.list_jobs),
            Route("/v1/jobs/{job}", self.job),
            Route("/v1/jobs/{job}", self.cancel_job, methods=["DELETE"]),
        ]

    # -- plain facts ------------------------------------------------------------------------
    async def health(self, _: Request) -> JSONResponse:
        jobs = [j for j in self.builder.jobs.values() if j.state in ("queued", "running")]
        uncalibrated = under_flags(self.s.engine, self.shape, self.s.operator_knobs)
        return JSONResponse(
            {
                "status": "ok",
                "model": self.s.model_id,
                "profiles": len(self.store.names()),
                "default_user": self.default_user(),
                "auth": self.s.token is not None,
                # what a profile without calibration gets: the model's row under the flags
                "defaults": {
                    **{n: getattr(uncalibrated, n) for n in REQUEST_KNOBS},
                    "max_tokens": self.s.engine.max_tokens,
                },
                "model_defaults": describe(self.shape),
                "queue": self.worker.status(),
                "profile_jobs": len(jobs),
            }
        )

    async def models(self, _: Request) -> JSONResponse:
        created = int(self.s.model.stat().st_mtime)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.s.model_id,
                        "object": "model",
                        "created": created,
                        "owned_by": "fints-edge",
                    },
                ],  # fmt: skip
            }
        )

    def default_user(self) -> str | None:
        if self.s.default_user:
            return self.s.default_user
        names = self.store.names()
        return names[0] if len(names) == 1 else None

    def user_path(self, user: str | None) -> tuple[str, Path]:
        name = user or self.default_user()
        if name is None:
            raise oai.BadRequest(
                "say which profile to use with the 'user' field; GET /v1/profiles lists them",
                "user",
            )
        return name, self.store.existing(name)

    # -- chat ---------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        s = self.s
        req = oai.parse_chat(
            await read_json(request),
            model_id=s.model_id,
            defaults=self.defaults,
            max_tokens=s.engine.max_tokens,
            max_tokens_limit=s.max_tokens_limit,
            max_input_chars=s.max_input_chars,
        )
        user, path = self.user_path(req.user)
        job = self.worker.submit(oai.chat_job(path, req))
        events = self.events(job, request)
        first = await anext(events, None)
        if first is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        cid, created = oai.new_id()
        if not req.stream:
            pieces: list[Event] = [first]
            async for event in events:
                pieces.append(event)
            last = pieces[-1]
            if last.kind != "done":
                return Response(status_code=499)
            return JSONResponse(oai.completion(cid, created, s.model_id, last.value, req, user))
        await events.aclose()  # from here StreamingResponse watches for the disconnect

        async def body() -> AsyncIterator[bytes]:
            try:
                yield oai.chunk(cid, created, s.model_id, {"role": "assistant", "content": ""})
                event = first
                while True:
                    if event.kind == "piece":
                        yield oai.chunk(cid, created, s.model_id, {"content": event.value})
                    elif event.kind == "done":
                        reply = event.value
                        finish = oai.finish_reason(reply, req.max_tokens)
                        info = oai.fints_info(reply, user)
                        yield oai.chunk(cid, created, s.model_id, {}, finish, fints=info)
                        if req.include_usage:
                            yield oai.chunk(cid, created, s.model_id, {}, usage=oai.usage(reply))
                        yield oai.DONE
                        return
                    else:
                        body = error_body(event.value)[1]
                        body["error"]["message"] = s.redact(body["error"]["message"])
                        yield oai.sse(body)
                        return
                    event = await job.events.get()
            finally:
                self.worker.cancel(job)  # no-op when finished; frees the slot when not

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return JobStream(body(), lambda: self.worker.cancel(job), headers=headers)

    async def events(self, job: Job, request: Request) -> AsyncGenerator[Event, None]:
        """The job's events until it ends, raising its error; cancels it if the client goes.
        Only the first event is raised as an HTTP error (later ones are streamed)."""
        gone = asyncio.ensure_future(wait_disconnect(request))
        try:
            while True:
                get = asyncio.ensure_future(job.events.get())
                done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    self.worker.cancel(job)
                    return
                event = get.result()
                if event.kind == "error":
                    if isinstance(event.value, Cancelled):
                        return
                    raise event.value
                yield event
                if event.kind == "done":
                    return
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone

    async def run(self, request: Request, fn: Callable[[Worker, Job], Any]) -> Any:
        """Run a non-streaming job on the engine thread and return its result."""
        job = self.worker.submit(fn)
        async for event in self.events(job, request):
            if event.kind == "done":
                return event.value
        raise ClientGone()

    # -- profiles ---------------------------------------------------------------------------
    async def list_profiles(self, _: Request) -> JSONResponse:
        data = [self.store.summary(n) for n in self.store.names()]
        return JSONResponse({"object": "list", "data": data, "default_user": self.default_user()})

    async def profile(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        self.store.existing(name)
        return JSONResponse(await asyncio.to_thread(self.store.details, name))

    async def create_profile(self, request: Request) -> JSONResponse:
        """multipart/form-data: ``name``, ``history`` (a JSONL file), optional ``layers`` and
        ``calibrate`` (``1``: choose the user's own setting on their newest items after
        learning: every setting of the grid, about a minute more on the default model)."""
        from fints_edge.serve.profiles import read_upload

        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise oai.BadRequest(
                "send multipart/form-data with fields 'name' and 'history' (a JSONL file), e.g. "
                "curl -F name=me -F history=@me.jsonl"
            )
        async with request.form(max_files=1, max_fields=5) as form:
            name = check_name(form.get("name"), "profile name")
            upload = form.get("history")
            if upload is None or isinstance(upload, str):
                raise oai.BadRequest("attach the history JSONL as the file field 'history'")
            data = await upload.read()
            filename = Path(upload.filename or "history.jsonl").name
            layers = parse_layers(form.get("layers"))
            calibrate = parse_flag(form.get("calibrate"), "calibrate")
        if self.store.path(name).exists():
            from fints_edge.serve.profiles import Conflict

            raise Conflict(f"a profile named '{name}' exists; pick another name or delete it")
        items = await asyncio.to_thread(read_upload, data, filename)
        job = self.builder.submit(name, items, layers, calibrate)
        return JSONResponse(
            {"job": job.to_json()}, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
        )

    async def delete_profile(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        path = self.store.existing(name)

        def remove(worker: Worker, _: Job) -> None:  # on the engine thread: no request races it
            path.unlink(missing_ok=True)
            worker.forget_loaded(path)

        await self.run(request, remove)
        return JSONResponse({"deleted": name})

    async def add_item(self, request: Request) -> JSONResponse:
        """``{"input", "output", "rejected"?}``: for this input the user wanted this output.
        Without ``rejected`` the contrast is the model's own unsteered answer ("good answer")."""
        name = request.path_params["name"]
        path = self.store.existing(name)
        body = await read_json(request)
        text, chosen, rejected = item_fields(body, self.s.max_input_chars)

        def learn(worker: Worker, _: Job) -> dict[str, int]:
            engine = worker.engine_for(path)
            item = engine.learn(text, chosen, rejected)
            worker.saved(path)
            return {"id": item, "items": engine.profile.n_items}

        result = await self.run(request, learn)
        return JSONResponse({"user": name} | result, status_code=201)

    async def forget(self, request: Request) -> JSONResponse:
        name, item = request.path_params["name"], request.path_params["item"]
        path = self.store.existing(name)

        def drop(worker: Worker, _: Job) -> dict[str, int]:
            engine = worker.engine_for(path)
            if not 0 <= item < engine.profile.n_items:
                raise NotFound(
                    f"profile '{name}' has no item {item}; its ids are 0..{engine.profile.n_items - 1}"
                )
            engine.forget(item)
            worker.saved(path)
            return {"forgot": item, "items": engine.profile.n_items}

        return JSONResponse({"user": name} | await self.run(request, drop))

    async def why(self, request: Request) -> JSONResponse:
        """``{"input", "fints"?}``: the items retrieved for this input, with their weights."""
        name = request.path_params["name"]
        path = self.store.existing(name)
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) - {"input", "fints"}:
            raise oai.BadRequest('send {"input": TEXT, "fints": {...}} (fints optional)')
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise oai.BadRequest("'input' must be non-empty text", "input")
        if len(text) > self.s.max_input_chars:
            raise oai.BadRequest(f"'input' is longer than {self.s.max_input_chars} characters")
        knobs = oai.parse_knobs(body.get("fints"), self.defaults)

        def plan(worker: Worker, _: Job) -> dict[str, Any]:
            engine = worker.engine_for(path)
            config = engine.configure(**knobs.changes(oai.stored_setting(engine)))
            p = engine.plan(text)
            timings = {k: round(v, 3) for k, v in p.timings_ms.items()}
            calibration = engine.profile.calibration
            return {"k": config.k, "retrieved": p.retrieved, "gate": p.gate,
                    "timings_ms": timings,
                    "calibration": calibration and calibration.get("label")}  # fmt: skip

        result = await self.run(request, plan)
        return JSONResponse({"user": name, "input": text} | result)

    # -- jobs -------------------------------------------------------------------------------
    async def list_jobs(self, _: Request) -> JSONResponse:
        jobs = [j.to_json() for j in reversed(self.builder.jobs.values())]
        return JSONResponse({"object": "list", "data": jobs})

    async def job(self, request: Request) -> JSONResponse:
        return JSONResponse(self.builder.get(request.path_params["job"]).to_json())

    async def cancel_job(self, request: Request) -> JSONResponse:
        return JSONResponse(self.builder.cancel(request.path_params["job"]).to_json())


def item_fields(body: object, max_chars: int) -> tuple[str, str, str | None]:
    if not isinstance(body, dict):
        raise oai.BadRequest('send {"input": ..., "output": ..., "rejected": ... (optional)}')
    unknown = sorted(set(body) - {"input", "output", "rejected"})
    if unknown:
        raise oai.BadRequest(f"unknown key(s) {unknown}; allowed: input, output, rejected")
    values: list[str | None] = []
    for key in ("input", "output", "rejected"):
        v = body.get(key)
        if v is None and key == "rejected":
            values.append(None)
            continue
        if not isinstance(v, str) or not v.strip():
            raise oai.BadRequest(f"'{key}' must be non-empty text", key)
        if len(v) > max_chars:
            raise oai.BadRequest(f"'{key}' is longer than {max_chars} characters", key)
        values.append(v)
    return values[0], values[1], values[2]  # type: ignore[return-value]


def parse_flag(value: object, field: str) -> bool:
    """A form's yes/no field: absent or empty is no."""
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise oai.BadRequest(f"'{field}' must be 1 or 0 (true or false), got {text[:20]!r}")


def parse_layers(value: object) -> list[int] | None:
    if value is None or value == "":
        return None
    try:
        layers = [int(x) for x in str(value).replace(",", " ").split()]
    except ValueError:
        raise oai.BadRequest("'layers' must be layer numbers like '20' or '20,22'") from None
    if not layers or len(layers) > 8:
        raise oai.BadRequest("give 1 to 8 layers")
    return layers
