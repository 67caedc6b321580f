"""Read, hash and decode files in worker threads, a bounded window ahead of the consumer.

The consumer (embedding) runs on the main thread while the next batches are being read
and decoded, so decoding overlaps encoding without holding the whole folder in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from crossgap_index.ingest.decode import DecodeError, FileBytes, decode_rgb, read_file


@dataclass(frozen=True)
class Prepared:
    """One file after the worker: ``image`` is None when its vector is reused or it failed;
    ``vector`` is set when an engine embedded it already (then ``file.data`` may be empty)."""

    file: FileBytes | None
    path: Path
    image: Image.Image | None = None
    reused: bool = False
    error: str | None = None
    vector: np.ndarray | None = field(default=None, compare=False)


def prepare(path: Path, is_known: Callable[[str], bool], max_megapixels: float) -> Prepared:
    """Read and hash a file; decode it only when no stored vector has the same content."""
    try:
        file = read_file(path)
    except OSError as exc:
        return Prepared(None, path, error=f"unreadable: {exc.strerror or exc}")
    if is_known(file.content_hash):
        return Prepared(file, path, reused=True)
    try:
        return Prepared(file, path, image=decode_rgb(file.data, max_megapixels))
    except DecodeError as exc:
        return Prepared(file, path, error=str(exc))


def prepared_batches(
    paths: Sequence[Path],
    is_known: Callable[[str], bool],
    batch_size: int = 64,
    workers: int = 4,
    max_megapixels: float = 100.0,
) -> Iterator[list[Prepared]]:
    """Yield lists of Prepared in input order, decoding up to two batches ahead."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cgx-decode") as pool:
        window: deque[Future[Prepared]] = deque()
        pending = iter(paths)
        ahead = 3 * batch_size  # the batch being consumed plus two decoding

        def fill() -> None:
            while len(window) < ahead:
                path = next(pending, None)
                if path is None:
                    return
                window.append(pool.submit(prepare, path, is_known, max_megapixels))

        fill()
        while window:
            batch = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
            fill()
            yield batch
