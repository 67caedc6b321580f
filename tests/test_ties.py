"""Equal scores are ordered by the intra score, in serving and eval alike: a straightforward oracle of the rule, a
mode that really collapses (concept over the world's own short label list, crossgap-small), served over FAISS,
the eval engine over memory, a tied run crossing the k-th hit, and an eval number that does not depend on the
order the gallery was stored in."""

from __future__ import annotations

import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import CLASS_NAMES, export_folder
from crossgap_index.evaluation.protocol import FeatureSet, measure_mode
from crossgap_index.search.gallery import MatrixGallery
from crossgap_index.search.modes import resolve_mode
from crossgap_index.search.ranking import TIE_TOLERANCE, Ranked, break_ties, tied_share
from crossgap_index.search.run import Queries, run_mode

N = 96
# concept over a short list of the world's names at a sharp temperature: every item whose posterior saturates
# becomes the same point as the others of its concept (scores exactly 1.0 between them)
COLLAPSING = resolve_mode("concept", projection={"vocabulary": CLASS_NAMES[:: len(CLASS_NAMES) // 4], "tau": 0.001})


def oracle_order(ids: list[int], scores: list[float], intra: list[float]) -> list[int]:
    """The rule written plainly: sort by score, cut the list into runs of neighbours within the tolerance,
    order each run by intra (then id)."""
    items = sorted(zip(ids, scores, intra, strict=True), key=lambda t: (-t[1], t[0]))
    runs: list[list[tuple]] = []
    for item in items:
        if runs and abs(runs[-1][-1][1] - item[1]) <= TIE_TOLERANCE:
            runs[-1].append(item)
        else:
            runs.append([item])
    return [i for run in runs for i, _, _ in sorted(run, key=lambda t: (-t[2], t[0]))]


def test_break_ties_against_the_plain_rule():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        levels = rng.choice([1.0, 0.9, 0.5, 0.2], size=n) + rng.choice([0.0, 1e-7, -3e-7], size=n)
        ids = rng.permutation(1000)[:n]
        order = np.lexsort((ids, -levels))
        ranked = Ranked(ids[order], levels[order].astype(np.float32))
        intra = rng.normal(size=n)
        got = break_ties(ranked, intra[order])
        expected = oracle_order(ids[order].tolist(), ranked.scores.astype(np.float64).tolist(), intra[order].tolist())
        assert got.ids.tolist() == expected
    assert tied_share(Ranked(np.arange(4), np.array([1, 1, 0.5, 0.2], np.float32))) == 0.5
    assert tied_share(Ranked(np.arange(3), np.array([0.9, 0.5, 0.2], np.float32))) == 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = export_folder(tmp_path_factory.mktemp("world") / "photos", seed=5, n=N)
    cgx = CrossGapIndex.create(tmp_path_factory.mktemp("idx") / "index", model="crossgap-small", device="cpu")
    cgx.index_folders([folder])
    yield cgx
    cgx.close()


def _numpy_ranking(world, item: int) -> tuple[list[int], np.ndarray]:
    """Every other item in the rule's order, from the mode's map applied in numpy, and the concept scores."""
    ids, vectors = world._store.ids_and_vectors("image")
    projection = world._runtime.searcher.transformer.projection(COLLAPSING.legs[0], "image")
    mapped = projection.apply(vectors).astype(np.float64)
    row = int(np.flatnonzero(ids == item)[0])
    scores = mapped @ mapped[row]
    intra = vectors.astype(np.float64) @ vectors[row].astype(np.float64)
    return oracle_order(ids.tolist(), scores.tolist(), intra.tolist()), scores


@pytest.mark.slow
def test_a_collapsing_mode_is_served_in_intra_order_and_eval_agrees(world):
    ids, vectors = world._store.ids_and_vectors("image")
    memory = MatrixGallery({"image": (ids, vectors)})
    checked_crossing = False
    for item in (int(ids[0]), int(ids[17]), int(ids[50])):
        expected, scores = _numpy_ranking(world, item)
        top = np.sort(scores)[::-1][:20]
        assert (np.abs(top - top[0]) <= TIE_TOLERANCE).sum() >= 3  # the mode really ties at the top
        for k in (1, 3, 20):
            served = world.search(item=item, k=k, mode=COLLAPSING, exclude_query=False)  # the item ranks too
            assert [h.id for h in served] == expected[:k]
            feature, modality, digest = world._runtime.searcher.embed([{"item": item}])[0]
            queries = Queries(feature[None], modality, (digest,))
            engine = run_mode(COLLAPSING, queries, "image", k, memory, world._runtime.searcher.transformer)[0]
            assert engine.ranked.ids.tolist() == expected[:k]
            run_scores = np.sort(scores)[::-1]
            checked_crossing |= abs(run_scores[k] - run_scores[k - 1]) <= TIE_TOLERANCE  # a run crosses the cut
    assert checked_crossing


@pytest.mark.slow
def test_eval_number_does_not_depend_on_the_stored_order(world):
    ids, vectors = world._store.ids_and_vectors("image")
    labels = np.array([hash(p.split("/")[-2]) % 1000 for p in (world.item(int(i)).path for i in ids)])
    transformer = world._runtime.searcher.transformer

    def ap(order: np.ndarray) -> np.ndarray:
        queries = Queries(vectors[order], "image", tuple(str(int(i)) for i in ids[order]))
        features = FeatureSet(queries, labels[order], vectors[order], labels[order], True)
        per_query = measure_mode(COLLAPSING, features, transformer, "image").per_query["map"]
        out = np.empty_like(per_query)
        out[order] = per_query
        return out

    first = ap(np.arange(len(ids)))
    for seed in (1, 2):
        np.testing.assert_allclose(ap(np.random.default_rng(seed).permutation(len(ids))), first, atol=1e-12)
