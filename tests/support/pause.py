"""Holding a real process at a named point (crossgap_index/pause_points.py) so a test kills it exactly there,
whatever the machine's load: no race is won by sleeping."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

from crossgap_index.pause_points import PAUSE_ENV


def pause_env(folder: Path, point: str, nth: int = 1) -> tuple[dict[str, str], Path]:
    """The environment entry that holds a process the ``nth`` time it reaches ``point``, and the FIFO it waits on."""
    fifo = folder / f"pause-{point}.fifo"
    os.mkfifo(fifo)
    return {PAUSE_ENV: f"{point}:{nth}:{fifo}"}, fifo


def wait_until_paused(process: subprocess.Popen | None, fifo: Path, timeout: float = 300) -> int:
    """Block until ``process`` (None: a thread of this one) waits at its pause point (it has the FIFO open for
    reading); returns the FIFO's writing end, which holds it there until closed. Fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until the reader has opened it
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        ended = process is not None and process.poll() is not None
        assert not ended, f"the process ended (exit {process.returncode}) before its pause point"
        assert time.monotonic() < deadline, "the process never reached its pause point"
        time.sleep(0.02)  # polling a condition, bounded by the deadline
