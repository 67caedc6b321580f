"""The mode registry: one ``ModeEntry`` per mode, and the few functions everything else reads it through.

``resolve_mode`` (search/modes.py), the CLI's ``--mode`` help and choices, the server's page info and its
checks, ``cgx eval``'s rows and ``cgx tune``'s candidates all read this table, so a mode is defined in one
place: its entry (search/builtin_modes.py, or ``register_mode``) and its implementation. Names are single words;
a composition ``BASE+POST`` (``span+aqe``) is any composable entry followed by a post-step entry.

    MODES                 name -> ModeEntry (read-only view, registration order)
    mode_entry(name)      the entry, or a one-line QueryError
    mode_names(...)       every name a user may give (compositions included unless asked not to)
    is_mode_name(name)    whether ``name`` is one of them
    post_steps()          the names that may follow a one-leg mode; peer_names() every peer
    mode_label(name) / mode_help(name) / mode_help_text() / list_labels()   the words people read
    register_mode(entry) / unregister_mode(name)
"""

from __future__ import annotations

import threading
from types import MappingProxyType

from crossgap_index.errors import QueryError
from crossgap_index.search.builtin_modes import BUILTIN_MODES
from crossgap_index.search.mode_entry import COSTS, NEEDS, ROLES, EvalRow, ModeContext, ModeEntry

__all__ = [
    "COSTS",
    "MODES",
    "NEEDS",
    "ROLES",
    "EvalRow",
    "ModeContext",
    "ModeEntry",
    "composable_names",
    "is_mode_name",
    "list_labels",
    "mode_entry",
    "mode_help",
    "mode_help_text",
    "mode_label",
    "mode_names",
    "peer_names",
    "post_steps",
    "register_mode",
    "unknown_mode_message",
    "unregister_mode",
]

_ENTRIES: dict[str, ModeEntry] = {entry.name: entry for entry in BUILTIN_MODES}
_LOCK = threading.Lock()
MODES = MappingProxyType(_ENTRIES)


def register_mode(entry: ModeEntry) -> ModeEntry:
    """Add a mode (its name must be new); returns the entry, so it can be used as a value or in a fixture."""
    with _LOCK:
        if entry.name in _ENTRIES:
            raise ValueError(f"mode {entry.name!r} is already registered")
        _ENTRIES[entry.name] = entry
    return entry


def unregister_mode(name: str) -> None:
    """Remove a mode added with ``register_mode``."""
    with _LOCK:
        _ENTRIES.pop(name, None)


def mode_entry(name: str) -> ModeEntry:
    """The entry of a single mode name (not a composition), or one line naming the choices."""
    entry = _ENTRIES.get(name)
    if entry is None:
        raise QueryError(unknown_mode_message(name))
    return entry


def post_steps() -> tuple[str, ...]:
    """The peers that follow a one-leg mode as its post-step (aqe, nnn, qbnorm)."""
    return tuple(name for name, entry in _ENTRIES.items() if entry.role == "post")


def peer_names() -> tuple[str, ...]:
    """The peers: the modes whose registry entry names a Peer class (adapted legs and post-steps)."""
    return tuple(name for name, entry in _ENTRIES.items() if entry.role != "mode")


def composable_names() -> tuple[str, ...]:
    """The one-leg modes a post-step may follow."""
    return tuple(name for name, entry in _ENTRIES.items() if entry.composable)


def mode_names(compositions: bool = True, offered_only: bool = False) -> tuple[str, ...]:
    """Every name a user may give, in registration order, then each ``BASE+POST``; ``compositions=False``: the
    entries alone; ``offered_only``: only the entries the page offers."""
    names = tuple(name for name, entry in _ENTRIES.items() if entry.offered or not offered_only)
    if not compositions:
        return names
    return names + tuple(f"{base}+{post}" for base in composable_names() for post in post_steps())


def is_mode_name(name: str) -> bool:
    """Whether ``name`` is a registered mode or a composition of one with a post-step."""
    if name in _ENTRIES:
        return True
    base, plus, post = name.rpartition("+")
    return bool(plus) and base in composable_names() and post in post_steps()


def unknown_mode_message(name: str) -> str:
    """The one line that refuses an unknown mode name, naming the choices."""
    return f"unknown mode '{name}': use one of {', '.join(_ENTRIES)} or BASE+POST"


def mode_label(name: str) -> str:
    """The plain name of a mode or of a list it merges; a composition ``BASE+POST`` reads as both names."""
    if "+" in name:
        base, _, post = name.rpartition("+")
        return f"{mode_label(base)}, then {mode_label(post).lower()}"
    entry = _ENTRIES.get(name)
    return entry.label if entry is not None else name


def mode_help(name: str) -> str:
    """One sentence on what a mode does ("" when unknown)."""
    entry = _ENTRIES.get(name)
    return entry.help if entry is not None else ""


def list_labels() -> dict[str, str]:
    """Mode or list name -> its plain name, for every registered mode (a leg is named after its mode): what the
    page shows beside each rank a hit has."""
    return {name: entry.label for name, entry in MODES.items()}


def mode_help_text() -> str:
    """The CLI's ``--mode`` help: every mode in plain words, then how compositions and ties work."""
    names = "; ".join(f"{name}: {entry.label.lower()}" for name, entry in _ENTRIES.items())
    posts = ", ".join(post_steps())
    return (
        f"{names}. MODE+POST (e.g. span+aqe): a one-leg mode followed by {posts}. intra is the default; auto is "
        "the mode tuned for the query's task. Every mode orders equal scores (within 1e-6) by the intra score, "
        "then by id."
    )
