"""Text queries: the text -> image inverter trains, round-trips and refuses another model's or
direction's file; every text mode serves what eval measures; `cgx eval --index` measures the index's own
inverter (its number is the library's search with that mode); tune keeps one mode per task and --cross picks
by the query's modality; an index from before per-task records opens and serves; the OVI step sweep's single
run equals separate runs; text-to-image is a task. Real FAISS, SQLite and open_clip models throughout."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.datasets.synthetic import generate
from crossgap_index.errors import StoreError
from crossgap_index.evaluation.metrics import retrieval_metrics
from crossgap_index.evaluation.protocol import TEXT_TO_IMAGE, TEXTS, evaluate
from crossgap_index.inversion import InversionConfig, ovi
from crossgap_index.inversion.inverter import Inverter, InverterConfig, train_inverter
from crossgap_index.inversion.optimise import inversion_path
from crossgap_index.models import Encoder, load_model
from crossgap_index.search.modes import resolve_mode
from tests.support.modes import assert_serves_what_eval_measures, inverted_index, served_modes
from tests.support.photos import MODEL

FEW = InversionConfig(ovi_steps=3, precision="fp32")
TEXT_INVERTER = InverterConfig(direction="ovi", n_tokens=None, steps=8, batch_size=16)


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """A caption file whose texts are all distinct (an index stores each text once), grouped by item."""
    seen, lines = set(), []
    for i, item in enumerate(generate(7, 24)):
        for text in item.captions:
            if text not in seen:
                seen.add(text)
                lines.append({"text": text, "group": f"7_{i}", "label": item.class_name})
    path = tmp_path_factory.mktemp("captions") / "captions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def gallery_texts(captions):
    """The texts eval's text-to-text gallery holds (every caption but each group's first), in its order."""
    from crossgap_index.evaluation.data import load_dataset

    return load_dataset(str(captions)).texts


@pytest.fixture(scope="module")
def index(tmp_path_factory, gallery_texts):
    path = tmp_path_factory.mktemp("texts") / "index"
    fill = lambda cgx: cgx.add_texts(gallery_texts.gallery_texts)  # noqa: E731
    cgx = inverted_index(path, fill, FEW, TEXT_INVERTER, "text")
    yield cgx
    cgx.close()


MODES = served_modes(FEW)


@pytest.mark.parametrize("name", list(MODES))
def test_every_text_mode_serves_what_eval_measures(index, gallery_texts, name):
    """run_mode over in-memory features (what eval measures) is what search serves over FAISS, text -> texts."""
    mode = MODES[name]
    query = gallery_texts.query_texts[3]
    n = len(gallery_texts.gallery_texts)
    served = index.search(text=query, target="texts", k=n, mode=mode, use_cache=False)
    assert_serves_what_eval_measures(index, served, {"text": query}, mode, n)


def test_text_inverter_trains_round_trips_and_refuses_other_files(tmp_path):
    loaded = load_model(MODEL, "cpu")
    feats = Encoder(loaded).encode_texts([f"a photo of thing {i}" for i in range(40)])
    losses = []
    config = InverterConfig(direction="ovi", n_tokens=None, steps=30, batch_size=16, dropout=0.0)
    network = train_inverter(loaded, feats, config, progress=lambda step, total, loss: losses.append(loss))
    assert network.stats["steps"] == 30 and network.stats["texts"] == 40 and network.direction == "ovi"
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # the loss fell
    assert network.tokens(feats).shape[1:] == (4, 64)  # P = 4 pseudo-patches (patch-16 ViT) of the tower's width
    path = tmp_path / "text-inverter.safetensors"
    network.save(path)
    again = Inverter.load(path, loaded.spec.canonical, direction="ovi")
    np.testing.assert_array_equal(again.tokens(feats), network.tokens(feats))
    np.testing.assert_allclose(again.features(loaded, feats), network.features(loaded, feats), atol=1e-6)
    image_side = Encoder(loaded)
    assert network.features(loaded, feats).shape == (40, image_side.dim)
    with pytest.raises(StoreError, match="trained for model"):
        Inverter.load(path, "crossgap-small", direction="ovi")
    with pytest.raises(StoreError, match="inverter trained for OVI, not OTI"):
        Inverter.load(path, loaded.spec.canonical)  # the image side's loader


def test_warm_starts_ovi_from_the_text_inverter(index, gallery_texts):
    """warm with 0 OVI steps is exactly the inverter's one-pass output; with steps it moves from there."""
    query = gallery_texts.query_texts[0]
    network = index.inverter("text")
    feature = index.embed_query(text=query).feature
    zero = resolve_mode("warm", inversion=InversionConfig(ovi_steps=0, precision="fp32"))
    transform = index.transform_query(text=query, target="texts", mode=zero)
    np.testing.assert_allclose(
        transform.lists["warm"][0], network.features(index._runtime.encoder.loaded, feature[None])[0], atol=1e-5
    )


