"""Modality inversion: OTI (image -> text feature) and OVI (text -> image feature), with fast paths.

``InversionConfig`` is torch-free and imported eagerly; the engine loads on first use (PEP 562).
"""

from importlib import import_module

from crossgap_index.inversion.config import InversionConfig

_LAZY = {
    "final_losses": "crossgap_index.inversion.engine",
    "inversion_path": "crossgap_index.inversion.engine",
    "oti": "crossgap_index.inversion.engine",
    "oti_reference": "crossgap_index.inversion.engine",
    "ovi": "crossgap_index.inversion.engine",
    "ovi_reference": "crossgap_index.inversion.engine",
    "Family": "crossgap_index.inversion.family",
    "detect_family": "crossgap_index.inversion.family",
}

__all__ = [
    "Family",
    "InversionConfig",
    "detect_family",
    "final_losses",
    "inversion_path",
    "oti",
    "oti_reference",
    "ovi",
    "ovi_reference",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
