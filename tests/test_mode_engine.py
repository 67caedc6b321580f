"""The mode engine: served modes equal the engine over in-memory features (what eval measures), feature maps
equal straightforward references, IsoCLIP's map is exact, the inverter trains and round-trips, tune stores a
mode that --cross then serves, search_batch equals solo search, transform_query reproduces search, and an
index from before the mode engine opens and works. Real FAISS, SQLite and open_clip models throughout."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.errors import IncompatibleModelError, StoreError
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.inverter import Inverter, InverterConfig, train_inverter
from crossgap_index.models import Encoder, load_model
from crossgap_index.search.modes import Mode
from crossgap_index.search.projections import ConceptMap, iso_projection, projection_weights, span_projection
from tests.support.modes import assert_serves_what_eval_measures, inverted_index, served_modes
from tests.support.photos import MODEL

N = 36
FEW = InversionConfig(oti_steps=3)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return export_folder(tmp_path_factory.mktemp("labelled"), seed=5, n=N)


@pytest.fixture(scope="module")
def index(tmp_path_factory, labelled):
    path = tmp_path_factory.mktemp("idx") / "index"
    fill = lambda cgx: cgx.index_folders([labelled])  # noqa: E731
    cgx = inverted_index(path, fill, FEW, InverterConfig(steps=8, batch_size=16), "image")
    yield cgx
    cgx.close()


MODES = served_modes(FEW)


@pytest.mark.parametrize("name", list(MODES))
def test_served_mode_equals_the_engine_over_memory(index, labelled, name):
    """What eval measures (run_mode over in-memory features) is what search serves over FAISS."""
    mode = MODES[name]
    query = sorted(labelled.rglob("*.png"))[7]
    served = index.search(image=query, k=N, mode=mode.name, **_settings(mode))
    assert_serves_what_eval_measures(index, served, {"image": query}, mode, N)
    assert set().union(*(h.ranks for h in served)) == {leg.name for leg in mode.legs}


def _settings(mode: Mode) -> dict:
    leg = mode.legs[-1]
    out = {}
    if leg.transform == "invert":
        out["inversion"] = leg.inversion()
    if leg.transform == "project":
        out["projection"] = {k: v for k, v in leg.params.items() if k != "kind"}
    if mode.fusion:
        out.update(merge=mode.fusion, alpha=mode.alpha, depth=mode.depth)
    return out


def test_fusion_depth_then_first_leg_continues(index, labelled):
    """Fused lists merge the top-depth of each leg; past the union, the first leg's order continues."""
    query = sorted(labelled.rglob("*.png"))[3]
    full = index.search(image=query, k=N, mode="fused", inversion=FEW, depth=5)
    intra = [h.id for h in index.search(image=query, k=N, mode="intra")]
    union = {h.id for h in full if h.ranks.get("intra", 99) <= 5 or h.ranks.get("cross", 99) <= 5}
    head = [h.id for h in full[: len(union)]]
    assert set(head) == union
    assert [h.id for h in full[len(union) :]] == [i for i in intra if i not in union]
    top = index.search(image=query, k=4, mode="fused", inversion=FEW, depth=5)
    assert [h.id for h in top] == head[:4]


def test_span_and_concept_match_straightforward_references():
    rng = np.random.default_rng(0)
    vocab, feats = rng.normal(size=(30, 16)), rng.normal(size=(7, 16))
    span = span_projection(vocab, 5)
    centred = vocab - vocab.mean(axis=0)
    _, _, vt = np.linalg.svd(centred)
    for f, got in zip(feats, span.apply(feats), strict=True):
        p = sum(np.dot(c, f) * c for c in vt[:5])
        np.testing.assert_allclose(got, p / np.linalg.norm(p), atol=1e-5)
    concept = ConceptMap(vocab.astype(np.float32), 0.05)
    for f, got in zip(feats, concept.apply(feats), strict=True):
        logits = [np.dot(f, v) / 0.05 for v in vocab]
        weights = np.exp(np.array(logits) - max(logits))
        np.testing.assert_allclose(got, np.sqrt(weights / weights.sum()), atol=1e-6)
        assert abs(np.linalg.norm(got) - 1) < 1e-5


