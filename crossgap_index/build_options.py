"""How a build reads image files, as one value: what ``index_folders`` and ``sync_paths`` take whole (or field by
field as keywords), so the settings travel down to discovery, the read limits and the engine together."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from crossgap_index.ingest.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_MEGAPIXELS


@dataclass(frozen=True)
class BuildOptions:
    """``include_hidden`` / ``exclude``: which files discovery finds (``exclude``: glob patterns of folders and
    files, beside DEFAULT_EXCLUDES in ingest/discover.py); ``max_megapixels`` / ``max_file_bytes``: the read
    limits (a larger file is skipped with a reason); ``batch_size`` images per model call; ``workers`` decoding
    threads; ``retry_failed``: read again the files that failed before, though their size and mtime are the same."""

    include_hidden: bool = False
    exclude: Iterable[str] = ()
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    batch_size: int = 64
    workers: int = 4
    retry_failed: bool = False

    @classmethod
    def of(cls, options: BuildOptions | None = None, **settings) -> BuildOptions:
        """``options`` (default: the defaults) with ``settings`` overriding fields by name."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(settings) - fields):
            raise TypeError(f"unknown build setting(s): {', '.join(unknown)}")
        return dataclasses.replace(options or cls(), **settings)
