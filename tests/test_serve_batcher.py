"""The micro-batcher alone: grouping by settings, bounded batches, fault isolation, draining on close
(real threads, a real batched function: numpy row norms)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from crossgap_index.server.batcher import MicroBatcher


class Recorder:
    """A batched function that records the batches it saw: (key, payloads)."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[tuple[object, list]] = []
        self.gate = gate

    def __call__(self, key, payloads):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append((key, list(payloads)))
        if any(p == "bad" for p in payloads):
            raise ValueError("bad payload")
        return [float(np.linalg.norm(np.full(3, p))) * (1 if key == "a" else -1) for p in payloads]


def test_concurrent_submissions_share_a_batch_and_match_solo_results():
    run = Recorder()
    batcher = MicroBatcher(run, window_s=0.2, max_batch=64)
    with ThreadPoolExecutor(16) as pool:
        futures = list(pool.map(lambda i: batcher.submit("a", i), range(16)))
    results = [f.result(10) for f in futures]
    batcher.close()
    assert [r.value for r in results] == [pytest.approx(np.sqrt(3) * i) for i in range(16)]
    assert max(r.batch_size for r in results) > 1
    assert sum(len(p) for _, p in run.calls) == 16
    for r in results:  # the size reported is the size of the call the query was in
        assert any(len(p) == r.batch_size for _, p in run.calls)


def test_batches_never_mix_settings_and_respect_max_batch():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, window_s=0.0, max_batch=3)
    futures = [batcher.submit("a" if i % 2 else "b", i) for i in range(14)]  # worker blocked: all queue up
    gate.set()
    values = [f.result(10).value for f in futures]
    batcher.close()
    assert all(len(p) <= 3 for _, p in run.calls)
    for key, payloads in run.calls:
        assert all((p % 2 == 1) == (key == "a") for p in payloads)
    assert values == [pytest.approx(np.sqrt(3) * i * (1 if i % 2 else -1)) for i in range(14)]


def test_a_bad_query_fails_alone():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, window_s=0.0, max_batch=8)
    futures = [batcher.submit("a", p) for p in (1, "bad", 2)]
    gate.set()
    assert futures[0].result(10).value == pytest.approx(np.sqrt(3))
    with pytest.raises(ValueError, match="bad payload"):
        futures[1].result(10)
    assert futures[2].result(10).value == pytest.approx(2 * np.sqrt(3))
    assert futures[0].result().batch_size == 1  # re-run alone after the shared batch failed
    batcher.close()


def test_close_finishes_queued_work_and_refuses_new():
    gate = threading.Event()
    batcher = MicroBatcher(Recorder(gate), window_s=10.0, max_batch=100)
    futures = [batcher.submit("a", i) for i in range(5)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [f.result(0).value for f in futures] == [pytest.approx(np.sqrt(3) * i) for i in range(5)]
    with pytest.raises(RuntimeError):
        batcher.submit("a", 1)


def test_cancelled_queries_are_skipped():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, window_s=0.0, max_batch=8)
    first = batcher.submit("a", 1)  # taken by the worker, which then waits on the gate
    while not run.calls and not first.running():
        threading.Event().wait(0.01)
    later = [batcher.submit("a", i) for i in (2, 3)]
    assert later[0].cancel()
    gate.set()
    assert later[1].result(10).value == pytest.approx(3 * np.sqrt(3))
    batcher.close()
    assert all(2 not in payloads for _, payloads in run.calls)
