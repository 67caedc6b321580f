"""How many CPU threads an inversion loop's operators run on.

An OTI / OVI step at small batches is hundreds of operators on a few rows each (ViT-B-32's OTI step at batch 1:
two rows per matmul; every crossgap-small step). Split over two OpenMP threads, each operator ends in a barrier,
and when the machine has other work (a server's other requests, other processes) the thread that waits at the
barrier spins while the one it waits for is not scheduled: measured on the 2-core development VM at load 4-26 with
spinning threads, the same steps took 3-60x the wall and CPU time with 2 threads (benchmarks/results/oti-step.md).
Threads that wait passively (the library asks for ``OMP_WAIT_POLICY=PASSIVE`` when imported before torch,
crossgap_index/_openmp.py) do not spin, but each barrier still costs a wake-up: on the quiet VM (load 1) one thread
ran crossgap-small's OTI step 2.2x faster than two at batch 1 and 1.8x at 64, with half the CPU time, and ViT-B-32's
bf16 OTI step 1.25x faster at batch 1 (benchmarks/results/oti-step-threads.md). So a step whose arithmetic is below
``SMALL_STEP_FLOPS`` runs on one thread whatever the wait policy; larger steps (ViT-B-32's OVI, crossgap-small's OVI
at batch 64) keep the process's setting, where two threads are faster. Thread counts change speed only: each
operator's result is the same function of its inputs (tests/test_inversion_fast_path.py).

``torch.set_num_threads`` is process-wide; loops in several Python threads share one setting through a count,
and the process's own setting comes back when the last of them ends. Other torch work in the process during an
inversion runs with the inversion's count.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

# A step below this many floating-point operations (forward and backward) runs on one thread. ViT-B-32's OTI step
# at batch 1 does about 0.3 GFLOP, at batch 8 about 2.4; its OVI step at batch 1 about 17 GFLOP.
SMALL_STEP_FLOPS = 3e9

_lock = threading.Lock()
_active = 0
_saved = 0


def step_threads(requested: int | None, step_flops: float, device: torch.device) -> int:
    """The intra-op threads for a loop whose steps do ``step_flops`` each: ``requested`` when given, else 1 for a
    small step on the CPU, else the process's setting (0 where nothing changes: another device)."""
    if device.type != "cpu":
        return 0
    if requested is not None:
        return requested
    return 1 if step_flops < SMALL_STEP_FLOPS else torch.get_num_threads()


@contextlib.contextmanager
def running_on(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (0: as the process is set), restoring the process's count
    when the last concurrent block ends."""
    global _active, _saved
    if threads <= 0:
        yield
        return
    with _lock:
        if _active == 0:
            _saved = torch.get_num_threads()
        _active += 1
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                torch.set_num_threads(_saved)


def step_flops(transformer: torch.nn.Module, rows: int) -> float:
    """One step's arithmetic for one query whose ``rows`` tokens run through ``transformer``: 2 FLOPs per weight
    and row forward, as many backward (the gradient reaches the input only: the weights are frozen). The
    attention's own products (length^2 per row) are left out: at these lengths they are a few percent."""
    weights = sum(p.numel() for p in transformer.parameters() if p.ndim == 2)
    return 4.0 * rows * weights
