"""How a search is asked, as one value: target, k, mode and the mode's settings.

The library (``CrossGapIndex.search`` / ``search_batch`` / ``transform_query``), the server and the
integrations all build one ``SearchOptions`` and pass it down whole, so a new setting is added in one
place instead of in every signature. Library calls may still name the fields as keywords
(``index.search(image=..., mode="auto", k=5)``); ``SearchOptions.of`` folds them into the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.filters import ItemFilter
from crossgap_index.search.mode_spec import FUSION_DEPTH, Mode, check_fusion
from crossgap_index.words import RRF_K, target_modality


@dataclass(frozen=True)
class SearchOptions:
    """One search request's settings (everything but the query itself and progress/timing hooks).

    ``mode``: a mode name (search/registry.py) or a Mode; ``merge``/``alpha``/``rrf_k``/``depth``: how a fused
    mode merges its lists; ``inversion``: OTI/OVI settings overriding the served ones; ``projection``:
    span/iso/concept settings; ``peer``: a peer re-ranker's settings (search/peers.py, e.g. ``{"n": 5}`` for aqe);
    ``use_cache``: read and write the index's inversion cache.

    Filters (search/filters.py; every mode returns ``k`` hits that pass, when the collection holds that many):
    ``under`` a folder the images lie in, ``glob`` a file-name (or, with ``/``, path) pattern, ``only_ids`` /
    ``exclude_ids`` item ids, ``external_ids`` imported items' external ids; ``exclude_query`` leaves the stored
    items a query is made from out of its hits (None: yes, the "more like this" default).
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
    under: str | None = None
    glob: str | None = None
    only_ids: tuple[int, ...] | None = None
    exclude_ids: tuple[int, ...] = ()
    external_ids: tuple[str, ...] | None = None
    exclude_query: bool | None = None

    def __post_init__(self) -> None:
        self._check_filters()
        target_modality(self.target)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise QueryError(f"k must be an integer >= 1, got {self.k!r}")
        check_fusion(self.merge, self.alpha, self.rrf_k, self.depth)
        if self.inversion is not None and not isinstance(self.inversion, InversionConfig):
            raise QueryError("inversion settings are an InversionConfig (crossgap_index.inversion)")
        if self.projection is not None and not isinstance(self.projection, dict):
            raise QueryError("projection settings are a dict, e.g. {'components': 16}")
        if self.peer is not None and not isinstance(self.peer, dict):
            raise QueryError("peer settings are a dict, e.g. {'n': 5, 'alpha': 3}")

    def _check_filters(self) -> None:
        """Id and text lists as sorted tuples (the value stays hashable: the server batches by it)."""
        for name in ("only_ids", "exclude_ids"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
                raise QueryError(f"{name} is a list of item ids, got {value!r}")
            ids = tuple(value)
            if any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in ids):
                raise QueryError(f"{name} holds item ids (integers), got {list(ids)[:5]!r}")
            object.__setattr__(self, name, tuple(sorted({int(i) for i in ids})))
        if self.external_ids is not None:
            if isinstance(self.external_ids, str) or not all(isinstance(e, str) for e in self.external_ids):
                raise QueryError("external_ids is a list of strings")
            object.__setattr__(self, "external_ids", tuple(sorted(set(self.external_ids))))
        for name in ("under", "glob"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or "\0" in value):
                raise QueryError(f"{name} must be a non-empty string, got {value!r}")
        if self.exclude_query not in (None, True, False):
            raise QueryError(f"exclude_query is true, false or unset, got {self.exclude_query!r}")

    def item_filter(self) -> ItemFilter:
        """The filter part of the options (search/filters.py)."""
        return ItemFilter(
            under=self.under,
            glob=self.glob,
            only_ids=None if self.only_ids is None else frozenset(self.only_ids),
            exclude_ids=frozenset(self.exclude_ids),
            external_ids=None if self.external_ids is None else frozenset(self.external_ids),
        )

    @classmethod
    def of(cls, options: SearchOptions | None = None, **settings) -> SearchOptions:
        """``options`` (default: the defaults) with ``settings`` overriding fields by name."""
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown search setting(s): {', '.join(unknown)}")
        base = options if options is not None else cls()
        return dataclasses.replace(base, **settings) if settings else base
