"""Model layer: spec parsing, loading through open_clip, and the Encoder."""

from crossgap_index.models._registry import bundled_names
from crossgap_index.models.encoder import Encoder
from crossgap_index.models.factory import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelSpec,
    default_model_spec,
    load_model,
    parse_spec,
    resolve_device,
)

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "LoadedModel",
    "ModelSpec",
    "bundled_names",
    "default_model_spec",
    "load_model",
    "parse_spec",
    "resolve_device",
]
