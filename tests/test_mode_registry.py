"""The mode registry's contract: every registered mode resolves from a SearchOptions, round-trips through its
stored form, runs through the one runner (search/run.py) on the bundled model's synthetic world with what search
serves equal to what eval measures, and has the words people read; a new mode is one registry entry plus its
implementation (a toy negation peer is registered, resolved, composed, run, then removed); each fusion rule is
checked once, by SearchOptions and Mode alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.inverter import InverterConfig
from crossgap_index.search.gallery import MatrixGallery
from crossgap_index.search.mode_spec import Mode
from crossgap_index.search.modes import resolve_mode
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.peers import PeerBase
from crossgap_index.search.registry import (
    COSTS,
    MODES,
    ModeEntry,
    is_mode_name,
    list_labels,
    mode_entry,
    mode_help_text,
    mode_label,
    mode_names,
    register_mode,
    unregister_mode,
)
from crossgap_index.search.run import Queries, run_mode
from crossgap_index.search.transforms import ModelTransformer
from tests.support.modes import assert_serves_what_eval_measures

MODEL = "crossgap-small"
N = 24
FEW = InversionConfig(oti_steps=3)
# Cheap settings per mode (small projections); every other mode takes the shared ones.
PROJECTIONS = {
    "span": {"vocabulary": ["red circle", "blue square", "green star", "yellow triangle"], "components": 3},
    "concept": {"vocabulary": ["red circle", "blue square", "green star"]},
}


def options_for(name: str) -> SearchOptions:
    return SearchOptions(inversion=FEW, depth=10, projection=PROJECTIONS.get(name))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return export_folder(tmp_path_factory.mktemp("world"), seed=11, n=N)


@pytest.fixture(scope="module")
def index(tmp_path_factory, world):
    """The synthetic world in a crossgap-small index whose gallery is inverted and whose inverter is trained, so
    every mode (cross-gallery, inverter and warm too) can run."""
    cgx = CrossGapIndex.create(tmp_path_factory.mktemp("idx") / "index", model=MODEL, device="cpu")
    cgx.index_folders([world])
    cgx.invert_gallery(FEW)
    cgx.train_inverter(InverterConfig(steps=8, batch_size=16))
    yield cgx
    cgx.close()


@pytest.fixture(scope="module")
def plain_index(tmp_path_factory, world):
    """The synthetic world in a plain crossgap-small index (what the toy and the stored-mode checks need)."""
    cgx = CrossGapIndex.create(tmp_path_factory.mktemp("plain") / "index", model=MODEL, device="cpu")
    cgx.index_folders([world])
    yield cgx
    cgx.close()


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_resolves_round_trips_and_has_words(name):
    entry = mode_entry(name)
    mode = resolve_mode(name, options_for(name), model=MODEL)
    assert isinstance(mode, Mode)
    assert Mode.from_dict(json.loads(json.dumps(mode.to_dict()))) == mode
    if name != "auto":  # auto resolves to what it stands for (the model's default here)
        assert mode.name == name
    assert entry.label and entry.help and entry.eval_description and entry.cost in COSTS
    assert mode_label(name) == entry.label and list_labels()[name] == entry.label
    assert f"{name}: {entry.label.lower()}" in mode_help_text()
    assert is_mode_name(name) and name in mode_names()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_runs_through_the_one_runner(index, world, name):
    """Served over FAISS equals run_mode over the same vectors in memory (what eval measures), for every entry."""
    mode = resolve_mode(name, options_for(name), model=MODEL)
    query = sorted(world.rglob("*.png"))[5]
    served = index.search(image=query, k=N - 1, mode=mode)
    assert len(served) == N - 1
    assert_serves_what_eval_measures(index, served, {"image": query}, mode, N - 1, MODEL)


def test_compositions_follow_the_entries():
    """BASE+POST is offered for every composable entry and every post-step entry, and nothing else."""
    composed = {name for name in mode_names() if "+" in name}
    bases = {n for n, e in MODES.items() if e.composable}
    posts = {n for n, e in MODES.items() if e.role == "post"}
    assert composed == {f"{b}+{p}" for b in bases for p in posts}
    assert not is_mode_name("fused+aqe") and not is_mode_name("span+dba")
    assert mode_names(compositions=False) == tuple(MODES)


class Negation(PeerBase):
    """A toy peer: searches with the negated query, so the least similar items come first."""

    def adapt(self, vectors, feature_map, leg):
        return -vectors, feature_map


NEGATE = ModeEntry(
    "negate",
    None,
    "Opposite",
    "Ranks the least similar items first.",
    "the negated query vs gallery",
    role="adapt",
    composable=True,
    implementation=Negation,
)


@pytest.fixture
def negate():
    register_mode(NEGATE)
    yield NEGATE
    unregister_mode(NEGATE.name)


def test_a_toy_mode_is_one_entry_plus_its_implementation(negate, plain_index):
    """Registered, the toy resolves, composes with a post-step, has words and runs; removed, it is unknown."""
    mode = resolve_mode("negate")
    assert is_mode_name("negate") and is_mode_name("negate+aqe") and "negate: opposite" in mode_help_text()
    assert resolve_mode("negate+aqe").post["kind"] == "aqe"
    ids, vectors = plain_index._store.ids_and_vectors("image")
    queries = Queries(vectors[:2], "image", ("q0", "q1"))
    transformer = ModelTransformer(MODEL, lambda: plain_index._runtime.encoder)
    gallery = MatrixGallery({"image": (ids, vectors)})
    toy = run_mode(mode, queries, "image", len(ids), gallery, transformer)
    intra = run_mode(resolve_mode("intra"), queries, "image", len(ids), gallery, transformer)
    for mine, plain in zip(toy, intra, strict=True):
        assert mine.ranked.ids.tolist() == plain.ranked.ids.tolist()[::-1]
        np.testing.assert_allclose(mine.ranked.scores, -plain.ranked.scores[::-1], atol=1e-6)
    served = plain_index.search(vector=vectors[0].tolist(), k=3, mode=mode)
    assert [h.id for h in served] == toy[0].ranked.ids[:3].tolist()
    unregister_mode("negate")
    with pytest.raises(QueryError, match="unknown mode 'negate'"):
        resolve_mode("negate")
    register_mode(NEGATE)  # the fixture removes it again


def test_a_registered_name_is_not_taken_twice(negate):
    with pytest.raises(ValueError, match="already registered"):
        register_mode(NEGATE)
    with pytest.raises(ValueError, match="one word"):
        ModeEntry("a+b", None, "x", "y", "z", role="adapt", implementation=Negation)
    with pytest.raises(ValueError, match="cost"):
        ModeEntry("toy", lambda options, context: resolve_mode("intra"), "x", "y", "z", cost="cheap")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"merge": "max"}, "unknown merge"),
        ({"alpha": 1.5}, "alpha must be in"),
        ({"rrf_k": 0}, "rrf_k and depth"),
        ({"depth": 0}, "rrf_k and depth"),
    ],
)
def test_fusion_rules_are_one_check_for_options_and_modes(settings, message):
    with pytest.raises(QueryError, match=message):
        SearchOptions(**settings)
    with pytest.raises(QueryError, match=message):
        resolve_mode("fused", **settings)
    stored = {**resolve_mode("fused").to_dict(), **{"fusion" if k == "merge" else k: v for k, v in settings.items()}}
    with pytest.raises(QueryError, match=message):
        Mode.from_dict(stored)


def test_resolve_mode_takes_options_whole_and_keywords_override():
    options = SearchOptions(merge="score", alpha=0.25, depth=7, inversion=FEW)
    fused = resolve_mode("fused", options)
    assert (fused.fusion, fused.alpha, fused.depth) == ("score", 0.25, 7)
    assert fused.legs[1].params["oti_steps"] == 3
    assert resolve_mode("fused", options, alpha=0.75).alpha == 0.75
    assert resolve_mode("dba+aqe", SearchOptions(peer={"n": 2})).post["n"] == 2  # peer settings go to the post-step


def test_a_stored_mode_naming_an_unknown_peer_is_refused_before_it_is_served(plain_index):
    stored = {**resolve_mode("span+aqe").to_dict(), "post": {"kind": "telepathy"}}
    with pytest.raises(QueryError, match="unknown post step 'telepathy'"):
        resolve_mode("auto", tuned=stored)
    with pytest.raises(QueryError, match="unknown post step"):
        plain_index.set_tuned_mode({"mode": stored, "task": "image-to-image"})
    adapted = {**resolve_mode("dba").to_dict()}
    adapted["legs"] = [{**adapted["legs"][0], "params": {"kind": "aqe"}}]  # a post-step is no adapted leg
    with pytest.raises(QueryError, match="unknown adapt step 'aqe'"):
        resolve_mode("auto", tuned=adapted)
    with pytest.raises(QueryError, match="malformed mode record"):
        resolve_mode("auto", tuned={})
    assert plain_index.tuned_mode is None


@pytest.mark.slow
def test_the_server_offers_and_serves_what_the_registry_holds(index, negate):
    """GET /info lists every registered name and offers (with label and help) each entry the index can serve,
    the toy included once registered; a request names it like any mode; an unknown name is a 400."""
    import httpx

    from crossgap_index.server.settings import ServeSettings
    from tests.support.serve import running_server

    with running_server(index, ServeSettings()) as base:
        info = httpx.get(base + "/info", timeout=60).json()
        offered = {choice["name"]: choice for choice in info["page"]["mode_choices"]}
        assert set(offered) == set(mode_names(compositions=False, offered_only=True))  # this index serves all
        assert offered["negate"]["label"] == "Opposite" and offered["negate"]["help"] == NEGATE.help
        assert info["page"]["list_labels"]["negate"] == "Opposite"
        assert {"negate", "negate+aqe", "span+aqe"} <= set(info["modes"])
        vector = index._store.ids_and_vectors("image")[1][0].tolist()
        body = {"vector": vector, "modality": "image", "k": 3, "mode": "negate"}
        hits = httpx.post(base + "/search", json=body, timeout=60).json()["hits"]
        assert [h["id"] for h in hits] == [h.id for h in index.search(vector=vector, k=3, mode="negate")]
        refused = httpx.post(base + "/search", json={**body, "mode": "negate+dba"}, timeout=60)
        assert refused.status_code == 400 and "unknown mode 'negate+dba'" in refused.json()["error"]
