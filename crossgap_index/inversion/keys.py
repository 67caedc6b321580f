"""Reproducibility keys: a query's seed and its cache key both derive from its content hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from crossgap_index.inversion.config import InversionConfig

# Settings that change only speed, never the inverted feature: left out of cache keys.
_SPEED_ONLY = ("batch_size", "compile", "cpu_threads")


def seed_from_digest(digest: str) -> int:
    """A 63-bit seed from a hex content hash, so the same query always starts from the same init."""
    return int(hashlib.blake2b(digest.encode(), digest_size=8).hexdigest(), 16) >> 1


def settings_fingerprint(config: InversionConfig, direction: str) -> str:
    """The settings that determine an inverted feature, as stable JSON (direction: 'oti' or 'ovi')."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _SPEED_ONLY}
    if direction == "oti":
        settings.pop("ovi_steps")
        settings.pop("n_patches")
    else:
        for key in ("oti_steps", "n_tokens", "template"):
            settings.pop(key)
    return json.dumps({"direction": direction, **settings}, sort_keys=True)


def cache_key(model: str, direction: str, config: InversionConfig, digest: str) -> str:
    """Key of one inverted feature; give ``config.resolved(loaded)`` so the key names the precision it ran in."""
    payload = f"{model}\n{settings_fingerprint(config, direction)}\n{digest}"
    if config.precision == "bf16":  # bf16 results are batch-independent since lanes (optimise.py): older ones were not
        payload += "\nlanes"
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()
