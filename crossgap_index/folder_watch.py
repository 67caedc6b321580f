"""Keep an index in step with folders: file events -> debounced batches -> the one writer.

``watchfiles`` (the Rust ``notify`` crate: inotify, FSEvents, ReadDirectoryChangesW) reports changed paths; it
collects them until the folders are quiet for ``step_ms`` (at most ``debounce_ms``), and each such batch goes
through the same incremental build as ``cgx build-index`` (``CrossGapIndex.sync_paths``): new and edited files
are embedded, files gone leave, a file moved within one batch keeps its id. Events that arrive while a batch is
written wait in the watcher and make the next batch, so a burst becomes a few large batches.

Resumable: the first thing a watcher does once it is listening is a full build over the folders, which catches
up with whatever changed while no watcher ran (a killed one included: a build commits per batch of files).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.build_options import BuildOptions
from crossgap_index.errors import QueryError
from crossgap_index.ingest.discover import paths_to_sync
from crossgap_index.ingest.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_MEGAPIXELS

if TYPE_CHECKING:
    from crossgap_index.api import CrossGapIndex
    from crossgap_index.engines.build import BuildReport

# How often the watcher wakes without events to see whether it was asked to stop (ms).
WAKE_MS = 500


@dataclass(frozen=True)
class WatchSettings:
    include_hidden: bool = False
    exclude: tuple[str, ...] = ()  # glob patterns left out, beside discover.DEFAULT_EXCLUDES (as build-index)
    debounce_ms: int = 2000  # the longest a batch collects events
    step_ms: int = 300  # a batch closes once the folders are quiet this long
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    batch_size: int = 64  # files per embedding batch (and per commit) inside a watch batch
    workers: int = 4

    def build_options(self) -> BuildOptions:
        """How each batch's build reads files: the same rules as ``cgx build-index`` with these settings."""
        shared = ("include_hidden", "exclude", "max_megapixels", "max_file_bytes", "batch_size", "workers")
        return BuildOptions(**{name: getattr(self, name) for name in shared})


@dataclass
class WatchBatch:
    """What one batch did: ``changes`` is the number of changed paths reported (None: the catch-up build)."""

    changes: int | None
    report: BuildReport
    derived: list[str] = field(default_factory=list)
    inverted: int = 0
    seconds: float = 0.0


class FolderWatcher:
    """Watches ``roots`` and writes each batch of changes into ``index`` (its writer: it holds the index lock
    while a batch is written, like any build). ``on_batch`` hears of every batch once it is committed and its
    derived collections are current: a server swaps its searches to that state there; ``on_problem`` hears
    of events the watcher could not report (it caught up with a full build instead)."""

    def __init__(
        self,
        index: CrossGapIndex,
        roots: Sequence[Path],
        settings: WatchSettings = WatchSettings(),
        on_batch: Callable[[WatchBatch], None] | None = None,
        on_problem: Callable[[str], None] | None = None,
    ):
        self.index = index
        self.roots = list(roots)
        self.settings = settings
        self.on_batch = on_batch
        self.on_problem = on_problem  # told, in one line, when the watcher had to listen again
        self.listening = threading.Event()  # set once events are being recorded and the catch-up is done

    def run(self, stop: threading.Event | None = None) -> None:
        """Watch until ``stop`` is set (or KeyboardInterrupt). The first wake-up (events or not) runs the
        catch-up build, so nothing changed before the watcher listened is missed. A change the watcher cannot
        report (a file name that is not UTF-8: watchfiles gives up on the whole batch) makes it listen again and
        catch up with a full build, which reads such names as any build does."""
        try:
            import watchfiles
            from watchfiles._rust_notify import WatchfilesRustInternalError
        except ImportError as exc:
            raise QueryError(f'watching folders needs watchfiles: pip install "crossgap-index[watch]" ({exc})') from exc

        while True:
            try:
                self._watch(watchfiles.watch, stop)
                return
            except WatchfilesRustInternalError as exc:
                if self.on_problem is not None:
                    self.on_problem(f"{' '.join(str(exc).split())}; catching up with a full build")

    def _watch(self, watch: Callable, stop: threading.Event | None) -> None:
        caught_up = False
        for changes in watch(
            *self.roots,
            watch_filter=None,  # the build's own rules decide (would_find), hidden folders and all
            debounce=self.settings.debounce_ms,
            step=self.settings.step_ms,
            stop_event=stop,
            rust_timeout=WAKE_MS,
            yield_on_timeout=True,
        ):
            if not caught_up:
                self._catch_up()
                caught_up = True
                self.listening.set()
            elif changes:
                self._sync({Path(path) for _, path in changes})

    def _catch_up(self) -> None:
        s = self.settings
        start = time.perf_counter()
        report = self.index.index_folders(self.roots, s.build_options())
        self._finish(WatchBatch(None, report), start)

    def _sync(self, changed: set[Path]) -> None:
        s = self.settings
        if paths_to_sync(changed, self.roots, s.include_hidden, s.exclude) == ([], []):
            return  # no image and nothing indexed among them (a text file, the index's own files): no write
        start = time.perf_counter()
        report = self.index.sync_paths(changed, self.roots, s.build_options())
        self._finish(WatchBatch(len(changed), report), start)

    def _finish(self, batch: WatchBatch, start: float) -> None:
        """Bring what the served modes search (gallery inversions, derived collections) up to date, then tell."""
        if batch.report.changed:
            if self.index.gallery_inversion is not None:
                batch.inverted = self.index.invert_gallery()
            batch.derived = self.index.build_derived()
        batch.seconds = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(batch)


def batch_line(batch: WatchBatch) -> str:
    """One line per batch, for stderr."""
    r = batch.report
    what = "caught up" if batch.changes is None else f"{batch.changes} changed paths"
    parts = [f"added {r.added}", f"updated {r.updated}", f"moved {r.moved}", f"removed {r.removed}"]
    if r.skipped:
        parts.append(f"skipped {len(r.skipped)}")
    if not r.changed:
        parts = ["nothing to do"]
    return f"cgx watch: {what}: {', '.join(parts)} in {batch.seconds:.1f} s"
