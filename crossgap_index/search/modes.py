"""A retrieval mode as data: one or two legs (query transform + gallery side) and how to fuse them.

    query feature --transform--> search vector --against--> gallery side --fusion--> hits

    transform  identity | invert (OTI/OVI) | project (span / iso / concept) | inverter | warm (inverter + N steps)
    gallery    plain collection | mapped derived collection | the gallery's stored OTI features
    fusion     none | rrf | score, over the top ``depth`` of each leg

Modes serialise to plain dicts (``to_dict`` / ``from_dict``) so a tuned mode can live in the manifest,
and ``resolve_mode`` turns a mode name plus settings into one. ``search.engine.run_mode`` is the one
function that runs any of them, for ``CrossGapIndex.search``, ``cgx eval`` and the server alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig

TRANSFORMS = ("identity", "invert", "project", "inverter", "warm")
GALLERIES = ("plain", "projected", "inverted")
FUSIONS = ("rrf", "score")
RRF_K = 60
FUSION_DEPTH = 100
# Modes a user can name; "auto" resolves to the index's tuned mode, else DEFAULT_MODE.
MODE_NAMES = ("auto", "intra", "cross", "fused", "cross-gallery", "span", "iso", "concept", "inverter", "warm")
# What an untuned index serves for --cross / mode="auto": span over the ImageNet-1k names, d/16 directions, the
# best label-free zero-cost mode on the development seeds (benchmarks/RESULTS.md, "Choosing the defaults").
DEFAULT_CROSS = {"name": "span"}
# OTI settings that modes use unless told otherwise: quality peaks early (research notes section 6), so
# the served default is 25 steps, not the published 150.
SERVED_OTI_STEPS = InversionConfig.oti_steps
# warm: the inverter's output refined by a couple of gentle OTI (image queries) or OVI (text queries) steps
WARM_SETTINGS = {"oti_steps": 2, "ovi_steps": 2, "lr": 5e-3}


@dataclass(frozen=True)
class Leg:
    """One ranked list: how the query is transformed and which gallery vectors it is compared with.

    ``params``: for ``invert``/``warm`` the InversionConfig fields; for ``project`` the projection's
    settings (``kind`` span|iso and its own, e.g. ``components`` or ``k_top``/``k_bottom``).
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

    @property
    def needs_model(self) -> bool:
        """Whether the query side runs the model (beyond embedding the query)."""
        return self.transform in ("invert", "inverter", "warm")

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

    def __post_init__(self) -> None:
        if not 1 <= len(self.legs) <= 2:
            raise QueryError("a mode has one leg, or two that are fused")
        if (len(self.legs) == 2) != (self.fusion is not None):
            raise QueryError("two legs need a fusion (rrf or score), one leg none")
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise QueryError(f"unknown merge '{self.fusion}': use one of {', '.join(FUSIONS)}")
        if self.rrf_k < 1 or not 0.0 <= self.alpha <= 1.0 or self.depth < 1:
            raise QueryError("rrf_k must be >= 1, alpha in [0, 1], depth >= 1")

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
        return f"{self.name}" + (f"({self.fusion}): " if self.fusion else ": ") + " + ".join(parts)


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


def resolve_mode(
    name: str,
    *,
    inversion: InversionConfig | None = None,
    merge: str = "rrf",
    alpha: float = 0.5,
    rrf_k: int = RRF_K,
    depth: int = FUSION_DEPTH,
    projection: dict | None = None,
    tuned: dict | None = None,
) -> Mode:
    """The Mode for a user-facing name. ``inversion`` overrides the served OTI/OVI settings; ``projection``
    the span/iso settings; ``tuned`` is the index's stored mode, used by ``auto``."""
    if name not in MODE_NAMES:
        raise QueryError(f"unknown mode '{name}': use one of {', '.join(MODE_NAMES)}")
    if name == "auto":
        return Mode.from_dict(tuned) if tuned else resolve_mode(DEFAULT_CROSS["name"])
    invert_params = _inversion_params(inversion)
    intra = Leg("intra")
    if name == "intra":
        return Mode("intra", (intra,))
    if name == "cross":
        return Mode("cross", (Leg("cross", "invert", params=invert_params),))
    if name == "fused":
        legs = (intra, Leg("cross", "invert", params=invert_params))
        return Mode("fused", legs, merge, rrf_k, alpha, depth)
    if name == "cross-gallery":
        return Mode("cross-gallery", (Leg("cross-gallery", gallery="inverted"),))
    if name in ("span", "iso", "concept"):
        params = {"kind": name, **(projection or {})}
        return Mode(name, (Leg(name, "project", "projected", params),))
    if name == "inverter":
        return Mode("inverter", (Leg("inverter", "inverter"),))
    params = invert_params if inversion is not None else dict(WARM_SETTINGS)
    return Mode("warm", (Leg("warm", "warm", params=params),))


def _inversion_params(inversion: InversionConfig | None) -> dict:
    """Every setting that changes the inverted feature, so a stored (tuned) mode does not move when a later
    release changes a default; None: the defaults (an empty dict)."""
    if inversion is None:
        return {}
    return {k: v for k, v in dataclasses.asdict(inversion).items() if k not in _SPEED_ONLY}


_SPEED_ONLY = ("batch_size", "compile", "fast")
