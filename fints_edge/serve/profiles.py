"""The profiles folder (one ``NAME.npz`` per user) and profiles built on the device from uploads.

A new profile is learned from an uploaded history JSONL by the on-device learner
(``fints_edge.learn``) on its own thread and its own llama context, so chatting goes on while it
runs; its progress is polled as a job. Asked to calibrate, the job then chooses the user's own
setting on their newest items (``fints_edge.calibrate``, as ``learn --calibrate`` does), from a
work file outside the profile listing. The profile file appears only when it is complete
(``Profile.save`` is atomic), and the uploaded copy is deleted whatever happens.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fints_edge.calibrate import MOST_SETTINGS, check_history_size, provisional
from fints_edge.errors import FintsEdgeError, HistoryError, ProfileError
from fints_edge.history import HistoryItem, read_history
from fints_edge.profile import Profile, read_header
from fints_edge.serve.auth import check_name, ensure_private_dir
from fints_edge.serve.settings import Settings

log = logging.getLogger("fints_edge.serve")


class NotFound(FintsEdgeError):
    """A profile, item or job that does not exist (HTTP 404)."""


class Conflict(FintsEdgeError):
    """The name is taken or being built (HTTP 409)."""


class ProfileStore:
    """Names map to ``folder/NAME.npz``; a name is checked before it ever becomes a path."""

    def __init__(self, folder: Path) -> None:
        self.folder = ensure_private_dir(folder)

    def path(self, name: object) -> Path:
        return self.folder / f"{check_name(name, 'user')}.npz"

    def existing(self, name: object) -> Path:
        path = self.path(name)
        if not path.is_file():
            raise NotFound(f"no profile named '{name}'; GET /v1/profiles lists them")
        return path

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.npz") if _is_name(p.stem))

    def summary(self, name: str) -> dict[str, Any]:
        """Cheap facts from the file's small members and headers (the signals are not read),
        with every check a full load makes on them (``fints_edge.profile.read_header``)."""
        path = self.existing(name)
        out: dict[str, Any] = {"name": name, "bytes": path.stat().st_size}
        try:
            h = read_header(path)
        except ProfileError as e:  # listing must survive one bad file; say what is wrong with it
            out["error"] = str(e).replace(str(self.folder) + os.sep, "profiles/")
            return out
        return out | {
            "items": h.n_items,
            "layers": list(h.layers),
            "sites": list(h.sites),
            "created": h.created,
            "calibration": _calibration_view(h.calibration),
        }

    def details(self, name: str) -> dict[str, Any]:
        """Every item (id, input, output, timestamp): what "forget" picks from."""
        path = self.existing(name)
        p = Profile.load(path)
        items = [
            {
                "id": i,
                "input": str(p.inputs[i]),
                "output": str(p.outputs[i]),
                "timestamp": None if math.isnan(t) else float(t),
            }
            for i, t in enumerate(p.timestamps.tolist())
        ]
        return {
            "name": name,
            "bytes": path.stat().st_size,
            "items": len(items),
            "layers": p.layers.tolist(),
            "sites": list(p.sites),
            "created": p.created,
            "history": items,
        }

    def import_profile(self, name: str, source: Path) -> bool:
        """Copy a validated profile in under ``name`` unless that name exists (False then)."""
        dest = self.path(name)
        if dest.exists():
            return False
        Profile.load(source).save(dest)
        return True


def _is_name(stem: str) -> bool:
    try:
        check_name(stem)
    except FintsEdgeError:
        return False
    return True


def read_upload(data: bytes, filename: str) -> list[HistoryItem]:
    """Validate an uploaded history exactly as the CLI reads a file; messages name the upload."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HistoryError(f"{filename}: not UTF-8 text (byte {e.start})") from None
    fd, tmp = tempfile.mkstemp(prefix="fints-upload-", suffix=".jsonl")  # outside the data folder
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return read_history(tmp)
    except HistoryError as e:
        raise HistoryError(str(e).replace(tmp, filename)) from None
    finally:
        os.unlink(tmp)


