"""The words every layer shares: search targets, modalities, the RRF constant, content hashes, progress callbacks.

One home so a name means one thing everywhere. It imports nothing heavier than the standard library (no numpy),
so the CLI can use it at start-up for free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from crossgap_index.errors import QueryError

# A search target (the collection searched, as users name it) -> the modality of its items.
TARGETS: dict[str, str] = {"images": "image", "texts": "text"}
# The modalities items and embedded queries have; a raw vector query may also say "vector" (no modality known).
MODALITIES: tuple[str, ...] = ("image", "text")
QUERY_MODALITIES: tuple[str, ...] = ("image", "text", "vector")

# Reciprocal-rank-fusion constant of Cormack et al. (2009); larger flattens the head of each list.
RRF_K = 60

# progress(done, total): files, rows or gallery items processed so far.
CountProgress = Callable[[int, int], None]
# progress(step, mean_loss): called after each optimisation step of an inversion.
StepProgress = Callable[[int, float], None]
# progress(stage, done, total): a multi-stage job (eval, tune) reporting the stage it is in.
StageProgress = Callable[[str, int, int], None]
# progress(epoch, total_epochs, loss): training an inverter network.
EpochProgress = Callable[[int, int, float], None]


def target_modality(target: str) -> str:
    """The modality of the items a search target holds; one line naming the choices for anything else."""
    if target not in TARGETS:
        raise QueryError(f"unknown target '{target}': use one of {', '.join(TARGETS)}")
    return TARGETS[target]


def check_modality(modality: object, allowed: Iterable[str] = MODALITIES, what: str = "modality") -> str:
    """``modality`` itself when it is one of ``allowed``; otherwise a one-line QueryError naming the choices."""
    allowed = tuple(allowed)
    if modality not in allowed:
        raise QueryError(f"unknown {what} {modality!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}")
    return modality  # type: ignore[return-value]


def content_hash(data: bytes) -> str:
    """The content hash items, files and queries are keyed by: 16-byte BLAKE2b as hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def text_hash(text: str) -> str:
    """A text's content hash. ``surrogatepass`` keeps texts read from non-UTF-8 names hashable and distinct."""
    return content_hash(text.encode("utf-8", "surrogatepass"))