def test_ovi_sweep_path_equals_separate_runs():
    """The sweep's one run passes through exactly what a run of each step count returns (its oracle)."""
    loaded = load_model(MODEL, "cpu")
    targets = Encoder(loaded).encode_texts(["a red circle", "a blue square", "a green star"])
    config = InversionConfig(precision="fp32", batch_size=2, n_patches=2)
    path = inversion_path(loaded, targets, config, [1, 2, 3], "ovi", [0, 2, 5])
    for steps, features in path.items():
        alone = ovi(
            loaded, targets, InversionConfig(ovi_steps=steps, precision="fp32", batch_size=2, n_patches=2), [1, 2, 3]
        )
        np.testing.assert_allclose(features, alone, atol=1e-6)


@pytest.mark.slow
def test_eval_index_measures_the_stored_inverter_as_search_serves_it(index, captions, gallery_texts):
    """`cgx eval --index`: the inverter mode is the index's own network, and its mAP is the mAP of the
    library's search with that mode over the index's texts."""
    runner = CliRunner()
    args = ["eval", str(captions), "--index", str(index.path), "--task", "texts", "--ovi-steps", "2", "--json", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    modes = doc["tasks"][TEXTS]["modes"]
    assert {"inverter", "warm", "cross-gallery", "tuned"} <= set(modes)
    assert "inverter-transductive" not in modes
    assert modes["intra"]["ms_per_query_batch"] is not None
    groups = {
        text: group for text, group in zip(gallery_texts.gallery_texts, gallery_texts.gallery_groups, strict=True)
    }
    n = len(gallery_texts.gallery_texts)
    hits = index.search_batch(
        [{"text": t} for t in gallery_texts.query_texts], target="texts", k=n, mode="inverter", use_cache=False
    )
    scores = np.full((len(hits), n), -np.inf)
    position = {text: i for i, text in enumerate(gallery_texts.gallery_texts)}
    for row, found in enumerate(hits):
        for rank, hit in enumerate(found):
            scores[row, position[hit.text]] = n - rank
    served = retrieval_metrics(scores, gallery_texts.query_groups, np.array([groups[t] for t in position]))
    assert served.means()["map"] == pytest.approx(modes["inverter"]["metrics"]["map"], abs=1e-9)
    transductive = runner.invoke(app, [*args, "--transductive"])
    assert transductive.exit_code == 0, transductive.output
    assert "inverter-transductive" in json.loads(transductive.stdout)["tasks"][TEXTS]["modes"]


@pytest.mark.slow
def test_tune_keeps_one_mode_per_task_and_cross_picks_by_query_modality(tmp_path, captions, gallery_texts):
    path = tmp_path / "idx"
    image_record = {"mode": resolve_mode("iso").to_dict(), "task": "image-to-image", "candidate": "iso[x]"}
    with CrossGapIndex.create(path, model=MODEL, device="cpu") as cgx:
        cgx.add_texts(gallery_texts.gallery_texts)
        cgx.add_images([_png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)])
        cgx.set_tuned_mode(_report(image_record))
        refused = cgx.tune(str(captions), inversion=False)  # 24 caption groups: under tune's minimum
        assert not refused.stored and set(cgx.tuned_modes) == {"image-to-image"}  # the image record stays
        text_record = {"mode": resolve_mode("span").to_dict(), "task": "text-to-text", "candidate": "span[x]"}
        cgx.set_tuned_mode(_report(text_record))
        text = json.loads(json.dumps(cgx.tuned_modes["text-to-text"]))
        assert set(cgx.tuned_modes) == {"image-to-image", "text-to-text"}
        assert _plain(cgx.describe_mode("image", mode="auto")["legs"]) == _plain(image_record["mode"]["legs"])
        assert _plain(cgx.describe_mode("text", mode="auto", target="texts")["legs"]) == text["mode"]["legs"]
        assert cgx.describe_mode("text", mode="auto")["name"] == "intra"  # text -> images: nothing tuned for it
    runner = CliRunner()
    served = runner.invoke(
        app, ["query", "a red circle", "--target", "texts", "--index", str(path), "--cross", "--json"]
    )
    assert served.exit_code == 0, served.output
    assert json.loads(served.stdout)["settings"]["served"]["legs"] == text["mode"]["legs"]
    served = runner.invoke(app, ["query", str(tmp_path / "a.png"), "--index", str(path), "--cross", "--json"])
    assert json.loads(served.stdout)["settings"]["served"]["legs"] == _plain(image_record["mode"]["legs"])
    info = runner.invoke(app, ["info", "--index", str(path)])
    assert "image-to-image" in info.stdout and "text-to-text" in info.stdout and text["candidate"] in info.stdout


