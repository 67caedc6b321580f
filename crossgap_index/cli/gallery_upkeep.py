"""What `cgx build-index` and `cgx add-texts` both do once new items are in: keep the gallery's stored
inversions current and build the derived collections `--cross` searches, then say what was built."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the library and rich load with the commands that run this, not at `cgx --help`
    from crossgap_index import CrossGapIndex
    from crossgap_index.engines import Engine
    from crossgap_index.inversion import InversionConfig

# modality -> (the index's record of its gallery inversion, the progress bar's label, its unit)
_GALLERY = {
    "image": ("gallery_inversion", "inverting gallery", "img"),
    "text": ("text_gallery_inversion", "inverting texts", "txt"),
}


def keep_gallery_current(
    cgx: CrossGapIndex, modality: str, config: InversionConfig | None, engine: Engine, quiet: bool
) -> list[str]:
    """Invert the new gallery items of ``modality`` when ``config`` asks for it (``--invert-gallery``) or the
    gallery was inverted before (with its stored settings), then build the derived collections. Returns the
    names of the derived collections built."""
    from crossgap_index.cli.bars import progress_bar

    record, label, unit = _GALLERY[modality]
    if config is not None or getattr(cgx, record) is not None:
        with progress_bar(label, unit, enabled=not quiet) as progress:
            cgx.invert_gallery(config, progress=progress, modality=modality, engine=engine)
    return cgx.build_derived(engine=engine)


def tell_derived(derived: list[str]) -> None:
    """One line on stderr naming the derived collections built, when any were."""
    from crossgap_index.cli.render import err

    if derived:
        err.print(f"built {len(derived)} derived collection(s) for --cross: {', '.join(derived)}", highlight=False)
