"""The peers (aqe, dba, nnn, qbnorm, center) and their compositions: each served mode equals a straightforward
numpy reference of its paper's description, served (FAISS, derived collections) equals the engine over in-memory
features (what `cgx eval` measures), mode names round-trip through the manifest, a composition stored as the
tuned mode is what `auto` serves, derived collections follow the catalog, and the CLI takes `MODE+POST`."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.errors import QueryError
from crossgap_index.search.candidates import tune_candidates
from crossgap_index.search.gallery import MatrixGallery
from crossgap_index.search.modes import MODE_NAMES, Mode, resolve_mode
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.run import Queries, run_mode
from tests.support.photos import MODEL, write_photo

N = 40
SPAN = {"vocabulary": ["red circle", "blue square", "green star", "yellow triangle", "purple cross"]}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(N):
        write_photo(folder / f"c{i % 4}" / f"img{i}.png", seed=100 + i)
    cgx = CrossGapIndex.create(tmp_path_factory.mktemp("idx") / "index", model=MODEL, device="cpu")
    cgx.index_folders([folder])
    yield cgx
    cgx.close()


def _gallery(index) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = index._store.ids_and_vectors("image")
    return ids, vectors.astype(np.float64)


def _query(index, seed: int = 0) -> np.ndarray:
    """A unit vector near a gallery item (not one of them), so neighbours and biases all matter."""
    _, g = _gallery(index)
    rng = np.random.default_rng(seed)
    q = g[7] + 0.5 * rng.normal(size=g.shape[1]) / np.sqrt(g.shape[1])
    return q / np.linalg.norm(q)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- straightforward references: whole similarity matrices, loops where the paper says "for each" ---------------


def ref_aqe(q, g, n=5, alpha=3.0):
    s = g @ q
    top = np.argsort(-s, kind="stable")[:n]
    expanded = _unit(q + sum(max(s[i], 0) ** alpha * g[i] for i in top))
    return g @ expanded


def ref_dba(q, g, n=5, alpha=3.0):
    sims = g @ g.T
    augmented = np.zeros_like(g)
    for j in range(len(g)):
        top = np.argsort(-sims[j], kind="stable")[:n]
        augmented[j] = _unit(sum(max(sims[j, i], 0) ** alpha * g[i] for i in top))
    return augmented @ q


def ref_nnn(q, g, k=128, w=0.75):
    bank = g  # image queries: the bank is the gallery's own images
    sims = bank @ g.T
    bias = np.array([np.sort(sims[:, j])[-min(k, len(bank)) :].mean() for j in range(len(g))])
    return g @ q - w * bias


def ref_qbnorm(q, g, beta=20.0, depth=100):
    """Returns (score per gallery row of the re-scored head, or None when the query is not activated)."""
    sims = g @ g.T
    np.fill_diagonal(sims, -np.inf)  # each bank query (a gallery item) leaves itself out
    z = np.exp(beta * sims).sum(axis=0)
    active = set(np.argmax(sims, axis=1).tolist())
    s = g @ q
    order = np.argsort(-s, kind="stable")
    if order[0] not in active:
        return s, order, False
    head = order[:depth]
    normalised = np.exp(beta * s[head]) / z[head]
    return normalised, head[np.argsort(-normalised, kind="stable")], True


def ref_center(q, g, lam=1.0):
    mean = g.mean(axis=0)
    return _unit(g - lam * mean) @ _unit(q - lam * mean)


def _served(index, mode, q, k=N):
    return index.search_batch([{"vector": q.astype(np.float32).tolist(), "modality": "image"}], k=k, mode=mode)[0]


def _in_memory(index, name, q, k=None):
    """Ids ``name`` ranks for the vector query ``q`` through the engine over in-memory features (as eval does)."""
    ids, vectors = index._store.ids_and_vectors("image")
    query = Queries(q[None].astype(np.float32), "image", ("q",))
    memory = MatrixGallery({"image": (ids, vectors)})
    mode = resolve_mode(name)
    transformer = index._runtime.searcher.transformer
    return run_mode(mode, query, "image", k or len(ids), memory, transformer)[0].ranked.ids.tolist()


def _check_ranking(hits, ids, scores, atol=2e-5):
    order = np.argsort(-scores, kind="stable")
    got_ids = [h.id for h in hits]
    assert got_ids == ids[order][: len(got_ids)].tolist()
    np.testing.assert_allclose([h.score for h in hits], scores[order][: len(hits)], atol=atol)


@pytest.mark.parametrize(
    ("name", "peer", "reference"),
    [
        ("aqe", {}, ref_aqe),
        ("aqe", {"n": 2, "alpha": 1.0}, lambda q, g: ref_aqe(q, g, 2, 1.0)),
        ("dba", {}, ref_dba),
        ("dba", {"n": 3}, lambda q, g: ref_dba(q, g, 3)),
        ("nnn", {}, ref_nnn),
        ("nnn", {"k": 4, "w": 0.5}, lambda q, g: ref_nnn(q, g, 4, 0.5)),
        ("center", {}, ref_center),
        ("center", {"lam": 0.25}, lambda q, g: ref_center(q, g, 0.25)),
    ],
)
def test_peer_equals_its_numpy_reference(index, name, peer, reference):
    ids, g = _gallery(index)
    mode = resolve_mode(name, peer=peer)
    for seed in range(3):
        q = _query(index, seed)
        _check_ranking(_served(index, mode, q), ids, reference(q, g))


@pytest.mark.parametrize("depth", [100, 10])
def test_qbnorm_equals_its_numpy_reference(index, depth):
    ids, g = _gallery(index)
    mode = resolve_mode("qbnorm", peer={"depth": depth})
    activated = 0
    for seed in range(6):
        q = _query(index, seed)
        hits = _served(index, mode, q)
        scores, order, active = ref_qbnorm(q, g, depth=depth)
        activated += active
        assert [h.id for h in hits][: len(order) if active else N] == ids[order][: N if not active else None].tolist()
        if active:  # the shown score is log(exp(beta s) / Z) / beta
            head = np.sort(scores)[::-1]
            np.testing.assert_allclose([h.score for h in hits[: len(head)]], np.log(head) / 20.0, atol=2e-4)
            tail = [h.id for h in hits[len(order) :]]  # past the head: the plain ranking continues
            plain = ids[np.argsort(-(g @ q), kind="stable")]
            assert tail == [i for i in plain.tolist() if i not in set(ids[order].tolist())][: len(tail)]
    assert activated > 0


def test_composition_equals_reference_in_the_legs_space(index):
    """span+aqe: alpha-QE run inside the span projection (query and gallery projected alike)."""
    ids, g = _gallery(index)
    mode = resolve_mode("span+aqe", projection=SPAN)
    projection = index._runtime.searcher.transformer.projection(mode.legs[0], "image")
    matrix = projection.matrix.astype(np.float64)
    projected = _unit(g @ matrix.T)
    for seed in range(3):
        q = _query(index, seed)
        _check_ranking(_served(index, mode, q), ids, ref_aqe(_unit(matrix @ q), projected))
    nnn = resolve_mode("span+nnn", projection=SPAN)
    q = _query(index, 1)
    _check_ranking(_served(index, nnn, q), ids, ref_nnn(_unit(matrix @ q), projected))


SERVED_AS_EVAL = {
    "aqe": resolve_mode("aqe"),
    "dba": resolve_mode("dba"),
    "nnn": resolve_mode("nnn", peer={"k": 8}),
    "qbnorm": resolve_mode("qbnorm", peer={"depth": 12}),
    "center": resolve_mode("center"),
    "span+aqe": resolve_mode("span+aqe", projection=SPAN),
    "dba+qbnorm": resolve_mode("dba+qbnorm"),
    "iso+nnn": resolve_mode("iso+nnn"),
}


@pytest.mark.parametrize("name", list(SERVED_AS_EVAL))
def test_served_equals_the_engine_over_memory(index, name):
    """What eval measures (run_mode over in-memory features, leave-one-out included) is what search serves: a
    query by a stored item leaves it out of its hits, as eval's leave-one-out does."""
    mode = SERVED_AS_EVAL[name]
    ids, vectors = index._store.ids_and_vectors("image")
    memory = MatrixGallery({"image": (ids, vectors)})
    transformer = index._runtime.searcher.transformer
    for item in (int(ids[3]), int(ids[20])):
        served = index.search(item=item, k=N - 1, mode=mode)
        feature, modality, digest = index._runtime.searcher.embed([{"item": item}])[0]
        query = Queries(feature[None], modality, (digest,))
        result = run_mode(mode, query, "image", N - 1, memory, transformer, np.array([item]))[0]
        assert [h.id for h in served] == result.ranked.ids.tolist()
        np.testing.assert_allclose([h.score for h in served], result.ranked.scores, rtol=1e-4, atol=2e-5)
    excluded = run_mode(mode, Queries(vectors[:2], "image", ("a", "b")), "image", N - 1, memory, transformer, ids[:2])
    for row, result in enumerate(excluded):  # leave-one-out (eval): the query never ranks itself
        assert ids[row] not in result.ranked.ids and len(result.ranked) == N - 1


