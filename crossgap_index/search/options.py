"""How a search is asked, as one value: target, k, mode and the mode's settings.

The library (``CrossGapIndex.search`` / ``search_batch`` / ``transform_query``), the server and the
integrations all build one ``SearchOptions`` and pass it down whole, so a new setting is added in one
place instead of in every signature. Library calls may still name the fields as keywords
(``index.search(image=..., mode="auto", k=5)``); ``SearchOptions.of`` folds them into the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.modes import FUSION_DEPTH, FUSIONS, RRF_K, Mode

TARGETS = ("images", "texts")


@dataclass(frozen=True)
class SearchOptions:
    """One search request's settings (everything but the query itself and progress/timing hooks).

    ``mode``: a mode name (search/modes.py) or a Mode; ``merge``/``alpha``/``rrf_k``/``depth``: how a fused
    mode merges its lists; ``inversion``: OTI/OVI settings overriding the served ones; ``projection``:
    span/iso/concept settings; ``peer``: a peer re-ranker's settings (search/peers.py, e.g. ``{"n": 5}`` for aqe);
    ``use_cache``: read and write the index's inversion cache.
    """

    target: str = "images"
    k: int = 10
    mode: str | Mode = "intra"
    merge: str = "rrf"
    alpha: float = 0.5
    rrf_k: int = RRF_K
    depth: int = FUSION_DEPTH
    inversion: InversionConfig | None = None
    projection: dict | None = None
    peer: dict | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise QueryError(f"unknown target '{self.target}': use one of {', '.join(TARGETS)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise QueryError(f"k must be an integer >= 1, got {self.k!r}")
        if self.merge not in FUSIONS:
            raise QueryError(f"unknown merge '{self.merge}': use one of {', '.join(FUSIONS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise QueryError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.rrf_k < 1 or self.depth < 1:
            raise QueryError("rrf_k and depth must be >= 1")
        if self.inversion is not None and not isinstance(self.inversion, InversionConfig):
            raise QueryError("inversion settings are an InversionConfig (crossgap_index.inversion)")
        if self.projection is not None and not isinstance(self.projection, dict):
            raise QueryError("projection settings are a dict, e.g. {'components': 16}")
        if self.peer is not None and not isinstance(self.peer, dict):
            raise QueryError("peer settings are a dict, e.g. {'n': 5, 'alpha': 3}")

    @classmethod
    def of(cls, options: SearchOptions | None = None, **settings) -> SearchOptions:
        """``options`` (default: the defaults) with ``settings`` overriding fields by name."""
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown search setting(s): {', '.join(unknown)}")
        base = options if options is not None else cls()
        return dataclasses.replace(base, **settings) if settings else base

    def mode_settings(self) -> dict:
        """The keywords ``resolve_mode`` takes: the named mode's settings."""
        return {
            "inversion": self.inversion,
            "merge": self.merge,
            "alpha": self.alpha,
            "rrf_k": self.rrf_k,
            "depth": self.depth,
            "projection": self.projection,
            "peer": self.peer,
        }
