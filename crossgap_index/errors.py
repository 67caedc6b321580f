"""Errors a user can act on. The CLI prints their message as one line; a traceback means a bug."""


class CrossGapError(Exception):
    """Base class: every expected failure (bad input, missing weights, wrong index) derives from it."""


class ModelUnavailableError(CrossGapError):
    """A model spec names weights that cannot be had here (offline, unknown tag, missing file)."""


class IncompatibleModelError(CrossGapError):
    """The model cannot do what was asked (e.g. OVI on a ResNet image tower)."""


class StoreError(CrossGapError):
    """An index directory is missing, empty, built with another model, or from a newer schema."""


class DiskFullError(StoreError):
    """The file system ran out of space mid-write: what was committed before is kept; free space and re-run."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full: an OSError's errno, SQLite's SQLITE_FULL, or a
    FAISS write error, which carries the C library's message."""
    import errno
    import os

    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if getattr(exc, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
        return True
    text = str(exc)
    return "database or disk is full" in text or os.strerror(errno.ENOSPC) in text


class QueryError(CrossGapError):
    """A query cannot be run as given (unreadable image, conflicting options)."""


class InputFileError(CrossGapError):
    """An input file (text corpus, dataset) cannot be read."""


class CrossGapWarning(UserWarning):
    """A note the user should see but that does not stop the work (the CLI prints it as one line)."""


class TruncatedTextWarning(CrossGapWarning):
    """A text was longer than the model's context; only its first part was embedded."""