def test_mode_names_round_trip_and_bad_names_are_one_line():
    for name in MODE_NAMES:
        if name == "auto":
            continue
        mode = resolve_mode(name)
        assert Mode.from_dict(json.loads(json.dumps(mode.to_dict()))) == mode, name
        assert mode.describe().startswith(name)
    composed = resolve_mode("cross+qbnorm", peer={"beta": 10})
    assert composed.legs == resolve_mode("cross").legs
    assert composed.post == {"kind": "qbnorm", "beta": 10.0, "depth": 100}
    assert "then qbnorm" in composed.describe()
    for bad in ("span+dba", "fused+aqe", "aqe+span", "span+aqe+nnn", "spam"):
        with pytest.raises(QueryError):
            resolve_mode(bad)
    for settings in ({"n": 0}, {"alpha": -1}, {"k": 3}, {"n": "x"}):
        with pytest.raises(QueryError):
            resolve_mode("aqe", peer=settings)
    with pytest.raises(QueryError):
        Mode.from_dict({**resolve_mode("fused").to_dict(), "post": {"kind": "aqe", "n": 3, "alpha": 3.0}})
    old = resolve_mode("span").to_dict()
    del old["post"]  # a record stored before post-steps existed
    assert Mode.from_dict(old) == resolve_mode("span")


