"""The modes ``cgx eval`` measures and ``cgx tune`` tries beside the project's own, read from the registry.

Each peer's eval row and its further rows (a variant's settings, a composition) are its registry entry's
(search/builtin_modes.py: ``eval_description``, ``eval_rows``); the tune grid is the settings each peer is
tried at, and every post-step is tried after the tuner's best one-leg modes.
"""

from __future__ import annotations

from collections.abc import Sequence

from crossgap_index.search.mode_spec import Mode
from crossgap_index.search.modes import follow_with, resolve_mode
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.registry import MODES, mode_entry, peer_names, post_steps


def peer_eval_modes(task: str) -> dict[str, tuple[Mode, str]]:
    """The peers and a few compositions ``cgx eval`` measures beside the project's own modes (all label-free):
    each peer at its defaults, then the variants of the adapted peers, then the compositions of the post-steps."""
    modes = {name: (resolve_mode(name), mode_entry(name).describe_eval(task)) for name in peer_names()}
    extra = [
        (entry.role != "adapt", entry.name, row)
        for entry in MODES.values()
        if entry.role != "mode"
        for row in entry.eval_rows
    ]
    for _, name, row in sorted(extra, key=lambda item: item[0]):
        if not row.tasks or task in row.tasks:
            modes[row.name] = (resolve_mode(row.mode or name, SearchOptions.of(None, **row.settings)), row.description)
    return modes


def tune_candidates(base_modes: Sequence[tuple[str, Mode]] = ()) -> list[tuple[str, Mode]]:
    """Candidates for ``cgx tune``: every peer on a small grid of its settings, and each given one-leg base
    mode (e.g. the tuner's best projection and inversion) followed by each post-step at its defaults."""
    out: list[tuple[str, Mode]] = []
    for n in (2, 3, 5, 10):
        out.append((f"aqe[n={n}]", resolve_mode("aqe", peer={"n": n})))
        out.append((f"dba[n={n}]", resolve_mode("dba", peer={"n": n})))
    for k in (16, 64, 128):
        out.append((f"nnn[k={k}]", resolve_mode("nnn", peer={"k": k})))
    out.append(("qbnorm", resolve_mode("qbnorm")))
    for lam in (0.25, 1.0):
        out.append((f"center[lam={lam}]", resolve_mode("center", peer={"lam": lam})))
    return out + post_candidates(base_modes)


def post_candidates(base_modes: Sequence[tuple[str, Mode]]) -> list[tuple[str, Mode]]:
    """Each given one-leg mode (fusions and modes with a post-step are skipped) followed by each post-step."""
    out = []
    for label, base in base_modes:
        if len(base.legs) != 1 or base.post is not None:
            continue
        for post in post_steps():
            out.append((f"{label}+{post}", follow_with(base, post)))
    return out
