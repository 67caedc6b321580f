"""Read, hash and decode files in worker threads, a bounded window ahead of the consumer.

The consumer (embedding) runs on the main thread while the next batch is being read and decoded,
so decoding overlaps encoding without holding the whole folder in memory. A prepared item keeps
its hash, stat and a model-sized image, never the file's bytes, so what is in flight does not grow
with photo resolution.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from crossgap_index.ingest.decode import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_MEGAPIXELS,
    DecodeError,
    FileBytes,
    SkippedFile,
    decode_rgb,
    read_file,
)


@dataclass(frozen=True)
class ReadLimits:
    """What a worker may read and how large it decodes: the caps and the model's input size."""

    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    min_side: int | None = None  # None: decode at full resolution


@dataclass(frozen=True)
class Prepared:
    """One file after the worker: ``image`` is None when its vector is reused or it failed; ``vector`` is
    set when an engine embedded it already. ``file`` carries the hash and stat; its ``data`` is dropped once
    decoded (empty bytes)."""

    file: FileBytes | None
    path: Path
    image: Image.Image | None = None
    reused: bool = False
    error: str | None = None
    vector: np.ndarray | None = field(default=None, compare=False)


def prepare(path: Path, is_known: Callable[[str], bool], limits: ReadLimits = ReadLimits()) -> Prepared:
    """Read and hash a file; decode it only when no stored vector has the same content.

    Whatever one file does (vanish, be a FIFO, be hostile bytes) ends as an ``error`` reason here.
    """
    try:
        file = read_file(path, limits.max_file_bytes)
    except SkippedFile as exc:
        return Prepared(None, path, error=str(exc))
    except OSError as exc:
        return Prepared(None, path, error=f"unreadable: {exc.strerror or exc}")
    if is_known(file.content_hash):
        return Prepared(_without_data(file), path, reused=True)
    try:
        image = decode_rgb(file.data, limits.max_megapixels, limits.min_side)
        return Prepared(_without_data(file), path, image=image)
    except DecodeError as exc:
        return Prepared(_without_data(file), path, error=str(exc))


def _without_data(file: FileBytes) -> FileBytes:
    return dataclasses.replace(file, data=b"")


def prepared_batches(
    paths: Sequence[Path],
    is_known: Callable[[str], bool],
    batch_size: int = 64,
    workers: int = 4,
    limits: ReadLimits = ReadLimits(),
) -> Iterator[list[Prepared]]:
    """Yield lists of Prepared in input order, preparing at most one batch ahead of the one consumed."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cgx-decode") as pool:
        window: deque[Future[Prepared]] = deque()
        pending = iter(paths)
        ahead = 2 * batch_size  # the batch being consumed plus the next one decoding

        def fill() -> None:
            while len(window) < ahead:
                path = next(pending, None)
                if path is None:
                    return
                window.append(pool.submit(prepare, path, is_known, limits))

        fill()
        while window:
            batch = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
            fill()
            yield batch
