"""Worlds we did not make: Fashion-MNIST from Debian's package, the held-out-vocabulary and multi-axis synthetic
protocols, and the trainer that turns any labelled folder into a model ``--model`` loads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossgap_index.datasets import fashion_mnist
from crossgap_index.datasets.synthetic import (
    CLASS_NAMES,
    COLOUR_SYNONYMS,
    SHAPE_SYNONYMS,
    vocabulary_split,
)
from crossgap_index.errors import InputFileError
from crossgap_index.evaluation.data import load_dataset
from crossgap_index.evaluation.protocol import IMAGES, evaluate
from crossgap_index.ingest.decode import decode_rgb
from crossgap_index.inversion import InversionConfig
from tests.support.cli import REPO
from tests.support.photos import MODEL

HAVE_FASHION = (fashion_mnist.DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="Debian package dataset-fashion-mnist not installed")
# synthetic:7:24 as main generated it before the held-out and multi-axis options existed (PNG bytes, labels, captions)
SYNTHETIC_7_24 = "c9a728ddefe5e50526aecdbe3910db691465a345a8ba25b6edec7dc6b381ab06"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@needs_fashion
def test_fashion_mnist_reads_the_real_files():
    images, labels = fashion_mnist.load_split("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    assert 0 < images.mean() < 255 and images.std() > 10  # real photos, not blank pages

    data = load_dataset("fashion-mnist:test:50")
    assert data.kind == "fashion-mnist" and data.texts is None
    assert data.images.class_names == fashion_mnist.CLASS_NAMES and len(data.images.class_names) == 10
    assert np.bincount(data.images.labels, minlength=10).tolist() == [5] * 10  # stratified
    image = decode_rgb(data.images.read(0))
    assert image.size == (28, 28) and image.mode == "RGB"
    again, other = load_dataset("fashion-mnist:test:50"), load_dataset("fashion-mnist:test:50:seed=1")
    assert again.images.items == data.images.items  # seeded
    assert other.images.items != data.images.items
    train = load_dataset("fashion-mnist:train:20")
    assert len(train.images.items) == 20 and len(set(train.images.labels.tolist())) == 10


def test_fashion_mnist_missing_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(fashion_mnist.DIR_ENV, str(tmp_path))
    with pytest.raises(InputFileError) as caught:
        load_dataset("fashion-mnist:test:20")
    message = str(caught.value)
    assert "dataset-fashion-mnist" in message and str(tmp_path) in message and "\n" not in message
    bad_specs = ["fashion-mnist:valid", "fashion-mnist:test:x", "fashion-mnist:test:1", "fashion-mnist:test:5:k=v"]
    for bad in [*bad_specs, "fashion-mnist:test:5:seed=-1", "fashion-mnist:test:5:seed=x"]:
        with pytest.raises(InputFileError):
            load_dataset(bad)


def test_cgx_eval_refuses_missing_fashion_mnist_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from crossgap_index.cli.app import app

    monkeypatch.setenv(fashion_mnist.DIR_ENV, str(tmp_path))
    result = CliRunner().invoke(app, ["eval", "fashion-mnist:test:20", "--model", MODEL, "--quiet"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset-fashion-mnist" in lines[0] and "Traceback" not in result.stderr


def test_plain_synthetic_spec_is_unchanged():
    data = load_dataset("synthetic:7:24")
    digest = hashlib.sha256()
    for item in data.images.items:
        digest.update(item)
    digest.update(data.images.labels.tobytes())
    digest.update("|".join(data.texts.gallery_texts).encode())
    assert digest.hexdigest() == SYNTHETIC_7_24
    assert data.images.relevance == "same class" and data.images.class_names == CLASS_NAMES


def test_heldout_vocabulary_halves_are_disjoint():
    tune, test = vocabulary_split("tune"), vocabulary_split("test")
    assert len(tune) == len(test) == 24
    assert not set(tune) & set(test) and sorted(tune + test) == sorted(CLASS_NAMES)
    for half in (tune, test):  # every word is in both halves; only the combinations are held out
        assert {n.split()[0] for n in half} == set(COLOUR_SYNONYMS)
        assert {n.split()[1] for n in half} == set(SHAPE_SYNONYMS)

    tune_world, test_world = load_dataset("synthetic:5:120:vocab=tune"), load_dataset("synthetic:5:120:vocab=test")
    assert tune_world.class_names == tune and test_world.class_names == test
    seen_test = {test_world.images.class_names[i] for i in test_world.images.labels}
    seen_tune = {tune_world.images.class_names[i] for i in tune_world.images.labels}
    assert len(seen_test) > 12 and len(seen_tune) > 12 and not seen_test & seen_tune
    # a vocabulary stored from the tune world names none of the test world's classes or captions' labels
    assert not set(tune_world.class_names) & set(test_world.texts.labels)
    with pytest.raises(InputFileError):
        load_dataset("synthetic:5:30:vocab=all")


def test_multi_axis_relevance_judges_the_same_images_differently():
    worlds = {axis: load_dataset(f"synthetic:9:48:relevance={axis}") for axis in ("shape", "colour", "both")}
    plain = load_dataset("synthetic:9:48")
    for world in worlds.values():
        assert world.images.items == plain.images.items  # the same images ...
    names = {axis: [w.images.class_names[i] for i in w.images.labels] for axis, w in worlds.items()}
    assert worlds["shape"].images.class_names == list(SHAPE_SYNONYMS)
    assert worlds["colour"].images.class_names == list(COLOUR_SYNONYMS)
    assert names["both"] == [plain.images.class_names[i] for i in plain.images.labels]
    assert names["shape"] == [n.split()[1] for n in names["both"]]
    assert names["colour"] == [n.split()[0] for n in names["both"]]

    def relevant(axis: str) -> np.ndarray:
        labels = worlds[axis].images.labels
        return labels[:, None] == labels[None, :]

    # ... judged differently: each axis makes pairs relevant that the others do not
    shape, colour, both = relevant("shape"), relevant("colour"), relevant("both")
    assert (both == (shape & colour)).all()
    assert (shape & ~colour).any() and (colour & ~shape).any() and (shape != colour).any()
    assert {w.images.relevance for w in worlds.values()} == {"same shape", "same colour", "same colour and shape"}
    assert worlds["shape"].describe()["relevance"] == "same shape"
    assert load_dataset("synthetic:9:8:vocab=test:relevance=colour").images.class_names == list(COLOUR_SYNONYMS)


@pytest.mark.slow
def test_eval_names_the_relevance_axis_in_the_task():
    few = InversionConfig(oti_steps=1, ovi_steps=1)
    result = evaluate("synthetic:2:24:relevance=shape", MODEL, device="cpu", config=few, tasks=["images"])
    doc = result.to_dict()
    assert doc["tasks"][IMAGES]["relevant"] == "same shape"
    assert doc["dataset"]["relevance"] == "same shape" and doc["dataset"]["classes"] == 6
    assert doc["zero_shot"]["classes"] == 6


def _export(root: Path, split: str, classes: list[str], per_class: int) -> Path:
    """A class-per-subfolder folder of Fashion-MNIST PNGs; "Ankle boot" becomes Ankle_boot/ (read back with a space)."""
    images, labels = fashion_mnist.load_split(split)
    rng = np.random.default_rng(0)
    for name in classes:
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True)
        label = fashion_mnist.CLASS_NAMES.index(name)
        for i in rng.choice(np.flatnonzero(labels == label), per_class, replace=False):
            fashion_mnist.to_rgb(images[i]).save(folder / f"{split}_{i}.png")
    return root


@needs_fashion
@pytest.mark.slow
def test_trainer_writes_a_model_that_loads_and_beats_chance(tmp_path):
    classes = ["Trouser", "Bag", "Ankle boot", "Pullover"]
    train = _export(tmp_path / "train", "train", classes, 80)
    held_out = _export(tmp_path / "test", "test", classes, 25)
    out = tmp_path / "model"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.train_small",
            "--folder",
            str(train),
            "--out",
            str(out),
            "--config",
            str(REPO / "benchmarks" / "configs" / "tiny-labelled.json"),
            "--steps",
            "120",
            "--warmup",
            "10",
            "--lr",
            "2e-3",
            "--log-every",
            "40",
            "--monitor-n",
            "40",
            "--template",
            "a photo of a {}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors"}

    from typer.testing import CliRunner

    from crossgap_index.cli.app import app

    args = ["eval", str(held_out), "--model", str(out), "--task", "images", "--steps", "1", "--json", "--quiet"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.stderr[-2000:]
    doc = json.loads(run.stdout)
    assert doc["dataset"]["classes"] == 4 and doc["dataset"]["images"] == 100
    assert doc["zero_shot"]["chance"] == 0.25
    assert doc["zero_shot"]["accuracy"] >= 0.6  # chance is 0.25 on 100 held-out test-split images
    assert doc["tasks"][IMAGES]["modes"]["intra"]["metrics"]["map"] > 0.4


def test_deduplicated_clip_loss_is_clip_loss_when_captions_are_distinct():
    import open_clip
    import torch

    from benchmarks.train_small import deduplicated_clip_loss

    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    scale = torch.tensor(14.0)
    ours = deduplicated_clip_loss(images, texts, torch.arange(6), scale)
    assert torch.allclose(ours, open_clip.ClipLoss()(images, texts, scale), atol=1e-6)
    # shared captions: image-to-text over the 2 distinct captions, text-to-image averaged over each caption's images
    targets = torch.tensor([0, 1, 0, 1, 1, 0])
    logits = scale * images @ texts[:2].T
    by_caption = logits.T.log_softmax(1)
    reference = (
        torch.nn.functional.cross_entropy(logits, targets)
        - (by_caption[0, targets == 0].mean() + by_caption[1, targets == 1].mean()) / 2
    ) / 2
    assert torch.allclose(deduplicated_clip_loss(images, texts[:2], targets, scale), reference, atol=1e-6)
