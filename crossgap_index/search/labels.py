"""Plain-language names for the modes and the ranked lists they merge, for people rather than code.

The words live in each mode's registry entry (search/registry.py); this module is where tables and pages ask
for them: a short name (``mode_label``), one sentence (``mode_help``), and the label of every list a hit may
show a rank in (``list_labels``: a leg is named after the mode it comes from).
"""

from __future__ import annotations

from crossgap_index.search.registry import MODES, mode_help, mode_label

__all__ = ["list_labels", "mode_help", "mode_label"]


def list_labels() -> dict[str, str]:
    """Mode or list name -> its plain name, for every registered mode."""
    return {name: entry.label for name, entry in MODES.items()}
