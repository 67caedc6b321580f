"""Which items a removal means: ids, paths (files or whole folders, gone or not), or every missing file."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from crossgap_index.errors import StoreError
from crossgap_index.store.catalog import Catalog

MAX_ID = 2**63 - 1  # SQLite's largest integer
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_reference(path: str) -> bool:
    """Whether a stored path is a URL (http://, https://, s3://, gs://, ...): an imported row's reference to
    where its content lives, not a local file, so it is never "missing" (`cgx check`, `remove --missing`)."""
    return bool(_URL.match(path))


def select_for_removal(
    catalog: Catalog,
    *,
    ids: Iterable[int] | None = None,
    paths: Iterable[str | Path] | None = None,
    missing: bool = False,
) -> list[int]:
    """Ids to remove, sorted. An id that is not stored, or a path under which nothing is indexed, is an
    error (a typo must not pass silently), raised before anything is removed. ``missing``: image files that
    are gone (URL paths are references, not files, and are kept)."""
    chosen: set[int] = set()
    if ids is not None:
        wanted = {int(i) for i in ids}
        outside = sorted(i for i in wanted if not 1 <= i <= MAX_ID)
        if outside:
            raise StoreError(f"no item with id {outside[0]}: ids are integers 1..{MAX_ID} (2**63 - 1)")
        stored = {row.id for row in catalog.rows(sorted(wanted)).values()}
        unknown = sorted(wanted - stored)
        if unknown:
            raise StoreError(f"no item with id {', '.join(map(str, unknown[:10]))} in the index")
        chosen |= stored
    images = catalog.images() if paths is not None or missing else {}
    for given in paths or ():
        target = _absolute(given)
        prefix = target.rstrip(os.sep) + os.sep
        matched = {r.id for p, r in images.items() if p == target or p.startswith(prefix)}
        if not matched:
            raise StoreError(f"nothing indexed at or under {_printable(target)}")
        chosen |= matched
    if missing:
        chosen |= {r.id for p, r in images.items() if not is_reference(p) and not os.path.isfile(p)}
    return sorted(chosen)


def _absolute(path: str | Path) -> str:
    """The absolute form the catalog stores (symlinks resolved as far as the path still exists)."""
    return str(Path(os.fsdecode(path)).expanduser().resolve(strict=False))


def _printable(path: str) -> str:
    return path.encode("utf-8", "backslashreplace").decode("utf-8")
