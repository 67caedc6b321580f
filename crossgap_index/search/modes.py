"""Naming a mode: ``resolve_mode`` turns a mode name and a request's settings into a Mode (search/mode_spec.py),
reading the registry (search/registry.py), and ``default_cross`` says what ``auto`` serves on an untuned index.

``search.run.run_mode`` is the one function that runs any Mode, for ``CrossGapIndex.search``, ``cgx eval`` and
the server alike. numpy-free: the CLI imports it at start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crossgap_index.errors import QueryError
from crossgap_index.search.builtin_modes import SERVED_OTI_STEPS
from crossgap_index.search.mode_spec import Leg, Mode
from crossgap_index.search.registry import (
    MODES,
    ModeContext,
    composable_names,
    is_mode_name,
    mode_entry,
    mode_names,
    peer_names,
    post_steps,
    unknown_mode_message,
)
from crossgap_index.words import RRF_K

if TYPE_CHECKING:
    from crossgap_index.search.options import SearchOptions

# Leg, Mode (search/mode_spec.py), RRF_K (words.py) and SERVED_OTI_STEPS (search/builtin_modes.py) are read from
# here by callers that name modes.
__all__ = [
    "MODE_NAMES",
    "RRF_K",
    "SERVED_OTI_STEPS",
    "DefaultCross",
    "Leg",
    "Mode",
    "checked",
    "default_cross",
    "describe_cross",
    "follow_with",
    "resolve_mode",
]

# The built-in names (registry.mode_names() at import); code that must see registered modes asks mode_names().
MODE_NAMES = mode_names()
# What an untuned index serves for --cross / mode="auto" with a model that carries no measured default: the
# published real-CLIP evidence, Herzog & Wang's span (PCA<-) over the ImageNet-1k names, d/2 directions.
DEFAULT_CROSS = {"name": "span", "projection": {"preset": "published"}}
# A model folder (bundled or local) may carry its own measured default for --cross in this file.
DEFAULTS_FILE = "cgx_defaults.json"


def resolve_mode(
    name: str,
    options: SearchOptions | None = None,
    *,
    tuned: dict | None = None,
    model: str | None = None,
    **settings,
) -> Mode:
    """The Mode for a user-facing name under a request's settings: ``options`` (a SearchOptions), or its fields
    as keywords (``inversion``, ``merge``, ``alpha``, ``rrf_k``, ``depth``, ``projection``, ``peer``), which
    override ``options``. ``tuned`` is the index's stored mode, used by ``auto``, else ``model``'s default
    (``default_cross``). In a composition ``BASE+POST`` the ``peer`` settings go to the post-step."""
    from crossgap_index.search.options import SearchOptions

    options = SearchOptions.of(options, **settings)
    if not is_mode_name(name):
        raise QueryError(unknown_mode_message(name))
    base, plus, post = name.rpartition("+")
    if plus:
        return follow_with(resolve_mode(base, dataclasses.replace(options, peer=None)), post, options.peer)
    context = ModeContext(tuned, lambda: default_cross(model).mode())
    return checked(mode_entry(name).resolve(options, context))


def checked(mode: Mode) -> Mode:
    """``mode`` if every peer it names (an adapted leg's kind, its post-step's) is a registered peer in that role;
    a stored record naming another is refused here, in one line, before it is served."""
    kinds = [(leg.params.get("kind"), "adapt") for leg in mode.legs if leg.transform == "adapt"]
    kinds += [(mode.post["kind"], "post")] if mode.post is not None else []
    for kind, role in kinds:
        if kind not in MODES or MODES[kind].role != role:
            named = post_steps() if role == "post" else tuple(n for n in peer_names() if MODES[n].role == "adapt")
            raise QueryError(f"mode {mode.name}: unknown {role} step '{kind}': use one of {', '.join(named)}")
    return mode


def follow_with(base: Mode, post: str, settings: dict | None = None, name: str | None = None) -> Mode:
    """``base`` followed by the post-step ``post`` (aqe, nnn, qbnorm) with ``settings`` over its defaults, named
    ``name`` (default ``BASE+POST``). ``base`` must be a one-leg mode without a post-step of its own."""
    entry = mode_entry(post)
    if entry.role != "post":
        raise QueryError(
            f"{post} adapts the gallery; it follows no mode (post-steps: {', '.join(post_steps())})"
            if entry.role == "adapt"
            else f"{post} is not a post-step: use one of {', '.join(post_steps())}"
        )
    if len(base.legs) != 1 or base.post is not None:
        raise QueryError(f"{post} follows a one-leg mode ({', '.join(composable_names())}), not {base.name}")
    params = {"kind": post, **entry.peer_settings(settings)}
    return Mode(name or f"{base.name}+{post}", base.legs, post=params)


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
