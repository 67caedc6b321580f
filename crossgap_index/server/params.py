"""Path parameters taken strictly: an item id is written as digits only (no sign, space, decimal point)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from crossgap_index.server.errors import ApiError

ID_PATTERN = r"^[1-9][0-9]{0,18}$"
MAX_ID = 2**63 - 1


def item_id(
    item_id: Annotated[str, Path(pattern=ID_PATTERN, description="A catalog id (digits), as search hits carry it.")],
) -> int:
    """The id as an int. ``+1``, `` 1`` and ``1.0`` are refused (422), as is anything over SQLite's range."""
    value = int(item_id)
    if value > MAX_ID:
        raise ApiError(422, f"item_id: {item_id} is over the largest id {MAX_ID}")
    return value


ItemId = Annotated[int, Depends(item_id)]


# A page's start in /browse: an id, or 0 for the first page; bounded so a 23-digit value is a 422, not a 500
# (SQLite integers stop at 2**63 - 1).
BrowseAfter = Annotated[
    int, Query(ge=0, le=MAX_ID, description="Only images with a larger id (the previous page's last).")
]
