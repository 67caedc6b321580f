"""Modality inversion: OTI (image -> text feature) and OVI (text -> image feature), with fast paths."""

from crossgap_index.inversion.config import InversionConfig
from crossgap_index.inversion.engine import final_losses, oti, oti_reference, ovi, ovi_reference
from crossgap_index.inversion.family import Family, detect_family

__all__ = [
    "Family",
    "InversionConfig",
    "detect_family",
    "final_losses",
    "oti",
    "oti_reference",
    "ovi",
    "ovi_reference",
]