def test_a_stored_composition_is_served_by_auto(index, tmp_path):
    mode = resolve_mode("span+qbnorm", projection=SPAN, peer={"depth": 15})
    q = _query(index, 2)
    index.set_tuned_mode({"mode": mode.to_dict(), "task": "image-to-image", "candidate": "span+qbnorm"})
    try:
        served = _served(index, "auto", q, k=10)
        assert [h.id for h in served] == [h.id for h in _served(index, mode, q, k=10)]
        assert index.describe_mode("image", mode="auto")["name"] == "span+qbnorm"
        reopened = CrossGapIndex.open(index.path)
        again = _served(reopened, "auto", q, k=10)
        assert [h.id for h in again] == [h.id for h in served]
        reopened.close()
    finally:
        index.set_tuned_mode(None)


def test_derived_collections_follow_the_catalog(tmp_path):
    """dba and nnn keep a derived collection (one extra dimension for nnn) that a build brings up to date."""
    folder = tmp_path / "photos"
    for i in range(12):
        write_photo(folder / f"img{i}.png", seed=300 + i)
    with CrossGapIndex.create(tmp_path / "index", model=MODEL, device="cpu") as cgx:
        cgx.index_folders([folder])
        q = _query(cgx, 0)
        for name, reference in (("dba", ref_dba), ("nnn", ref_nnn)):
            ids, g = _gallery(cgx)
            _check_ranking(_served(cgx, name, q, k=12), ids, reference(q, g))
        saved = sorted(p.name for p in (tmp_path / "index" / "derived").glob("image@*.json"))
        assert any(n.startswith("image@dba-") for n in saved) and any(n.startswith("image@nnn-") for n in saved)
        for i in range(12, 20):
            write_photo(folder / f"img{i}.png", seed=300 + i)
        cgx.index_folders([folder])
        ids, g = _gallery(cgx)
        assert len(ids) == 20
        for name, reference in (("dba", ref_dba), ("nnn", ref_nnn), ("center", ref_center)):
            _check_ranking(_served(cgx, name, q, k=20), ids, reference(q, g))
        qbnorm = _served(cgx, "qbnorm", q, k=20)
        assert [h.id for h in qbnorm] == _in_memory(cgx, "qbnorm", q)
        kept = sorted((tmp_path / "index" / "derived").glob("*.npz"))  # qbnorm's statistics, center's means
        assert {p.name.split("-")[0] for p in kept} >= {"image@qbnorm", "image@mean.npz"}
        for path in kept:  # one cut short, the others not an archive at all
            path.write_bytes(path.read_bytes()[:100] if "qbnorm" in path.name else b"damaged")
    with CrossGapIndex.open(tmp_path / "index") as cgx:  # another process: the saved collections, same answers
        _check_ranking(_served(cgx, "nnn", q, k=20), ids, ref_nnn(q, g))
        assert [h.id for h in _served(cgx, "qbnorm", q, k=20)] == [h.id for h in qbnorm]  # damaged: refitted
        _check_ranking(_served(cgx, "center", q, k=20), ids, ref_center(q, g))
        cgx.add_texts(["a red circle", "a blue square", "a green star", "two yellow triangles", "a purple cross"])
        _, texts = cgx._store.ids_and_vectors("text")
        text_query = [{"vector": _unit(texts[0] + texts[1]).tolist(), "modality": "text"}]
        served = cgx.search_batch(text_query, k=20, mode="nnn")[0]  # a text query's bank: the index's texts
        bias = np.sort(texts.astype(np.float64) @ g.T, axis=0)[-128:].mean(axis=0)
        _check_ranking(served, ids, g @ np.asarray(text_query[0]["vector"]) - 0.75 * bias)
        _check_ranking(_served(cgx, "nnn", q, k=20), ids, ref_nnn(q, g))  # and an image query's is still the images