@pytest.mark.slow
def test_iso_equals_truncated_projector_on_pre_projection_features():
    """IsoCLIP as published (W_i U_k U_k^T on pre-projection features) equals our d x d map of the ordinary
    embedding: random-init ViT-B-32, images and texts."""
    torch.manual_seed(0)
    loaded = load_model("ViT-B-32/random", "cpu")
    model = loaded.model
    w_i, w_t = projection_weights(model, "image"), projection_weights(model, "text")
    pixels = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        embedded = model.encode_image(pixels).numpy()
        proj, model.visual.proj = model.visual.proj, None
        pre = model.visual(pixels).numpy()
        model.visual.proj = proj
    u, s, _ = np.linalg.svd(w_i.T.astype(np.float64) @ w_t, full_matrices=False)
    iso = iso_projection(w_i, w_t, "image", 150, 50)
    kept = u[:, 150 : 512 - 50]
    reference = (w_i @ kept @ kept.T @ pre.T).T
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(iso.apply(embedded), reference, atol=2e-4)
    assert iso.settings["rank"] == 312
    tokens = loaded.tokenizer(["a red bicycle", "two cats"])
    with torch.no_grad():
        text = model.encode_text(tokens).numpy()
        tproj = model.text_projection
        model.text_projection = None
        pre_text = model.encode_text(tokens).numpy()
        model.text_projection = tproj
    _, _, vt = np.linalg.svd(w_i.T.astype(np.float64) @ w_t, full_matrices=False)
    kept_t = vt.T[:, 20 : 512 - 100]
    reference = (w_t @ kept_t @ kept_t.T @ pre_text.T).T
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(iso_projection(w_i, w_t, "text", 20, 100).apply(text), reference, atol=2e-4)


def test_iso_refuses_a_model_without_a_linear_projection():
    class NoProjection(torch.nn.Module):
        visual = torch.nn.Identity()

    with pytest.raises(IncompatibleModelError, match="no linear projection"):
        projection_weights(NoProjection(), "image", "resnet-ish")


def test_inverter_trains_and_round_trips(tmp_path):
    loaded = load_model(MODEL, "cpu")
    feats = Encoder(loaded).encode_texts([f"a photo of thing {i}" for i in range(40)])  # any unit features
    network = train_inverter(loaded, feats, InverterConfig(steps=30, batch_size=16, dropout=0.0))
    assert network.stats["steps"] == 30 and network.stats["final_loss"] < 1.0
    before = train_inverter(loaded, feats, InverterConfig(steps=1, batch_size=16, dropout=0.0))
    assert network.stats["final_loss"] < before.stats["final_loss"]  # the loss fell
    path = tmp_path / "inverter.safetensors"
    network.save(path)
    again = Inverter.load(path, loaded.spec.canonical)
    np.testing.assert_array_equal(again.tokens(feats), network.tokens(feats))
    np.testing.assert_allclose(again.features(loaded, feats), network.features(loaded, feats), atol=1e-6)
    with pytest.raises(StoreError, match="trained for model"):
        Inverter.load(path, "crossgap-small")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(StoreError, match="unreadable inverter"):
        Inverter.load(tmp_path / "bad.safetensors", loaded.spec.canonical)


def test_search_batch_equals_solo_and_reports_the_inversion_batch(index, labelled):
    queries = sorted(labelled.rglob("*.png"))[:5]
    config = InversionConfig(oti_steps=2, n_tokens=2, precision="fp32")  # bf16 rounds by batch shape
    solo = [index.search(image=q, k=6, mode="cross", inversion=config, use_cache=False) for q in queries]
    timings: dict = {}
    batch = index.search_batch(
        [{"image": q} for q in queries], k=6, mode="cross", inversion=config, use_cache=False, timings=timings
    )
    assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in solo]
    for a, b in zip(batch, solo, strict=True):
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert timings["inversion_batch_size"] == 5


