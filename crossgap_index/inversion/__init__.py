"""Modality inversion: OTI (image -> text feature) and OVI (text -> image feature), with fast paths.

``InversionConfig`` is torch-free and imported eagerly; the optimisation loop (optimise.py) loads on first
use (PEP 562). What runs a tower with pseudo-tokens or pseudo-patches (family, attention, the text and vision
tower paths) lives in crossgap_index.models: this package only optimises.
"""

from importlib import import_module

from crossgap_index.inversion.config import InversionConfig

_LAZY = {
    "final_losses": "crossgap_index.inversion.optimise",
    "inversion_path": "crossgap_index.inversion.optimise",
    "oti": "crossgap_index.inversion.optimise",
    "oti_reference": "crossgap_index.inversion.optimise",
    "ovi": "crossgap_index.inversion.optimise",
    "ovi_reference": "crossgap_index.inversion.optimise",
    "Family": "crossgap_index.models.family",
    "detect_family": "crossgap_index.models.family",
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
