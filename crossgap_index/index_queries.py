"""A query as the facade's keywords give it (image, text, vector, stored item or arithmetic expression) turned into
the one query dict the search layer takes, and an embedded query as the facade hands it back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Query:
    """An embedded query: unit feature, modality ('image', 'text' or 'vector'), content hash."""

    feature: np.ndarray
    modality: str
    digest: str


def query_dict(image=None, text=None, vector=None, item: int | None = None, expression: str | None = None) -> dict:
    """The keyword arguments as one query dict; the searcher checks that exactly one was given."""
    terms = None
    if expression is not None:
        from crossgap_index.search.arithmetic import parse
        from crossgap_index.search.query_arg import query_kind

        terms = parse(expression, kind_of=query_kind)
    given = (("image", image), ("text", text), ("vector", vector), ("item", item), ("terms", terms))
    return {k: v for k, v in given if v is not None}
