"""Plain-language names for the modes and the ranked lists they merge, for people rather than code.

The mode names (``span``, ``cross-gallery``) are the API's; a page or a table shown to a user says
what each one does instead: a short name and one sentence (a tooltip).
"""

from __future__ import annotations

# mode (or list) name -> (short plain name, one-line explanation)
MODE_LABELS: dict[str, tuple[str, str]] = {
    "auto": (
        "Best for this index",
        "The way of searching `cgx tune` chose for this index, or the default when it was never tuned.",
    ),
    "intra": ("Plain similarity", "Compares the query's own embedding with each item's: the usual CLIP search."),
    "cross": (
        "Translate the query",
        "Turns a photo into the words that would describe it (or words into a picture), then searches with "
        "that; slower, a few hundred milliseconds per query.",
    ),
    "fused": ("Plain + translated", "Runs plain similarity and the translated query, and merges their rankings."),
    "cross-gallery": (
        "Against translated photos",
        "Compares the query with each photo's stored translation into words.",
    ),
    "span": (
        "Word directions",
        "Keeps only the directions that words vary along (from a list of object names) before comparing; "
        "free at query time.",
    ),
    "iso": (
        "Shared directions",
        "Drops the directions where photos and words disagree most before comparing (IsoCLIP); free at query time.",
    ),
    "concept": (
        "Concept profile",
        "Describes query and items by how much they resemble each name in a list of concepts, and compares those.",
    ),
    "inverter": ("Learned translation", "A network trained on this index translates a photo into words in one pass."),
    "warm": ("Learned + refined", "The learned translation, refined by two quick optimisation steps."),
    "aqe": (
        "Query expansion",
        "Averages the query with its best few matches and searches again (alpha query expansion).",
    ),
    "dba": ("Smoothed gallery", "Each item is compared as the average of itself and its nearest neighbours."),
    "nnn": (
        "Hub correction",
        "Lowers items that are close to everything (nearest-neighbour normalisation); free at query time.",
    ),
    "qbnorm": ("Hub re-scoring", "Re-scores the top results so that items close to everything weigh less (QB-Norm)."),
    "center": ("Centred", "Removes the average embedding of each modality before comparing; free at query time."),
}


def mode_label(name: str) -> str:
    """The plain name of a mode or list; a composition ``BASE+POST`` reads as both names."""
    if "+" in name:
        base, _, post = name.rpartition("+")
        return f"{mode_label(base)}, then {mode_label(post).lower()}"
    return MODE_LABELS.get(name, (name, ""))[0]


def mode_help(name: str) -> str:
    """One sentence on what a mode does ("" when unknown)."""
    return MODE_LABELS.get(name, (name, ""))[1]
