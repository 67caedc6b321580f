"""Query arithmetic: a weighted sum of texts, images and stored items, searched as one query (as rclip does).

Grammar (``parse``)::

    expression := ["-"] term ((" + " | " - ") term)*
    term       := [weight ":"] atom
    weight     := a positive number (2, 0.5, 1e-1), then ":" and no digit after it ("10:30 meeting" is text)
    atom       := "double-quoted text" | 'single-quoted text' | item:ID | anything else up to the next " + " / " - "

``+`` and ``-`` are operators only with white space on both sides (or, for a leading ``-``, at the start), so
"t-shirt" and "blue-green" stay words. A quoted atom is always text; ``item:42`` is stored item 42's own vector;
any other atom is what ``kind_of`` says: the CLI and the library pass ``search/query_arg.py``'s rule (an image when it
names an image file, else text); the server passes none, so there every bare atom is text (a request never names
a file to read).

Meaning (``combine``): the unit feature of every term, times its weight and sign, summed and re-normalised. When
every term has one modality (all texts, or all images), the sum is a query of that modality, so every mode serves
it, an inverting one (cross, fused, ...) by inverting the combined feature as one query. Terms of mixed
modalities make a raw vector: modes that keep the query in its space (intra, span/iso/concept, the peers) serve
it; a mode that turns the query into the other modality refuses it, since the sum belongs to neither.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from crossgap_index.errors import QueryError

if TYPE_CHECKING:  # numpy loads where terms are combined: `cgx --help` parses no expression and needs none
    import numpy as np

_WEIGHT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?:(?!\d)")
_ITEM = re.compile(r"item:(\S*)$")
MAX_TERMS = 32


def is_expression(text: str) -> bool:
    """Whether ``text`` uses the grammar (an operator, a weight, a quote or ``item:``) rather than being one plain
    text or path."""
    stripped = text.strip()
    return (
        bool(re.search(r"\s[+-](\s|$)", text))
        or stripped.startswith("- ")
        or bool(_WEIGHT.match(stripped))
        or stripped[:1] in ('"', "'")
        or bool(_ITEM.match(stripped))
    )


def parse(text: str, kind_of: Callable[[str], str] | None = None) -> list[tuple[float, dict]]:
    """(signed weight, query dict) per term of ``text``; a one-line QueryError naming the position of a problem.
    ``kind_of(atom)``: 'image' or 'text' for an unquoted atom (default: text)."""
    terms: list[tuple[float, dict]] = []
    pos, sign = _skip(text, 0), 1.0
    if _operator_at(text, pos) and text[pos] == "-":
        sign, pos = -1.0, _skip(text, pos + 1)
    while True:
        if pos >= len(text) or _operator_at(text, pos):
            raise QueryError(f"query expression: a term is missing at position {pos + 1} of {text!r}")
        weight = 1.0
        match = _WEIGHT.match(text, pos)
        if match:
            weight = float(text[pos : match.end() - 1])
            if not math.isfinite(weight) or weight <= 0:
                raise QueryError(f"query expression: weight {text[pos : match.end() - 1]} must be a positive number")
            pos = match.end()
        atom, quoted, pos = _atom(text, pos)
        terms.append((sign * weight, _term(atom, quoted, kind_of)))
        if len(terms) > MAX_TERMS:
            raise QueryError(f"query expression: more than {MAX_TERMS} terms")
        pos = _skip(text, pos)
        if pos >= len(text):
            return terms
        if not _operator_at(text, pos):
            raise QueryError(f"query expression: expected ' + ' or ' - ' at position {pos + 1} of {text!r}")
        sign = 1.0 if text[pos] == "+" else -1.0
        pos = _skip(text, pos + 1)


def _atom(text: str, pos: int) -> tuple[str, bool, int]:
    """(the atom, whether it was quoted, the position after it)."""
    if text[pos] in "\"'":
        end = text.find(text[pos], pos + 1)
        if end < 0:
            raise QueryError(f"query expression: the quote at position {pos + 1} is never closed")
        return text[pos + 1 : end], True, end + 1
    operator = re.compile(r"\s[+-](\s|$)").search(text, pos)
    end = operator.start() if operator else len(text)
    return text[pos:end].strip(), False, end


def _term(atom: str, quoted: bool, kind_of: Callable[[str], str] | None) -> dict:
    if not atom.strip():
        raise QueryError("query expression: an empty term")
    if quoted:
        return {"text": atom}
    item = _ITEM.match(atom)
    if item:
        if not item.group(1).isdigit() or int(item.group(1)) < 1:
            raise QueryError(f"query expression: {atom!r} is not an item id (item:42)")
        return {"item": int(item.group(1))}
    return {kind_of(atom) if kind_of is not None else "text": atom}


def _operator_at(text: str, pos: int) -> bool:
    """A ``+`` or ``-`` at ``pos`` followed by white space or the end."""
    return pos < len(text) and text[pos] in "+-" and (pos + 1 == len(text) or text[pos + 1].isspace())


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def check_terms(terms) -> list[tuple[float, dict]]:
    """A library caller's ``terms`` as (weight, query dict) pairs: finite non-zero weights, one to MAX_TERMS of them."""
    try:
        pairs = [(float(weight), query) for weight, query in terms]
    except (TypeError, ValueError) as exc:
        raise QueryError(f"terms are (weight, query dict) pairs: {exc}") from exc
    if not 1 <= len(pairs) <= MAX_TERMS:
        raise QueryError(f"a combined query has 1 to {MAX_TERMS} terms, got {len(pairs)}")
    for weight, query in pairs:
        if not math.isfinite(weight) or weight == 0:
            raise QueryError(f"term weights are finite and non-zero, got {weight}")
        if not isinstance(query, dict) or "terms" in query:
            raise QueryError("each term is a query dict with one of image, text, vector or item")
    return pairs


def combine(weights: list[float], embedded: list[tuple[np.ndarray, str, str]]) -> tuple[np.ndarray, str]:
    """The re-normalised weighted sum of the terms' unit features, and its modality: the terms' shared one, else
    'vector'."""
    import numpy as np

    total = np.zeros_like(np.asarray(embedded[0][0], np.float64))
    for weight, (feature, _, _) in zip(weights, embedded, strict=True):
        total += weight * np.asarray(feature, np.float64)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise QueryError("the query's terms cancel out (their weighted sum is zero)")
    modalities = {modality for _, modality, _ in embedded}
    modality = modalities.pop() if len(modalities) == 1 else "vector"
    return (total / norm).astype(np.float32), modality