def test_cli_query_takes_a_composition(index):
    result = CliRunner().invoke(
        app, ["query", "--index", str(index.path), "--mode", "dba+aqe", "-k", "3", "--json", "--text", "a red circle"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["settings"]["served"]["name"] == "dba+aqe" and len(doc["hits"]) == 3
    bad = CliRunner().invoke(app, ["query", "--index", str(index.path), "--mode", "span+dba", "x"])
    assert bad.exit_code != 0


def test_tune_candidates_cover_every_peer_and_compose_with_bases():
    candidates = dict(tune_candidates([("span[imagenet,8]", resolve_mode("span", projection={"components": 8}))]))
    kinds = {m.post["kind"] if m.post else m.legs[0].params.get("kind") for m in candidates.values()}
    assert kinds == {"aqe", "dba", "nnn", "qbnorm", "center"}
    assert candidates["span[imagenet,8]+aqe"].name == "span+aqe"
    assert all(Mode.from_dict(m.to_dict()) == m for m in candidates.values())


def test_transform_query_exports_the_fitted_peers(index):
    """dba, center and nnn have a vector form for another database (the gallery rows through the fitted map);
    aqe and qbnorm re-rank inside the index and say so in one line."""
    query = {"vector": _query(index, 4).tolist(), "modality": "image"}
    for name in ("dba", "center", "nnn", "span+nnn"):
        mode = resolve_mode(name, projection=SPAN if "span" in name else None)
        transform = index._runtime.searcher.transform_query(query, SearchOptions(mode=mode))
        ((vector, collection),) = transform.lists.values()
        ids, gallery = index._store.ids_and_vectors(collection)
        rows = transform.gallery_map.apply(gallery)
        brute = ids[np.argsort(-(rows @ vector), kind="stable")][:5]
        assert brute.tolist() == [h.id for h in index.search_batch([query], k=5, mode=mode)[0]], name
    for name in ("aqe", "span+qbnorm"):
        with pytest.raises(QueryError, match="re-ranks inside the index"):
            index._runtime.searcher.transform_query(query, SearchOptions(mode=name))


def test_the_server_serves_a_composition_over_http(index):
    import httpx

    from crossgap_index.server.settings import ServeSettings
    from tests.support.serve import running_server

    q = _query(index, 5)
    with running_server(index, ServeSettings()) as base:
        modes = httpx.get(f"{base}/info").json()["modes"]
        assert {"aqe", "dba", "nnn", "qbnorm", "center", "span+aqe", "cross+qbnorm"} <= set(modes)
        body = {"vector": q.tolist(), "modality": "image", "k": 5, "mode": "center+aqe"}
        reply = httpx.post(f"{base}/search", json=body)
        assert reply.status_code == 200, reply.text
        served = [h.id for h in _served(index, "center+aqe", q, k=5)]
        assert [h["id"] for h in reply.json()["hits"]] == served
        bad = httpx.post(f"{base}/search", json={**body, "mode": "span+dba"})
        assert bad.status_code == 400 and "unknown mode" in bad.json()["error"]


@pytest.mark.slow
def test_tune_measures_peers_and_compositions():
    """cgx tune's candidates include every peer, and the two best one-leg modes each followed by each post-step
    (a winner among them is stored like any mode: see test_a_stored_composition_is_served_by_auto)."""
    from crossgap_index.models import Encoder, load_model
    from crossgap_index.tuning.tune import tune

    encoder = Encoder(load_model(MODEL, "cpu"))
    result, _ = tune("synthetic:5:480", encoder, inversion=False)  # over tune's minimum
    names = [c["name"] for c in result.candidates]
    assert {"aqe[n=5]", "dba[n=5]", "nnn[k=128]", "qbnorm", "center[lam=1.0]"} <= set(names)
    composed = [n for n in names if n.endswith(("+aqe", "+nnn", "+qbnorm"))]
    assert len(composed) == 6, names
    assert all(np.isfinite(c["selection_map"]) for c in result.candidates)


def test_peers_over_an_approximate_factory_rescore_exactly(tmp_path):
    """With an approximate FAISS factory (HNSW) the derived collections are approximate too, and their
    candidates are re-scored exactly through the fitted map: scores equal the references."""
    folder = tmp_path / "photos"
    for i in range(24):
        write_photo(folder / f"img{i}.png", seed=500 + i)
    with CrossGapIndex.create(tmp_path / "index", model=MODEL, device="cpu", factory="HNSW32") as cgx:
        cgx.index_folders([folder])
        assert cgx._store.indexes["image"].resolved_factory == "HNSW32"
        ids, g = _gallery(cgx)
        q = _query(cgx, 3)
        for name, reference in (("dba", ref_dba), ("nnn", ref_nnn), ("center", ref_center), ("aqe", ref_aqe)):
            _check_ranking(_served(cgx, name, q, k=8), ids, reference(q, g))
