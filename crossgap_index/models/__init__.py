"""Model layer: spec parsing, loading through open_clip, the Encoder, and what runs a tower: the family
adapters (family.py), attention op by op (attention.py), the text and vision tower paths that take
pseudo-tokens / pseudo-patches (text_tower.py, vision_tower.py) and that inversion optimises through.

Spec parsing is torch-free and imported eagerly; ``Encoder``, ``load_model`` and the other names
that need torch load on first use (PEP 562), so importing this package stays cheap.
"""

from importlib import import_module

from crossgap_index.models._registry import bundled_names
from crossgap_index.models.spec import (
    DEFAULT_MODEL,
    ModelSpec,
    check_device,
    default_model_spec,
    local_weights,
    parse_spec,
)

_LAZY = {
    "Encoder": "crossgap_index.models.encoder",
    "LoadedModel": "crossgap_index.models.factory",
    "load_model": "crossgap_index.models.factory",
    "resolve_device": "crossgap_index.models.factory",
}

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "LoadedModel",
    "ModelSpec",
    "bundled_names",
    "check_device",
    "default_model_spec",
    "load_model",
    "local_weights",
    "parse_spec",
    "resolve_device",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