def test_transform_query_reproduces_search(index, labelled):
    query = sorted(labelled.rglob("*.png"))[2]
    for mode in ("span", "cross", "intra"):
        settings = {"inversion": FEW} if mode == "cross" else {}
        transform = index.transform_query(image=query, mode=mode, **settings)
        ((vector, collection),) = transform.lists.values()
        ids, gallery = index._store.ids_and_vectors(collection)
        if transform.gallery_map is not None:
            gallery = transform.gallery_map.apply(gallery)
        brute = ids[np.argsort(-(gallery @ vector), kind="stable")][:5]
        assert brute.tolist() == [h.id for h in index.search(image=query, k=5, mode=mode, **settings)]


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_tune_stores_the_mode_that_cross_then_serves(tmp_path, labelled):
    """crossgap-small, whose label-informed modes win by a margin tune's interval gate lets through."""
    path = tmp_path / "tuned"
    runner = CliRunner()
    built = runner.invoke(app, ["build-index", str(labelled), "--index", str(path), "--model", "crossgap-small", "-q"])
    assert built.exit_code == 0
    too_few = runner.invoke(app, ["tune", str(labelled), "--index", str(path), "--no-inversion", "-q"])
    assert too_few.exit_code == 0 and "stored nothing" in too_few.stdout  # 36 items, 48 classes: below the minimum
    result = runner.invoke(app, ["tune", "synthetic:5:480", "--index", str(path), "--no-inversion", "--json", "-q"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    tuned = doc["tuned"]
    assert doc["stored"] and tuned["report"]["delta_map_ci95"][0] > 0
    assert tuned["report"]["queries"] + tuned["selection"]["queries"] <= 480
    assert tuned["report"]["intra_map"] > 0
    assert doc["candidates"][0]["name"] == tuned["candidate"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["tuned_mode"]["mode"] == tuned["mode"]
    query = str(sorted(labelled.rglob("*.png"))[0])
    served = json.loads(runner.invoke(app, ["query", query, "--index", str(path), "--cross", "--json"]).stdout)
    assert served["settings"]["served"]["legs"] == tuned["mode"]["legs"]
    info = runner.invoke(app, ["info", "--index", str(path)])
    assert tuned["candidate"] in info.stdout
    evaluated = runner.invoke(
        app, ["eval", str(labelled), "--index", str(path), "--task", "images", "--steps", "2", "--json", "-q"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    modes = json.loads(evaluated.stdout)["tasks"]["image-to-image"]["modes"]
    assert modes["tuned"]["uses_labels"] == (tuned["candidate"].split("[")[0] in ("concept", "span"))
    assert modes["default"]["uses_labels"] is False


def test_an_index_from_before_the_mode_engine_opens_and_serves(tmp_path, labelled):
    """Schema migration: a manifest without tuned_mode and no derived/ folder (as the previous release wrote)."""
    path = tmp_path / "old"
    with CrossGapIndex.create(path, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([labelled])
        expected = [h.id for h in cgx.search(image=sorted(labelled.rglob("*.png"))[1], k=5)]
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop("tuned_mode")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with CrossGapIndex.open(path, device="cpu") as cgx:
        query = sorted(labelled.rglob("*.png"))[1]
        assert [h.id for h in cgx.search(image=query, k=5)] == expected
        assert len(cgx.search(image=query, k=5, mode="auto")) == 5
        assert cgx.info().tuned_mode is None


def test_relative_index_path_serves_inversion_modes(tmp_path, labelled, monkeypatch):
    """A relative --index once broke the inversion cache (a file URI needs an absolute path)."""
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["build-index", str(labelled), "--index", "rel", "--model", MODEL, "-q"]).exit_code == 0
    query = str(sorted(labelled.rglob("*.png"))[0])
    for mode in ("cross", "fused"):
        result = runner.invoke(app, ["query", query, "--index", "rel", "--mode", mode, "--steps", "2", "--json"])
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)["hits"]) == 10


def test_warm_follows_the_inverters_token_count(tmp_path, labelled):
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as cgx:
        cgx.index_folders([labelled])
        cgx.train_inverter(InverterConfig(n_tokens=4, steps=2, batch_size=8))
        hits = cgx.search(image=sorted(labelled.rglob("*.png"))[0], mode="warm", k=3)
    assert len(hits) == 3


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_tune_on_captions_splits_by_group(tmp_path, labelled):
    captions = export_folder(tmp_path / "more", seed=6, n=64) / "captions.jsonl"  # tune's minimum: 64 groups
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as cgx:
        cgx.add_texts(["a red circle", "a blue square"])
        too_few = cgx.tune(str(labelled / "captions.jsonl"), inversion=False)
        result = cgx.tune(str(captions), inversion=False)
    assert too_few.record is None and not too_few.stored and "caption groups" in too_few.reason
    assert result.record["task"] == "text-to-text"
    assert result.record["selection"]["queries"] + result.record["report"]["queries"] == 64


def test_demo_into_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(app, ["demo", str(tmp_path / "afile"), "--model", MODEL, "-q"])
    assert result.exit_code == 1 and "is a file" in result.stderr and "Traceback" not in result.output
