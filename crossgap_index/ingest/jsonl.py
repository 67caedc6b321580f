"""The one JSON-lines reader: text corpora (``cgx add-texts``), import metadata (``cgx import --meta``) and
caption files (``cgx eval``) all read their lines here, with one set of one-line messages.

The file is opened as every input is (ingest/import_files.open_regular: a regular file only, so a FIFO or
a link to /dev/zero is refused before a byte is read) and its size is checked against its cap before
reading; then it is read a bounded line at a time, so memory follows the line cap, not the file.
A problem with one line (not JSON, nested too deeply, not an object, too long) is reported as
``FILE:LINE: what is wrong``; a caller that keeps the good lines (a text corpus) gets the problem with the
line instead of an error. Text that is not UTF-8 fails the whole file: nothing after it can be trusted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from crossgap_index.errors import InputFileError
from crossgap_index.ingest.import_files import open_regular

MAX_LINE_BYTES = 1_000_000  # one line: a metadata row, a caption, a document (100,000 characters, escaped)


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line: its number and object, or (``problem``) why it is not a usable object."""

    lineno: int
    value: dict | None
    problem: str | None = None


def read_jsonl(
    path: Path, max_bytes: int | None, setting: str = "size", max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[JsonLine]:
    """Every non-blank line of a UTF-8 JSON-lines file, in order. ``max_bytes`` caps the file (None: only the
    line cap bounds memory, for metadata of any number of rows), ``setting`` names that cap in the message.
    Raises a one-line InputFileError for what spoils the whole file."""
    with open_regular(path, max_bytes, setting) as f:
        lineno, total = 0, 0
        while raw := f.readline(max_line_bytes + 1):
            lineno += 1
            total += len(raw)
            if max_bytes is not None and total > max_bytes:
                raise InputFileError(f"{path}: the file grew past the {setting} limit while it was read")
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                total += _skip_rest_of_line(f, max_line_bytes)
                yield JsonLine(lineno, None, f"a line longer than {max_line_bytes:,} bytes")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputFileError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if line.strip():
                value, problem = parse_object(line)
                yield JsonLine(lineno, value, problem)


def jsonl_objects(path: Path, max_bytes: int | None, setting: str = "size") -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line; the first bad line is a one-line InputFileError."""
    for line in read_jsonl(path, max_bytes, setting):
        if line.problem is not None:
            raise InputFileError(f"{path}:{line.lineno}: {line.problem}")
        yield line.lineno, line.value


def read_json_object(path: Path, max_bytes: int) -> dict:
    """A small JSON file holding one object (an export's ``export.json``), read whole under ``max_bytes``."""
    with open_regular(path, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputFileError(f"{path}: the file grew past the size limit while it was read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    value, problem = parse_object(text)
    if problem is not None:
        raise InputFileError(f"{path}: {problem}")
    return value


def parse_object(text: str) -> tuple[dict | None, str | None]:
    """(the JSON object ``text`` holds, None), or (None, why it does not hold one)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg})"
    except RecursionError:  # e.g. 100,000 nested brackets: the parser gives up, the line is refused
        return None, "invalid JSON (nested too deeply)"
    if not isinstance(value, dict):
        return None, f"needs a JSON object, not {type(value).__name__}"
    return value, None


def _skip_rest_of_line(f: BinaryIO, chunk: int) -> int:
    """Read past the rest of an over-long line a bounded chunk at a time; returns the bytes skipped."""
    skipped = 0
    while part := f.readline(chunk):
        skipped += len(part)
        if part.endswith(b"\n"):
            break
    return skipped
