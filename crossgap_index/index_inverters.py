"""The one-pass inversion networks saved beside an index: one file per query modality, trained on the index's
own items (OTI targets for image queries, OVI targets for text queries), loaded once per opened index."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.errors import StoreError
from crossgap_index.store.directory import Store
from crossgap_index.words import check_modality

if TYPE_CHECKING:  # torch loads with the first network
    from crossgap_index.inversion.inverter import Inverter, InverterConfig
    from crossgap_index.models import Encoder

INVERTER_FILE = "inverter.safetensors"  # the OTI network: image queries
TEXT_INVERTER_FILE = "text-inverter.safetensors"  # the OVI network: text queries
# query modality -> (file, direction of the inversion it learns)
INVERTERS = {"image": (INVERTER_FILE, "oti"), "text": (TEXT_INVERTER_FILE, "ovi")}


def inverter_file(directory: Path, modality: str) -> Path:
    """Where the network for ``modality`` queries is saved in the index directory."""
    check_modality(modality)
    return directory / INVERTERS[modality][0]


def load_inverter(directory: Path, modality: str, model: str, device: Callable) -> Inverter:
    """The saved network for ``modality`` queries, on ``device()`` (asked only when there is a file: it may load
    the model); StoreError when there is none, or when the file is another model's or another direction's."""
    from crossgap_index.inversion.inverter import Inverter

    path = inverter_file(directory, modality)
    if not path.is_file():
        raise StoreError(f"no {modality} inverter at {directory}: train one with `cgx train-inverter`")
    return Inverter.load(path, model, device(), INVERTERS[modality][1])


def train_index_inverter(
    store: Store, encoder: Encoder, config: InverterConfig | None, progress, modality: str, replace: bool
) -> Inverter:
    """Train the network for ``modality`` queries on the store's items and save it beside them. A network that
    ``max_seconds`` cut short of its steps does not replace a stored one unless ``replace``: the stored one is
    kept and a StoreError says so (nothing is replaced silently)."""
    from crossgap_index.inversion.inverter import DEFAULT_STEPS, InverterConfig, train_inverter

    stored = inverter_file(store.path, modality)
    direction = INVERTERS[modality][1]
    if config is None:
        n_tokens = None if direction == "ovi" else 1
        config = InverterConfig(direction=direction, n_tokens=n_tokens, steps=DEFAULT_STEPS[direction])
    config = dataclasses.replace(config, direction=direction)
    _, vectors = store.ids_and_vectors(modality)
    if len(vectors) < 2:
        raise StoreError(f"the {modality} index at {store.path} needs at least 2 items to train an inverter")
    partial = stored.with_name(f"{stored.name}.partial")  # Ctrl-C between steps keeps the run; the same run resumes
    network = train_inverter(encoder.loaded, vectors, config, progress, checkpoint=partial)
    if network.cut_short and stored.exists() and not replace:
        raise StoreError(
            f"training stopped by max_seconds after {network.stats['steps']} of {network.config.steps} steps; "
            f"the inverter stored at {stored} is kept (replace it with --replace)"
        )
    with store.writing():
        network.save(stored)
    return network


def inverter_stats(path: Path) -> dict | None:
    """A saved inverter's training stats, read from the safetensors header alone (no torch: `cgx info` stays
    light); None when there is no such file, or one line when it is not an inverter."""
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(min(size, 1 << 24)))["__metadata__"]
        return json.loads(meta["stats"])
    except (OSError, struct.error, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path}: unreadable inverter ({exc})") from exc
