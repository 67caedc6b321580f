"""The in-process engine: decoding threads a window ahead; the driver's encoder embeds, inverts and maps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.engines import ModelSite, PrepareRequest
from crossgap_index.engines.work import invert_rows
from crossgap_index.ingest.pipeline import Prepared, prepared_batches
from crossgap_index.inversion.config import InversionConfig
from crossgap_index.search.gallery import apply_here

if TYPE_CHECKING:
    from crossgap_index.search.projections import FeatureMap


class LocalEngine:
    def batches(self, paths: Sequence[Path], known: set[str], request: PrepareRequest) -> Iterator[list[Prepared]]:
        return prepared_batches(paths, known.__contains__, request.batch_size, request.workers, request.limits)

    def inversion_config(self, config: InversionConfig, site: ModelSite) -> InversionConfig:
        return config.resolved(site.loaded())

    def invert(
        self,
        blocks: Iterable[tuple[np.ndarray, Sequence[int]]],
        direction: str,
        config: InversionConfig,
        site: ModelSite,
    ) -> Iterator[np.ndarray]:
        for targets, seeds in blocks:
            yield invert_rows(site.loaded(), direction, targets, seeds, config)

    def map_vectors(self, projection: FeatureMap, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return apply_here(projection, blocks)
