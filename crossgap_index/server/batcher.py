"""Micro-batching: concurrent queries with the same settings are collected for a short window and
run through one batched call in a single worker thread.

Inversion costs about the same per step for a batch as for one query, so batching multiplies
throughput. While the worker is busy, arrivals keep collecting, so under load batches fill up to
``max_batch`` without waiting for the window. Each query's result must not depend on its batch
neighbours (true of the library's search_batch); a failing batch is retried query by query, so one
bad query fails alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

# run(key, payloads) -> one result per payload, in order.
BatchFn = Callable[[Hashable, list[Any]], list[Any]]


@dataclass(frozen=True)
class BatchResult:
    """A query's result and the size of the batch it ran in."""

    value: Any
    batch_size: int
    wait_s: float  # from submission to the start of its batch
    run_s: float  # the batched call


@dataclass
class _Pending:
    payload: Any
    future: Future
    submitted: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, run: BatchFn, window_s: float, max_batch: int, on_batch: Callable[[int], None] | None = None):
        self._run = run
        self._window_s = window_s
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._groups: dict[Hashable, list[_Pending]] = {}  # insertion order: oldest group first
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="cgx-inversion-batcher", daemon=True)
        self._worker.start()

    def submit(self, key: Hashable, payload: Any) -> Future:
        """Queue one query; the future resolves to a BatchResult (or the query's exception)."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._groups.setdefault(key, []).append(_Pending(payload, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Finish every queued query, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join()

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            key, batch = taken
            try:
                self._execute(key, batch)
            except Exception as exc:  # never let a surprise kill the worker and strand the callers
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)

    def _take(self) -> tuple[Hashable, list[_Pending]] | None:
        """The oldest group's first ``max_batch`` queries, once its window has passed or it is full."""
        with self._cond:
            while True:
                if not self._groups:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                key, group = next(iter(self._groups.items()))
                remaining = group[0].submitted + self._window_s - time.perf_counter()
                if len(group) >= self._max_batch or remaining <= 0 or self._closed:
                    batch, rest = group[: self._max_batch], group[self._max_batch :]
                    del self._groups[key]
                    if rest:
                        self._groups[key] = rest  # re-inserted last: other groups get their turn
                    return key, batch
                self._cond.wait(remaining)

    def _execute(self, key: Hashable, batch: list[_Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]  # timed-out callers drop out
        if not live:
            return
        start = time.perf_counter()
        try:
            values = self._run(key, [p.payload for p in live])
        except Exception as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            for pending in live:  # find the query at fault: each alone
                self._execute_alone(key, pending)
            return
        self._resolve(live, values, start)

    def _execute_alone(self, key: Hashable, pending: _Pending) -> None:
        start = time.perf_counter()
        try:
            values = self._run(key, [pending.payload])
        except Exception as exc:
            pending.future.set_exception(exc)
            return
        self._resolve([pending], values, start)

    def _resolve(self, live: list[_Pending], values: list[Any], start: float) -> None:
        run_s = time.perf_counter() - start
        if self._on_batch:
            self._on_batch(len(live))
        for pending, value in zip(live, values, strict=True):
            pending.future.set_result(BatchResult(value, len(live), start - pending.submitted, run_s))
