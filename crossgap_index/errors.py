"""Errors a user can act on. The CLI prints their message as one line; a traceback means a bug."""


class CrossGapError(Exception):
    """Base class: every expected failure (bad input, missing weights, wrong index) derives from it."""


class ModelUnavailableError(CrossGapError):
    """A model spec names weights that cannot be had here (offline, unknown tag, missing file)."""


class IncompatibleModelError(CrossGapError):
    """The model cannot do what was asked (e.g. OVI on a ResNet image tower)."""


class StoreError(CrossGapError):
    """An index directory is missing, empty, built with another model, or from a newer schema."""


class QueryError(CrossGapError):
    """A query cannot be run as given (unreadable image, conflicting options)."""


class InputFileError(CrossGapError):
    """An input file (text corpus, dataset) cannot be read."""


class CrossGapWarning(UserWarning):
    """A note the user should see but that does not stop the work (the CLI prints it as one line)."""


class TruncatedTextWarning(CrossGapWarning):
    """A text was longer than the model's context; only its first part was embedded."""
