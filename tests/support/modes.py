"""Shared by the mode-engine tests of image queries (tests/test_mode_engine.py) and of text queries
(tests/test_text_side.py): a tiny-random index whose gallery is inverted and whose inverter is trained, the
modes both serve, and the check that a served ranking is what eval's engine computes over in-memory features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from crossgap_index import CrossGapIndex
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.inverter import InverterConfig
from crossgap_index.search.gallery import MatrixGallery
from crossgap_index.search.modes import Mode, resolve_mode
from crossgap_index.search.run import Queries, run_mode
from crossgap_index.search.transforms import ModelTransformer
from tests.support.photos import MODEL

DERIVED = {"image": "image-oti", "text": "text-ovi"}  # each modality's inverted gallery (cross-gallery's)


def inverted_index(
    path: Path, fill: Callable[[CrossGapIndex], object], few: InversionConfig, inverter: InverterConfig, modality: str
) -> CrossGapIndex:
    """A tiny-random index at ``path`` holding what ``fill`` adds, its ``modality`` gallery inverted with
    ``few`` and an inverter trained with ``inverter``: every mode of ``served_modes`` can run on it."""
    cgx = CrossGapIndex.create(path, model=MODEL, device="cpu")
    fill(cgx)
    cgx.invert_gallery(few, modality=modality)
    cgx.train_inverter(inverter, modality=modality)
    return cgx


def served_modes(few: InversionConfig) -> dict[str, Mode]:
    """Every base mode, with cheap inversion settings and small projections."""
    return {
        "intra": resolve_mode("intra"),
        "cross": resolve_mode("cross", inversion=few),
        "fused-rrf": resolve_mode("fused", inversion=few, merge="rrf", depth=10),
        "fused-score": resolve_mode("fused", inversion=few, merge="score", alpha=0.3, depth=10),
        "cross-gallery": resolve_mode("cross-gallery"),
        "span": resolve_mode("span", projection={"vocabulary": "imagenet", "components": 6}),
        "concept": resolve_mode("concept", projection={"vocabulary": ["red circle", "blue square", "green star"]}),
        "iso": resolve_mode("iso"),
        "inverter": resolve_mode("inverter"),
        "warm": resolve_mode("warm"),
    }


def assert_serves_what_eval_measures(
    index: CrossGapIndex, served: list, query: dict, mode: Mode, k: int, model: str = MODEL
) -> None:
    """``served`` (the index's hits for ``query`` under ``mode``, over FAISS) equals ``run_mode`` over the
    index's vectors held in memory (what eval measures): the same ids in order, the same scores. ``model``: the
    index's model."""
    feature, modality, digest = index._runtime.searcher.embed([query])[0]
    store = index._store
    memory = MatrixGallery({name: store.ids_and_vectors(name) for name in (modality, DERIVED[modality])})
    transformer = ModelTransformer(
        model,
        lambda: index._runtime.encoder,
        inverter=lambda: index.inverter("image"),
        text_inverter=lambda: index.inverter("text"),
    )
    result = run_mode(mode, Queries(feature[None], modality, (digest,)), modality, k, memory, transformer)[0]
    assert [h.id for h in served] == result.ranked.ids.tolist()
    np.testing.assert_allclose([h.score for h in served], result.ranked.scores, rtol=1e-4, atol=1e-5)
