"""Defaults from evidence and a tune that cannot store noise: the published span preset against a numpy
reference, the components rules, per-model defaults and their source, tune's minimum and its interval gate,
and the eval report's `default` mode and `uses_labels` flags (real models, real files, real CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.evaluation.protocol import evaluate, uses_labels
from crossgap_index.evaluation.stats import paired_interval, t_quantile_975
from crossgap_index.inversion import InversionConfig
from crossgap_index.models import Encoder, load_model
from crossgap_index.search.modes import default_cross, describe_cross, resolve_mode
from crossgap_index.search.projections import iso_published
from crossgap_index.search.span import PRESETS, SpanProjection, resolve_components
from crossgap_index.search.transforms import ModelTransformer
from crossgap_index.tuning.tune import MIN_CLASSES, MIN_ITEMS_PER_CLASS, _verdict
from tests.support.photos import MODEL, write_broken_files, write_photo

runner = CliRunner()


def published_reference(model, tokenizer, names: list[str]) -> np.ndarray:
    """Herzog & Wang's PCA<- written out plainly: raw names through encode_text (no prompt, no
    normalisation), centred, eigenvectors of the covariance, the top d/2 kept; returns the projector U U^T."""
    with torch.no_grad():
        raw = model.encode_text(tokenizer(names)).double().numpy()
    centred = raw - raw.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(raw) - 1))
    top = vectors[:, np.argsort(values)[::-1][: raw.shape[1] // 2]]
    return top @ top.T


@pytest.mark.slow
def test_published_preset_reproduces_the_reference_math():
    """The whole ImageNet vocabulary, the preset's map against the reference projector: the same map."""
    from open_clip import IMAGENET_CLASSNAMES

    loaded = load_model("crossgap-small", "cpu")
    encoder = Encoder(loaded, precision="fp32")
    leg = resolve_mode("span", projection={"preset": "published"}).legs[0]
    projection = ModelTransformer("crossgap-small", lambda: encoder).projection(leg, "image")
    reference = published_reference(loaded.model, loaded.tokenizer, sorted(set(IMAGENET_CLASSNAMES)))
    assert projection.settings["n_components"] == 64 == encoder.dim // 2
    assert (projection.settings["prompt"], projection.settings["features"]) == ("raw", "raw")
    np.testing.assert_allclose(projection.matrix, reference, atol=2e-4)
    feats = np.random.default_rng(0).normal(size=(5, encoder.dim))
    expected = feats @ reference
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(projection.apply(feats), expected, atol=2e-4)


def test_the_project_pipeline_differs_from_the_published_one():
    """Prompted, unit-normalised names give another subspace: the settings are real switches."""
    encoder = Encoder(load_model(MODEL, "cpu"), precision="fp32")
    transformer = ModelTransformer(MODEL, lambda: encoder)
    names = ["red circle", "blue square", "green star", "yellow heart", "purple cross", "orange moon"]
    maps = {}
    for prompt in ("raw", "photo"):
        for features in ("raw", "unit"):
            settings = {"vocabulary": names, "prompt": prompt, "features": features, "components": 3}
            maps[prompt, features] = transformer.projection(resolve_mode("span", projection=settings).legs[0], "image")
    assert all(m.settings["n_components"] == 3 for m in maps.values())
    assert np.abs(maps["raw", "raw"].matrix - maps["photo", "unit"].matrix).max() > 1e-2
    assert np.abs(maps["raw", "raw"].matrix - maps["raw", "unit"].matrix).max() > 1e-4


def test_components_rules_against_numpy():
    rng = np.random.default_rng(1)
    singular = np.sort(rng.uniform(0.1, 5, size=40))[::-1]
    share = np.cumsum(singular**2) / np.sum(singular**2)
    for p in (0.5, 0.9, 0.95, 0.99):
        expected = next(i + 1 for i, s in enumerate(share) if s >= p)
        assert resolve_components(f"ev:{p}", singular, 64) == expected
    assert resolve_components("d/2", singular, 64) == 32 and resolve_components(7, singular, 64) == 7
    for bad in ("d/0", "ev:1.5", "ev:0", "half", 0, True):
        with pytest.raises(ValueError):
            resolve_components(bad, singular, 64)
    feats = rng.normal(size=(50, 16)) * np.r_[np.full(3, 10.0), np.full(13, 0.01)]  # three strong directions
    assert SpanProjection().fit(feats, "ev:0.95").n_components == 3