@pytest.mark.slow
def test_an_index_with_a_single_tuned_record_from_the_previous_release_opens_and_serves(tmp_path, gallery_texts):
    path = tmp_path / "old"
    record = _report({"mode": resolve_mode("iso").to_dict(), "task": "text-to-text", "candidate": "iso[old]"})
    with CrossGapIndex.create(path, model=MODEL, device="cpu") as cgx:
        cgx.add_texts(gallery_texts.gallery_texts)
        expected = [h.id for h in cgx.search(text="a red circle", target="texts", k=5, mode="iso")]
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("tuned_modes", "text_gallery_inversion"):
        manifest.pop(key)
    for key in ("factories", "files", "counts"):
        manifest[key].pop("text-ovi")
    manifest["tuned_mode"] = record
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "text-ovi.faiss").unlink()
    with CrossGapIndex.open(path, device="cpu") as cgx:
        assert cgx.tuned_modes == {"text-to-text": _plain(record)}
        assert [h.id for h in cgx.search(text="a red circle", target="texts", k=5, mode="auto")] == expected
        assert cgx.describe_mode("image", mode="auto")["name"] == "span"  # image queries: the default
        assert cgx.check().ok
        assert cgx.invert_gallery(FEW, modality="text") == len(gallery_texts.gallery_texts)
        assert len(cgx.search(text="a red circle", target="texts", k=5, mode="cross-gallery")) == 5


@pytest.mark.slow
def test_text_to_image_is_a_task(captions):
    result = evaluate(
        "synthetic:7:24", MODEL, device="cpu", config=FEW, tasks=["text-to-image"], span_components=4
    ).to_dict()
    task = result["tasks"][TEXT_TO_IMAGE]
    assert task["relevant"] == "same class" and task["n_queries"] == 24 * 5
    assert {"intra", "span", "concept", "span-imagenet", "iso"} <= set(task["modes"])
    assert not {"cross", "inverter", "warm"} & set(task["modes"])  # a caption against images is already inter-modal
    assert all(mode["ms_per_query_batch"] is not None for mode in task["modes"].values())


def _plain(value):
    """``value`` as JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def _report(record: dict) -> dict:
    """A tune record as `cgx tune` writes it (report numbers, dataset, date) around ``record``."""
    return {
        **record,
        "summary": record["candidate"],
        "selection": {"map": 0.5, "intra_map": 0.4, "queries": 10},
        "report": {"map": 0.5, "intra_map": 0.4, "delta_map": 0.1, "delta_map_se": 0.01, "queries": 10},
        "dataset": {"spec": "hand-made", "fingerprint": "0", "split_seed": 0},
        "date": "2026-11-25T00:00:00+00:00",
    }


def _png(path, seed):
    from tests.support.photos import write_photo

    return write_photo(path, seed)
