"""Inversion settings as a command line or a request states them, turned into one ``InversionConfig``.

``cgx query``, ``cgx build-index``, ``cgx add-texts``, ``cgx eval`` and the HTTP server each take a few
inversion settings, every one optional. They all become an ``InversionConfig`` here, so that a setting
means the same wherever it is given. ``steps`` is the number of inversion steps of the query's own
direction: OTI steps for an image query and OVI steps for a text query (it sets both fields). A command that
also offers a setting for one direction only (``--ovi-steps``) passes it as ``oti_steps`` or ``ovi_steps``,
which wins over ``steps`` for that direction. A setting left at None takes ``InversionConfig``'s default.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossgap_index.inversion.config import InversionConfig


@dataclass(frozen=True)
class InversionFlags:
    """The inversion settings one command line or request gave; None: not given."""

    steps: int | None = None  # OTI steps for image queries and OVI steps for text queries
    oti_steps: int | None = None  # image queries only; wins over ``steps``
    ovi_steps: int | None = None  # text queries only; wins over ``steps``
    tokens: int | None = None  # OTI pseudo-tokens R
    patches: int | None = None  # OVI pseudo-patches P
    lr: float | None = None
    template: str | None = None
    batch_size: int | None = None
    precision: str | None = None

    def changes(self) -> dict[str, object]:
        """The ``InversionConfig`` fields these flags set, by field name (only those given)."""
        fields = {
            "oti_steps": self.steps if self.oti_steps is None else self.oti_steps,
            "ovi_steps": self.steps if self.ovi_steps is None else self.ovi_steps,
            "n_tokens": self.tokens,
            "n_patches": self.patches,
            "lr": self.lr,
            "template": self.template,
            "batch_size": self.batch_size,
            "precision": self.precision,
        }
        return {name: value for name, value in fields.items() if value is not None}

    def config(self) -> InversionConfig | None:
        """The ``InversionConfig`` these flags ask for, or None when they ask for nothing (the served settings).

        ``InversionConfig`` checks every value, so a bad one is the same one-line ``QueryError`` everywhere."""
        changes = self.changes()
        return InversionConfig(**changes) if changes else None

    def config_or_default(self) -> InversionConfig:
        """The ``InversionConfig`` these flags ask for, ``InversionConfig()`` when they ask for nothing."""
        return self.config() or InversionConfig()
