"""Following other writers: a served index moves to each state another process saves, by itself.

Every save writes the manifest last, naming its catalog generation; the follower polls that one small file and,
when it names a newer generation than the one served, has the library load the new state aside and swap it in
whole (``CrossGapIndex.refresh``), then brings the derived collections ``--cross`` searches up to date for it
(``CrossGapIndex.prepare_derived``). Searches in flight finish on the state they started with; none fails.
A writer inside the server (``cgx serve --watch``) calls ``check_now`` after its own writes, or just lets the
loop notice.
"""

from __future__ import annotations

import logging
import threading

from crossgap_index.api import CrossGapIndex
from crossgap_index.errors import CrossGapError

log = logging.getLogger("crossgap_index")
DEFAULT_INTERVAL_S = 0.5  # the poll: one stat-sized manifest read per interval


class IndexFollower:
    """Polls the index directory for a newer saved state and swaps the served index to it."""

    def __init__(self, index: CrossGapIndex, interval_s: float = DEFAULT_INTERVAL_S):
        self.index = index
        self.interval_s = interval_s
        self.swaps = 0  # states moved to since start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checking = threading.Lock()  # the loop and a writer's check_now never swap at once

    def check_now(self) -> bool:
        """Swap to the newest saved state if it is newer than the one served, and prepare its derived
        collections; True when it moved. Never raises for a state it cannot read yet: the served one stays."""
        with self._checking:
            try:
                moved = self.index.refresh()
                if moved:
                    self.swaps += 1
                    self.index.prepare_derived()
            except (CrossGapError, OSError) as exc:
                log.warning("cgx serve: still serving generation %d (%s)", self.index.generation, exc)
                return False
            return moved

    def run(self) -> None:
        """The loop: ``check_now`` every ``interval_s`` until ``stop``."""
        while not self._stop.wait(self.interval_s):
            try:
                self.check_now()
            except Exception:  # noqa: BLE001 - the loop outlives one bad check; the served state stays
                log.exception("cgx serve: following the index failed once; retrying")

    def start(self) -> None:
        """Run the loop in a daemon thread."""
        if self._thread is None and self.interval_s > 0:
            self._thread = threading.Thread(target=self.run, name="cgx-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