def test_defaults_come_from_the_model_or_the_published_setting(tmp_path):
    bundled = default_cross("crossgap-small")
    assert bundled.source == "bundled" and bundled.span_settings()["components"] == "ev:0.95"
    for model in ("ViT-B-32/openai", "ViT-B-32/random", MODEL, None):
        published = default_cross(model)
        assert published.source == "published" and published.span_settings() == PRESETS["published"]
    assert resolve_mode("auto", model="crossgap-small").legs[0].params["components"] == "ev:0.95"
    assert resolve_mode("auto", tuned={"name": "intra", "legs": [{"name": "intra"}]}).name == "intra"
    described = describe_cross("ViT-L-14/openai", {"mode": resolve_mode("iso").to_dict(), "candidate": "iso[x]"})
    assert described["source"] == "tuned" and described["default"]["source"] == "published"
    (tmp_path / "open_clip_config.json").write_text("{}")
    (tmp_path / "cgx_defaults.json").write_text('{"cross": {"name": "span"}}')  # no evidence: refused
    with pytest.raises(Exception, match="malformed default"):
        default_cross(str(tmp_path))
    assert iso_published("ViT-B-32/openai", "text") == (20, 100)
    assert iso_published("ViT-B-32/datacomp_xl_s13b_b90k", "image") == (50, 50)
    assert iso_published("ViT-L-14/openai", "image") == (250, 200) and iso_published("x/y", "image") is None


def test_iso_without_a_published_setting_scales_the_b32_one():
    encoder = Encoder(load_model(MODEL, "cpu"), precision="fp32")
    iso = ModelTransformer(MODEL, lambda: encoder).projection(resolve_mode("iso").legs[0], "image")
    assert iso.settings["source"] == "scaled B/32"
    assert (iso.settings["k_top"], iso.settings["k_bottom"]) == (round(64 * 150 / 512), round(64 * 50 / 512))


def test_paired_interval_and_the_verdict():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3) and t_quantile_975(200) == pytest.approx(1.972, 1e-3)
    base = np.array([0.5, 0.4, np.nan, 0.6, 0.3])
    values = np.array([0.6, 0.5, 0.9, 0.65, 0.35])
    low, mean, high = paired_interval(values, base)
    diff = np.array([0.1, 0.1, 0.05, 0.05])
    half = t_quantile_975(3) * diff.std(ddof=1) / 2
    assert (low, mean, high) == pytest.approx((diff.mean() - half, diff.mean(), diff.mean() + half))
    assert _verdict("span[x]", 0.02, 0.001, 0.04)[0]
    stored, reason = _verdict("span[x]", 0.02, -0.001, 0.04)
    assert not stored and "reaches 0" in reason
    assert not _verdict("intra", 0.0, 0.0, 0.0)[0] and not _verdict("iso", 0.1, float("nan"), float("nan"))[0]


def test_uses_labels_follows_the_vocabulary():
    names = ["red circle", "blue square"]
    assert uses_labels(resolve_mode("concept", projection={"vocabulary": ["Red  Circle", "dog"]}), names)
    assert not uses_labels(resolve_mode("span", projection={"vocabulary": ["dog", "cat"]}), names)
    assert not uses_labels(resolve_mode("span", projection={"vocabulary": "imagenet"}), names)
    assert not uses_labels(resolve_mode("auto", model="crossgap-small"), names)
    assert not uses_labels(resolve_mode("intra"), names)


def _non_class_folder(root):
    """Five subfolders that are not classes, 1-5 photos each, and five broken files."""
    for i, count in enumerate((1, 2, 5, 3, 1)):
        for j in range(count):
            write_photo(root / f"holiday-{i}" / f"img{j}.png", seed=10 * i + j)
    write_broken_files(root / "holiday-2")
    return root


