"""What `cgx` sets up in its own process before a command runs (the library never touches process-wide
state): warnings as one-line notes, Pillow's bomb warning hidden, the library's log lines plain on stderr."""

from __future__ import annotations

import logging
import sys
import warnings

from crossgap_index.cli.failures import show_note


def set_up_process() -> None:
    """Warnings and logging as the command line shows them."""
    warnings.showwarning = show_note  # library notes (e.g. a truncated query text) as one line
    # Pillow's fixed 89 MP bomb warning is hidden: --max-image-megapixels is the limit that applies.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # open_clip logs its loading chatter on the root logger ("no pretrained weights" for random models).
    logging.getLogger().addFilter(lambda record: "open_clip" not in record.pathname)
    _plain_library_log()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (a test runner may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _plain_library_log() -> None:
    """The library's log lines (e.g. waiting for another writer) on stderr as they are, without a
    ``WARNING:crossgap_index:`` prefix, whatever another package did to the root logger."""
    logger = logging.getLogger("crossgap_index")
    if not any(getattr(h, "_cgx", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._cgx = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
