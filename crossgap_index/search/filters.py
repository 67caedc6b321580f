"""Which stored items a search may return: path prefix and glob, id lists, external ids, the query item itself.

A filter is part of the one ``SearchOptions`` value (search/options.py), so the library, ``cgx query``, the HTTP
API and the adapters filter alike. It is applied to every ranked list before anything is merged or re-ranked
(``search.run.run_mode``): each leg of a fused mode, aqe's first round and qbnorm's re-scored head see only items
that pass, so ``k`` passing hits come back whenever the collection holds ``k`` passing items.

How a filtered list is ranked (``filtered_top_k``): the unfiltered ranking is fetched deeper and deeper (``k + 1``
first, then ``GROWTH`` times as deep, or at once as deep as the pass rate seen so far says ``k`` need) until ``k``
of its items pass or the collection is exhausted. This works the same over every gallery (the FAISS collections,
derived projected ones, in-memory features) and keeps each index's own exact re-rank of approximate candidates.
Its cost grows with how rare passing items are: a filter that passes a fraction f of the collection ranks about
``k / f`` items (at most the whole collection). FAISS's ``IDSelector`` search parameters are faster on an exact
index (benchmarks/results/filters.md: 2x at 50% passing, 11x at 5%, 20x at 0.5%, 130x at 0.05%; same hits), but they
need the whole allowed id set first (a catalog scan for a path filter), replace the parameters an IVF or HNSW
index is searched with (nprobe, efSearch), are not served by GPU replicas, and have no counterpart for derived or
in-memory galleries; the one path here is correct for all of them.

``brute_force_top_k`` is the straightforward twin the tests hold it against: every item scored, those that fail
masked out, the best ``k`` kept.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from crossgap_index.errors import QueryError
from crossgap_index.search.ranking import Ranked

GROWTH = 4  # how much deeper each over-fetch round ranks
_ROWS_CHUNK = 900  # ids per catalog lookup (under SQLite's bound-parameter limit)

# admit(query row in its batch, candidate ids) -> which of them may be returned
Admit = Callable[[int, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ItemFilter:
    """What an item must be to be returned (every given part must hold).

    ``under``: a folder: images whose path is that folder or lies below it (a prefix of whole path
    components: ``/photos/2023`` does not admit ``/photos/2023-old``). ``glob``: a shell pattern matched
    against the file name when it holds no ``/``, else against the whole path (``*.jpg``, ``*/raw/*``).
    ``only_ids``: the ids allowed (None: any). ``exclude_ids``: ids never returned. ``external_ids``: items
    imported with one of these external ids (``cgx add-texts`` with ids, ``cgx import``).
    """

    under: str | None = None
    glob: str | None = None
    only_ids: frozenset[int] | None = None
    exclude_ids: frozenset[int] = frozenset()
    external_ids: frozenset[str] | None = None

    @property
    def reads_rows(self) -> bool:
        """Whether deciding needs the catalog's rows (paths, external ids), not just ids."""
        return self.under is not None or self.glob is not None or self.external_ids is not None

    @property
    def empty(self) -> bool:
        return not self.reads_rows and self.only_ids is None and not self.exclude_ids

    def admits_row(self, item_id: int, path: str | None, external_id: str | None) -> bool:
        """Whether one item passes (the rule the catalog-backed ``admitter`` applies to each candidate)."""
        if self.only_ids is not None and item_id not in self.only_ids:
            return False
        if item_id in self.exclude_ids:
            return False
        if self.external_ids is not None and external_id not in self.external_ids:
            return False
        if self.under is not None and not under_folder(path, self.under):
            return False
        return self.glob is None or matches_glob(path, self.glob)


def under_folder(path: str | None, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (whole components; a trailing ``/`` on ``folder`` is ignored)."""
    if path is None:
        return False
    folder = folder.rstrip("/") or "/"
    if folder == "/":
        return path.startswith("/")
    return path == folder or path.startswith(folder + "/")


def matches_glob(path: str | None, pattern: str) -> bool:
    """A case-sensitive shell match of the file name (pattern without ``/``) or of the whole path."""
    if path is None:
        return False
    subject = path if "/" in pattern else path.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(subject, pattern)


def check_filter_target(item_filter: ItemFilter, collection: str) -> None:
    """A filter on a part the target's items never have (paths of texts, external ids of images) would return
    nothing: say so instead."""
    if collection == "text" and (item_filter.under is not None or item_filter.glob is not None):
        raise QueryError("path filters (under, glob) apply to images; stored texts have no path")
    if collection == "image" and item_filter.external_ids is not None:
        raise QueryError("external ids belong to texts (cgx add-texts with ids): use it with target texts")


def admitter(item_filter: ItemFilter, rows_of: Callable[[list[int]], dict], query_items: list[set[int]]) -> Admit:
    """An ``Admit`` over a catalog: ``rows_of(ids)`` gives ``{id: row}`` (rows with ``path`` and ``external_id``),
    ``query_items[i]``: the stored items batch query ``i`` was made from (excluded from its own hits). Decisions
    are remembered for the search, so deeper rounds look up only the new candidates."""
    decided: dict[int, bool] = {}

    def passes(ids: Iterable[int]) -> None:
        todo = [i for i in ids if i not in decided]
        if not item_filter.reads_rows:
            for i in todo:
                decided[i] = item_filter.admits_row(i, None, None)
            return
        for first in range(0, len(todo), _ROWS_CHUNK):
            chunk = todo[first : first + _ROWS_CHUNK]
            rows = rows_of(chunk)
            for i in chunk:
                row = rows.get(i)  # removed meanwhile: dropped later by the hits' own catalog read
                decided[i] = row is not None and item_filter.admits_row(i, row.path, row.external_id)

    def admit(query_row: int, ids: np.ndarray) -> np.ndarray:
        listed = ids.tolist()
        passes(listed)
        own = query_items[query_row] if query_items else ()
        return np.fromiter((decided[i] and i not in own for i in listed), bool, len(listed))

    return admit


def filtered_top_k(top_k: Callable[[np.ndarray, int], list[Ranked]], queries: np.ndarray, k: int, admit: Admit):
    """The best ``k`` passing items per query row: ``top_k(rows, depth)`` ranked deeper (``k + 1``, then at least
    ``GROWTH`` times as deep) for the rows still short, until ``k`` pass or a ranking comes back shorter than asked
    (the collection is exhausted)."""
    n = len(queries)
    out: list[Ranked | None] = [None] * n
    pending = list(range(n))
    depth = k + 1
    while pending:
        ranked = top_k(queries[pending], depth)
        short, fewest = [], k
        for row, found in zip(pending, ranked, strict=True):
            keep = admit(row, found.ids)
            passed = int(keep.sum())
            if passed >= k or len(found) < depth:
                out[row] = Ranked(found.ids[keep][:k], found.scores[keep][:k])
            else:
                short.append(row)
                fewest = min(fewest, passed)
        # deeper by GROWTH, or at once to where the pass rate seen so far would give k (twice over)
        pending, depth = short, max(depth * GROWTH, 2 * k * depth // max(fewest, 1))
    return out


def brute_force_top_k(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int, admit: Admit) -> list[Ranked]:
    """The twin of ``filtered_top_k``: every item scored, failing ones masked, the best ``k`` (ties by position)."""
    out = []
    for row, query in enumerate(np.atleast_2d(queries)):
        keep = admit(row, ids)
        scores = vectors[keep] @ np.asarray(query, np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        out.append(Ranked(ids[keep][order], scores[order].astype(np.float32)))
    return out
