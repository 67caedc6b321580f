"""The model an index embeds with: chosen for a new index, or loaded for an existing one in the precision
its vectors admit (crossgap_index.precision). The facade (api.py) holds one per opened index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.errors import StoreError
from crossgap_index.models import check_device, default_model_spec, local_weights, parse_spec
from crossgap_index.models.spec import MODEL_ENV_VAR
from crossgap_index.precision import check_setting, precision_for_index, precision_for_new_index
from crossgap_index.store.directory import Store

if TYPE_CHECKING:  # torch loads with the first model
    from crossgap_index.models import Encoder


def create_store(path: Path, model: str | None, device: str, factory: str, wait: bool, precision: str):
    """A new, empty index directory at ``path`` for ``model`` (default: $CGX_MODEL or the open_clip default),
    and the Encoder it was made with: the model is loaded to learn its dimension and precision."""
    spec = parse_spec(model or default_model_spec())
    local_weights(spec)  # bad settings fail before torch is even imported
    check_device(device)
    check_setting(precision)
    if spec.kind == "pretrained" and model is None and not os.environ.get(MODEL_ENV_VAR):
        # the default is a download: offline, a stranger's first build fails now, before torch loads (an
        # explicit ARCH/TAG goes on to open_clip, which also names an unknown tag)
        from crossgap_index.models.offline import refuse_download_offline

        refuse_download_offline(spec.canonical)
    from crossgap_index.models import Encoder, load_model
    from crossgap_index.models.encoder import precision_agreement

    loaded = load_model(spec, device)
    measured: list[float] = []

    def agreement() -> float:  # measured only when auto would pick bf16
        measured.append(precision_agreement(loaded))
        return measured[0]

    encoder = Encoder(loaded, precision=precision_for_new_index(check_setting(precision), loaded.device, agreement))
    store = Store.create(path, spec.canonical, encoder.dim, factory, wait=wait, precision=encoder.precision)
    if measured:
        store.manifest.precision_agreement = measured[0]
        store.manifest.save(path)
    return store, encoder


def check_model_name(store: Store, model: str | None) -> None:
    """Refuse (closing the store) an index opened for another model than the one it was built with."""
    if model is not None and parse_spec(model).canonical != store.manifest.model:
        store.close()
        raise StoreError(
            f"index at {store.path} was built with model '{store.manifest.model}', not '{parse_spec(model).canonical}'"
        )


def load_encoder(store: Store, device: str, precision: str) -> Encoder:
    """The index's model in the precision its vectors admit; refuses a model of another dimension."""
    from crossgap_index.models import Encoder, load_model

    manifest = store.manifest
    loaded = load_model(manifest.model, device)
    agreement = lambda: _agreement(store, loaded)  # noqa: E731 - measured only when precisions differ
    chosen = precision_for_index(precision, manifest.precision, loaded.device, agreement, f"index at {store.path}")
    encoder = Encoder(loaded, precision=chosen)
    if encoder.dim != manifest.dim:
        raise StoreError(
            f"{store.path / 'manifest.json'}: model '{manifest.model}' makes {encoder.dim}-d "
            f"vectors, the index holds {manifest.dim}-d ones"
        )
    return encoder


def _agreement(store: Store, loaded) -> float:
    """The model's fp32/bf16 probe agreement, measured once per index and kept in its manifest."""
    from crossgap_index.models.encoder import precision_agreement

    manifest = store.manifest
    if manifest.precision_agreement is None:
        manifest.precision_agreement = precision_agreement(loaded)
        manifest.save(store.path)
    return manifest.precision_agreement


def has_linear_projections(encoder: Encoder) -> bool:
    """Whether both towers end in a bias-free linear projection (what mode ``iso`` maps through)."""
    from crossgap_index.errors import IncompatibleModelError
    from crossgap_index.search.projections import projection_weights

    try:
        for modality in ("image", "text"):
            projection_weights(encoder.loaded.model, modality)
    except IncompatibleModelError:
        return False
    return True
