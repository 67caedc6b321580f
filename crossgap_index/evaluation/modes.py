"""The rows ``cgx eval`` measures on each task, read from the mode registry (search/registry.py).

Every registered mode is a row (its own, and the further ``eval_rows`` its entry lists), described by the entry's
eval text and run with the evaluation's settings: the inversion config, the fusion constants, and for the modes
that take a vocabulary the evaluated data's class names. The protocol adds its own rows: ``default`` (what an
untuned ``--cross`` serves, in place of ``auto``) and on text-to-text the model's default span fused with each
translation. A newly registered mode is measured without a change here; ``REPORT_ORDER`` only places the rows
people know in the order the reports have always shown them.
"""

from __future__ import annotations

from collections.abc import Sequence

from crossgap_index.evaluation.settings import DEFAULT_ALPHA, TEXT_TO_IMAGE, TEXTS
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.modes import Mode, default_cross, resolve_mode
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.registry import MODES, EvalRow, ModeEntry
from crossgap_index.words import RRF_K

# The rows' order in reports; a row not named here (a newly registered mode) follows, in registry order.
REPORT_ORDER = (
    "intra", "default", "cross", "fused-rrf", "fused-score", "cross-gallery", "span", "concept", "span-imagenet", "iso",
    "aqe", "dba", "nnn", "qbnorm", "center", "center-dn", "dba+aqe", "span-imagenet+aqe", "span-imagenet+nnn",
    "span-imagenet+qbnorm", "inverter", "warm", "fused-span-cross", "fused-span-inverter",
)  # fmt: skip
# The registry's ``auto`` is measured as the protocol's ``default`` row (the untuned --cross).
_MEASURED_AS_DEFAULT = "auto"


def eval_modes(
    task: str,
    config: InversionConfig,
    names: Sequence[str],
    span_components: int | None = None,
    rrf_k: int = RRF_K,
    alpha: float = DEFAULT_ALPHA,
    model: str | None = None,
) -> dict[str, tuple[Mode, str]]:
    """The modes ``cgx eval`` measures for ``task``, each with a one-line description; ``default`` is what an
    untuned ``--cross`` serves with ``model``."""
    vocabulary = list(names) if len(names) >= 2 else None
    default = default_cross(model)
    rows: dict[str, tuple[Mode, str]] = {"intra": (resolve_mode("intra"), MODES["intra"].describe_eval(task))}
    if task == TEXT_TO_IMAGE:  # a caption against images is served as it is
        rows["default"] = (resolve_mode("intra"), "the untuned --cross: a caption against images is served as it is")
    else:
        rows["default"] = (default.mode(), f"the untuned --cross ({default.source} default)")
    base = SearchOptions(rrf_k=rrf_k, alpha=alpha)
    for entry in MODES.values():
        rows.update(_entry_rows(entry, task, base, config, vocabulary, span_components))
    if task == TEXTS:
        rows.update(_fused_with_span(default, span_components, rrf_k, rows))
    return {name: rows[name] for name in sorted(rows, key=_report_position)}


_NEEDS_VOCABULARY = object()


def _entry_rows(
    entry: ModeEntry, task: str, base: SearchOptions, config: InversionConfig, vocabulary, span_components
) -> dict[str, tuple[Mode, str]]:
    """An entry's rows on ``task``: its own and its further ``eval_rows``, each run with the evaluation's
    settings (``config`` for a mode that inverts with OTI / OVI from scratch; a warm start keeps its own). Its own
    row is left out where a further row measures the very same mode (``fused`` is ``fused-rrf``)."""
    if entry.name in (_MEASURED_AS_DEFAULT, "intra"):
        return {}
    out: dict[str, tuple[Mode, str]] = {}
    for row in (EvalRow(entry.name, entry.describe_eval(task)), *entry.eval_rows):
        resolved = row.mode or entry.name
        projection = _projection(resolved, entry, row, vocabulary, span_components)
        if (row.tasks and task not in row.tasks) or projection is _NEEDS_VOCABULARY:
            continue
        settings = {**row.settings, "projection": projection} if projection is not None else dict(row.settings)
        mode = resolve_mode(resolved, base, **settings)
        if any(leg.transform == "invert" for leg in mode.legs):
            mode = resolve_mode(resolved, base, **settings, inversion=config)
        if task == TEXT_TO_IMAGE and _translates(mode):  # already inter-modal: no translation of either side
            continue
        out[row.name] = (mode, row.description)
    own = out.get(entry.name)
    if own is not None and any(name != entry.name and mode == own[0] for name, (mode, _) in out.items()):
        del out[entry.name]
    return out


def _projection(resolved: str, entry: ModeEntry, row: EvalRow, vocabulary, span_components):
    """The projection settings a row runs with: its own, else the evaluated vocabulary for a mode that takes one
    (``_NEEDS_VOCABULARY`` when there is none); a span leg of the mode itself keeps ``span_components``."""
    given = row.settings.get("projection")
    if given is None and entry.uses_labels:
        if vocabulary is None:
            return _NEEDS_VOCABULARY
        given = {"vocabulary": vocabulary}
    if resolved == "span":
        return {**(given or {}), "components": span_components}
    return given


def _translates(mode: Mode) -> bool:
    """Whether a mode turns the query or the gallery into the other modality (an inversion of either side)."""
    return any(leg.transform in ("invert", "inverter", "warm") or leg.gallery == "inverted" for leg in mode.legs)


def _fused_with_span(
    default, span_components: int | None, rrf_k: int, rows: dict[str, tuple[Mode, str]]
) -> dict[str, tuple[Mode, str]]:
    """The model's default span (what its untuned --cross projects with, not the published one: on a model whose
    measured default differs, fusing with the published leg fuses with a weak leg) + cross and + inverter, rank
    fusion (label-free)."""
    span = default.span_settings()
    if span_components is not None:
        span["components"] = span_components
    span_leg = resolve_mode("span", projection=span).legs[0]
    settings = ", ".join(f"{key} {value}" for key, value in span.items())
    fused = {}
    for name in ("cross", "inverter"):
        leg = rows[name][0].legs[0]
        description = f"the model's default span ({default.source}: {settings}) + {name}, rank fusion (label-free)"
        fused[f"fused-span-{name}"] = (Mode("fused", (span_leg, leg), "rrf", rrf_k), description)
    return fused


def _report_position(name: str) -> int:
    return REPORT_ORDER.index(name) if name in REPORT_ORDER else len(REPORT_ORDER)
