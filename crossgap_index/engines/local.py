"""The in-process engine: decoding threads a window ahead; the driver's encoder embeds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from crossgap_index.ingest.pipeline import Prepared, ReadLimits, prepared_batches


class LocalEngine:
    def batches(
        self,
        paths: Sequence[Path],
        known: set[str],
        *,
        model: str,
        device: str,
        precision: str,
        batch_size: int,
        workers: int,
        limits: ReadLimits,
    ) -> Iterator[list[Prepared]]:
        return prepared_batches(paths, known.__contains__, batch_size, workers, limits)
