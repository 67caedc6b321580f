"""What the QUERY argument of `cgx query` is: an image file, text, or query arithmetic, decided without surprises.

Text is recognised before the file system is asked (a 300-byte sentence is not a file name to
stat), and an argument that names an image file which does not exist is an error rather than a
silent text search for "Pictures/astronot.png". An argument written in the arithmetic grammar
(search/arithmetic.py: ``2:"red car" + ./photo.jpg - night``, ``item:42``) is a combined query;
``--text`` / ``--image`` take the argument literally.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from crossgap_index.errors import QueryError
from crossgap_index.ingest.discover import file_kind, is_image_path
from crossgap_index.search.arithmetic import is_expression, parse

NAME_MAX_BYTES = 255  # longest file name component on common file systems
PATH_MAX_BYTES = 4096


def query_kind(arg: str, as_image: bool = False, as_text: bool = False) -> str:
    """``"image"`` or ``"text"``; a QueryError for conflicting flags or a missing image file."""
    if as_image and as_text:
        raise QueryError("--image and --text exclude each other")
    if as_text:
        return "text"
    if as_image:
        return "image"
    if not _could_be_path(arg):
        return "text"
    path = Path(arg).expanduser()
    try:
        mode = os.stat(path).st_mode
        is_file, exists = stat.S_ISREG(mode), True
    except (OSError, ValueError):  # missing, too long, a NUL byte: not a file we could read
        is_file = exists = False
    if is_file and is_image_path(path):
        return "image"
    if exists and is_image_path(path):  # a FIFO or device named like an image: never opened, never text
        raise QueryError(
            f"{arg} is not a regular file ({file_kind(mode)}); give an image file, or --text to search for this text"
        )
    if not exists and is_image_path(path):
        raise QueryError(f"no such image file: {arg}; use --text to search for this text")
    return "text"


def query_of(arg: str | None, item: int | None, as_image: bool = False, as_text: bool = False) -> dict:
    """The query dict the library takes for `cgx query`'s QUERY argument or ``--item ID`` (exactly one of them)."""
    if (arg is None) == (item is None):
        raise QueryError("give a QUERY or --item ID (one of them)")
    if item is not None:
        if as_image or as_text:
            raise QueryError("--image and --text describe QUERY; --item names a stored item")
        return {"item": item}
    if not (as_image or as_text) and is_expression(arg):
        terms = parse(arg, kind_of=query_kind)
        if len(terms) > 1 or terms[0][0] != 1.0:
            return {"terms": terms}
        return terms[0][1]  # one plain term: "a quoted text", item:42
    return {query_kind(arg, as_image, as_text): arg}


def query_modality(query: dict, item_of: Callable[[int], object]) -> str:
    """What a query is, for the served mode, the heading and notes: 'image', 'text' (all its terms one of them) or
    'vector'. ``item_of(id)``: the stored row (with ``modality``) or None (a one-line QueryError)."""
    if "terms" in query:
        kinds = {query_modality(term, item_of) for _, term in query["terms"]}
        return kinds.pop() if len(kinds) == 1 else "vector"
    if "item" in query:
        row = item_of(query["item"])
        if row is None:
            raise QueryError(f"no item with id {query['item']}")
        return row.modality
    return next(iter(query))


def _could_be_path(arg: str) -> bool:
    if not arg.strip() or "\n" in arg or "\0" in arg:
        return False
    try:
        raw = os.fsencode(arg)
    except UnicodeError:
        return False
    return len(raw) <= PATH_MAX_BYTES and all(len(part) <= NAME_MAX_BYTES for part in raw.split(b"/"))
