"""A retrieval mode as a value: one or two legs (query transform + gallery side) and how to fuse them.

    query feature --transform--> search vector --against--> gallery side --fusion--> hits

    transform  identity | invert (OTI/OVI) | project (span / iso / concept) | inverter | warm (inverter + N steps)
               | adapt (a map fitted on the gallery itself: dba, center; search/peers.py)
    gallery    plain collection | mapped derived collection | the gallery's stored OTI features | adapted
    fusion     none | rrf | score, over the top ``depth`` of each leg
    post       none | a post-step after a one-leg mode (aqe, nnn, qbnorm; search/peers.py), e.g. ``span+aqe``

Modes serialise to plain dicts (``to_dict`` / ``from_dict``) so a tuned mode can live in the manifest. Which
names exist and how each is built from settings is the registry's (search/registry.py); this module is numpy-free
and knows no mode by name, so the CLI can import it at start.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.words import RRF_K

TRANSFORMS = ("identity", "invert", "project", "inverter", "warm", "adapt")
GALLERIES = ("plain", "projected", "inverted", "adapted")
FUSIONS = ("rrf", "score")
FUSION_DEPTH = 100
# The stored inverted gallery of each modality: images' OTI (text-space) features, texts' OVI (image-space) ones.
INVERTED_GALLERY = {"image": "image-oti", "text": "text-ovi"}


def check_fusion(merge: str | None, alpha: float, rrf_k: int, depth: int, *, unfused: bool = False) -> None:
    """The one rule for how two lists are merged: a known merge (None too where ``unfused``: a one-leg mode),
    alpha in [0, 1], rrf_k and depth >= 1. ``SearchOptions`` and ``Mode`` both hold these settings and both check
    them here."""
    if not (merge in FUSIONS or (unfused and merge is None)):
        raise QueryError(f"unknown merge '{merge}': use one of {', '.join(FUSIONS)}")
    if not _real(alpha) or not 0.0 <= alpha <= 1.0:
        raise QueryError(f"alpha must be in [0, 1], got {alpha!r}")
    if not _real(rrf_k) or not _real(depth) or rrf_k < 1 or depth < 1:
        raise QueryError(f"rrf_k and depth must be >= 1, got rrf_k={rrf_k!r}, depth={depth!r}")


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Leg:
    """One ranked list: how the query is transformed and which gallery vectors it is compared with.

    ``params``: for ``invert``/``warm`` the InversionConfig fields; for ``project`` the projection's
    settings (``kind`` span|iso and its own, e.g. ``components`` or ``k_top``/``k_bottom``); for ``adapt`` the
    peer's (``kind`` dba|center and its settings).
    """

    name: str
    transform: str = "identity"
    gallery: str = "plain"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise QueryError(f"unknown transform '{self.transform}'")
        if self.gallery not in GALLERIES:
            raise QueryError(f"unknown gallery side '{self.gallery}'")
        if (self.transform == "project") != (self.gallery == "projected"):
            raise QueryError("a projection applies to query and gallery alike")
        if (self.transform == "adapt") != (self.gallery == "adapted"):
            raise QueryError("an adapted gallery goes with the adapt transform")

    @property
    def inverts(self) -> bool:
        return self.transform in ("invert", "warm")

    def inversion(self) -> InversionConfig:
        """The InversionConfig of an ``invert`` or ``warm`` leg."""
        known = {f.name for f in dataclasses.fields(InversionConfig)}
        return InversionConfig(**{k: v for k, v in self.params.items() if k in known})


@dataclass(frozen=True)
class Mode:
    """A named mode: its legs, and with two legs the fusion that merges them."""

    name: str
    legs: tuple[Leg, ...]
    fusion: str | None = None
    rrf_k: int = RRF_K
    alpha: float = 0.5  # weight of the second leg for score fusion
    depth: int = FUSION_DEPTH
    post: dict | None = None  # a peer post-step after a one-leg mode: {"kind": "aqe"|"nnn"|"qbnorm", ...settings}

    def __post_init__(self) -> None:
        if not 1 <= len(self.legs) <= 2:
            raise QueryError("a mode has one leg, or two that are fused")
        if self.post is not None:
            if not isinstance(self.post, dict) or not isinstance(self.post.get("kind"), str):
                raise QueryError("a post-step is a dict that names its kind, e.g. {'kind': 'aqe'}")
            if len(self.legs) != 1:
                raise QueryError("a post-step follows a one-leg mode, not a fusion")
        if (len(self.legs) == 2) != (self.fusion is not None):
            raise QueryError("two legs need a fusion (rrf or score), one leg none")
        check_fusion(self.fusion, self.alpha, self.rrf_k, self.depth, unfused=True)

    @property
    def inverts(self) -> bool:
        return any(leg.inverts for leg in self.legs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Mode:
        try:
            legs = tuple(Leg(**leg) for leg in data["legs"])
            return cls(**{**data, "legs": legs})
        except (KeyError, TypeError) as exc:
            raise QueryError(f"malformed mode record: {exc}") from exc

    def describe(self) -> str:
        """One line for tables and logs, e.g. 'fused(rrf): intra + cross[oti_steps=25]'."""
        parts = [leg.name + (f"[{_short(leg.params)}]" if leg.params else "") for leg in self.legs]
        line = f"{self.name}" + (f"({self.fusion}): " if self.fusion else ": ") + " + ".join(parts)
        if self.post is not None:
            settings = {k: v for k, v in self.post.items() if k != "kind"}
            line += f" then {self.post['kind']}" + (f"[{_short(settings)}]" if settings else "")
        return line


def _short(params: dict) -> str:
    """The settings that differ from the defaults (a vocabulary by its size)."""
    defaults = dataclasses.asdict(InversionConfig())
    shown = []
    for key, value in sorted(params.items()):
        if key == "vocabulary" and not isinstance(value, str):
            shown.append(f"vocabulary={len(value)} names")
        elif defaults.get(key, object()) != value:
            shown.append(f"{key}={value}")
    return ",".join(shown)


def gallery_collection(leg: Leg, collection: str) -> str:
    """The stored collection a leg is compared with: the plain one, or the gallery's inverted features."""
    return INVERTED_GALLERY[collection] if leg.gallery == "inverted" else collection
