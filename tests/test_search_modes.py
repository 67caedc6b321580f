"""Cross, fused and cross-gallery search, result merging, and the inversion cache (tiny-random, real FAISS)."""

import shutil

import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.keys import cache_key
from crossgap_index.search.merge import reciprocal_rank_fusion, score_fusion
from crossgap_index.search.ranking import Ranked
from tests.support.photos import MODEL, write_photo

FEW_STEPS = InversionConfig(oti_steps=4, ovi_steps=4)


def ranked(ids, scores=None):
    scores = scores if scores is not None else [1.0 - 0.1 * i for i in range(len(ids))]
    return Ranked(np.asarray(ids, np.int64), np.asarray(scores, np.float32))


def test_rrf_by_hand():
    fused = reciprocal_rank_fusion({"a": ranked([1, 2, 3]), "b": ranked([3, 1])}, rrf_k=1)
    # 1: 1/2 + 1/3, 3: 1/4 + 1/2, 2: 1/3
    assert fused.ids.tolist() == [1, 3, 2]
    np.testing.assert_allclose(fused.scores, [1 / 2 + 1 / 3, 1 / 4 + 1 / 2, 1 / 3], rtol=1e-6)


def test_score_fusion_normalises_each_list():
    candidates = np.array([10, 11, 12])
    exact = {"intra": np.array([0.9, 0.8, 0.7]), "cross": np.array([0.20, 0.35, 0.30])}
    fused = score_fusion(candidates, exact, {"intra": 0.5, "cross": 0.5})
    # normalised intra [1, .5, 0], cross [0, 1, 2/3] -> 11: .75, 10: .5, 12: 1/3
    assert fused.ids.tolist() == [11, 10, 12]
    np.testing.assert_allclose(fused.scores, [0.75, 0.5, 1 / 3], rtol=1e-5)


@pytest.fixture
def index(tmp_path, photo_folder):
    cgx = CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu")
    cgx.index_folders([photo_folder])
    cgx.add_texts(["a red circle", "a blue square", "a green star", "a red square"])
    yield cgx
    cgx.close()


def test_fused_is_rrf_of_the_intra_and_cross_lists(index, photo_folder):
    query = photo_folder / "a" / "img2.png"
    intra = index.search(image=query, k=6)
    cross = index.search(image=query, k=6, mode="cross", inversion=FEW_STEPS)
    fused = index.search(image=query, k=6, mode="fused", inversion=FEW_STEPS)
    expected = reciprocal_rank_fusion({"intra": ranked([h.id for h in intra]), "cross": ranked([h.id for h in cross])})
    fusion_score = dict(zip(expected.ids.tolist(), expected.scores.tolist(), strict=True))
    intra_rank = {h.id: rank for rank, h in enumerate(intra)}  # equal fused scores are ordered by intra
    assert [h.id for h in fused] == sorted(
        fusion_score, key=lambda i: (-fusion_score[i], intra_rank.get(i, len(intra)))
    )
    assert all(set(h.ranks) == {"intra", "cross"} for h in fused)
    assert all(set(h.ranks) == {"cross"} for h in cross)
    by_id = {h.id: h for h in intra}
    assert all(h.scores["intra"] == pytest.approx(by_id[h.id].score, abs=1e-5) for h in fused)


def test_score_merge_with_alpha_one_is_the_cross_ranking(index, photo_folder):
    query = photo_folder / "a" / "img0.png"
    cross = index.search(image=query, k=6, mode="cross", inversion=FEW_STEPS)
    fused = index.search(image=query, k=6, mode="fused", merge="score", alpha=1.0, inversion=FEW_STEPS)
    assert [h.id for h in fused] == [h.id for h in cross]


def test_text_to_texts_cross_uses_ovi(index):
    hits = index.search(text="a red circle", target="texts", k=4, mode="cross", inversion=FEW_STEPS)
    assert len(hits) == 4 and all(h.modality == "text" for h in hits)


