"""The gallery-side work of a block, the same wherever it runs (the driver, or a Ray actor).

Nothing here knows about files or writes anything: a block of vectors goes in, a block of vectors comes out.
The actor classes live here, not beside Ray, so a mapping actor's process imports numpy and the feature maps
only (no torch): a worker starts in about a second instead of several.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.inversion.config import InversionConfig

if TYPE_CHECKING:
    from crossgap_index.models.factory import LoadedModel
    from crossgap_index.search.projections import FeatureMap

DIRECTIONS = ("oti", "ovi")


def invert_rows(
    loaded: LoadedModel, direction: str, targets: np.ndarray, seeds: Sequence[int], config: InversionConfig
) -> np.ndarray:
    """The inverted features (float32 unit rows) of ``targets``: OTI (image -> text space) or OVI (text -> image
    space) with one seed per row. Each row's result depends on its seed and ``config`` only (optimise.py), so a
    block's neighbours, and where it ran, change nothing beyond fp32 rounding."""
    from crossgap_index.inversion import oti, ovi

    if direction not in DIRECTIONS:
        raise ValueError(f"unknown inversion direction {direction!r}")
    invert = oti if direction == "oti" else ovi
    return invert(loaded, np.asarray(targets, np.float32), config, list(seeds))


class GalleryInverter:
    """Actor: the index's model, loaded once; inverts blocks with the driver's settings and seeds."""

    def __init__(self, model: str, device: str, direction: str, config: InversionConfig):
        from crossgap_index.models import load_model

        self.loaded = load_model(model, device)
        self.direction, self.config = direction, config

    def run(self, targets: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        return invert_rows(self.loaded, self.direction, targets, seeds, self.config)


class VectorMapper:
    """Actor: one feature map (shipped once); maps blocks of stored vectors into a derived collection's rows."""

    def __init__(self, projection: FeatureMap):
        self.projection = projection

    def run(self, block: np.ndarray) -> np.ndarray:
        return self.projection.apply(block)
