"""Locks of one index: readers-writer within a process, an advisory file lock across processes.

In a process, searches share the index while a write (a batch landing, a save) holds it alone;
a writer waiting keeps new readers out, so a stream of searches cannot starve it. Across
processes, writers take the advisory lock file ``lock`` in the index directory; readers never
take it (they verify what they read instead, see store/directory.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.errors import StoreError

if TYPE_CHECKING:
    from filelock import FileLock

LOCK_NAME = "lock"
log = logging.getLogger("crossgap_index")


class ReadWriteLock:
    """Many readers or one writer; re-entrant for the writer (which may also read) and for readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        depth = getattr(self._local, "reads", 0)
        if depth == 0 and self._writer != me:
            with self._cond:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
        self._local.reads = depth + 1
        try:
            yield
        finally:
            self._local.reads = depth
            if depth == 0 and self._writer != me:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                if getattr(self._local, "reads", 0):
                    raise RuntimeError("a thread holding a read lock cannot take the write lock")
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer = me
            self._writer_depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if self._writer_depth == 0:
                    self._writer = None
                    self._cond.notify_all()


class IndexLock:
    """The cross-process writer lock: ``lock`` in the index directory (fcntl/LockFileEx through
    ``filelock``), released by the OS when a writer dies, so a killed build never leaves it held. The
    ``FileLock`` (and filelock itself) is made at the first write: an index opened to search never needs it."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self._file_lock: FileLock | None = None
        self._making = threading.Lock()

    def _lock_file(self) -> FileLock:
        """This index's ``FileLock``, made once (two threads' first writes get the same one)."""
        with self._making:
            if self._file_lock is None:
                from filelock import FileLock

                self._file_lock = FileLock(self.path, thread_local=False)
            return self._file_lock

    @contextmanager
    def hold(self, wait: bool = True) -> Iterator[None]:
        """Hold the lock for a write. ``wait=False``: fail at once with one line when another writer has it."""
        from filelock import Timeout

        file_lock = self._lock_file()
        try:
            try:
                file_lock.acquire(timeout=0)
            except Timeout:
                if not wait:
                    raise StoreError(
                        f"another process is writing to the index at {self.path.parent} (lock {self.path} is held); "
                        "retry later, or wait for it without --no-wait"
                    ) from None
                log.warning("cgx: waiting for another process writing to %s to finish ...", self.path.parent)
                file_lock.acquire()
        except OSError as exc:
            raise StoreError(f"cannot take the writer lock {self.path}: {exc.strerror or exc}") from exc
        except RuntimeError as exc:  # filelock's guard: this thread holds it through another open index
            where = self.path.parent
            raise StoreError(f"this thread is already writing to {where} through another open index") from exc
        try:
            yield
        finally:
            file_lock.release()
