"""Another process writing an index in a loop: removes a few images, adds their files back (new ids), compacts.

Run as ``python -m tests.support.living_writer INDEX LOG CYCLES [SECONDS]``. The log's first line is ``ready`` (the
model is loaded); each removal is then logged, once committed, as ``removed <monotonic time> <id> <id> ...``; readers
in the test process (CLOCK_MONOTONIC is the machine's, shared by processes) check that no search that started after
that time returned those ids. The last line is ``done <cycles>``. ``SECONDS`` > 0 runs for that long instead of a
fixed number of cycles (the benchmark).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from crossgap_index import CrossGapIndex

REMOVE_PER_CYCLE = 3
COMPACT_EVERY = 3  # cycles between compactions of every shard with a dead row


def main(index: Path, log: Path, cycles: int, seconds: float = 0.0) -> None:
    rng = random.Random(7)
    done = 0
    with CrossGapIndex.open(index, device="cpu") as cgx, log.open("a") as out:
        cgx.load_model()  # before the clock starts, then "ready" says so
        out.write("ready\n")
        out.flush()
        end = time.monotonic() + seconds
        while (done < cycles) if seconds <= 0 else (time.monotonic() < end):
            rows = [row for row in cgx.ls("image") if row.path]
            chosen = rng.sample(rows, min(REMOVE_PER_CYCLE, len(rows)))
            removed = cgx.remove([row.id for row in chosen])
            out.write(f"removed {time.monotonic():.6f} {' '.join(map(str, removed))}\n")
            out.flush()
            cgx.add_images([row.path for row in chosen])
            if done % COMPACT_EVERY == COMPACT_EVERY - 1:
                cgx.compact(min_dead=0.0)
            done += 1
        out.write(f"done {done}\n")


def wait_until_ready(log: Path, writer, bound_s: float = 600) -> None:
    """Poll the log until the writer (a Popen) says ``ready``; raise if it exits first or the bound passes."""
    deadline = time.monotonic() + bound_s
    while not (log.exists() and log.read_text().startswith("ready")):
        if writer.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the writer did not get ready (exit status {writer.poll()})")
        time.sleep(0.05)


def removals(log: Path) -> list[tuple[float, set[int]]]:
    """(when, ids) of every removal the writer has logged so far."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        parts = line.split()
        if parts and parts[0] == "removed":
            out.append((float(parts[1]), {int(i) for i in parts[2:]}))
    return out


def removed_before(log_entries: list[tuple[float, set[int]]], start: float) -> set[int]:
    """Ids whose removal was committed before ``start``."""
    return set().union(*(ids for when, ids in log_entries if when < start))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
