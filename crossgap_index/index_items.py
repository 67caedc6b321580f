"""Checks and readings over an index's stored items that the facade offers: texts checked before any is written,
and the note on a bundled model used outside its world."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crossgap_index.errors import QueryError
from crossgap_index.ingest.texts import unicode_problem
from crossgap_index.store.directory import Store


def check_new_texts(texts: Sequence[str], ids: Sequence[str | None] | None) -> None:
    """Refuse, before anything is written, texts and ids that cannot be stored as UTF-8 (lone surrogates) and
    ids that do not pair one to one with the texts."""
    if ids is not None and len(ids) != len(texts):
        raise QueryError("add_texts: texts and ids differ in length")
    for i, text in enumerate(texts):
        if problem := unicode_problem(text):
            raise QueryError(f"add_texts: text {i} {problem}")
        if ids is not None and (problem := unicode_problem(ids[i])):
            raise QueryError(f"add_texts: id {i} {problem}")


def model_note(store: Store) -> str | None:
    """One line when most of the index's images lie outside its bundled model's world, else None. Reads stored
    vectors only (no model): the rule is in crossgap_index.models.world."""
    from crossgap_index.models.world import SAMPLE, outside_mask, world_note, world_reference

    model = store.manifest.model
    reference = world_reference(model)
    if reference is None:
        return None
    ids = store.catalog.ids("image")
    if len(ids) > SAMPLE:
        ids = ids[np.linspace(0, len(ids) - 1, SAMPLE).round().astype(int)]
    _, vectors = store.live_vectors("image", ids)  # another process may remove some meanwhile
    return world_note(model, int(outside_mask(vectors, reference).sum()), len(vectors))
