"""`cgx serve --watch`: the folder watcher (folder_watch.py) as a background thread of the server.

The watcher writes through its own handle on the index, as `cgx watch` would in another process: the served
handle never sees a batch half-written. After each batch the served handle moves to the new committed state in
one step (``publish``), so a search sees the state before or after a whole batch, never a part of one.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.folder_watch import FolderWatcher, WatchBatch, WatchSettings, batch_line

if TYPE_CHECKING:
    from crossgap_index.api import CrossGapIndex

STOP_WAIT_S = 120  # how long shutting down waits for the batch being written


def publish(served: CrossGapIndex) -> None:
    """The one place the server moves its searches to the watcher's latest batch (a new catalog generation):
    the store swaps its manifest and FAISS files under its write lock, between two searches."""
    served.refresh()


class ServedWatch:
    """Watches ``roots`` into the index ``served`` answers from, on a thread, until ``stop``."""

    def __init__(self, served: CrossGapIndex, roots: list[Path], settings: WatchSettings, device: str):
        self.served = served
        self.roots = roots
        self.settings = settings
        self.device = device
        self.batches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cgx-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_WAIT_S)

    def _run(self) -> None:
        from crossgap_index import CrossGapIndex

        try:
            with CrossGapIndex.open(self.served.path, device=self.device) as writer:
                writer.share_model(self.served)  # one copy of the model in the process
                watcher = FolderWatcher(writer, self.roots, self.settings, self._published, self._note)
                print(f"cgx serve: watching {', '.join(map(str, self.roots))}", file=sys.stderr, flush=True)
                watcher.run(self._stop)
        except Exception as exc:  # noqa: BLE001 - the server goes on serving what was written; one line says why
            message = " ".join(str(exc).split())
            print(f"cgx serve: error: watching stopped: {type(exc).__name__}: {message}", file=sys.stderr, flush=True)

    @staticmethod
    def _note(problem: str) -> None:
        print(f"cgx serve: watch: note: {problem}", file=sys.stderr, flush=True)

    def _published(self, batch: WatchBatch) -> None:
        if batch.report.changed:
            publish(self.served)
        self.batches += 1
        print(batch_line(batch).replace("cgx watch:", "cgx serve: watch:"), file=sys.stderr, flush=True)