# -- building profiles on the device ---------------------------------------------------------------
@dataclass
class LearnJob:
    id: str
    user: str
    items: list[HistoryItem]
    layers: list[int] | None
    calibrate: bool = False
    state: str = "queued"  # queued, running, done, failed, cancelled
    phase: str = "waiting"
    done: int = 0
    total: int = 0
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "build_profile",
            "user": self.user,
            "calibrate": self.calibrate,
            "state": self.state,
            "phase": self.phase,
            "done": self.done,
            "total": self.total,
            "progress": round(self.done / self.total, 4) if self.total else 0.0,
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
            "result": self.result,
        }


class _Progress:
    """Stands in for the DeviceExtractor: counts its steps and stops it when cancelled."""

    def __init__(self, extractor: Any, job: LearnJob, n_negatives: int) -> None:
        self._ex, self._job = extractor, job
        self._negatives_left = n_negatives

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ex, name)

    def own_answer(self, *args: Any, **kwargs: Any) -> str:
        self._step("negatives")
        out = self._ex.own_answer(*args, **kwargs)
        if self._negatives_left > 0:  # retries do not count twice
            self._negatives_left -= 1
            self._job.done += 1
        return out

    def signal(self, *args: Any, **kwargs: Any) -> Any:
        self._step("signals")
        out = self._ex.signal(*args, **kwargs)
        self._job.done += 1
        return out

    def _step(self, phase: str) -> None:
        if self._job.cancel.is_set():
            raise _JobCancelled()
        self._job.phase = phase


class _JobCancelled(Exception):
    pass


