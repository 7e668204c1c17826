"""One engine, one thread, a bounded queue: requests for different users never share steering.

Every request that touches the model (answers, "why", learning, forgetting) becomes a
:class:`Job` run on the worker's single thread, so llama.cpp's context is only ever used by one
request at a time, and each job switches the engine to its own user's profile first
(``Engine.use_profile``, cheap: the model stays loaded) and sets every per-request knob. A
request's answer is therefore exactly what it would be alone.

The queue is bounded: when ``max_waiting`` jobs already wait, :meth:`Worker.submit` raises
:class:`Busy` (the server answers 503 with Retry-After). A job whose client went away is
cancelled: taken out of the queue if it had not started, or stopped at its next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fints_edge.errors import FintsEdgeError

if TYPE_CHECKING:
    from fints_edge.engine import Engine

log = logging.getLogger("fints_edge.serve")
CLOSE_TIMEOUT = 30.0  # seconds a shutdown waits for the running job to stop


class Busy(Exception):
    """The queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(
            f"the server is busy ({waiting} requests already wait); retry in {retry_after} s"
        )
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside a job when its client has gone; the job ends quietly."""


@dataclass(frozen=True)
class Event:
    kind: str  # "piece" (a streamed text piece), "done" (value = the result) or "error"
    value: Any


class Job:
    """One unit of model work; its events reach the asyncio side through ``events``."""

    def __init__(self, fn: Callable[[Worker, Job], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.finished = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        """Call between steps of long work: stops it once the client has gone."""
        if self._cancelled.is_set():
            raise Cancelled()

    def emit(self, piece: str) -> None:
        self._put(Event("piece", piece))

    def _put(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody listens
            pass


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """Identity of a profile file's content as far as a reload is concerned (atomic writes
    replace the file, so the inode changes with every save)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Worker:
    """Owns the Engine (made on first use) and runs jobs one at a time on its own thread."""

    def __init__(self, make_engine: Callable[[Path], Engine], max_waiting: int) -> None:
        self._make_engine = make_engine
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._outlived_close = False  # close() returned while a job still ran
        self._engine: Engine | None = None
        self._loaded: tuple[Path, tuple[int, int, int] | None] | None = None
        self._seconds_per_job = 2.0  # running estimate for Retry-After
        self.counts = {"done": 0, "failed": 0, "cancelled": 0, "refused_busy": 0}

    # -- the asyncio side -------------------------------------------------------------------
    def submit(self, fn: Callable[[Worker, Job], Any]) -> Job:
        job = Job(fn, asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise FintsEdgeError("the server is shutting down")
            if len(self._waiting) + (self._running is not None) > self.max_waiting:
                self.counts["refused_busy"] += 1
                n = len(self._waiting)
                raise Busy(max(1, round(self._seconds_per_job * (n + 1))), n)
            self._waiting.append(job)
            self._start()
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it waits, stop it at its next step if it runs."""
        if job.finished:
            return
        job._cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                job.finished = True
                self.counts["cancelled"] += 1

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "running": int(self._running is not None),
                "waiting": len(self._waiting),
                "max_waiting": self.max_waiting,
                "engine_loaded": self._engine is not None,
                **self.counts,
            }

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Drop waiting jobs, stop the running one at its next step, free the engine (idempotent).

        The engine is freed by the worker thread as it ends, never under a job that still uses
        it: when that job has not stopped within ``timeout`` seconds, ``close`` returns and the
        thread frees the engine once the job is over (a warning says so)."""
        with self._cond:
            self._closing = True
            for job in self._waiting:
                job._cancelled.set()
                job._put(Event("error", FintsEdgeError("the server is shutting down")))
            self._waiting.clear()
            if self._running is not None:
                self._running._cancelled.set()
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            self._free_engine()  # no thread ever ran, so no job can hold the engine
            return
        thread.join(timeout=timeout)
        if thread.is_alive():
            self._outlived_close = True
            log.warning(
                "a job still runs %.0f s after shutdown began; the engine stays loaded and is "
                "freed by its thread when the job ends",
                timeout,
            )

    def _free_engine(self) -> None:
        with self._cond:
            engine, self._engine, self._loaded = self._engine, None, None
        if engine is not None:
            engine.close()

    # -- the worker thread ------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fints-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        """Runs jobs until the worker closes; then frees the engine (no job can use it any more)."""
        try:
            self._run_jobs()
        finally:
            self._free_engine()
            if self._outlived_close:
                log.warning("the job that outlived shutdown has ended; the engine is freed")

    def _run_jobs(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._running = self._waiting.popleft()
            t0 = time.perf_counter()
            try:
                job.check()
                result = job.fn(self, job)
            except Cancelled:
                self.counts["cancelled"] += 1
                job._put(Event("error", Cancelled()))
            except BaseException as e:  # handed to the request, which answers with JSON
                self.counts["failed"] += 1
                if not isinstance(e, FintsEdgeError):
                    log.exception("job failed")
                job._put(Event("error", e))
            else:
                self.counts["done"] += 1
                job._put(Event("done", result))
            finally:
                dt = time.perf_counter() - t0
                with self._cond:
                    job.finished = True
                    self._running = None
                    self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * dt

    # -- used by jobs, on the worker thread ---------------------------------------------------
    def engine_for(self, path: Path) -> Engine:
        """The engine with ``path``'s profile in use, reloaded if the file changed."""
        stamp = file_stamp(path)
        if stamp is None:
            raise FintsEdgeError(f"no profile named '{path.stem}'")
        if self._engine is None:
            self._engine = self._make_engine(path)
        elif self._loaded != (path, stamp):
            self._engine.use_profile(path)
        self._loaded = (path, stamp)
        return self._engine

    def saved(self, path: Path) -> None:
        """A job wrote ``path`` through the engine (which already holds the new profile)."""
        if self._loaded is not None and self._loaded[0] == path:
            self._loaded = (path, file_stamp(path))

    def forget_loaded(self, path: Path) -> None:
        """``path`` was removed: the next request for that name must reload from disk."""
        if self._loaded is not None and self._loaded[0] == path:
            self._loaded = None
