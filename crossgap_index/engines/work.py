"""The gallery-side work of a block, the same wherever it runs (the driver, or a Ray actor).

Nothing here knows about files or writes anything: a block of vectors goes in, a block of vectors comes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.inversion.config import InversionConfig

if TYPE_CHECKING:
    from crossgap_index.models.factory import LoadedModel

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