class Builder:
    """Runs profile-building jobs one at a time on a thread of its own (bounded backlog)."""

    def __init__(self, store: ProfileStore, settings: Settings, max_jobs: int = 4) -> None:
        self.store, self.settings, self.max_jobs = store, settings, max_jobs
        self.jobs: OrderedDict[str, LearnJob] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False

    def submit(
        self,
        user: str,
        items: list[HistoryItem],
        layers: list[int] | None,
        calibrate: bool = False,
    ) -> LearnJob:
        with self._lock:
            if self._closing:
                raise FintsEdgeError("the server is shutting down")
            if self.store.path(user).exists():
                raise Conflict(f"a profile named '{user}' exists; pick another name or delete it")
            active = [j for j in self.jobs.values() if j.state in ("queued", "running")]
            if any(j.user == user for j in active):
                raise Conflict(f"a profile named '{user}' is being built already")
            if len(active) >= self.max_jobs:
                raise Conflict(f"{len(active)} profiles are being built; wait for one to finish")
            if calibrate:
                check_history_size(len(items))  # too few items: refused now, not after learning
            job = LearnJob(uuid.uuid4().hex[:12], user, items, layers, calibrate)
            n_neg = sum(it.rejected is None for it in items)
            # calibration's share of the bar: one step per setting it may measure
            job.total = n_neg + len(items) + (MOST_SETTINGS if calibrate else 0)
            self.jobs[job.id] = job
            while len(self.jobs) > 50:  # keep the newest finished jobs for polling
                oldest = next(iter(self.jobs.values()))
                if oldest.state in ("queued", "running"):
                    break
                self.jobs.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fints-learn", daemon=True)
                self._thread.start()
            self._wake.notify()
            return job

    def get(self, job_id: str) -> LearnJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job '{job_id}'")
        return job

    def cancel(self, job_id: str) -> LearnJob:
        job = self.get(job_id)
        job.cancel.set()
        with self._lock:
            if job.state == "queued":
                job.state, job.finished = "cancelled", time.time()
        return job

    def close(self) -> None:
        with self._lock:
            self._closing = True
            for job in self.jobs.values():
                job.cancel.set()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._lock:
                job = next((j for j in self.jobs.values() if j.state == "queued"), None)
                while job is None and not self._closing:
                    self._wake.wait()
                    job = next((j for j in self.jobs.values() if j.state == "queued"), None)
                if self._closing or job is None:
                    return
                job.state, job.phase = "running", "loading the model"
            try:
                job.result = self._build(job)
                job.state, job.phase = "done", "done"
            except _JobCancelled:
                job.state, job.phase = "cancelled", "cancelled"
            except FintsEdgeError as e:
                job.state, job.error = "failed", str(e)
            except Exception as e:  # a bug: logged for the operator, summarised for the user
                log.exception("profile job %s failed", job.id)
                job.state, job.error = "failed", f"internal error ({type(e).__name__})"
            finally:
                job.finished = time.time()
                job.items = []  # the uploaded texts are not kept in memory longer than needed

    def _build(self, job: LearnJob) -> dict[str, Any]:
        from fints_edge.encode import Encoder
        from fints_edge.learn import Learner, Recipe, new_extractor
        from fints_edge.llama.inject import open_steerable

        s = self.settings
        # as `python -m fints_edge.learn` (with --calibrate) stores
        recipe = Recipe(layers=tuple(job.layers or ()), for_calibration=job.calibrate)
        t0 = time.perf_counter()
        llm, injector = open_steerable(
            s.model, "exact", n_ctx=s.engine.n_ctx, n_threads=s.engine.threads
        )
        try:
            encoder = Encoder(s.encoder_dir, threads=s.engine.threads)
            extractor = new_extractor(llm, injector, recipe)
            n_neg = sum(it.rejected is None for it in job.items)
            learner = Learner(_Progress(extractor, job, n_neg), encoder, seed=s.engine.seed)  # type: ignore[arg-type]
            # NoUsableItems (a FintsEdgeError) says when no item had a contrast; any other
            # error leaves as what it is
            profile = learner.new_profile(job.items, opening=recipe.stores_opening, progress=False)
        finally:
            llm.close()
        dropped = len(job.items) - profile.n_items
        calibration, calibration_error = None, None
        if job.calibrate:
            try:
                calibration = self._calibrate(job, profile)
            except FintsEdgeError as e:  # e.g. too few items kept: the learned profile is kept
                calibration, calibration_error = provisional(profile), str(e)
            profile = replace(profile, calibration=calibration)
        job.phase = "saving"
        dest = self.store.path(job.user)
        if dest.exists():
            raise Conflict(f"a profile named '{job.user}' appeared meanwhile; nothing was written")
        profile.save(dest)
        return {
            "user": job.user,
            "items": profile.n_items,
            "dropped": dropped,
            "layers": profile.layers.tolist(),
            "sites": list(profile.sites),
            "calibration": _calibration_view(calibration),
            "calibration_error": calibration_error,
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def _calibrate(self, job: LearnJob, profile: Profile) -> dict[str, Any]:
        """The user's own setting on their newest items (fints_edge.calibrate), measured by an
        engine of its own on a work file the listing never shows (a dot name, deleted after)."""
        from fints_edge.calibrate import Calibrator
        from fints_edge.engine import Engine
        from fints_edge.model_defaults import under_flags

        s = self.settings
        job.phase = "calibrating: loading"
        start = job.done
        work = self.store.folder / f".{job.id}.calibrating.npz"

        def progress(line: str) -> None:
            if job.cancel.is_set():
                raise _JobCancelled()
            job.done = min(job.done + 1, start + MOST_SETTINGS - 1)
            job.phase = f"calibrating: {line}"

        try:
            replace(profile, calibration=provisional(profile)).save(work)
            # from what the user would get uncalibrated: the server's setting, the model's row
            # under the operator's flags (the calibration's changes are applied over both)
            start_from = under_flags(s.engine, profile.model, s.operator_knobs)
            with Engine(s.model, work, start_from, encoder_dir=s.encoder_dir,
                        aggregator_path=s.aggregator_path) as engine:  # fmt: skip
                result = Calibrator(
                    engine, budget_s=s.calibration_budget_s, progress=progress
                ).run()
        finally:
            work.unlink(missing_ok=True)
        job.done = start + MOST_SETTINGS
        return result.to_json()


def profile_error_status(e: Exception) -> int:
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, Conflict):
        return 409
    if isinstance(e, ProfileError):
        return 422
    return 400


def _calibration_view(calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the listing shows of a stored calibration: the setting and how it measured."""
    if not calibration:
        return None
    keys = (
        "label",
        "changes",
        "score",
        "unsteered_score",
        "default_score",
        "held_out",
        "summary",
        "provisional",
    )
    return {k: calibration.get(k) for k in keys}
