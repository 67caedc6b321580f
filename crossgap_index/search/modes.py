"""A retrieval mode as data: one or two legs (query transform + gallery side) and how to fuse them.

    query feature --transform--> search vector --against--> gallery side --fusion--> hits

    transform  identity | invert (OTI/OVI) | project (span / iso / concept) | inverter | warm (inverter + N steps)
               | adapt (a map fitted on the gallery itself: dba, center; search/peers.py)
    gallery    plain collection | mapped derived collection | the gallery's stored OTI features | adapted
    fusion     none | rrf | score, over the top ``depth`` of each leg
    post       none | aqe | nnn | qbnorm: a training-free re-ranker after a one-leg mode (``span+aqe``)

Modes serialise to plain dicts (``to_dict`` / ``from_dict``) so a tuned mode can live in the manifest,
and ``resolve_mode`` turns a mode name plus settings into one. ``search.run.run_mode`` is the one
function that runs any of them, for ``CrossGapIndex.search``, ``cgx eval`` and the server alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.words import RRF_K

TRANSFORMS = ("identity", "invert", "project", "inverter", "warm", "adapt")
GALLERIES = ("plain", "projected", "inverted", "adapted")
FUSIONS = ("rrf", "score")
FUSION_DEPTH = 100
# Modes a user can name; "auto" resolves to the index's tuned mode, else DEFAULT_MODE.
BASE_MODE_NAMES = ("auto", "intra", "cross", "fused", "cross-gallery", "span", "iso", "concept", "inverter", "warm")
# The training-free re-rankers a search engineer tries first (search/peers.py cites each paper): dba and
# center adapt the gallery (a leg), aqe, nnn and qbnorm follow any one-leg mode as its post-step (``span+aqe``).
PEER_NAMES = ("aqe", "dba", "nnn", "qbnorm", "center")
POST_STEPS = ("aqe", "nnn", "qbnorm")
COMPOSABLE = ("cross", "cross-gallery", "span", "iso", "concept", "inverter", "warm", "dba", "center")
# Every name the library, `cgx query --mode`, the server and the page accept: the one list they validate against.
MODE_NAMES = (
    *BASE_MODE_NAMES,
    *PEER_NAMES,
    *(f"{base}+{post}" for base in COMPOSABLE for post in POST_STEPS),
)
# What an untuned index serves for --cross / mode="auto" with a model that carries no measured default: the
# published real-CLIP evidence, Herzog & Wang's span (PCA<-) over the ImageNet-1k names, d/2 directions.
DEFAULT_CROSS = {"name": "span", "projection": {"preset": "published"}}
# A model folder (bundled or local) may carry its own measured default for --cross in this file.
DEFAULTS_FILE = "cgx_defaults.json"
# OTI settings that modes use unless told otherwise: quality peaks early (the step ablation of Mistretta et al.,
# ICLR 2025, "Cross the Gap: Exposing the Intra-modal Misalignment in CLIP via Modality Inversion"), so the served
# default is 25 steps, not the published 150.
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
            if not isinstance(self.post, dict) or self.post.get("kind") not in POST_STEPS:
                raise QueryError(f"a post-step is a dict whose kind is one of {', '.join(POST_STEPS)}")
            if len(self.legs) != 1:
                raise QueryError("a post-step follows a one-leg mode, not a fusion")
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
    peer: dict | None = None,
    model: str | None = None,
) -> Mode:
    """The Mode for a user-facing name. ``inversion`` overrides the served OTI/OVI settings; ``projection``
    the span/iso settings; ``tuned`` is the index's stored mode, used by ``auto``, else ``model``'s default
    (``default_cross``); ``peer`` the settings of a peer (e.g. ``{"n": 5, "alpha": 3}`` for aqe or dba,
    ``{"lam": 0.25}`` for center), which for a composition ``BASE+POST`` go to its post-step."""
    if name not in MODE_NAMES:
        raise QueryError(f"unknown mode '{name}': use one of {', '.join(BASE_MODE_NAMES + PEER_NAMES)} or BASE+POST")
    if name in PEER_NAMES or "+" in name:
        base, _, post = name.rpartition("+") if "+" in name else ("", "", name)
        kwargs = dict(
            inversion=inversion, merge=merge, alpha=alpha, rrf_k=rrf_k, depth=depth, projection=projection, model=model
        )
        return peer_mode(name, resolve_mode(base, **kwargs) if base else None, post, peer or {})
    if name == "auto":
        return Mode.from_dict(tuned) if tuned else default_cross(model).mode()
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


@dataclass(frozen=True)
class DefaultCross:
    """What ``--cross`` serves on an untuned index of a model, and why: ``source`` is ``bundled`` (the model
    folder's measured default, ``DEFAULTS_FILE``) or ``published`` (the published real-CLIP setting).
    ``span``: the model's span rule where the default itself is not a span (what ``--mode span`` falls back to)."""

    name: str
    projection: dict
    source: str
    evidence: str
    span: dict = field(default_factory=dict)

    def mode(self) -> Mode:
        return resolve_mode(self.name, projection=self.projection or None)

    @property
    def spans(self) -> bool:
        """Whether the default's leg is a span projection (``span`` alone or followed by a post-step)."""
        return self.name.partition("+")[0] == "span"

    def span_settings(self) -> dict:
        """The span settings a span leg falls back to for this model (a default without span: the published)."""
        from crossgap_index.search.span import PRESETS, span_settings

        if not self.spans:
            return span_settings(self.span, PRESETS["published"]) if self.span else dict(PRESETS["published"])
        return span_settings(self.projection, PRESETS["published"])


def default_cross(model: str | None) -> DefaultCross:
    """The untuned ``--cross`` for ``model`` (a canonical spec): its folder's measured default where it has
    one (bundled models ship theirs), else the published span (ImageNet names, raw, d/2)."""
    import json
    from pathlib import Path

    from crossgap_index.models._registry import bundled_dir

    folder = bundled_dir(model) if model else None
    if folder is None and model and Path(model).is_dir():
        folder = Path(model)
    if folder is not None and (folder / DEFAULTS_FILE).is_file():
        try:
            record = json.loads((folder / DEFAULTS_FILE).read_text("utf-8"))["cross"]
            projection, span = dict(record.get("projection") or {}), dict(record.get("span") or {})
            found = DefaultCross(record["name"], projection, "bundled", record["evidence"], span)
            found.mode()  # refuse a malformed file here, not at query time
            return found
        except (OSError, ValueError, KeyError, TypeError, QueryError) as exc:
            raise QueryError(f"{folder / DEFAULTS_FILE}: malformed default ({exc})") from exc
    return DefaultCross(
        DEFAULT_CROSS["name"],
        dict(DEFAULT_CROSS["projection"]),
        "published",
        "Herzog & Wang's span (PCA<-) on real CLIP: ImageNet-1k names embedded bare, raw text features centred, "
        "d/2 principal directions; no measurement for this model says otherwise",
    )


def describe_cross(model: str, tuned: dict | None) -> dict:
    """What ``--cross`` runs on an index of ``model`` with this tuned record, and where the choice came from:
    ``source`` is ``tuned`` (cgx tune stored it), ``bundled`` (the model's own measured default) or
    ``published`` (the published real-CLIP setting). ``default`` is the untuned choice either way."""
    default = default_cross(model)
    settings = default.span_settings() if default.spans else default.projection
    untuned = {
        "mode": default.name,
        "settings": settings,
        "source": default.source,
        "evidence": default.evidence,
        "summary": default.mode().describe(),
    }
    if tuned:
        where = tuned.get("dataset", {}).get("spec", "?")
        detail = f"cgx tune chose {tuned.get('candidate', '?')} on {where} ({tuned.get('date', '?')})"
        task = tuned.get("task")
        if task:
            detail += f", for {task} queries (other queries get the default)"
        summary = Mode.from_dict(tuned["mode"]).describe()
        return {"summary": summary, "source": "tuned", "detail": detail, "default": untuned}
    return {"summary": untuned["summary"], "source": default.source, "detail": default.evidence, "default": untuned}


# Defaults from the papers: alpha-QE / alpha-DBA (Radenović et al.: alpha = 3, n a handful), NNN (k = 128,
# w = 0.75), QB-Norm's dynamic inverted softmax (beta = 20, re-scoring the top 100), GR-CLIP's full mean.
PEER_DEFAULTS: dict[str, dict] = {
    "aqe": {"n": 5, "alpha": 3.0},
    "dba": {"n": 5, "alpha": 3.0},
    "nnn": {"k": 128, "w": 0.75},
    "qbnorm": {"beta": 20.0, "depth": 100},
    "center": {"lam": 1.0},
}


def peer_mode(name: str, base: Mode | None, kind: str, settings: dict) -> Mode:
    """The Mode ``name``: the peer ``kind`` alone (dba, center: an adapted leg; aqe, nnn, qbnorm: after intra),
    or after ``base`` (a composition ``BASE+POST``); ``settings`` override the peer's defaults."""
    if kind not in PEER_DEFAULTS:
        raise QueryError(f"unknown peer '{kind}': use one of {', '.join(PEER_DEFAULTS)}")
    unknown = set(settings) - set(PEER_DEFAULTS[kind])
    if unknown:
        raise QueryError(f"{kind} has no setting {sorted(unknown)[0]!r}: use {', '.join(PEER_DEFAULTS[kind])}")
    params = {"kind": kind, **_peer_settings(kind, {**PEER_DEFAULTS[kind], **settings})}
    if kind not in POST_STEPS:
        if base is not None:
            raise QueryError(f"{kind} adapts the gallery; it follows no mode (post-steps: {', '.join(POST_STEPS)})")
        return Mode(name, (Leg(kind, "adapt", "adapted", params),))
    if base is None:
        base = Mode("intra", (Leg("intra"),))
    if len(base.legs) != 1 or base.post is not None:
        raise QueryError(f"{kind} follows a one-leg mode ({', '.join(COMPOSABLE)}), not {base.name}")
    return Mode(name, base.legs, post=params)


def _peer_settings(kind: str, params: dict) -> dict:
    """Settings as plain numbers, or a one-line QueryError."""
    try:
        out = {key: (int(value) if key in ("n", "k", "depth") else float(value)) for key, value in params.items()}
    except (TypeError, ValueError) as exc:
        raise QueryError(f"{kind}: settings must be numbers: {exc}") from exc
    if any(not math.isfinite(v) for v in out.values()):
        raise QueryError(f"{kind}: settings must be finite")
    if any(out.get(key, 1) < 1 for key in ("n", "k", "depth")):
        raise QueryError(f"{kind}: n, k and depth must be >= 1")
    if out.get("alpha", 0) < 0 or out.get("beta", 1) <= 0 or out.get("lam", 0) < 0:
        raise QueryError(f"{kind}: alpha and lam must be >= 0, beta > 0")
    return out


INVERTED_GALLERY = {"image": "image-oti", "text": "text-ovi"}


def gallery_collection(leg: Leg, collection: str) -> str:
    """The stored collection a leg is compared with: the plain one, or the gallery's inverted features."""
    return INVERTED_GALLERY[collection] if leg.gallery == "inverted" else collection
