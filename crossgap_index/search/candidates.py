"""The modes ``cgx tune`` tries beside the project's own: each peer on a small grid of its settings, and every
post-step after the tuner's best one-leg modes. (``cgx eval``'s rows come from the registry entries:
evaluation/modes.py.)
"""

from __future__ import annotations

from collections.abc import Sequence

from crossgap_index.search.mode_spec import Mode
from crossgap_index.search.modes import follow_with, resolve_mode
from crossgap_index.search.registry import post_steps


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