def test_tune_on_non_class_folders_stores_nothing_and_says_why(tmp_path):
    folder = _non_class_folder(tmp_path / "photos")
    index = tmp_path / "idx"
    built = runner.invoke(app, ["build-index", str(folder), "--index", str(index), "--model", MODEL, "-q"])
    assert built.exit_code == 0, built.output
    result = runner.invoke(app, ["tune", str(folder), "--index", str(index), "--no-inversion", "-q"])
    assert result.exit_code == 0, result.output
    assert "stored nothing" in result.stdout and f"at least {MIN_CLASSES} such classes" in result.stdout
    assert "holiday-1 2" in result.stdout and "holiday-0 (1 items)" in result.stdout  # classes found, left out
    assert "undecodable images left out" in result.stderr and "corrupt.jpg" in result.stderr  # files skipped
    doc = json.loads(runner.invoke(app, ["tune", str(folder), "--index", str(index), "--json", "-q"]).stdout)
    assert doc["tuned"] is None and doc["stored"] is False and doc["measured"] is None
    assert doc["minimum"] == {
        "classes": MIN_CLASSES,
        "items_per_class": MIN_ITEMS_PER_CLASS,
        "text_queries": MIN_CLASSES * MIN_ITEMS_PER_CLASS,
        "confidence": 0.95,
    }
    assert json.loads((index / "manifest.json").read_text())["tuned_mode"] is None


@pytest.mark.slow
def test_tune_on_noise_stores_only_what_its_interval_supports(tmp_path):
    """A random-weight model on enough labelled photos: whatever wins, it is stored exactly when its
    report-half interval is above 0, and the manifest says the same."""
    folder = export_folder(tmp_path / "labelled", seed=8, n=MIN_CLASSES * MIN_ITEMS_PER_CLASS * 6)
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as cgx:
        result = cgx.tune(str(folder), inversion=False)
        stored_record = cgx.tuned_mode
    low, high = result.record["report"]["delta_map_ci95"]
    assert result.stored == (low > 0 and result.record["candidate"] != "intra")
    assert (stored_record is not None) == result.stored
    assert not result.stored or stored_record["report"]["delta_map_ci95"] == [low, high]


@pytest.mark.slow
def test_tune_on_a_proper_labelled_set_stores_a_mode_that_gains_held_out(tmp_path):
    with CrossGapIndex.create(tmp_path / "idx", model="crossgap-small", device="cpu") as cgx:
        result = cgx.tune("synthetic:7:480", inversion=False)
        assert result.stored, result.reason
        report = cgx.tuned_mode["report"]
    assert report["delta_map_ci95"][0] > 0 and report["delta_map"] > 0


@pytest.mark.slow  # over 3 s (a CLI eval of every mode or a fresh interpreter): the full suite runs it
def test_eval_reports_default_and_uses_labels(tmp_path):
    result = evaluate(
        "synthetic:3:24", MODEL, device="cpu", tasks=["texts"], config=InversionConfig(ovi_steps=1, oti_steps=1)
    )
    modes = result.tasks["text-to-text"].modes
    assert "default" in modes and result.settings["default"]["source"] == "published"
    assert modes["default"].settings["legs"][0]["params"]["preset"] == "published"
    flags = {name: mode.uses_labels for name, mode in modes.items()}
    assert flags["span"] and flags["concept"]
    assert not any(flags[name] for name in ("intra", "default", "span-imagenet", "iso", "cross"))
    for mode in modes.values():
        if mode.mode != "intra":
            low, high = mode.map_vs_intra_ci95
            assert low <= mode.map_vs_intra <= high


@pytest.mark.slow  # over 3 s (a CLI eval of every mode or a fresh interpreter): the full suite runs it
def test_cli_eval_json_and_info_say_what_cross_runs(tmp_path):
    folder = export_folder(tmp_path / "labelled", seed=9, n=24)
    index = tmp_path / "idx"
    built = runner.invoke(app, ["build-index", str(folder), "--index", str(index), "--model", MODEL, "-q"])
    assert built.exit_code == 0, built.output
    info = json.loads(runner.invoke(app, ["info", "--index", str(index), "--json"]).stdout)
    for modality in ("image", "text"):  # per query modality: what --cross runs and where that came from
        cross = info["cross"][modality]
        assert cross["source"] == "published" and cross["default"]["settings"]["components"] == "d/2"
    assert "--cross runs" in runner.invoke(app, ["info", "--index", str(index)]).stdout
    ran = runner.invoke(
        app, ["eval", str(folder / "captions.jsonl"), "--model", MODEL, "--ovi-steps", "1", "--json", "-q"]
    )
    assert ran.exit_code == 0, ran.output
    modes = json.loads(ran.stdout)["tasks"]["text-to-text"]["modes"]
    assert "default" in modes and modes["default"]["uses_labels"] is False
    assert all("uses_labels" in mode for mode in modes.values())
