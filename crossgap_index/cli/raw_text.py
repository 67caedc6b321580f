"""Text on stdout as the bytes it names on disk: file names that are not UTF-8 survive a pipe.

Used by the commands that print paths line by line (`cgx ls`, `cgx check`, `cgx compact`); nothing heavy is
imported here.
"""

from __future__ import annotations

import sys


def one_field(value: str | None) -> str:
    """``value`` as one tab-separated field of one line: backslash, newline and tab escaped."""
    return "" if value is None else value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def write_raw(text: str) -> None:
    """To stdout as the original bytes: file names that are not UTF-8 are held with surrogate escapes."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.buffer.flush()
