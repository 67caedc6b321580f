"""Where gallery-side fits run: dba's and nnn's derived collections, qbnorm's statistics, center's means, and every
derived collection a first query builds.

A fit reads the whole gallery, so it is computed in blocks (FIT_BLOCK rows against the bank, by FAISS or a tiled
product: memory is a block, never n x n) and reports each block to a ``FitProgress``, which is also where it
stops: a cancelled fit raises ``FitCancelled`` between blocks.

Who runs it depends on who asked:

* ``FitRunner`` (the library, the CLI, eval and tune): in the caller's thread; a fit of at least LOUD_ROWS rows
  says how far it is on stderr (the ``crossgap_index`` logger) every LOUD_EVERY_S seconds.
* ``BackgroundFits`` (the server): on one worker thread of its own, one fit at a time, at the lowest CPU priority
  (SCHED_IDLE), never in the pool that answers them. A request whose fit is not ready gets ``FitPending``
  (the job, its progress and an estimate of the time left); the server waits for the job without holding a
  search thread, within the request's timeout, then answers 503 with Retry-After. The job goes on after the
  request gave up, so that the next request finds the fit done; closing the runner cancels it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from crossgap_index.errors import CrossGapError
from crossgap_index.pause_points import pause_point

FIT_BLOCK = 2048  # rows of a fit's block: memory FIT_BLOCK x (bank block) floats
LOUD_ROWS = 50_000  # fits over at least this many rows report progress on stderr
LOUD_EVERY_S = 2.0
FIT_NICENESS = 10  # the background fit thread's nice increment where SCHED_IDLE is not to be had

log = logging.getLogger("crossgap_index")
T = TypeVar("T")


class FitCancelled(CrossGapError):
    """A fit was stopped between blocks (its runner closed)."""


class FitPending(CrossGapError):
    """A query needs a fit that is being computed in the background; ``job`` says how far it is."""

    def __init__(self, job: FitJob):
        self.job = job
        super().__init__(
            f"{job.label} is being fitted in the background ({job.progress.percent}% done); "
            f"retry in about {job.retry_after_s} s"
        )


class FitProgress:
    """A fit's blocks done out of ``total`` rows; ``advance`` is where a cancelled fit stops."""

    def __init__(self, label: str, total: int, cancel: threading.Event | None = None, loud: bool = False):
        self.label, self.total, self.done = label, max(int(total), 0), 0
        self.started = time.monotonic()
        self._cancel = cancel
        self._loud = loud and total >= LOUD_ROWS
        self._said = self.started

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else min(100, int(100 * self.done / self.total))

    def advance(self, rows: int) -> None:
        """``rows`` more are done; raises FitCancelled when the fit was cancelled."""
        pause_point("fit-block")
        if self._cancel is not None and self._cancel.is_set():
            raise FitCancelled(f"{self.label}: cancelled")
        self.done += int(rows)
        now = time.monotonic()
        if self._loud and now - self._said >= LOUD_EVERY_S:
            self._said = now
            log.warning("cgx: fitting %s: %d of %d rows (%d%%) ...", self.label, self.done, self.total, self.percent)

    def finished(self) -> None:
        if self._loud and time.monotonic() - self.started >= LOUD_EVERY_S:
            log.warning("cgx: fitted %s in %.1f s", self.label, time.monotonic() - self.started)


class FitRunner:
    """Fits in the caller's thread (library, CLI, eval, tune)."""

    def run(self, slot: Hashable, version: int, label: str, total: int, work: Callable[[FitProgress], T]) -> T:
        """``work``'s result. ``slot`` names the fit (one per gallery, key), ``version`` the gallery state it is
        fitted on; ``total`` the rows it goes through (for progress)."""
        progress = FitProgress(label, total, loud=True)
        value = work(progress)
        progress.finished()
        return value

    def close(self) -> None:
        """Nothing runs here after the caller returns."""


class FitJob:
    """One fit submitted to BackgroundFits."""

    def __init__(self, version: int, label: str, total: int, cancel: threading.Event):
        self.version = version
        self.label = label
        self.progress = FitProgress(label, total, cancel)
        self.future: Future = Future()

    @property
    def retry_after_s(self) -> int:
        """Seconds until the fit is likely done, from its rate so far (between 1 and 600)."""
        progress = self.progress
        elapsed = time.monotonic() - progress.started
        if progress.done == 0:
            return 5
        left = elapsed * (progress.total - progress.done) / progress.done
        return int(min(600, max(1, round(left + 0.5))))


class BackgroundFits(FitRunner):
    """Fits on one background thread of their own (the server): ``run`` returns a fit that is done, or starts it
    (once per slot and version) and raises FitPending. Each slot keeps its latest job, the same object the
    gallery caches, so nothing is held twice and a finished fit is found by every request until a newer
    version replaces it."""

    def __init__(self) -> None:
        self._jobs: dict[Hashable, FitJob] = {}
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cgx-fit", initializer=_background_thread)

    def run(self, slot: Hashable, version: int, label: str, total: int, work: Callable[[FitProgress], T]) -> T:
        with self._lock:
            if self._cancel.is_set():
                raise FitCancelled(f"{label}: not fitted, the server is shutting down")
            job = self._jobs.get(slot)
            if job is None or job.version != version:
                job = FitJob(version, label, total, self._cancel)
                self._jobs[slot] = job
                self._worker.submit(_run_job, job, work)
        if job.future.done():
            return job.future.result()  # or the fit's own error, for every request until the gallery changes
        raise FitPending(job)

    def close(self) -> None:
        """Stop the running fit at its next block and drop the queued ones."""
        self._cancel.set()
        self._worker.shutdown(wait=True, cancel_futures=True)


def _run_job(job: FitJob, work: Callable[[FitProgress], object]) -> None:
    if not job.future.set_running_or_notify_cancel():
        return
    try:
        job.future.set_result(work(job.progress))
    except BaseException as exc:  # noqa: BLE001 - handed to every request that waits for this fit
        job.future.set_exception(exc)


def _background_thread() -> None:
    """The fit thread yields the CPU to searches: SCHED_IDLE for this thread alone (Linux: it runs on the time
    the process's other threads leave), else a higher nice value; and FAISS and BLAS in this thread use one core
    (OpenMP's thread count is per calling thread)."""
    thread = threading.get_native_id()
    try:
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, thread, FIT_NICENESS)
    import faiss

    faiss.omp_set_num_threads(1)


def runner_of(gallery) -> FitRunner:
    """The gallery's fit runner (in the caller's thread unless a server gave it BackgroundFits)."""
    return getattr(gallery, "fits", None) or INLINE


INLINE = FitRunner()


# -- the blocked computations ---------------------------------------------------------------------------------


def knn_blocks(rows: np.ndarray, bank: np.ndarray, k: int, progress: FitProgress | None = None):
    """Each row's top ``k`` inner products with the bank's rows, best first, FIT_BLOCK rows at a time by FAISS
    (exact: blocked BLAS and heaps, never a rows x bank matrix). Yields (first row, scores, bank positions)."""
    import faiss

    rows = np.ascontiguousarray(rows, np.float32)
    bank = np.ascontiguousarray(bank, np.float32)
    k = min(int(k), len(bank))
    for first in range(0, len(rows), FIT_BLOCK):
        block = rows[first : first + FIT_BLOCK]
        scores, positions = faiss.knn(block, bank, k, faiss.METRIC_INNER_PRODUCT)
        yield first, scores, positions
        if progress is not None:
            progress.advance(len(block))
