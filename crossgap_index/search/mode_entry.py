"""What the registry holds for one mode (search/registry.py): how it is built from a request's settings, its
plain words for people, what eval says it measures, whether its eval row draws on labels, what it costs, and
for a peer the class that runs it. numpy-free: the CLI reads the entries at start for its help.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crossgap_index.errors import QueryError
from crossgap_index.search.mode_spec import Leg, Mode

if TYPE_CHECKING:
    from crossgap_index.search.options import SearchOptions
    from crossgap_index.search.peers import Peer

# Cost classes, cheapest first: what a query pays beyond one nearest-neighbour search.
COSTS = ("free", "gallery-fit", "second-search", "network", "optimisation", "varies")
# Roles: a mode of its own; a peer leg whose gallery is adapted (dba, center); a post-step after a one-leg mode.
ROLES = ("mode", "adapt", "post")
# What an index may lack that a mode needs: a trained inverter, the gallery's stored OTI/OVI features, a model
# whose towers end in linear projections (IsoCLIP's map is built from them).
NEEDS = ("inverter", "gallery-inversion", "linear-projections")


@dataclass(frozen=True)
class ModeContext:
    """What building a mode may need beyond the request's settings: the index's tuned record (for ``auto``)
    and the model's untuned default, built on demand (search/modes.py supplies it)."""

    tuned: dict | None = None
    default: Callable[[], Mode] | None = None


@dataclass(frozen=True)
class EvalRow:
    """A row ``cgx eval`` may measure for a mode besides its own: ``name`` in the report, ``description``,
    ``settings`` (SearchOptions fields over the eval's own), ``mode`` the name it resolves (default: the entry's),
    ``tasks`` the eval tasks it belongs to (empty: all)."""

    name: str
    description: str
    settings: Mapping = field(default_factory=dict)
    mode: str | None = None
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModeEntry:
    """One mode. ``build(options, context)`` returns its Mode (None for a peer: ``resolve`` builds it from its role,
    ``defaults`` and ``options.peer``);
    ``label``/``help``: a short plain name and one sentence for people (page, CLI, tables); ``eval_description``:
    what its eval row measures, ``eval_by_task`` where a task words it differently; ``uses_labels``: its eval row
    takes its vocabulary from the evaluated data's class names; ``cost``: one of COSTS; ``role``: one of ROLES;
    ``composable``: a post-step may follow it (``span+aqe``); ``defaults``: a peer's settings;
    ``implementation``: loads the Peer that runs a peer mode (search/peers.py), imported only when one runs;
    ``offered``: the page lists it; ``eval_rows``: further eval rows built from it; ``needs``: what of NEEDS an
    index must have to serve it (the page offers it only then)."""

    name: str
    build: Callable[[SearchOptions, ModeContext], Mode] | None
    label: str
    help: str
    eval_description: str
    uses_labels: bool = False
    cost: str = "free"
    role: str = "mode"
    composable: bool = False
    defaults: Mapping[str, float] = field(default_factory=dict)
    implementation: Callable[[], Peer] | None = None
    offered: bool = True
    eval_by_task: Mapping[str, str] = field(default_factory=dict)
    eval_rows: tuple[EvalRow, ...] = ()
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "+" in self.name or self.name != self.name.strip():
            raise ValueError(f"a mode name is one word without '+': {self.name!r}")
        if self.cost not in COSTS:
            raise ValueError(f"{self.name}: cost is one of {', '.join(COSTS)}, got {self.cost!r}")
        if not set(self.needs) <= set(NEEDS):
            raise ValueError(f"{self.name}: needs are among {', '.join(NEEDS)}, got {self.needs!r}")
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role is one of {', '.join(ROLES)}, got {self.role!r}")
        is_mode = self.role == "mode"
        if is_mode != (self.build is not None) or is_mode == (self.implementation is not None):
            raise ValueError(f"{self.name}: a mode has a build function, a peer (role adapt or post) an implementation")
        if not self.label or not self.help:
            raise ValueError(f"{self.name}: a mode has a label and a help sentence")

    def resolve(self, options: SearchOptions, context: ModeContext) -> Mode:
        """This mode for a request's settings: a peer alone is an adapted leg (adapt) or a post-step after intra."""
        if self.build is not None:
            return self.build(options, context)
        params = {"kind": self.name, **self.peer_settings(options.peer)}
        if self.role == "adapt":
            return Mode(self.name, (Leg(self.name, "adapt", "adapted", params),))
        return Mode(self.name, (Leg("intra"),), post=params)

    def describe_eval(self, task: str) -> str:
        """What this mode's eval row measures on ``task``."""
        return self.eval_by_task.get(task, self.eval_description)

    def peer_settings(self, given: Mapping | None) -> dict:
        """A peer's settings: ``defaults`` overridden by ``given``, as plain numbers, or a one-line QueryError."""
        given = dict(given or {})
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise QueryError(f"{self.name} has no setting {sorted(unknown)[0]!r}: use {', '.join(self.defaults)}")
        merged = {**self.defaults, **given}
        try:
            out = {
                key: (int(value) if isinstance(self.defaults[key], int) else float(value))
                for key, value in merged.items()
            }
        except (TypeError, ValueError) as exc:
            raise QueryError(f"{self.name}: settings must be numbers: {exc}") from exc
        if any(not math.isfinite(v) for v in out.values()):
            raise QueryError(f"{self.name}: settings must be finite")
        if any(v < 1 for key, v in out.items() if isinstance(self.defaults[key], int)):
            raise QueryError(f"{self.name}: n, k and depth must be >= 1")
        if out.get("alpha", 0) < 0 or out.get("beta", 1) <= 0 or out.get("lam", 0) < 0:
            raise QueryError(f"{self.name}: alpha and lam must be >= 0, beta > 0")
        return out