def test_a_query_already_inter_modal_is_served_as_it_is(index):
    """A text query against images is the cross search already: modes that would turn it serve it plain."""
    plain = [h.id for h in index.search(text="a red circle", target="images", mode="intra")]
    for mode in ("cross", "fused", "auto"):
        assert [h.id for h in index.search(text="a red circle", target="images", mode=mode)] == plain
    with pytest.raises(QueryError, match="unknown mode"):
        index.search(text="x", mode="sideways")


def test_cache_is_keyed_by_content_and_settings(index, photo_folder, tmp_path):
    query = photo_folder / "a" / "img3.png"
    steps = []
    first = index.search(image=query, mode="cross", inversion=FEW_STEPS, progress=lambda s, loss: steps.append(s))
    assert steps[-1] == FEW_STEPS.oti_steps
    copy = shutil.copy(query, tmp_path / "renamed.png")  # same bytes, other path: a cache hit
    steps.clear()
    again = index.search(image=copy, mode="cross", inversion=FEW_STEPS, progress=lambda s, loss: steps.append(s))
    assert steps == [] and [h.id for h in again] == [h.id for h in first]
    index.search(
        image=query, mode="cross", inversion=InversionConfig(oti_steps=3), progress=lambda s, loss: steps.append(s)
    )
    assert steps[-1] == 3  # other settings: inverted again
    steps.clear()
    index.search(
        image=query, mode="cross", inversion=FEW_STEPS, use_cache=False, progress=lambda s, loss: steps.append(s)
    )
    assert steps[-1] == FEW_STEPS.oti_steps


def test_cached_feature_equals_a_fresh_inversion(index, photo_folder):
    query = index.embed_query(image=photo_folder / "b" / "IMG5.JPG")
    fresh = index.invert(query, FEW_STEPS, use_cache=False)
    cached = index.invert(query, FEW_STEPS)
    loaded = index._runtime.encoder.loaded
    key = cache_key(MODEL, "oti", FEW_STEPS.resolved(loaded), query.digest)  # auto: what it ran in
    np.testing.assert_allclose(index._store.cache.get(key), fresh, atol=1e-6)
    np.testing.assert_allclose(cached, fresh, atol=1e-6)


def test_cross_gallery_is_resumable_and_kept_complete(index, photo_folder):
    query = photo_folder / "a" / "img1.png"
    with pytest.raises(QueryError, match="no OTI feature yet"):
        index.search(image=query, mode="cross-gallery")
    assert index.invert_gallery(FEW_STEPS) == 6
    assert index.invert_gallery(FEW_STEPS) == 0
    hits = index.search(image=query, mode="cross-gallery", k=6)
    assert len(hits) == 6 and set(hits[0].ranks) == {"cross-gallery"}
    write_photo(photo_folder / "a" / "late.png", seed=77)
    index.index_folders([photo_folder])
    with pytest.raises(QueryError, match="1 gallery images"):
        index.search(image=query, mode="cross-gallery")
    assert index.invert_gallery(FEW_STEPS) == 1
    assert index.invert_gallery(InversionConfig(oti_steps=2)) == 7  # other settings: all redone
    assert index.info().gallery_inversion["oti_steps"] == 2


def test_cross_modes_on_an_approximate_index_match_exact_search(tmp_path, photo_folder):
    """Inverted queries are out of distribution for an IVF trained on image vectors: the exact re-rank
    of candidates must give the same answer as exact search."""
    query = photo_folder / "a" / "img4.png"
    results = {}
    for factory in ("Flat", "IVF2,Flat"):
        with CrossGapIndex.create(tmp_path / factory, model=MODEL, device="cpu", factory=factory) as cgx:
            cgx.index_folders([photo_folder])
            cgx.invert_gallery(FEW_STEPS)
            assert cgx.info().factories["image-oti"] == factory
            results[factory] = [
                [(h.path, round(h.score, 5)) for h in cgx.search(image=query, k=4, mode=mode, inversion=FEW_STEPS)]
                for mode in ("cross", "fused", "cross-gallery")
            ]
    assert results["IVF2,Flat"] == results["Flat"]
