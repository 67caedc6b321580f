"""How `cgx` reports what went wrong: an expected failure is one line on stderr and exit 1, a library note
one line, a bug one line with exit 2 (CGX_DEBUG=1 shows its traceback), Ctrl-C exit 130."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

import typer

from crossgap_index.errors import CrossGapError, CrossGapWarning, is_disk_full

Command = TypeVar("Command", bound=Callable[..., object])


def fails_cleanly(command: Command) -> Command:
    """Expected failures become one line on stderr and exit 1; Ctrl-C exits 130 after saving."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CrossGapError as exc:
            print(f"cgx: error: {one_line(exc)}", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print("cgx: interrupted; work done so far is saved, re-run to resume", file=sys.stderr)
            raise typer.Exit(130) from None
        except OSError as exc:  # the file system said no (a path that is a file, a full disk, permissions)
            where = f" {exc.filename}:" if exc.filename else ""
            full = " disk full:" if is_disk_full(exc) else ""
            print(f"cgx: error:{full}{where} {exc.strerror or exc}", file=sys.stderr)
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug: still one line, the traceback on request
            if hasattr(exc, "exit_code") or os.environ.get("CGX_DEBUG"):
                raise  # typer's own exits and usage errors, or a debugging user
            if is_disk_full(exc):  # SQLite or FAISS out of space outside the store's writes (e.g. a cache)
                print(f"cgx: error: disk full: {one_line(exc)}; free some space and re-run", file=sys.stderr)
                raise typer.Exit(1) from None
            print(
                f"cgx: internal error: {type(exc).__name__}: {one_line(exc)} (CGX_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def one_line(message: object) -> str:
    """``message`` as one line: its line breaks become spaces."""
    return " ".join(str(message).split("\n"))


def show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """Library notes (CrossGapWarning) are one line on stderr; other warnings keep Python's format."""
    if issubclass(category, CrossGapWarning):
        print(f"cgx: note: {one_line(message)}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning
